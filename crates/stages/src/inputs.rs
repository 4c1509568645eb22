//! Finding and reading the committed inputs of a stage.
//!
//! Readers trust only manifests: a sharded stage's output is usable when a
//! complete set of shard manifests (every index of one shard count) exists.

use std::collections::{BTreeMap, BTreeSet};

use wc_schemas::{DimBindings, TensorSet};
use wc_store::{CommittedSet, ShardSpec, MANIFEST_FILE};

use crate::error::StageError;
use crate::layout;
use crate::linear::LinearPolicy;
use crate::runner::{RunContext, Stage};
use crate::tables::{groups_from_batch, selection_from_batch, GroupRow, SelectionRow};

/// The committed shards of one stage of one iteration: the complete set with
/// the fewest shards, or an `Incomplete` error that says what is there.
pub fn stage_shards(ctx: &RunContext, iter: u64, stage: Stage) -> Result<Vec<CommittedSet>, StageError> {
    let found = committed_shard_specs(ctx, iter, stage)?;
    let mut by_count: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
    for s in &found {
        by_count.entry(s.count).or_default().insert(s.index);
    }
    let complete = by_count.iter().find(|(n, idx)| idx.len() == **n as usize).map(|(n, _)| *n);
    let Some(count) = complete else {
        let detail = if by_count.is_empty() {
            format!("no shard is committed; run `worldcompass stage {} --iter {iter}` first", stage.name())
        } else {
            by_count
                .iter()
                .map(|(n, idx)| format!("{} of {n} shards committed ({:?})", idx.len(), idx))
                .collect::<Vec<_>>()
                .join("; ")
        };
        return Err(StageError::Incomplete {
            stage: stage.name(),
            iter,
            detail,
        });
    };
    (0..count)
        .map(|i| {
            let dir = layout::shard_dir(iter, stage.name(), ShardSpec { index: i, count });
            Ok(CommittedSet::open(&ctx.store, &format!("{dir}/{MANIFEST_FILE}"))?)
        })
        .collect()
}

/// Shard specs with a manifest for a stage of an iteration.
pub fn committed_shard_specs(ctx: &RunContext, iter: u64, stage: Stage) -> Result<Vec<ShardSpec>, StageError> {
    let dir = layout::stage_dir(iter, stage.name());
    let mut out = Vec::new();
    for path in ctx.store.list(&dir)? {
        let rest = &path[dir.len() + 1..];
        if let Some((shard, file)) = rest.split_once('/')
            && file == MANIFEST_FILE
            && let Some(spec) = layout::parse_shard_dir(shard)
        {
            out.push(spec);
        }
    }
    Ok(out)
}

/// The manifest of an unsharded stage of an iteration.
pub fn whole_stage(ctx: &RunContext, iter: u64, stage: Stage) -> Result<CommittedSet, StageError> {
    let path = format!("{}/{MANIFEST_FILE}", layout::stage_dir(iter, stage.name()));
    CommittedSet::open(&ctx.store, &path).map_err(|e| match e {
        wc_store::StoreError::MissingManifest { .. } => StageError::Incomplete {
            stage: stage.name(),
            iter,
            detail: format!("not committed; run `worldcompass stage {} --iter {iter}` first", stage.name()),
        },
        other => other.into(),
    })
}

