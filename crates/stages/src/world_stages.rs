//! Stage bodies of the `world` backend (see [`crate::world`] for what each
//! computes). Like every stage they read committed inputs, compute, and
//! write into the pending commit; the runner commits.

use std::collections::BTreeMap;

use candle_core::Device;
use rayon::prelude::*;
use wc_rl::schedule::{eta_at, sampler_times, target_clip, timestep_subset};
use wc_rl::seeds::{derive_seed, SeedDomain};
use wc_schemas::{tensors, DimBindings, Tensor, TensorSet};
use wc_scorers::labelled::LabelledWindow;
use wc_scorers::pose::{estimate_probs, expected_correct, motion_of, sequence_windows, AxisProbs, PoseConfig, PoseNet};
use wc_scorers::vq::{clip_vq, VqMode};
use wc_store::{CommittedSet, PendingCommit, ShardSpec};
use wc_world::metric::{window_correct, MetricConfig};
use wc_world::probe::track_windows;
use wc_world::{Frame, Kinematics, Pose, Scene, WindowMotion};

use crate::error::StageError;
use crate::inputs::{self, clip_windows, iteration_groups, sequence_pool, stage_shards};
use crate::layout;
use crate::runner::{RunContext, Stage};
use crate::stages::{group_files, group_latents, progress, write_table, write_tensors};
use crate::tables::{metrics_to_batch, scene_seeds_from_batch, scores_to_batch, windows_to_batch, MetricRow, ScoreRow, WindowRow};
use crate::world::{self, NftSample};

/// Where init stores the run's copy of the pose estimator.
pub const POSE_MODEL: &str = "data/pose_estimator/model.safetensors";
pub const POSE_SETTINGS: &str = "data/pose_estimator/settings.json";
/// First frames of the run's prompts at the model's frame size.
pub const FIRST_FRAMES: &str = "data/first_frames.safetensors";

fn bindings(cfg: &wc_model::ModelConfig, ctx: &RunContext) -> DimBindings {
    DimBindings::new()
        .splice("latent", &world::clip_shape(cfg))
        .dim("G", ctx.cfg.rollout.candidates as usize)
}

/// The first frames of the run's prompts (u8 HWC each).
pub fn first_frames(ctx: &RunContext, init: &CommittedSet, size: usize) -> Result<Vec<Vec<u8>>, StageError> {
    let b = DimBindings::new().dim("height", size).dim("width", size);
    let t = inputs::read_tensor_file(ctx, init, FIRST_FRAMES, &tensors::first_frames(), &b)?;
    let bytes = t["frames"].data.clone();
    Ok(bytes.chunks_exact(size * size * 3).map(|c| c.to_vec()).collect())
}

struct Opened {
    cfg: wc_model::ModelConfig,
    init: CommittedSet,
    pool: Vec<crate::tables::GroupRow>,
    firsts: Vec<Vec<u8>>,
}

fn open(ctx: &RunContext, pending: &mut PendingCommit) -> Result<Opened, StageError> {
    let o = open_inputs(ctx)?;
    pending.add_input(&o.init);
    Ok(o)
}

/// The run's committed data, read without a commit of one's own.
fn open_inputs(ctx: &RunContext) -> Result<Opened, StageError> {
    let init = inputs::init_set(ctx)?;
    let cfg = world::model_config(ctx, &init)?;
    let pool = sequence_pool(ctx, &init)?;
    let firsts = first_frames(ctx, &init, cfg.frame_size)?;
    Ok(Opened { cfg, init, pool, firsts })
}

fn first_latent(o: &Opened, prompt: i64) -> Result<Vec<f32>, StageError> {
    let f = o.firsts.get(prompt as usize).ok_or_else(|| StageError::invalid(FIRST_FRAMES, format!("no first frame for prompt {prompt}")))?;
    Ok(world::encode_frame(&o.cfg, f))
}

