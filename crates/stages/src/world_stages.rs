//! Scoring frames: the reward stage's built-in frame scorers (the pose
//! estimator, or the re-render probe as a diagnostic instrument) and the
//! external scorer. The offline diagnostics that read a run's committed
//! candidates with both instruments are in `wc-jobs` (`diagnostics`).

use candle_core::Device;
use rayon::prelude::*;
use wc_schemas::{tensors, DimBindings, Tensor, TensorSet};
use wc_scorers::pose::{estimate_probs, expected_correct, motion_of, AxisProbs, PoseConfig, PoseNet};
use wc_scorers::vq::{clip_vq, VqMode};
use wc_store::{CommittedSet, PendingCommit, ShardSpec};
use wc_world::metric::{window_correct, MetricConfig};
use wc_world::probe::track_windows;
use wc_world::{Frame, Kinematics, Pose, Scene, WindowMotion};

use crate::backend::GroupFrames;
use crate::error::StageError;
use crate::inputs;
use crate::layout::{self, FIRST_FRAMES, POSE_MODEL, POSE_SETTINGS};
use crate::runner::RunContext;
use crate::stages::{scored_clip_index, scored_windows};
use crate::tables::{scene_seeds_from_batch, GroupRow, ScoreRow, WindowRow};


/// The first frames of the run's prompts (u8 HWC each).
pub fn first_frames(ctx: &RunContext, init: &CommittedSet, size: usize) -> Result<Vec<Vec<u8>>, StageError> {
    let b = DimBindings::new().dim("height", size).dim("width", size);
    let t = inputs::read_tensor_file(ctx, init, FIRST_FRAMES, &tensors::first_frames(), &b)?;
    let bytes = t["frames"].data.clone();
    Ok(bytes.chunks_exact(size * size * 3).map(|c| c.to_vec()).collect())
}

/// The run's pose estimator (copied into the run by init).
pub fn load_pose(ctx: &RunContext, init: &CommittedSet) -> Result<(PoseNet, wc_model::params::Params), StageError> {
    let settings: crate::checkpoints::PoseSettings =
        serde_json::from_slice(&init.read(POSE_SETTINGS)?).map_err(|e| StageError::artifact(ctx.store.uri_of(POSE_SETTINGS), e))?;
    let cfg: PoseConfig = settings.model;
    let mut params = wc_model::params::Params::new(0, ctx.device()?);
    let net = PoseNet::new(&cfg, &mut params).map_err(|e| StageError::artifact(ctx.store.uri_of(POSE_MODEL), e))?;
    crate::checkpoints::load_params(&ctx.store, init, POSE_MODEL, &params)?;
    Ok((net, params))
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
                let probs = estimate_probs(net, frames, kin, device).map_err(|e| StageError::artifact("the pose estimator", e))?;
                Ok(probs.into_iter().map(|p| (motion_of(&p, kin), Some(p))).collect())
            }
            WindowReader::Probe { scene, start } => Ok(track_windows(scene, *start, &frames[1..], kin).0.into_iter().map(|(_, m)| (m, None)).collect()),
        }
    }

    /// [`WindowReader::read`] of every candidate: the probe's renders run
    /// in parallel over candidates; the estimator batches its windows
    /// itself.
    pub fn read_all(&self, clips: &[Vec<Frame>], kin: &Kinematics) -> Result<Vec<Vec<WindowReading>>, StageError> {
        match self {
            WindowReader::Estimator { .. } => clips.iter().map(|c| self.read(c, kin)).collect(),
            WindowReader::Probe { .. } => clips.par_iter().map(|c| self.read(c, kin)).collect(),
        }
    }
}

/// The scene seed of every prompt of the run, by prompt id.
pub fn scene_seeds(ctx: &RunContext, init: &CommittedSet) -> Result<Vec<u64>, StageError> {
    let artifact = ctx.store.uri_of(layout::PROMPTS);
    let batch = wc_schemas::read_table(&wc_schemas::tables::prompts(), &artifact, init.read(layout::PROMPTS)?)?;
    scene_seeds_from_batch(&batch, &artifact)
}

/// The action-accuracy metric of the run's `[reward]` thresholds.
pub fn metric_config(ctx: &RunContext) -> MetricConfig {
    MetricConfig { tau_rot_deg: ctx.cfg.reward.tau_rot_deg, trans_thresholds: ctx.cfg.reward.trans_thresholds.clone(), ..Default::default() }
}

/// The probe reader of a group: its prompt's scene, the camera tracked
/// through the prefix.
fn probe_reader(ctx: &RunContext, seeds: &[u64], row: &GroupRow, prefix: &[Frame]) -> Result<WindowReader<'static>, StageError> {
    let (scene, start) = probe_start(ctx, seeds, row, prefix)?;
    Ok(WindowReader::Probe { scene, start })
}

