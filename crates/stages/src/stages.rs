//! The stage bodies: read committed inputs, call the logic, write outputs.
//!
//! Each body is generic over the model [`Backend`] (the runner picks it
//! through the registry, `backend::with_backend`): it names no model type.
//! Each returns the number of files it wrote into the pending commit; the
//! runner commits. Every random draw derives from (run seed, iteration,
//! stage, group, candidate), so shards and reruns write identical bytes.

use std::collections::BTreeMap;

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};
use wc_rl::advantages::{best_of_n, combined_advantage, group_advantages, optimality_probability, RewardMix};
use wc_rl::schedule::{eta_at, target_clip};
use wc_rl::seeds::{derive_seed, SeedDomain};
use wc_schemas::{tensors, DimBindings, Tensor, TensorSet};
use wc_store::{CommittedSet, PendingCommit, ShardSpec};

use crate::backend::{Backend, ClipRequest, Decoded, Role, Selected, SequenceRequest};
use crate::error::StageError;
use crate::inputs::{self, clip_windows, iteration_groups, read_tensor_file, sequence_pool, stage_shards};
use crate::layout;
use crate::linear::{clip_action_weights, score_motion};
use crate::runner::{RunContext, Stage};
use crate::tables::{metrics_to_batch, scores_from_batch, scores_to_batch, selection_to_batch, windows_to_batch, GroupRow, MetricRow, ScoreRow, SelectionRow};

/// A progress bar on stderr (drawn only when stderr is a terminal).
pub(crate) fn progress(len: usize, label: &str) -> ProgressBar {
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_prefix(label.to_string());
    pb
}

pub(crate) fn write_tensors(
    ctx: &RunContext,
    pending: &mut PendingCommit,
    path: &str,
    file_layout: &wc_schemas::TensorFileSchema,
    bindings: &DimBindings,
    t: &TensorSet,
) -> Result<(), StageError> {
    let bytes = wc_schemas::write_tensors(file_layout, bindings, &ctx.store.uri_of(path), t)?;
    pending.write(path, bytes)?;
    Ok(())
}

pub(crate) fn write_table(
    ctx: &RunContext,
    pending: &mut PendingCommit,
    path: &str,
    schema: &wc_schemas::TableSchema,
    batch: &arrow::array::RecordBatch,
) -> Result<Bytes, StageError> {
    let bytes = wc_schemas::write_table(schema, &ctx.store.uri_of(path), batch)?;
    pending.write(path, bytes.clone())?;
    Ok(bytes)
}

/// Map group id -> (shard manifest, file) over a complete set of shards.
pub(crate) fn group_files(sets: &[CommittedSet]) -> BTreeMap<u64, (&CommittedSet, String)> {
    let mut out = BTreeMap::new();
    for set in sets {
        for path in set.paths() {
            if let Some(g) = path
                .rsplit('/')
                .next()
                .and_then(|f| f.strip_prefix("group-"))
                .and_then(|f| f.strip_suffix(".safetensors"))
                .and_then(|g| g.parse::<u64>().ok())
            {
                out.insert(g, (set, path.to_string()));
            }
        }
    }
    out
}

/// The `latents` tensor of group `g`'s file in a stage's committed shards.
pub(crate) fn group_latents(
    ctx: &RunContext,
    files: &BTreeMap<u64, (&CommittedSet, String)>,
    stage: &'static str,
    iter: u64,
    g: u64,
    file_layout: &wc_schemas::TensorFileSchema,
    bindings: &DimBindings,
) -> Result<Vec<f32>, StageError> {
    let (set, path) = files.get(&g).ok_or_else(|| StageError::Incomplete {
        stage,
        iter,
        detail: format!("no committed {stage} output for group {g}"),
    })?;
    let t = read_tensor_file(ctx, set, path, file_layout, bindings)?;
    Ok(t["latents"].to_f32())
}

/// Whether the run rolls out whole sequences (Table 2's sample-level
/// ablation) instead of clip n from a shared prefix.
pub fn sample_level(ctx: &RunContext) -> bool {
    ctx.cfg.rollout.mode == wc_config::RolloutMode::Sample
}

/// Clips in one candidate: 1 (clip-level) or N (sample-level, the whole
/// sequence).
pub(crate) fn clips_per_candidate(ctx: &RunContext) -> usize {
    if sample_level(ctx) { ctx.cfg.rollout.clips as usize } else { 1 }
}