/// prefix: clips 1..n-1 of each group with the old policy; all groups of
/// the shard sampled together, one clip index at a time.
///
/// Sample-level mode has no shared prefix (every candidate is a whole
/// sequence of its own): the stage commits an empty shard.
pub fn prefix(ctx: &RunContext, iter: u64, shard: ShardSpec, dir: &str, pending: &mut PendingCommit) -> Result<usize, StageError> {
    if sample_level(ctx) {
        return Ok(0);
    }
    let o = open(ctx, pending)?;
    let ckpt = inputs::checkpoint_set(ctx, iter)?;
    pending.add_input(&ckpt);
    let old = world::load_policy(ctx, &o.cfg, &ckpt, iter, "old_policy")?;
    let sampler = world::sampler_config(ctx);
    let p = target_clip(iter, ctx.cfg.rollout.clips) - 1;
    let groups: Vec<_> = iteration_groups(ctx, &o.pool, iter).into_iter().filter(|(g, _)| shard.owns(*g as usize)).collect();
    let firsts: Vec<Vec<f32>> = groups.iter().map(|(_, row)| first_latent(&o, row.prompt_id)).collect::<Result<_, _>>()?;
    let mut prefixes: Vec<Vec<f32>> = vec![Vec::new(); groups.len()];
    let pb = progress(p as usize, "prefix");
    for c in 1..=p {
        if groups.is_empty() {
            break;
        }
        let contexts: Vec<Vec<f32>> = firsts.iter().zip(&prefixes).map(|(f, pre)| world::context_tokens(&o.cfg, f, pre)).collect();
        let masks: Vec<Vec<u8>> = groups.iter().map(|(_, row)| world::frame_masks(&o.cfg, &clip_windows(ctx, row, c))).collect();
        let noises: Vec<Vec<f32>> = groups.iter().map(|(g, _)| world::clip_noise(&o.cfg, derive_seed(ctx.cfg.run.seed, iter, SeedDomain::Prefix, *g, c))).collect();
        let clips = world::sample_clips(&old, &sampler, &contexts, &masks, &noises)?;
        let per = clips.len() / groups.len();
        for (pre, clip) in prefixes.iter_mut().zip(clips.chunks_exact(per)) {
            pre.extend_from_slice(clip);
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let b = bindings(&o.cfg, ctx).dim("P", p as usize);
    let mut shape = vec![p as usize];
    shape.extend(world::clip_shape(&o.cfg));
    for ((g, _), pre) in groups.iter().zip(&prefixes) {
        let mut t = TensorSet::new();
        t.insert("latents".into(), Tensor::from_f32(&shape, pre));
        write_tensors(ctx, pending, &layout::group_file(dir, *g), &tensors::prefix_clips(), &b, &t)?;
    }
    Ok(groups.len())
}

/// Whether the run rolls out whole sequences (Table 2's sample-level
/// ablation) instead of clip n from a shared prefix.
pub fn sample_level(ctx: &RunContext) -> bool {
    ctx.cfg.rollout.mode == wc_config::RolloutMode::Sample
}

/// The noise seed of clip `c` (1-based) of candidate `j` in sample-level
/// rollout.
fn sequence_noise_seed(ctx: &RunContext, iter: u64, g: u64, j: u64, c: u64) -> u64 {
    derive_seed(ctx.cfg.run.seed, iter, SeedDomain::Rollout, g, (c - 1) * ctx.cfg.rollout.candidates + j)
}

/// Clips in one candidate: 1 (clip-level) or N (sample-level, the whole
/// sequence).
fn clips_per_candidate(ctx: &RunContext) -> usize {
    if sample_level(ctx) { ctx.cfg.rollout.clips as usize } else { 1 }
}

/// The clip index a candidate of iteration `iter` is recorded under in the
/// score table: clip n (clip-level), or N for a whole sequence.
fn scored_clip_index(ctx: &RunContext, iter: u64) -> u64 {
    if sample_level(ctx) { ctx.cfg.rollout.clips } else { target_clip(iter, ctx.cfg.rollout.clips) }
}

/// The action windows a candidate of group `row` is judged on: clip n's
/// (clip-level), or every window of the sequence (sample-level).
fn scored_windows(ctx: &RunContext, row: &crate::tables::GroupRow, iter: u64) -> Vec<u8> {
    if sample_level(ctx) {
        (1..=ctx.cfg.rollout.clips).flat_map(|c| clip_windows(ctx, row, c)).collect()
    } else {
        clip_windows(ctx, row, target_clip(iter, ctx.cfg.rollout.clips))
    }
}

/// The committed rollout latents of group `g`: G candidates of one clip
/// (clip-level) or of N clips each (sample-level), flattened.
fn candidates_of(ctx: &RunContext, cfg: &wc_model::ModelConfig, files: &BTreeMap<u64, (&CommittedSet, String)>, iter: u64, g: u64) -> Result<Vec<f32>, StageError> {
    if sample_level(ctx) {
        let b = bindings(cfg, ctx).dim("N", ctx.cfg.rollout.clips as usize);
        group_latents(ctx, files, "rollout", iter, g, &tensors::candidate_sequences(), &b)
    } else {
        group_latents(ctx, files, "rollout", iter, g, &tensors::candidate_clips(), &bindings(cfg, ctx))
    }
}

/// sample-level rollout: G whole sequences per group, all G advanced one
/// clip at a time as one batch, each clip's context the candidate's own
/// earlier clips.
fn rollout_sequences(ctx: &RunContext, o: &Opened, old: &world::WorldPolicy, iter: u64, shard: ShardSpec, dir: &str, pending: &mut PendingCommit) -> Result<usize, StageError> {
    let sampler = world::sampler_config(ctx);
    let (g_count, n) = (ctx.cfg.rollout.candidates as usize, ctx.cfg.rollout.clips);
    let groups: Vec<_> = iteration_groups(ctx, &o.pool, iter).into_iter().filter(|(g, _)| shard.owns(*g as usize)).collect();
    let pb = progress(groups.len() * n as usize, "rollout");
    for (g, row) in &groups {
        let first = first_latent(o, row.prompt_id)?;
        let mut seqs: Vec<Vec<f32>> = vec![Vec::new(); g_count];
        let mut noise_all: Vec<Vec<f32>> = vec![Vec::new(); g_count];
        for c in 1..=n {
            let contexts: Vec<Vec<f32>> = seqs.iter().map(|s| world::context_tokens(&o.cfg, &first, s)).collect();
            let masks = vec![world::frame_masks(&o.cfg, &clip_windows(ctx, row, c)); g_count];
            let noises: Vec<Vec<f32>> = (0..g_count as u64).map(|j| world::clip_noise(&o.cfg, sequence_noise_seed(ctx, iter, *g, j, c))).collect();
            let clips = world::sample_clips(old, &sampler, &contexts, &masks, &noises)?;
            let per = clips.len() / g_count;
            for (j, clip) in clips.chunks_exact(per).enumerate() {
                seqs[j].extend_from_slice(clip);
                noise_all[j].extend_from_slice(&noises[j]);
            }
            pb.inc(1);
        }
        let mut shape = vec![g_count, n as usize];
        shape.extend(world::clip_shape(&o.cfg));
        let mut t = TensorSet::new();
        t.insert("latents".into(), Tensor::from_f32(&shape, &seqs.concat()));
        t.insert("noise".into(), Tensor::from_f32(&shape, &noise_all.concat()));
        let b = bindings(&o.cfg, ctx).dim("N", n as usize);
        write_tensors(ctx, pending, &layout::group_file(dir, *g), &tensors::candidate_sequences(), &b, &t)?;
    }
    pb.finish_and_clear();
    Ok(groups.len())
}

fn prefix_of(ctx: &RunContext, cfg: &wc_model::ModelConfig, files: &BTreeMap<u64, (&CommittedSet, String)>, iter: u64, g: u64) -> Result<Vec<f32>, StageError> {
    if sample_level(ctx) {
        return Ok(Vec::new());
    }
    let p = target_clip(iter, ctx.cfg.rollout.clips) as usize - 1;
    group_latents(ctx, files, "prefix", iter, g, &tensors::prefix_clips(), &bindings(cfg, ctx).dim("P", p))
}

/// rollout: G candidates of clip n per group from one encoded prefix context.
pub fn rollout(ctx: &RunContext, iter: u64, shard: ShardSpec, dir: &str, pending: &mut PendingCommit) -> Result<usize, StageError> {
    let o = open(ctx, pending)?;
    let ckpt = inputs::checkpoint_set(ctx, iter)?;
    let prefixes = stage_shards(ctx, iter, Stage::Prefix)?;
    pending.add_input(&ckpt);
    prefixes.iter().for_each(|s| pending.add_input(s));
    let old = world::load_policy(ctx, &o.cfg, &ckpt, iter, "old_policy")?;
    if sample_level(ctx) {
        return rollout_sequences(ctx, &o, &old, iter, shard, dir, pending);
    }
    let sampler = world::sampler_config(ctx);
    let files = group_files(&prefixes);
    let g_count = ctx.cfg.rollout.candidates;
    let n = target_clip(iter, ctx.cfg.rollout.clips);
    let groups: Vec<_> = iteration_groups(ctx, &o.pool, iter).into_iter().filter(|(g, _)| shard.owns(*g as usize)).collect();
    let pb = progress(groups.len(), "rollout");
    for (g, row) in &groups {
        let pre = prefix_of(ctx, &o.cfg, &files, iter, *g)?;
        let cache = world::encode_context(&old, &world::context_tokens(&o.cfg, &first_latent(&o, row.prompt_id)?, &pre))?;
        let masks = vec![world::frame_masks(&o.cfg, &clip_windows(ctx, row, n)); g_count as usize];
        let noises: Vec<Vec<f32>> = (0..g_count).map(|j| world::clip_noise(&o.cfg, derive_seed(ctx.cfg.run.seed, iter, SeedDomain::Rollout, *g, j))).collect();
        let latents = world::candidates_from_cache(&old, &sampler, &cache, &masks, &noises)?;
        let mut shape = vec![g_count as usize];
        shape.extend(world::clip_shape(&o.cfg));
        let mut t = TensorSet::new();
        t.insert("latents".into(), Tensor::from_f32(&shape, &latents));
        t.insert("noise".into(), Tensor::from_f32(&shape, &noises.concat()));
        write_tensors(ctx, pending, &layout::group_file(dir, *g), &tensors::candidate_clips(), &bindings(&o.cfg, ctx), &t)?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(groups.len())
}

/// The run's pose estimator (copied into the run by init).
pub fn load_pose(ctx: &RunContext, init: &CommittedSet) -> Result<(PoseNet, wc_model::params::Params), StageError> {
    let settings: crate::scorer_models::PoseSettings =
        serde_json::from_slice(&init.read(POSE_SETTINGS)?).map_err(|e| StageError::invalid(ctx.store.uri_of(POSE_SETTINGS), e.to_string()))?;
    let cfg: PoseConfig = settings.model;
    let mut params = wc_model::params::Params::new(0, ctx.device()?);
    let net = PoseNet::new(&cfg, &mut params).map_err(|e| StageError::invalid(ctx.store.uri_of(POSE_MODEL), e.to_string()))?;
    crate::pretrain::load_params(&ctx.store, init, POSE_MODEL, &params)?;
    Ok((net, params))
}

fn frames_of(cfg: &wc_model::ModelConfig, latents: &[f32]) -> Vec<Frame> {
    let s = cfg.frame_size;
    world::decode_frames(cfg, latents)
        .chunks_exact(s * s * 3)
        .map(|f| Frame::from_u8(s, s, f))
        .collect()
}

/// One window as a reader reads it: the motion, and the estimator's class
/// probabilities (none from the probe).
type WindowReading = (WindowMotion, Option<AxisProbs>);

/// What reads a candidate's windows for the IF reward
/// (`reward.if_instrument`).
pub enum WindowReader<'a> {
    /// The pose estimator: pixels only (the paper's setting).
    Estimator { net: &'a PoseNet, device: &'a Device },
    /// The evaluation's re-render probe, a diagnostic ceiling: the group's
    /// scene, and the camera tracked through the prefix to the first scored
    /// window.
    Probe { scene: Scene, start: Pose },
}

impl WindowReader<'_> {
    /// The windows of `frames` (`frames[0]` is the frame before the first
    /// window): per window the motion read and, from the estimator, its
    /// class probabilities.
    fn read(&self, frames: &[Frame], kin: &Kinematics) -> Result<Vec<WindowReading>, StageError> {
        match self {
            WindowReader::Estimator { net, device } => {
                let probs = estimate_probs(net, frames, kin, device).map_err(|e| StageError::invalid("pose estimator", e.to_string()))?;
                Ok(probs.into_iter().map(|p| (motion_of(&p, kin), Some(p))).collect())
            }
            WindowReader::Probe { scene, start } => Ok(track_windows(scene, *start, &frames[1..], kin).0.into_iter().map(|(_, m)| (m, None)).collect()),
        }
    }

    /// [`WindowReader::read`] of every candidate: the probe's renders run
    /// in parallel over candidates; the estimator batches its windows
    /// itself.
    fn read_all(&self, clips: &[Vec<Frame>], kin: &Kinematics) -> Result<Vec<Vec<WindowReading>>, StageError> {
        match self {
            WindowReader::Estimator { .. } => clips.iter().map(|c| self.read(c, kin)).collect(),
            WindowReader::Probe { .. } => clips.par_iter().map(|c| self.read(c, kin)).collect(),
        }
    }
}

/// The scene seed of every prompt of the run, by prompt id.
fn scene_seeds(ctx: &RunContext, init: &CommittedSet) -> Result<Vec<u64>, StageError> {
    let artifact = ctx.store.uri_of(layout::PROMPTS);
    let batch = wc_schemas::read_table(&wc_schemas::tables::prompts(), &artifact, init.read(layout::PROMPTS)?)?;
    scene_seeds_from_batch(&batch, &artifact)
}

/// The action-accuracy metric of the run's `[reward]` thresholds.
fn metric_config(ctx: &RunContext) -> MetricConfig {
    MetricConfig { tau_rot_deg: ctx.cfg.reward.tau_rot_deg, trans_thresholds: ctx.cfg.reward.trans_thresholds.clone(), ..Default::default() }
}

/// Committed files by group id (see [`group_files`]).
type GroupFileMap<'a> = BTreeMap<u64, (&'a CommittedSet, String)>;

