//! The reward stage: each candidate's IF and VQ scores, from its decoded
//! frames (or its latent motion, for the linear backend).

use super::*;

/// reward: score every candidate of the shard's groups, as the backend
/// decodes them: frames go to the built-in frame scorers (the pose
/// estimator or the probe: rotation and translation accuracy per window,
/// VQ) or to the external scorer; the linear test double's latent motion to
/// its own scorer.
pub fn reward<B: Backend>(b: &B, ctx: &RunContext, iter: u64, shard: ShardSpec, dir: &str, pending: &mut PendingCommit) -> Result<usize, StageError> {
    let init = inputs::init_set(ctx)?;
    let prefixes = stage_shards(ctx, iter, Stage::Prefix)?;
    let rollouts = stage_shards(ctx, iter, Stage::Rollout)?;
    pending.add_input(&init);
    prefixes.iter().chain(&rollouts).for_each(|s| pending.add_input(s));
    let pool = sequence_pool(ctx, &init)?;
    let (pfiles, cfiles) = (group_files(&prefixes), group_files(&rollouts));
    let clip_shape = b.clip_shape();
    let groups = shard_groups(ctx, &pool, iter, shard);
    let decoded = |g: u64, row: &GroupRow| -> Result<Decoded, StageError> {
        let pre = prefix_of(ctx, &clip_shape, &pfiles, iter, g)?;
        let cands = candidates_of(ctx, &clip_shape, &cfiles, iter, g)?;
        b.decode(row.prompt_id, &pre, &cands, clips_per_candidate(ctx))
    };
    if !ctx.cfg.reward.external_command.is_empty() {
        let size = b.frame_size().ok_or_else(|| StageError::invalid("reward.external_command", "external scorers read frames: this backend has none"))?;
        let frames = groups
            .into_iter()
            .map(|(g, row)| match decoded(g, &row)? {
                Decoded::Frames(f) => Ok((g, row, f)),
                Decoded::Latents { .. } => Err(StageError::invalid("reward.external_command", "external scorers read frames: this backend has none")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        return crate::world_stages::external_reward(ctx, iter, shard, dir, pending, size, frames);
    }
    let scorers = match b.frame_size() {
        Some(size) => Some(crate::world_stages::FrameScorers::open(ctx, &init, size)?),
        None => None,
    };
    let pb = progress(groups.len(), "reward");
    let (mut scores, mut windows) = (Vec::new(), Vec::new());
    for (g, row) in &groups {
        match decoded(*g, row)? {
            Decoded::Frames(frames) => {
                let scorers = scorers.as_ref().ok_or_else(|| StageError::invalid("reward", "the backend decoded frames but named no frame size"))?;
                let (s, w) = scorers.score_group(ctx, iter, (*g, row), &frames)?;
                scores.extend(s);
                windows.extend(w);
            }
            Decoded::Latents { before, candidates } => scores.extend(score_latent_motion(ctx, iter, (*g, row), &before, &candidates)),
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    write_table(ctx, pending, &layout::in_dir(dir, layout::SCORES_FILE), &wc_schemas::tables::reward_scores(), &scores_to_batch(&scores))?;
    if scorers.is_none() {
        return Ok(1);
    }
    write_table(ctx, pending, &layout::in_dir(dir, layout::WINDOWS_FILE), &wc_schemas::tables::reward_windows(), &windows_to_batch(&windows))?;
    Ok(2)
}

/// The linear test double's scorer: each candidate's motion from the clip
/// before it against clip n's action weights.
fn score_latent_motion(ctx: &RunContext, iter: u64, group: (u64, &GroupRow), before: &[f32], candidates: &[Vec<f32>]) -> Vec<ScoreRow> {
    let (g, row) = group;
    let n = target_clip(iter, ctx.cfg.rollout.clips);
    let w = clip_action_weights(&clip_windows(ctx, row, n));
    candidates
        .iter()
        .enumerate()
        .map(|(j, x)| {
            let motion: Vec<f32> = x.iter().zip(before).map(|(a, b)| a - b).collect();
            let (rot_acc, trans_acc, vq_score) = score_motion(&motion, &w);
            ScoreRow {
                iter: iter as i64,
                group_id: g as i64,
                prompt_id: row.prompt_id,
                clip_index: n as i64,
                candidate: j as i64,
                rot_acc,
                trans_acc,
                if_score: 0.5 * (rot_acc + trans_acc),
                vq_score,
            }
        })
        .collect()
}