/// The clip index a candidate of iteration `iter` is recorded under in the
/// score table: clip n (clip-level), or N for a whole sequence.
pub(crate) fn scored_clip_index(ctx: &RunContext, iter: u64) -> u64 {
    if sample_level(ctx) { ctx.cfg.rollout.clips } else { target_clip(iter, ctx.cfg.rollout.clips) }
}

/// The action windows a candidate of group `row` is judged on: clip n's
/// (clip-level), or every window of the sequence (sample-level).
pub(crate) fn scored_windows(ctx: &RunContext, row: &GroupRow, iter: u64) -> Vec<u8> {
    if sample_level(ctx) {
        (1..=ctx.cfg.rollout.clips).flat_map(|c| clip_windows(ctx, row, c)).collect()
    } else {
        clip_windows(ctx, row, target_clip(iter, ctx.cfg.rollout.clips))
    }
}

/// The clips a selected candidate is trained on, each as (clip index, the
/// latents before it, its latents): clip-level, clip n after the shared
/// prefix; sample-level, every clip of the candidate's own sequence after
/// its own earlier clips.
pub(crate) fn trained_clips<'a>(ctx: &RunContext, iter: u64, prefix: &'a [f32], own: &'a [f32], clip_len: usize) -> Vec<(u64, &'a [f32], &'a [f32])> {
    if sample_level(ctx) {
        own.chunks_exact(clip_len).enumerate().map(|(i, clip)| (i as u64 + 1, &own[..i * clip_len], clip)).collect()
    } else {
        vec![(target_clip(iter, ctx.cfg.rollout.clips), prefix, own)]
    }
}

/// The dimension bindings of a run's latent files.
fn latent_bindings(ctx: &RunContext, clip_shape: &[usize]) -> DimBindings {
    DimBindings::new().splice("latent", clip_shape).dim("G", ctx.cfg.rollout.candidates as usize)
}

/// The committed prefix latents of group `g` (P clips, flattened; none at
/// sample level).
pub(crate) fn prefix_of(ctx: &RunContext, clip_shape: &[usize], files: &BTreeMap<u64, (&CommittedSet, String)>, iter: u64, g: u64) -> Result<Vec<f32>, StageError> {
    if sample_level(ctx) {
        return Ok(Vec::new());
    }
    let p = target_clip(iter, ctx.cfg.rollout.clips) as usize - 1;
    group_latents(ctx, files, "prefix", iter, g, &tensors::prefix_clips(), &latent_bindings(ctx, clip_shape).dim("P", p))
}

/// The committed rollout latents of group `g`: G candidates of one clip
/// (clip-level) or of N clips each (sample-level), flattened.
pub(crate) fn candidates_of(ctx: &RunContext, clip_shape: &[usize], files: &BTreeMap<u64, (&CommittedSet, String)>, iter: u64, g: u64) -> Result<Vec<f32>, StageError> {
    if sample_level(ctx) {
        let b = latent_bindings(ctx, clip_shape).dim("N", ctx.cfg.rollout.clips as usize);
        group_latents(ctx, files, "rollout", iter, g, &tensors::candidate_sequences(), &b)
    } else {
        group_latents(ctx, files, "rollout", iter, g, &tensors::candidate_clips(), &latent_bindings(ctx, clip_shape))
    }
}

/// The groups of iteration `iter` this shard owns.
fn shard_groups(ctx: &RunContext, pool: &[GroupRow], iter: u64, shard: ShardSpec) -> Vec<(u64, GroupRow)> {
    iteration_groups(ctx, pool, iter).into_iter().filter(|(g, _)| shard.owns(*g as usize)).collect()
}