/// One group's frames as the reward reads them.
struct GroupClips {
    /// The prompt's first frame (VQ drift's reference).
    first: Frame,
    /// The prefix's frames (clips 1..n-1; none at sample level).
    prefix: Vec<Frame>,
    /// Each candidate's frames after the frame before them (`[0]`).
    candidates: Vec<Vec<Frame>>,
}

fn group_clips(ctx: &RunContext, o: &Opened, files: (&GroupFileMap, &GroupFileMap), iter: u64, g: u64, row: &crate::tables::GroupRow) -> Result<GroupClips, StageError> {
    let pre = prefix_of(ctx, &o.cfg, files.0, iter, g)?;
    let cands = candidates_of(ctx, &o.cfg, files.1, iter, g)?;
    let first = frames_of(&o.cfg, &first_latent(o, row.prompt_id)?).remove(0);
    let prefix = frames_of(&o.cfg, &pre);
    let before = prefix.last().unwrap_or(&first).clone();
    let clip_len = world::clip_shape(&o.cfg).iter().product::<usize>() * clips_per_candidate(ctx);
    let candidates = cands.chunks_exact(clip_len).map(|lat| std::iter::once(before.clone()).chain(frames_of(&o.cfg, lat)).collect()).collect();
    Ok(GroupClips { first, prefix, candidates })
}