/// Whether a stage of an iteration is committed (a complete shard set, or
/// the unsharded manifest).
pub fn is_committed(ctx: &RunContext, iter: u64, stage: Stage) -> Result<bool, StageError> {
    let r = if stage.sharded() {
        stage_shards(ctx, iter, stage).map(|_| ())
    } else {
        whole_stage(ctx, iter, stage).map(|_| ())
    };
    match r {
        Ok(()) => Ok(true),
        Err(StageError::Incomplete { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The init commit (data and the first checkpoint), refused when the run's
/// `run.toml` no longer says what the run was initialised with: every
/// command that continues a run goes through here, so an edited config can
/// never train part of a run.
pub fn init_set(ctx: &RunContext) -> Result<CommittedSet, StageError> {
    let set = CommittedSet::open(&ctx.store, &format!("{}/{MANIFEST_FILE}", layout::INIT_DIR)).map_err(|e| match e {
        wc_store::StoreError::MissingManifest { .. } => StageError::NotInitialised {
            uri: ctx.store.uri().to_string(),
        },
        other => other.into(),
    })?;
    if set.manifest.fingerprint != ctx.fingerprint {
        return Err(StageError::ConfigChanged {
            uri: ctx.store.uri_of(layout::RUN_CONFIG),
            initialised: set.manifest.fingerprint[..12.min(set.manifest.fingerprint.len())].to_string(),
            now: ctx.fingerprint[..12].to_string(),
        });
    }
    Ok(set)
}

/// The commit that holds checkpoint `k`: init for k = 0, else the optimize
/// stage of iteration k - 1.
pub fn checkpoint_set(ctx: &RunContext, k: u64) -> Result<CommittedSet, StageError> {
    if k == 0 {
        init_set(ctx)
    } else {
        whole_stage(ctx, k - 1, Stage::Optimize)
    }
}


/// Read a tensor file listed in `set`, validated against `layout`.
pub fn read_tensor_file(
    ctx: &RunContext,
    set: &CommittedSet,
    path: &str,
    file_layout: &wc_schemas::TensorFileSchema,
    bindings: &DimBindings,
) -> Result<TensorSet, StageError> {
    let bytes = set.read(path)?;
    Ok(wc_schemas::read_tensors(file_layout, bindings, &ctx.store.uri_of(path), &bytes)?)
}

/// Load a linear policy file (`policy`, `old_policy`, `optimizer`) of
/// checkpoint `k`, of latent size `dim`.
pub fn load_policy(ctx: &RunContext, dim: usize, set: &CommittedSet, k: u64, name: &str) -> Result<LinearPolicy, StageError> {
    let path = layout::checkpoint_file(k, name);
    let file_layout = if name == "optimizer" {
        wc_schemas::tensors::linear_optimizer()
    } else {
        wc_schemas::tensors::linear_policy()
    };
    let mut t = read_tensor_file(ctx, set, &path, &file_layout, &DimBindings::new().splice("latent", &[dim]))?;
    if name == "optimizer" {
        // Stored under momentum.* names; same shapes as the policy.
        let theta = t.remove("momentum.theta").expect("validated");
        let bias = t.remove("momentum.bias").expect("validated");
        t.insert("theta".into(), theta);
        t.insert("bias".into(), bias);
    }
    let policy = LinearPolicy::from_tensors(dim, &t);
    if !policy.is_finite() {
        return Err(StageError::invalid(
            ctx.store.uri_of(&path),
            format!("checkpoint {k}'s {name} holds non-finite values (NaN or infinity); it cannot be sampled or trained from"),
        ));
    }
    Ok(policy)
}

/// The committed selection of iteration `iter` (select's
/// `selection.parquet`) and its URI, every row checked against the run:
/// its iteration, a group of the iteration and a candidate index in range,
/// each (group, candidate) once, scores and r in [0, 1], finite values.
/// Rows come sorted by (group, candidate).
pub fn read_selection(ctx: &RunContext, iter: u64, sel: &CommittedSet) -> Result<(Vec<SelectionRow>, String), StageError> {
    let path = layout::selection_file(iter);
    let artifact = ctx.store.uri_of(&path);
    let mut rows = selection_from_batch(&wc_schemas::read_table(&wc_schemas::tables::selection(), &artifact, sel.read(&path)?)?, &artifact)?;
    check_selection(&rows, iter, ctx.cfg.data.groups, ctx.cfg.rollout.candidates).map_err(|reason| StageError::invalid(&artifact, reason))?;
    rows.sort_by_key(|r| (r.score.group_id, r.score.candidate));
    Ok((rows, artifact))
}

/// The range checks of [`read_selection`]: the first row that fails, and why.
pub fn check_selection(rows: &[SelectionRow], iter: u64, groups: u64, candidates: u64) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    let unit = |x: f64| (0.0..=1.0).contains(&x);
    for (i, r) in rows.iter().enumerate() {
        let s = &r.score;
        let at = format!("row {i} (group {}, candidate {})", s.group_id, s.candidate);
        if s.iter != iter as i64 {
            return Err(format!("{at}: iteration {} in the selection of iteration {iter}", s.iter));
        }
        if !(0..groups as i64).contains(&s.group_id) {
            return Err(format!("{at}: group {} is out of range (the run has {groups} groups per iteration)", s.group_id));
        }
        if !(0..candidates as i64).contains(&s.candidate) {
            return Err(format!("{at}: candidate {} is out of range (the run has {candidates} candidates per group)", s.candidate));
        }
        if !seen.insert((s.group_id, s.candidate)) {
            return Err(format!("{at}: listed twice"));
        }
        if !unit(r.r) {
            return Err(format!("{at}: r = {} is not a probability in [0, 1]", r.r));
        }
        crate::tables::check_score_ranges(s).map_err(|reason| format!("{at}: {reason}"))?;
        for (name, v) in [("adv_if", r.adv_if), ("adv_vq", r.adv_vq), ("adv", r.adv)] {
            if !v.is_finite() {
                return Err(format!("{at}: {name} = {v} is not finite"));
            }
        }
    }
    Ok(())
}

/// The sequence pool (data/groups.parquet).
pub fn sequence_pool(ctx: &RunContext, init: &CommittedSet) -> Result<Vec<GroupRow>, StageError> {
    let bytes = init.read(layout::GROUPS)?;
    let artifact = ctx.store.uri_of(layout::GROUPS);
    let batch = wc_schemas::read_table(&wc_schemas::tables::groups(), &artifact, bytes)?;
    let rows = groups_from_batch(&batch, &artifact)?;
    let windows = (ctx.cfg.rollout.clips * ctx.cfg.rollout.windows_per_clip) as usize;
    for r in &rows {
        if r.actions.len() != windows {
            return Err(StageError::invalid(
                artifact,
                format!("group {} has {} action windows, the config needs {windows}", r.group_id, r.actions.len()),
            ));
        }
        for (w, m) in r.actions.iter().enumerate() {
            if let Some((a, b)) = wc_world::ActionMask(*m).opposite_pair() {
                return Err(StageError::invalid(&artifact, format!("group {} window {w}: action mask {m} holds opposite actions ({a} and {b})", r.group_id)));
            }
        }
    }
    if rows.is_empty() {
        return Err(StageError::invalid(artifact, "the sequence pool is empty"));
    }
    Ok(rows)
}

/// The groups of iteration k: `data.groups` sequences taken from the pool in
/// order, cycling (group id g of iteration k is pool row (k * groups + g) mod pool).
pub fn iteration_groups(ctx: &RunContext, pool: &[GroupRow], iter: u64) -> Vec<(u64, GroupRow)> {
    let g = ctx.cfg.data.groups;
    (0..g)
        .map(|i| (i, pool[((iter * g + i) % pool.len() as u64) as usize].clone()))
        .collect()
}

/// The action masks of clip `n` (1-based) of a sequence.
pub fn clip_windows(ctx: &RunContext, group: &GroupRow, n: u64) -> Vec<u8> {
    let w = ctx.cfg.rollout.windows_per_clip as usize;
    let start = (n as usize - 1) * w;
    group.actions[start..start + w].to_vec()
}
