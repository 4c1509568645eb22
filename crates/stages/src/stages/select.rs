//! The select stage: group advantages, the optimality probability r,
//! best-of-N, and the reward log.

use super::*;

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
        for path in set.paths().filter(|p| p.ends_with(&format!("/{}", layout::SCORES_FILE))) {
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
    let bytes = write_table(ctx, pending, &layout::in_dir(dir, layout::SELECTION_FILE), &schema, &selection_to_batch(&rows))?;
    pending.write(&layout::reward_log(iter), bytes)?;
    Ok(2)
}