/// The probe reader of a group: its prompt's scene, the camera tracked
/// through the prefix.
fn probe_reader(ctx: &RunContext, seeds: &[u64], row: &crate::tables::GroupRow, prefix: &[Frame]) -> Result<WindowReader<'static>, StageError> {
    let (scene, start) = probe_start(ctx, seeds, row, prefix)?;
    Ok(WindowReader::Probe { scene, start })
}

/// A group's scene and the camera's pose after the prefix as the probe
/// tracks it.
fn probe_start(ctx: &RunContext, seeds: &[u64], row: &crate::tables::GroupRow, prefix: &[Frame]) -> Result<(Scene, Pose), StageError> {
    let seed = seeds.get(row.prompt_id as usize).ok_or_else(|| StageError::invalid(ctx.store.uri_of(layout::PROMPTS), format!("no prompt {}", row.prompt_id)))?;
    let scene = Scene::generate(*seed);
    let start = track_windows(&scene, Pose::START, prefix, &Kinematics::default()).1;
    Ok((scene, start))
}

/// One group of an iteration's committed candidates, as the offline
/// instrument commands read it.
struct ReadGroup {
    row: crate::tables::GroupRow,
    clips: GroupClips,
    /// The group's scene and the camera tracked through the prefix (what
    /// the probe reads from).
    scene: Scene,
    start: Pose,
    /// The action of each window the candidates are judged on.
    windows: Vec<u8>,
}

/// Every group of iteration `iter`'s committed candidates, with the scene
/// and start pose its probe reads from (for `scorers agreement` and
/// `scorers label-windows`).
fn read_groups(ctx: &RunContext, o: &Opened, iter: u64) -> Result<Vec<ReadGroup>, StageError> {
    let (prefixes, rollouts) = (stage_shards(ctx, iter, Stage::Prefix)?, stage_shards(ctx, iter, Stage::Rollout)?);
    let (pfiles, cfiles) = (group_files(&prefixes), group_files(&rollouts));
    let seeds = scene_seeds(ctx, &o.init)?;
    iteration_groups(ctx, &o.pool, iter)
        .into_iter()
        .map(|(g, row)| {
            let clips = group_clips(ctx, o, (&pfiles, &cfiles), iter, g, &row)?;
            let (scene, start) = probe_start(ctx, &seeds, &row, &clips.prefix)?;
            let windows = scored_windows(ctx, &row, iter);
            Ok(ReadGroup { row, clips, scene, start, windows })
        })
        .collect()
}

