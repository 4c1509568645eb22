//! The optimize stage: NFT optimizer steps on the selected candidates,
//! then the EMA update of the old policy.

use super::*;

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
    write_table(ctx, pending, &layout::in_dir(dir, layout::METRICS_FILE), &wc_schemas::tables::optimize_metrics(), &metrics_to_batch(&metrics))?;
    Ok(4)
}