/// prefix: clips 1..n-1 of each group with the old policy, all groups of
/// the shard advanced together, one clip index at a time.
///
/// Sample-level mode has no shared prefix (every candidate is a whole
/// sequence of its own): the stage commits an empty shard.
pub fn prefix<B: Backend>(b: &B, ctx: &RunContext, iter: u64, shard: ShardSpec, dir: &str, pending: &mut PendingCommit) -> Result<usize, StageError> {
    if sample_level(ctx) {
        return Ok(0);
    }
    let init = inputs::init_set(ctx)?;
    let ckpt = inputs::checkpoint_set(ctx, iter)?;
    pending.add_input(&init);
    pending.add_input(&ckpt);
    let old = b.load_policy(&ckpt, iter, Role::OldPolicy)?;
    let pool = sequence_pool(ctx, &init)?;
    let p = target_clip(iter, ctx.cfg.rollout.clips) - 1;
    let groups = shard_groups(ctx, &pool, iter, shard);
    let requests: Vec<SequenceRequest> = groups
        .iter()
        .map(|(g, row)| SequenceRequest {
            prompt_id: row.prompt_id,
            clips: (1..=p).map(|c| ClipRequest { windows: clip_windows(ctx, row, c), noise_seed: derive_seed(ctx.cfg.run.seed, iter, SeedDomain::Prefix, *g, c) }).collect(),
        })
        .collect();
    let pb = progress(p as usize, "prefix");
    let prefixes = b.sequences(&old, &requests, &|| pb.inc(1))?;
    pb.finish_and_clear();
    let clip_shape = b.clip_shape();
    let bindings = latent_bindings(ctx, &clip_shape).dim("P", p as usize);
    let shape: Vec<usize> = std::iter::once(p as usize).chain(clip_shape).collect();
    for ((g, _), pre) in groups.iter().zip(&prefixes) {
        let mut t = TensorSet::new();
        t.insert("latents".into(), Tensor::from_f32(&shape, &pre.latents));
        write_tensors(ctx, pending, &layout::group_file(dir, *g), &tensors::prefix_clips(), &bindings, &t)?;
    }
    Ok(groups.len())
}

/// rollout: G candidates of clip n per group from its shared prefix, each
/// from its own noise, with the old policy; at sample level, G whole
/// sequences per group instead (all G advanced one clip at a time).
pub fn rollout<B: Backend>(b: &B, ctx: &RunContext, iter: u64, shard: ShardSpec, dir: &str, pending: &mut PendingCommit) -> Result<usize, StageError> {
    let init = inputs::init_set(ctx)?;
    let ckpt = inputs::checkpoint_set(ctx, iter)?;
    let prefixes = stage_shards(ctx, iter, Stage::Prefix)?;
    pending.add_input(&init);
    pending.add_input(&ckpt);
    prefixes.iter().for_each(|s| pending.add_input(s));
    let old = b.load_policy(&ckpt, iter, Role::OldPolicy)?;
    let pool = sequence_pool(ctx, &init)?;
    let files = group_files(&prefixes);
    let (g_count, n) = (ctx.cfg.rollout.candidates, ctx.cfg.rollout.clips);
    let clip_shape = b.clip_shape();
    let groups = shard_groups(ctx, &pool, iter, shard);
    let pb = progress(groups.len() * if sample_level(ctx) { n as usize } else { 1 }, "rollout");
    for (g, row) in &groups {
        let (sampled, file_layout, bindings, shape) = if sample_level(ctx) {
            // Candidate j's clip c: noise id (c - 1) * G + j.
            let requests: Vec<SequenceRequest> = (0..g_count)
                .map(|j| SequenceRequest {
                    prompt_id: row.prompt_id,
                    clips: (1..=n)
                        .map(|c| ClipRequest { windows: clip_windows(ctx, row, c), noise_seed: derive_seed(ctx.cfg.run.seed, iter, SeedDomain::Rollout, *g, (c - 1) * g_count + j) })
                        .collect(),
                })
                .collect();
            let seqs = b.sequences(&old, &requests, &|| pb.inc(1))?;
            let sampled = crate::backend::Sampled {
                latents: seqs.iter().flat_map(|s| s.latents.iter().copied()).collect(),
                noise: seqs.iter().flat_map(|s| s.noise.iter().copied()).collect(),
            };
            let shape: Vec<usize> = [g_count as usize, n as usize].into_iter().chain(clip_shape.iter().copied()).collect();
            (sampled, tensors::candidate_sequences(), latent_bindings(ctx, &clip_shape).dim("N", n as usize), shape)
        } else {
            let pre = prefix_of(ctx, &clip_shape, &files, iter, *g)?;
            let seeds: Vec<u64> = (0..g_count).map(|j| derive_seed(ctx.cfg.run.seed, iter, SeedDomain::Rollout, *g, j)).collect();
            let sampled = b.candidates(&old, row.prompt_id, &pre, &clip_windows(ctx, row, target_clip(iter, n)), &seeds)?;
            pb.inc(1);
            let shape: Vec<usize> = std::iter::once(g_count as usize).chain(clip_shape.iter().copied()).collect();
            (sampled, tensors::candidate_clips(), latent_bindings(ctx, &clip_shape), shape)
        };
        let mut t = TensorSet::new();
        t.insert("latents".into(), Tensor::from_f32(&shape, &sampled.latents));
        t.insert("noise".into(), Tensor::from_f32(&shape, &sampled.noise));
        write_tensors(ctx, pending, &layout::group_file(dir, *g), &file_layout, &bindings, &t)?;
    }
    pb.finish_and_clear();
    Ok(groups.len())
}

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
    write_table(ctx, pending, &format!("{dir}/scores.parquet"), &wc_schemas::tables::reward_scores(), &scores_to_batch(&scores))?;
    if scorers.is_none() {
        return Ok(1);
    }
    write_table(ctx, pending, &format!("{dir}/windows.parquet"), &wc_schemas::tables::reward_windows(), &windows_to_batch(&windows))?;
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