/// The committed candidates of iteration `iter`, window by window, each
/// labelled with the motion class the evaluation's re-render probe finds
/// in it (`worldcompass scorers label-windows`): training and test data
/// for the pose estimator on generated frames. Reads only; commits nothing.
pub fn probe_labelled_windows(ctx: &RunContext, iter: u64) -> Result<Vec<LabelledWindow>, StageError> {
    let o = open_inputs(ctx)?;
    let kin = Kinematics::default();
    let mut out = Vec::new();
    for group in read_groups(ctx, &o, iter)? {
        let (scene, start) = (&group.scene, group.start);
        let read: Vec<_> = group.clips.candidates.par_iter().map(|c| (sequence_windows(c, &kin), track_windows(scene, start, &c[1..], &kin).0)).collect();
        for (frames, found) in read {
            for ((frames, (found, _)), a) in frames.into_iter().zip(found).zip(&group.windows) {
                out.push(LabelledWindow { frames, found, commanded: wc_world::ActionMask(*a) });
            }
        }
    }
    Ok(out)
}

/// The run's pose estimator, refused if it reads another frame size than
/// the model makes.
fn load_checked_pose(ctx: &RunContext, o: &Opened) -> Result<(PoseNet, wc_model::params::Params), StageError> {
    let (pose, params) = load_pose(ctx, &o.init)?;
    if pose.cfg.frame_size != o.cfg.frame_size {
        return Err(StageError::invalid(POSE_SETTINGS, format!("the pose estimator reads {0}x{0} frames, the model makes {1}x{1}", pose.cfg.frame_size, o.cfg.frame_size)));
    }
    Ok((pose, params))
}

/// One candidate window read by both instruments: whether each reads the
/// commanded rotation and translation.
#[derive(Debug, Clone, PartialEq)]
pub struct AgreementRow {
    pub iter: u64,
    pub kind: String,
    pub action: u8,
    /// The pose estimator's (rotation, translation) right.
    pub estimator: (bool, bool),
    /// The re-render probe's (rotation, translation) right.
    pub probe: (bool, bool),
}

/// The committed candidates of iteration `iter` read by the pose estimator
/// and by the evaluation's re-render probe, window by window: how far the
/// reward's instrument agrees with the evaluation's on generated frames
/// (`worldcompass scorers agreement`). Reads only; commits nothing.
///
/// `other` reads with that estimator instead of the run's own (an
/// estimator under test; it must read the model's frame size).
pub fn instrument_agreement(ctx: &RunContext, iter: u64, other: Option<(&PoseNet, &Device)>) -> Result<Vec<AgreementRow>, StageError> {
    let o = open_inputs(ctx)?;
    let own;
    let estimator = match other {
        Some((net, _)) if net.cfg.frame_size != o.cfg.frame_size => {
            return Err(StageError::invalid("pose estimator under test", format!("it reads {0}x{0} frames, the model makes {1}x{1}", net.cfg.frame_size, o.cfg.frame_size)));
        }
        Some((net, device)) => WindowReader::Estimator { net, device },
        None => {
            own = load_checked_pose(ctx, &o)?;
            WindowReader::Estimator { net: &own.0, device: own.1.device() }
        }
    };
    let (metric, kin) = (metric_config(ctx), Kinematics::default());
    let mut rows = Vec::new();
    for ReadGroup { row, clips, scene, start, windows } in read_groups(ctx, &o, iter)? {
        let probe = WindowReader::Probe { scene, start };
        for (e, p) in estimator.read_all(&clips.candidates, &kin)?.iter().zip(probe.read_all(&clips.candidates, &kin)?) {
            for ((em, pm), a) in e.iter().zip(&p).zip(&windows) {
                let judge = |m: &WindowMotion| window_correct(m, wc_world::ActionMask(*a), &metric);
                rows.push(AgreementRow { iter, kind: row.kind.clone(), action: *a, estimator: judge(&em.0), probe: judge(&pm.0) });
            }
        }
    }
    Ok(rows)
}

/// The agreement of the two instruments per kind of sequence: how often
/// each reads the commanded rotation, translation and both, and how often
/// they agree on it.
pub fn agreement_table(rows: &[AgreementRow]) -> String {
    let mut out = format!(
        "{:<9} {:>7} | {:>9} {:>9} {:>6} | {:>9} {:>9} {:>6} {:>14} | {:>9} {:>9}\n",
        "kind", "windows", "rot est", "rot probe", "agree", "trans est", "trans prb", "agree", "est-only right", "both est", "both prb"
    );
    for kind in ["basic", "combined"] {
        let k: Vec<&AgreementRow> = rows.iter().filter(|r| r.kind == kind).collect();
        if k.is_empty() {
            continue;
        }
        let share = |f: &dyn Fn(&AgreementRow) -> bool| k.iter().filter(|r| f(r)).count() as f64 / k.len() as f64;
        out += &format!(
            "{:<9} {:>7} | {:>9.3} {:>9.3} {:>6.3} | {:>9.3} {:>9.3} {:>6.3} {:>14.3} | {:>9.3} {:>9.3}\n",
            kind,
            k.len(),
            share(&|r| r.estimator.0),
            share(&|r| r.probe.0),
            share(&|r| r.estimator.0 == r.probe.0),
            share(&|r| r.estimator.1),
            share(&|r| r.probe.1),
            share(&|r| r.estimator.1 == r.probe.1),
            share(&|r| r.estimator.1 && !r.probe.1),
            share(&|r| r.estimator.0 && r.estimator.1),
            share(&|r| r.probe.0 && r.probe.1),
        );
    }
    out
}

