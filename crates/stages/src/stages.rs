//! The stage bodies: read committed inputs, call the logic, write outputs.
//!
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

use crate::error::StageError;
use crate::inputs::{self, clip_windows, iteration_groups, load_policy, read_tensor_file, sequence_pool, stage_shards};
use crate::layout;
use crate::linear::{clip_action_weights, gaussian_noise, score_motion, sgd_step, Sample};
use crate::runner::{RunContext, Stage};
use crate::tables::{
    metrics_to_batch, scores_from_batch, scores_to_batch, selection_to_batch, MetricRow,
    ScoreRow, SelectionRow,
};

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

fn latent_bindings(ctx: &RunContext) -> DimBindings {
    DimBindings::new()
        .splice("latent", &[ctx.cfg.model.latent_dim])
        .dim("G", ctx.cfg.rollout.candidates as usize)
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

/// The prefix latents of group `g` (P x D, flattened).
fn prefix_latents(ctx: &RunContext, files: &BTreeMap<u64, (&CommittedSet, String)>, iter: u64, g: u64) -> Result<Vec<f32>, StageError> {
    let p = target_clip(iter, ctx.cfg.rollout.clips) as usize - 1;
    group_latents(ctx, files, "prefix", iter, g, &tensors::prefix_clips(), &latent_bindings(ctx).dim("P", p))
}

/// The last clip of a prefix (the zero latent when the prefix is empty).
fn last_clip(prefix: &[f32], dim: usize) -> Vec<f32> {
    if prefix.is_empty() {
        vec![0.0; dim]
    } else {
        prefix[prefix.len() - dim..].to_vec()
    }
}

/// The candidates of group `g`: latents (G x D, flattened).
fn candidate_latents(ctx: &RunContext, files: &BTreeMap<u64, (&CommittedSet, String)>, iter: u64, g: u64) -> Result<Vec<f32>, StageError> {
    group_latents(ctx, files, "rollout", iter, g, &tensors::candidate_clips(), &latent_bindings(ctx))
}

/// prefix: clips 1..n-1 of each group, generated with the old policy.
pub fn prefix(ctx: &RunContext, iter: u64, shard: ShardSpec, dir: &str, pending: &mut PendingCommit) -> Result<usize, StageError> {
    if ctx.cfg.model.kind == wc_config::ModelKind::World {
        return crate::world_stages::prefix(ctx, iter, shard, dir, pending);
    }
    let ckpt = inputs::checkpoint_set(ctx, iter)?;
    let init = inputs::init_set(ctx)?;
    pending.add_input(&ckpt);
    pending.add_input(&init);
    let old = load_policy(ctx, &ckpt, iter, "old_policy")?;
    let pool = sequence_pool(ctx, &init)?;
    let d = ctx.cfg.model.latent_dim;
    let p = target_clip(iter, ctx.cfg.rollout.clips) - 1;
    let groups: Vec<_> = iteration_groups(ctx, &pool, iter)
        .into_iter()
        .filter(|(g, _)| shard.owns(*g as usize))
        .collect();
    let pb = progress(groups.len(), "prefix");
    for (g, row) in &groups {
        let mut latents = Vec::with_capacity(p as usize * d);
        let mut prev = vec![0.0f32; d];
        for c in 1..=p {
            let w = clip_action_weights(&clip_windows(ctx, row, c));
            let noise = gaussian_noise(derive_seed(ctx.cfg.run.seed, iter, SeedDomain::Prefix, *g, c), d);
            prev = old.next_clip(&prev, &w, &noise);
            latents.extend_from_slice(&prev);
        }
        let mut t = TensorSet::new();
        t.insert("latents".into(), Tensor::from_f32(&[p as usize, d], &latents));
        let b = latent_bindings(ctx).dim("P", p as usize);
        write_tensors(ctx, pending, &layout::group_file(dir, *g), &tensors::prefix_clips(), &b, &t)?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(groups.len())
}

/// rollout: G candidates of clip n per group from the shared prefix, each
/// from its own noise, with the old policy.
pub fn rollout(ctx: &RunContext, iter: u64, shard: ShardSpec, dir: &str, pending: &mut PendingCommit) -> Result<usize, StageError> {
    if ctx.cfg.model.kind == wc_config::ModelKind::World {
        return crate::world_stages::rollout(ctx, iter, shard, dir, pending);
    }
    let ckpt = inputs::checkpoint_set(ctx, iter)?;
    let init = inputs::init_set(ctx)?;
    let prefixes = stage_shards(ctx, iter, Stage::Prefix)?;
    pending.add_input(&ckpt);
    pending.add_input(&init);
    prefixes.iter().for_each(|s| pending.add_input(s));
    let old = load_policy(ctx, &ckpt, iter, "old_policy")?;
    let pool = sequence_pool(ctx, &init)?;
    let prefix_files = group_files(&prefixes);
    let d = ctx.cfg.model.latent_dim;
    let g_count = ctx.cfg.rollout.candidates as usize;
    let n = target_clip(iter, ctx.cfg.rollout.clips);
    let groups: Vec<_> = iteration_groups(ctx, &pool, iter)
        .into_iter()
        .filter(|(g, _)| shard.owns(*g as usize))
        .collect();
    let pb = progress(groups.len(), "rollout");
    for (g, row) in &groups {
        let prev = last_clip(&prefix_latents(ctx, &prefix_files, iter, *g)?, d);
        let w = clip_action_weights(&clip_windows(ctx, row, n));
        let mut latents = Vec::with_capacity(g_count * d);
        let mut noises = Vec::with_capacity(g_count * d);
        for j in 0..g_count as u64 {
            let noise = gaussian_noise(derive_seed(ctx.cfg.run.seed, iter, SeedDomain::Rollout, *g, j), d);
            latents.extend(old.next_clip(&prev, &w, &noise));
            noises.extend(noise);
        }
        let mut t = TensorSet::new();
        t.insert("latents".into(), Tensor::from_f32(&[g_count, d], &latents));
        t.insert("noise".into(), Tensor::from_f32(&[g_count, d], &noises));
        write_tensors(ctx, pending, &layout::group_file(dir, *g), &tensors::candidate_clips(), &latent_bindings(ctx), &t)?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(groups.len())
}

/// reward: score every candidate of the shard's groups.
pub fn reward(ctx: &RunContext, iter: u64, shard: ShardSpec, dir: &str, pending: &mut PendingCommit) -> Result<usize, StageError> {
    if ctx.cfg.model.kind == wc_config::ModelKind::World {
        return crate::world_stages::reward(ctx, iter, shard, dir, pending);
    }
    let init = inputs::init_set(ctx)?;
    let prefixes = stage_shards(ctx, iter, Stage::Prefix)?;
    let rollouts = stage_shards(ctx, iter, Stage::Rollout)?;
    pending.add_input(&init);
    prefixes.iter().chain(&rollouts).for_each(|s| pending.add_input(s));
    let pool = sequence_pool(ctx, &init)?;
    let (prefix_files, cand_files) = (group_files(&prefixes), group_files(&rollouts));
    let d = ctx.cfg.model.latent_dim;
    let n = target_clip(iter, ctx.cfg.rollout.clips);
    let groups: Vec<_> = iteration_groups(ctx, &pool, iter)
        .into_iter()
        .filter(|(g, _)| shard.owns(*g as usize))
        .collect();
    let pb = progress(groups.len(), "reward");
    let mut rows = Vec::new();
    for (g, row) in &groups {
        let prev = last_clip(&prefix_latents(ctx, &prefix_files, iter, *g)?, d);
        let cands = candidate_latents(ctx, &cand_files, iter, *g)?;
        let w = clip_action_weights(&clip_windows(ctx, row, n));
        for (j, x) in cands.chunks_exact(d).enumerate() {
            let motion: Vec<f32> = x.iter().zip(&prev).map(|(a, b)| a - b).collect();
            let (rot_acc, trans_acc, vq_score) = score_motion(&motion, &w);
            rows.push(ScoreRow {
                iter: iter as i64,
                group_id: *g as i64,
                prompt_id: row.prompt_id,
                clip_index: n as i64,
                candidate: j as i64,
                rot_acc,
                trans_acc,
                if_score: 0.5 * (rot_acc + trans_acc),
                vq_score,
            });
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let path = format!("{dir}/scores.parquet");
    write_table(ctx, pending, &path, &wc_schemas::tables::reward_scores(), &scores_to_batch(&rows))?;
    Ok(1)
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

/// optimize: one policy update on the selected candidates, then the EMA
/// update of the old policy; commits checkpoint k+1 and the step metrics.
pub fn optimize(ctx: &RunContext, iter: u64, dir: &str, pending: &mut PendingCommit) -> Result<usize, StageError> {
    if ctx.cfg.model.kind == wc_config::ModelKind::World {
        return crate::world_stages::optimize(ctx, iter, dir, pending);
    }
    let ckpt = inputs::checkpoint_set(ctx, iter)?;
    let init = inputs::init_set(ctx)?;
    let sel = inputs::whole_stage(ctx, iter, Stage::Select)?;
    let prefixes = stage_shards(ctx, iter, Stage::Prefix)?;
    let rollouts = stage_shards(ctx, iter, Stage::Rollout)?;
    for s in [&ckpt, &init, &sel].into_iter().chain(&prefixes).chain(&rollouts) {
        pending.add_input(s);
    }
    let mut policy = load_policy(ctx, &ckpt, iter, "policy")?;
    let mut old = load_policy(ctx, &ckpt, iter, "old_policy")?;
    let mut momentum = load_policy(ctx, &ckpt, iter, "optimizer")?;
    let pool = sequence_pool(ctx, &init)?;
    let groups: BTreeMap<u64, _> = iteration_groups(ctx, &pool, iter).into_iter().collect();
    let (rows, artifact) = inputs::read_selection(ctx, iter, &sel)?;
    let (prefix_files, cand_files) = (group_files(&prefixes), group_files(&rollouts));
    let d = ctx.cfg.model.latent_dim;
    let n = target_clip(iter, ctx.cfg.rollout.clips);
    let mut samples = Vec::new();
    for (g, group_rows) in rows.chunk_by(|a, b| a.score.group_id == b.score.group_id).map(|c| (c[0].score.group_id as u64, c)) {
        let row = groups.get(&g).ok_or_else(|| StageError::invalid(&artifact, format!("group {g} is not in iteration {iter}")))?;
        let prev = last_clip(&prefix_latents(ctx, &prefix_files, iter, g)?, d);
        let cands = candidate_latents(ctx, &cand_files, iter, g)?;
        let w = clip_action_weights(&clip_windows(ctx, row, n));
        for r in group_rows.iter().filter(|r| r.selected) {
            let x = &cands[r.score.candidate as usize * d..(r.score.candidate as usize + 1) * d];
            samples.push(Sample {
                weights: w,
                motion: x.iter().zip(&prev).map(|(a, b)| a - b).collect(),
                r: r.r,
            });
        }
    }
    let o = &ctx.cfg.optimize;
    let (loss, grad_norm, applied) = sgd_step(&mut policy, &mut momentum, &samples, o.lr as f32, o.momentum as f32);
    if !applied {
        return Err(StageError::NoFiniteStep { iter, steps: 1, loss, grad_norm });
    }
    let eta = eta_at(iter, ctx.cfg.run.iterations, o.eta_start, o.eta_end);
    old.ema_toward(&policy, eta as f32);
    if !old.is_finite() {
        return Err(StageError::invalid(layout::checkpoint_dir(iter + 1), "the old policy's EMA update gave non-finite weights; nothing was committed"));
    }

    let next = layout::checkpoint_dir(iter + 1);
    let b = DimBindings::new().splice("latent", &[d]);
    write_tensors(ctx, pending, &format!("{next}/policy.safetensors"), &tensors::linear_policy(), &b, &policy.to_tensors())?;
    write_tensors(ctx, pending, &format!("{next}/old_policy.safetensors"), &tensors::linear_policy(), &b, &old.to_tensors())?;
    let mut mom = TensorSet::new();
    let mt = momentum.to_tensors();
    mom.insert("momentum.theta".into(), mt["theta"].clone());
    mom.insert("momentum.bias".into(), mt["bias"].clone());
    write_tensors(ctx, pending, &format!("{next}/optimizer.safetensors"), &tensors::linear_optimizer(), &b, &mom)?;
    let metrics = vec![MetricRow {
        iter: iter as i64,
        step: 0,
        loss,
        grad_norm,
        lr: o.lr,
        eta,
        samples: samples.len() as i64,
        applied,
    }];
    write_table(ctx, pending, &format!("{dir}/metrics.parquet"), &wc_schemas::tables::optimize_metrics(), &metrics_to_batch(&metrics))?;
    Ok(4)
}