/// Compute advantages, r and best-of-N of one iteration's score rows
/// (sorted by group, then candidate).
pub fn select_rows(ctx: &RunContext, scores: Vec<ScoreRow>) -> Vec<SelectionRow> {
    let s = &ctx.cfg.select;
    let mix = match s.rewards {
        wc_config::RewardSet::Both => RewardMix::Both { lambda: s.lambda },
        wc_config::RewardSet::IfOnly => RewardMix::IfOnly,
        wc_config::RewardSet::VqOnly => RewardMix::VqOnly,
    };
    let mut out = Vec::with_capacity(scores.len());
    for group in scores.chunk_by(|a, b| a.group_id == b.group_id) {
        let if_s: Vec<f64> = group.iter().map(|r| r.if_score).collect();
        let vq_s: Vec<f64> = group.iter().map(|r| r.vq_score).collect();
        let (a_if, a_vq) = (group_advantages(&if_s), group_advantages(&vq_s));
        let adv: Vec<f64> = a_if.iter().zip(&a_vq).map(|(i, v)| combined_advantage(*i, *v, mix)).collect();
        let keep = if s.best_of_n {
            best_of_n(&adv, s.keep_top as usize, s.keep_bottom as usize)
        } else {
            vec![true; adv.len()]
        };
        for (i, score) in group.iter().enumerate() {
            out.push(SelectionRow {
                score: score.clone(),
                adv_if: a_if[i],
                adv_vq: a_vq[i],
                adv: adv[i],
                r: optimality_probability(adv[i], s.z),
                selected: keep[i],
            });
        }
    }
    out
}

/// select: advantages, optimality probability and best-of-N over all groups;
/// also commits the iteration's reward log table.
pub fn select(ctx: &RunContext, iter: u64, dir: &str, pending: &mut PendingCommit) -> Result<usize, StageError> {
    let rewards = stage_shards(ctx, iter, Stage::Reward)?;
    rewards.iter().for_each(|s| pending.add_input(s));
    let mut scores = Vec::new();
    for set in &rewards {
        for path in set.paths().filter(|p| p.ends_with("/scores.parquet")) {
            let artifact = ctx.store.uri_of(path);
            let batch = wc_schemas::read_table(&wc_schemas::tables::reward_scores(), &artifact, set.read(path)?)?;
            scores.extend(scores_from_batch(&batch, &artifact)?);
        }
    }
    scores.sort_by_key(|r| (r.group_id, r.candidate));
    let (groups, g_count) = (ctx.cfg.data.groups as usize, ctx.cfg.rollout.candidates as usize);
    if scores.len() != groups * g_count {
        return Err(StageError::invalid(
            layout::stage_dir(iter, "reward"),
            format!("{} score rows, expected {groups} groups x {g_count} candidates", scores.len()),
        ));
    }
    for (i, r) in scores.iter().enumerate() {
        if r.group_id as usize != i / g_count || r.candidate as usize != i % g_count || r.iter != iter as i64 {
            return Err(StageError::invalid(
                layout::stage_dir(iter, "reward"),
                format!("unexpected row (iter {}, group {}, candidate {}): each group needs candidates 0..{g_count} of iteration {iter} exactly once", r.iter, r.group_id, r.candidate),
            ));
        }
        if let Err(reason) = crate::tables::check_score_ranges(r) {
            return Err(StageError::invalid(layout::stage_dir(iter, "reward"), format!("group {}, candidate {}: {reason}", r.group_id, r.candidate)));
        }
    }
    let rows = select_rows(ctx, scores);
    let schema = wc_schemas::tables::selection();
    let bytes = write_table(ctx, pending, &format!("{dir}/selection.parquet"), &schema, &selection_to_batch(&rows))?;
    pending.write(&layout::reward_log(iter), bytes)?;
    Ok(2)
}