/// Scores of one group's candidates: (score rows, window rows).
pub fn score_candidates(
    ctx: &RunContext,
    reader: &WindowReader,
    iter: u64,
    group: (u64, &crate::tables::GroupRow),
    first: &Frame,
    clips: &[Vec<Frame>],
) -> Result<(Vec<ScoreRow>, Vec<WindowRow>), StageError> {
    let (g, row) = group;
    let (n, windows) = (scored_clip_index(ctx, iter), scored_windows(ctx, row, iter));
    let metric = metric_config(ctx);
    let kin = Kinematics::default();
    let mode = match ctx.cfg.reward.vq_mode {
        wc_config::VqMode::Absolute => VqMode::Absolute,
        wc_config::VqMode::Drift => VqMode::Drift,
    };
    let stride = ctx.cfg.reward.vq_frame_stride as usize;
    let (mut scores, mut rows) = (Vec::new(), Vec::new());
    for (j, (frames, readings)) in clips.iter().zip(reader.read_all(clips, &kin)?).enumerate() {
        let (vq, per_frame) = clip_vq(&frames[1..], stride, mode, Some(first));
        let mut tally = wc_world::metric::AccuracyTally::default();
        for (w, ((m, p), a)) in readings.iter().zip(&windows).enumerate() {
            let (r, t) = window_correct(m, wc_world::ActionMask(*a), &metric);
            match (ctx.cfg.reward.if_signal, p) {
                (wc_config::IfSignal::Expected, Some(p)) => {
                    let (pr, pt) = expected_correct(p, wc_world::ActionMask(*a));
                    tally.add_graded(pr, pt)
                }
                // The config refuses "expected" without the estimator.
                _ => tally.add(r, t),
            }
            // The frame VQ sampled inside this window, if any.
            let frames_per_window = kin.frames_per_window;
            let vq_frame = (w * frames_per_window..(w + 1) * frames_per_window)
                .find(|f| (f + 1) % stride.max(1) == 0)
                .map(|f| per_frame[(f + 1) / stride.max(1) - 1]);
            rows.push(WindowRow {
                iter: iter as i64,
                group_id: g as i64,
                candidate: j as i64,
                window: w as i64,
                action: *a,
                est_yaw_deg: m.dyaw_deg,
                est_pitch_deg: m.dpitch_deg,
                est_forward: m.forward,
                est_right: m.right,
                rot_ok: r,
                trans_ok: t,
                vq_frame,
            });
        }
        let a = tally.accuracy();
        scores.push(ScoreRow {
            iter: iter as i64,
            group_id: g as i64,
            prompt_id: row.prompt_id,
            clip_index: n as i64,
            candidate: j as i64,
            rot_acc: a.rot_acc,
            trans_acc: a.trans_acc,
            if_score: a.if_score,
            vq_score: vq,
        });
    }
    Ok((scores, rows))
}

/// reward: estimated poses, action accuracy and VQ of every candidate.
pub fn reward(ctx: &RunContext, iter: u64, shard: ShardSpec, dir: &str, pending: &mut PendingCommit) -> Result<usize, StageError> {
    let o = open(ctx, pending)?;
    let prefixes = stage_shards(ctx, iter, Stage::Prefix)?;
    let rollouts = stage_shards(ctx, iter, Stage::Rollout)?;
    prefixes.iter().chain(&rollouts).for_each(|s| pending.add_input(s));
    if !ctx.cfg.reward.external_command.is_empty() {
        return external_reward(ctx, &o, iter, shard, dir, pending, &prefixes, &rollouts);
    }
    let probe = ctx.cfg.reward.if_instrument == wc_config::IfInstrument::Probe;
    let estimator = if probe { None } else { Some(load_checked_pose(ctx, &o)?) };
    let seeds = if probe { scene_seeds(ctx, &o.init)? } else { Vec::new() };
    let (pfiles, cfiles) = (group_files(&prefixes), group_files(&rollouts));
    let groups: Vec<_> = iteration_groups(ctx, &o.pool, iter).into_iter().filter(|(g, _)| shard.owns(*g as usize)).collect();
    let pb = progress(groups.len(), "reward");
    let (mut scores, mut windows) = (Vec::new(), Vec::new());
    for (g, row) in &groups {
        let gc = group_clips(ctx, &o, (&pfiles, &cfiles), iter, *g, row)?;
        let reader = match &estimator {
            Some((net, params)) => WindowReader::Estimator { net, device: params.device() },
            None => probe_reader(ctx, &seeds, row, &gc.prefix)?,
        };
        let (s, w) = score_candidates(ctx, &reader, iter, (*g, row), &gc.first, &gc.candidates)?;
        scores.extend(s);
        windows.extend(w);
        pb.inc(1);
    }
    pb.finish_and_clear();
    write_table(ctx, pending, &format!("{dir}/scores.parquet"), &wc_schemas::tables::reward_scores(), &scores_to_batch(&scores))?;
    write_table(ctx, pending, &format!("{dir}/windows.parquet"), &wc_schemas::tables::reward_windows(), &windows_to_batch(&windows))?;
    Ok(2)
}

