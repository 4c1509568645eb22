//! The stage bodies, one module each: read committed inputs, call the
//! logic, write outputs. This module holds what several of them share.
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
pub fn group_files(sets: &[CommittedSet]) -> BTreeMap<u64, (&CommittedSet, String)> {
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
pub fn clips_per_candidate(ctx: &RunContext) -> usize {
    if sample_level(ctx) { ctx.cfg.rollout.clips as usize } else { 1 }
}

/// The clip index a candidate of iteration `iter` is recorded under in the
/// score table: clip n (clip-level), or N for a whole sequence.
pub fn scored_clip_index(ctx: &RunContext, iter: u64) -> u64 {
    if sample_level(ctx) { ctx.cfg.rollout.clips } else { target_clip(iter, ctx.cfg.rollout.clips) }
}

/// The action windows a candidate of group `row` is judged on: clip n's
/// (clip-level), or every window of the sequence (sample-level).
pub fn scored_windows(ctx: &RunContext, row: &GroupRow, iter: u64) -> Vec<u8> {
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
pub fn prefix_of(ctx: &RunContext, clip_shape: &[usize], files: &BTreeMap<u64, (&CommittedSet, String)>, iter: u64, g: u64) -> Result<Vec<f32>, StageError> {
    if sample_level(ctx) {
        return Ok(Vec::new());
    }
    let p = target_clip(iter, ctx.cfg.rollout.clips) as usize - 1;
    group_latents(ctx, files, "prefix", iter, g, &tensors::prefix_clips(), &latent_bindings(ctx, clip_shape).dim("P", p))
}

/// The committed rollout latents of group `g`: G candidates of one clip
/// (clip-level) or of N clips each (sample-level), flattened.
pub fn candidates_of(ctx: &RunContext, clip_shape: &[usize], files: &BTreeMap<u64, (&CommittedSet, String)>, iter: u64, g: u64) -> Result<Vec<f32>, StageError> {
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

mod optimize;
mod prefix;
mod reward;
mod rollout;
mod select;

pub use optimize::optimize;
pub use prefix::prefix;
pub use reward::reward;
pub use rollout::rollout;
pub use select::{select, select_rows};