/// optimize: train the policy on the selected candidates (the NFT loss
/// for the world model), then the EMA update of the old policy; commits
/// checkpoint k+1 and the step metrics. A step with a non-finite result is
/// skipped and reported; an optimize with no finite step stops.
pub fn optimize<B: Backend>(b: &B, ctx: &RunContext, iter: u64, dir: &str, pending: &mut PendingCommit) -> Result<usize, StageError> {
    let init = inputs::init_set(ctx)?;
    let ckpt = inputs::checkpoint_set(ctx, iter)?;
    let sel = inputs::whole_stage(ctx, iter, Stage::Select)?;
    let prefixes = stage_shards(ctx, iter, Stage::Prefix)?;
    let rollouts = stage_shards(ctx, iter, Stage::Rollout)?;
    pending.add_input(&init);
    for s in [&ckpt, &sel].into_iter().chain(&prefixes).chain(&rollouts) {
        pending.add_input(s);
    }
    let mut policy = b.load_policy(&ckpt, iter, Role::Policy)?;
    let mut old = b.load_policy(&ckpt, iter, Role::OldPolicy)?;
    let mut opt = b.load_optimizer(&ckpt, iter, &policy)?;
    let pool = sequence_pool(ctx, &init)?;
    let groups: BTreeMap<u64, _> = iteration_groups(ctx, &pool, iter).into_iter().collect();
    let (rows, artifact) = inputs::read_selection(ctx, iter, &sel)?;
    let (pfiles, cfiles) = (group_files(&prefixes), group_files(&rollouts));
    let clip_shape = b.clip_shape();
    let g_count = ctx.cfg.rollout.candidates as usize;
    // Each group's prefix and candidates, read once.
    let mut read = Vec::new();
    for (g, group_rows) in rows.chunk_by(|a, b| a.score.group_id == b.score.group_id).map(|c| (c[0].score.group_id as u64, c)) {
        let row = groups.get(&g).ok_or_else(|| StageError::invalid(&artifact, format!("group {g} is not in iteration {iter}")))?;
        read.push((g, row, group_rows, prefix_of(ctx, &clip_shape, &pfiles, iter, g)?, candidates_of(ctx, &clip_shape, &cfiles, iter, g)?));
    }
    let mut selected = Vec::new();
    for (g, row, group_rows, pre, cands) in &read {
        let per_candidate = cands.len() / g_count;
        for r in group_rows.iter().filter(|r| r.selected) {
            let j = r.score.candidate as usize;
            selected.push(Selected { group: *g, row, prefix: pre, candidate: j, latents: &cands[j * per_candidate..(j + 1) * per_candidate], r: r.r });
        }
    }
    let o = &ctx.cfg.optimize;
    let eta = eta_at(iter, ctx.cfg.run.iterations, o.eta_start, o.eta_end);
    let reports = b.optimize(&mut policy, &old, &mut opt, &selected, iter)?;
    let mut metrics = Vec::with_capacity(reports.len());
    for (step, s) in reports.iter().enumerate() {
        if !s.applied {
            tracing::warn!(iter, step, loss = s.loss, grad_norm = s.grad_norm, "non-finite loss, gradient or update: the step was not applied");
        }
        metrics.push(MetricRow { iter: iter as i64, step: step as i64, loss: s.loss, grad_norm: s.grad_norm, lr: o.lr, eta, samples: s.samples as i64, applied: s.applied });
    }
    if let Some(last) = reports.last().filter(|_| reports.iter().all(|r| !r.applied)) {
        return Err(StageError::NoFiniteStep { iter, steps: reports.len(), loss: last.loss, grad_norm: last.grad_norm });
    }
    b.ema(&mut old, &policy, eta)?;
    b.save_checkpoint(pending, iter + 1, &policy, &old, &opt)?;
    write_table(ctx, pending, &format!("{dir}/metrics.parquet"), &wc_schemas::tables::optimize_metrics(), &metrics_to_batch(&metrics))?;
    Ok(4)
}