/// reward through an external scorer (see [`crate::external`]).
#[allow(clippy::too_many_arguments)]
fn external_reward(
    ctx: &RunContext,
    o: &Opened,
    iter: u64,
    shard: ShardSpec,
    dir: &str,
    pending: &mut PendingCommit,
    prefixes: &[CommittedSet],
    rollouts: &[CommittedSet],
) -> Result<usize, StageError> {
    use crate::external::{run_scorer, JobGroup, JobManifest};
    let (pfiles, cfiles) = (group_files(prefixes), group_files(rollouts));
    let work = tempfile::Builder::new().prefix("wc-external-").tempdir().map_err(|e| StageError::invalid("external scorer work folder", e.to_string()))?;
    // Frames per candidate: one clip (clip-level) or the whole sequence.
    let (s, f) = (o.cfg.frame_size, o.cfg.frames_per_clip * clips_per_candidate(ctx));
    let g_count = ctx.cfg.rollout.candidates as usize;
    let mut groups = Vec::new();
    for (g, row) in iteration_groups(ctx, &o.pool, iter).into_iter().filter(|(g, _)| shard.owns(*g as usize)) {
        // The frames the built-in scorers read, back to 8-bit (exact: they
        // were decoded from 8-bit).
        let clips = group_clips(ctx, o, (&pfiles, &cfiles), iter, g, &row)?.candidates;
        let frames: Vec<u8> = clips.iter().flatten().flat_map(Frame::to_u8).collect();
        let name = format!("group-{g:05}.safetensors");
        let mut t = TensorSet::new();
        t.insert("frames".into(), Tensor::from_u8(&[g_count, f + 1, s, s, 3], &frames));
        let path = work.path().join(&name);
        std::fs::write(&path, wc_schemas::write_any(&path.display().to_string(), &t)?).map_err(|e| StageError::invalid(path.display().to_string(), e.to_string()))?;
        groups.push(JobGroup { group_id: g, prompt_id: row.prompt_id, actions: scored_windows(ctx, &row, iter), frames: name });
    }
    let job = JobManifest {
        run: ctx.store.uri().to_string(),
        iter,
        shard: shard.to_string(),
        clip_index: scored_clip_index(ctx, iter),
        candidates: g_count as u64,
        frames_per_window: 4,
        groups,
        output: work.path().join("scores.parquet").display().to_string(),
        output_schema: wc_schemas::tables::reward_scores(),
    };
    let timeout = std::time::Duration::from_secs(ctx.cfg.reward.external_timeout_s);
    let (_, bytes) = match run_scorer(&ctx.cfg.reward.external_command, timeout, work.path(), &job) {
        Ok(scored) => scored,
        Err(e) => {
            // The error names files in the work folder: keep it to be read.
            let kept = work.keep();
            tracing::warn!(folder = %kept.display(), "the external scorer failed; its work folder (job, frames, stdout, stderr) is kept");
            return Err(e);
        }
    };
    pending.write(&format!("{dir}/scores.parquet"), bytes::Bytes::from(bytes))?;
    Ok(1)
}

/// The clips a selected candidate is trained on, each as (clip index, the
/// latent frames before it, its latents): clip-level, clip n after the
/// shared prefix; sample-level, every clip of the candidate's own sequence
/// after its own earlier clips.
fn trained_clips<'a>(ctx: &RunContext, iter: u64, prefix: &'a [f32], own: &'a [f32], clip_len: usize) -> Vec<(u64, &'a [f32], &'a [f32])> {
    if sample_level(ctx) {
        own.chunks_exact(clip_len).enumerate().map(|(i, clip)| (i as u64 + 1, &own[..i * clip_len], clip)).collect()
    } else {
        vec![(target_clip(iter, ctx.cfg.rollout.clips), prefix, own)]
    }
}