/// A group's scene and the camera's pose after the prefix as the probe
/// tracks it.
pub fn probe_start(ctx: &RunContext, seeds: &[u64], row: &GroupRow, prefix: &[Frame]) -> Result<(Scene, Pose), StageError> {
    let seed = seeds.get(row.prompt_id as usize).ok_or_else(|| StageError::invalid(ctx.store.uri_of(layout::PROMPTS), format!("no prompt {}", row.prompt_id)))?;
    let scene = Scene::generate(*seed);
    let start = track_windows(&scene, Pose::START, prefix, &Kinematics::default()).1;
    Ok((scene, start))
}

/// The run's pose estimator, refused if it reads another frame size than
/// the model makes.
pub fn load_checked_pose(ctx: &RunContext, init: &CommittedSet, frame_size: usize) -> Result<(PoseNet, wc_model::params::Params), StageError> {
    let (pose, params) = load_pose(ctx, init)?;
    if pose.cfg.frame_size != frame_size {
        return Err(StageError::invalid(POSE_SETTINGS, format!("the pose estimator reads {0}x{0} frames, the model makes {1}x{1}", pose.cfg.frame_size, frame_size)));
    }
    Ok((pose, params))
}

/// The built-in frame scorers of a run's reward stage, as `[reward]` says:
/// the pose estimator, or the re-render probe (a diagnostic ceiling).
pub struct FrameScorers {
    estimator: Option<(PoseNet, wc_model::params::Params)>,
    /// Scene seed of every prompt (the probe's).
    seeds: Vec<u64>,
}

impl FrameScorers {
    /// The run's scorers for frames of `frame_size`.
    pub fn open(ctx: &RunContext, init: &CommittedSet, frame_size: usize) -> Result<Self, StageError> {
        if ctx.cfg.reward.if_instrument == wc_config::IfInstrument::Probe {
            Ok(FrameScorers { estimator: None, seeds: scene_seeds(ctx, init)? })
        } else {
            Ok(FrameScorers { estimator: Some(load_checked_pose(ctx, init, frame_size)?), seeds: Vec::new() })
        }
    }

    /// Score rows and window rows of one group's candidates.
    pub fn score_group(&self, ctx: &RunContext, iter: u64, group: (u64, &GroupRow), frames: &GroupFrames) -> Result<(Vec<ScoreRow>, Vec<WindowRow>), StageError> {
        let reader = match &self.estimator {
            Some((net, params)) => WindowReader::Estimator { net, device: params.device() },
            None => probe_reader(ctx, &self.seeds, group.1, &frames.prefix)?,
        };
        score_candidates(ctx, &reader, iter, group, &frames.first, &frames.candidates)
    }
}

/// Scores of one group's candidates: (score rows, window rows).
pub fn score_candidates(
    ctx: &RunContext,
    reader: &WindowReader,
    iter: u64,
    group: (u64, &GroupRow),
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

/// reward through an external scorer (see [`crate::external`]): each
/// group's candidate frames (`frames`: group id, row, decoded frames)
/// written for the scorer, its validated table committed.
pub fn external_reward(
    ctx: &RunContext,
    iter: u64,
    shard: ShardSpec,
    dir: &str,
    pending: &mut PendingCommit,
    frame_size: usize,
    frames: Vec<(u64, GroupRow, GroupFrames)>,
) -> Result<usize, StageError> {
    use crate::external::{run_scorer, JobGroup, JobManifest};
    let work = tempfile::Builder::new().prefix("wc-external-").tempdir().map_err(StageError::io("creating the external scorer's work folder"))?;
    let g_count = ctx.cfg.rollout.candidates as usize;
    let mut groups = Vec::new();
    for (g, row, decoded) in frames {
        // The frames the built-in scorers read, back to 8-bit (exact: they
        // were decoded from 8-bit); per candidate, the frame before it and
        // its frames (one clip, or the whole sequence at sample level).
        let per_candidate = decoded.candidates.first().map_or(0, Vec::len);
        let bytes: Vec<u8> = decoded.candidates.iter().flatten().flat_map(Frame::to_u8).collect();
        let name = format!("group-{g:05}.safetensors");
        let mut t = TensorSet::new();
        t.insert("frames".into(), Tensor::from_u8(&[g_count, per_candidate, frame_size, frame_size, 3], &bytes));
        let path = work.path().join(&name);
        std::fs::write(&path, wc_schemas::write_any(&path.display().to_string(), &t)?).map_err(StageError::io(format!("writing {}", path.display())))?;
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
    pending.write(&layout::in_dir(dir, layout::SCORES_FILE), bytes::Bytes::from(bytes))?;
    Ok(1)
}