/// optimize: NFT on the selected candidates at a random subset of the
/// sampler's timesteps, in minibatches; then the old policy's EMA update.
pub fn optimize(ctx: &RunContext, iter: u64, dir: &str, pending: &mut PendingCommit) -> Result<usize, StageError> {
    let o = open(ctx, pending)?;
    let ckpt = inputs::checkpoint_set(ctx, iter)?;
    let sel = inputs::whole_stage(ctx, iter, Stage::Select)?;
    let prefixes = stage_shards(ctx, iter, Stage::Prefix)?;
    let rollouts = stage_shards(ctx, iter, Stage::Rollout)?;
    for s in [&ckpt, &sel].into_iter().chain(&prefixes).chain(&rollouts) {
        pending.add_input(s);
    }
    let policy = world::load_policy(ctx, &o.cfg, &ckpt, iter, "policy")?;
    let old = world::load_policy(ctx, &o.cfg, &ckpt, iter, "old_policy")?;
    let mut opt = world::load_optimizer(ctx, &ckpt, iter, &policy.params)?;
    let o_cfg = &ctx.cfg.optimize;
    let reference = if o_cfg.kl_weight > 0.0 { Some(world::load_policy(ctx, &o.cfg, &o.init, 0, "policy")?) } else { None };
    let groups: BTreeMap<u64, _> = iteration_groups(ctx, &o.pool, iter).into_iter().collect();
    let (rows, artifact) = inputs::read_selection(ctx, iter, &sel)?;
    let (pfiles, cfiles) = (group_files(&prefixes), group_files(&rollouts));
    let steps = ctx.cfg.rollout.sampler_steps as usize;
    let times = sampler_times(steps, ctx.cfg.rollout.timestep_shift);
    let subset = timestep_subset(steps, o_cfg.timestep_fraction, derive_seed(ctx.cfg.run.seed, iter, SeedDomain::Optimize, 0, 0));
    let clip_len = world::clip_shape(&o.cfg).iter().product::<usize>();
    let g_count = ctx.cfg.rollout.candidates as usize;
    let mut samples = Vec::new();
    for (g, group_rows) in rows.chunk_by(|a, b| a.score.group_id == b.score.group_id).map(|c| (c[0].score.group_id as u64, c)) {
        let row = groups.get(&g).ok_or_else(|| StageError::invalid(&artifact, format!("group {g} is not in iteration {iter}")))?;
        let pre = prefix_of(ctx, &o.cfg, &pfiles, iter, g)?;
        let cands = candidates_of(ctx, &o.cfg, &cfiles, iter, g)?;
        let first = first_latent(&o, row.prompt_id)?;
        let per_candidate = cands.len() / g_count;
        for r in group_rows.iter().filter(|r| r.selected) {
            let j = r.score.candidate as usize;
            let own = &cands[j * per_candidate..(j + 1) * per_candidate];
            for (c, history, clip) in trained_clips(ctx, iter, &pre, own, clip_len) {
                let context = world::context_tokens(&o.cfg, &first, history);
                let masks = world::frame_masks(&o.cfg, &clip_windows(ctx, row, c));
                let x = world::clip_tokens(&o.cfg, clip);
                // Noise id of (clip, candidate): clip-level keeps its
                // historical id j; sample-level numbers the pairs clip-major.
                let id = if sample_level(ctx) { (c as usize - 1) * g_count + j } else { j };
                for &ti in &subset {
                    let eps = world::clip_tokens(&o.cfg, &world::clip_noise(&o.cfg, derive_seed(ctx.cfg.run.seed, iter, SeedDomain::Optimize, g, (id * steps + ti) as u64 + 1)));
                    samples.push(NftSample { context: context.clone(), x: x.clone(), eps, t: times[ti] as f32, masks: masks.clone(), r: r.r as f32 });
                }
            }
        }
    }
    let eta = eta_at(iter, ctx.cfg.run.iterations, o_cfg.eta_start, o_cfg.eta_end);
    let settings = world::NftSettings { beta: o_cfg.beta, lr: o_cfg.lr, guidance: o_cfg.guidance };
    let mut metrics = Vec::new();
    let pb = progress(samples.len().div_ceil(o_cfg.minibatch as usize), "optimize");
    for (step, batch) in samples.chunks(o_cfg.minibatch as usize).enumerate() {
        let s = world::nft_step(&policy, &old, reference.as_ref().map(|r| (r, o_cfg.kl_weight)), &mut opt, &world::nft_batch(&o.cfg, batch, ctx.device()?)?, &settings)?;
        if !s.applied {
            tracing::warn!(iter, step, loss = s.loss, grad_norm = s.grad_norm, "non-finite loss or gradient: the step was not applied");
        }
        metrics.push(MetricRow { iter: iter as i64, step: step as i64, loss: s.loss, grad_norm: s.grad_norm, lr: o_cfg.lr, eta, samples: batch.len() as i64, applied: s.applied });
        pb.inc(1);
    }
    pb.finish_and_clear();
    if let Some(last) = metrics.last().filter(|_| metrics.iter().all(|m| !m.applied)) {
        return Err(StageError::NoFiniteStep { iter, steps: metrics.len(), loss: last.loss, grad_norm: last.grad_norm });
    }
    old.params.ema_toward(&policy.params, eta)?;
    if !old.params.all_finite()? {
        return Err(StageError::invalid(layout::checkpoint_dir(iter + 1), "the old policy's EMA update gave non-finite weights; nothing was committed"));
    }
    let next = layout::checkpoint_dir(iter + 1);
    let put = |pending: &mut PendingCommit, name: &str, t: TensorSet| -> Result<(), StageError> {
        let p = format!("{next}/{name}.safetensors");
        pending.write(&p, wc_schemas::write_any(&ctx.store.uri_of(&p), &t)?)?;
        Ok(())
    };
    put(pending, "policy", policy.params.to_tensor_set()?)?;
    put(pending, "old_policy", old.params.to_tensor_set()?)?;
    put(pending, "optimizer", opt.to_tensor_set()?)?;
    write_table(ctx, pending, &format!("{dir}/metrics.parquet"), &wc_schemas::tables::optimize_metrics(), &metrics_to_batch(&metrics))?;
    Ok(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agreement_table_counts_by_hand() {
        let row = |kind: &str, estimator: (bool, bool), probe: (bool, bool)| AgreementRow { iter: 0, kind: kind.into(), action: 65, estimator, probe };
        let rows = [
            row("combined", (true, true), (true, false)),
            row("combined", (true, true), (true, true)),
            row("combined", (false, false), (true, false)),
            row("combined", (true, false), (true, true)),
        ];
        let table = agreement_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2, "header and the one kind present:\n{table}");
        let f: Vec<&str> = lines[1].split_whitespace().filter(|f| *f != "|").collect();
        // windows, rot est / probe / agree, trans est / probe / agree,
        // estimator-only right, both est / probe.
        assert_eq!(f, ["combined", "4", "0.750", "1.000", "0.750", "0.500", "0.500", "0.500", "0.250", "0.500", "0.500"]);
    }
}
