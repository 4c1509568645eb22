//! Evaluating world model checkpoints on held-out prompts: do they follow
//! the actions, and how do their frames look? (The paper's section 4.2.)
//!
//! For each held-out sequence (a prompt of the dataset and a basic or
//! combined action sequence), clips are generated one after the other, each
//! from the first frame and the most recent frames: the model's own
//! (autoregressive, the paper's protocol) or the simulator's (teacher
//! forcing, which isolates per-clip following from drift). Every 4-frame
//! window is classified by the re-render probe (`wc_world::probe`): the 81
//! candidate motions are rendered from the camera's pose at the window's
//! start and the nearest wins. The probe reads the simulator, so it
//! measures; it is not a reward. VQ is the mean of every 4th generated
//! frame's score. Results come per length (short, medium, long in clips)
//! and action kind, as Parquet rows (`eval_results`) and as Table 1.

use arrow::array::{Array, Int64Array, ListArray, StringArray, UInt8Array};
use candle_core::Tensor;
use rayon::prelude::*;
use wc_model::codec::{decode_frames, encode_frames, patchify, PixelCodec};
use wc_model::flow::{seeded_noise, SamplerConfig};
use wc_model::ModelConfig;
use wc_rl::seeds::{derive_seed, SeedDomain};
use wc_store::RunStore;
use wc_world::metric::{Accuracy, AccuracyTally};
use wc_world::probe::{judge, track_window};
use wc_world::render::render;
use wc_world::{ActionMask, Kinematics, Pose, RenderConfig, Scene};
use wc_matrix_game::model::pack_context;
use wc_matrix_game::MatrixGameConfig;
use wc_model::velocity::VelocityModel;
use wc_stages::checkpoints::{LoadedMatrixGame, LoadedModel, LoadedVideoModel};
use wc_stages::StageError;

/// Generate one clip from context frames (u8 HWC: the first frame, then the
/// recent ones) and one action mask per target frame. Returns the clip's
/// frames, u8 HWC.
pub fn generate_clip(m: &LoadedModel, context_rgb: &[u8], masks: &[u8], sampler: &SamplerConfig, noise_seed: u64) -> Result<Vec<u8>, StageError> {
    let mut clips = generate_world_clips(m, &[ClipRequest { context: context_rgb.to_vec(), context_masks: Vec::new(), masks: masks.to_vec(), noise_seed }], sampler)?;
    Ok(clips.pop().expect("one clip per request"))
}

/// One clip to generate: its context frames (u8 HWC: the first frame, then
/// the recent ones, as [`ClipModel::context_indices`] picks them), the
/// action mask into each context frame (0 for the first frame), one action
/// mask per target frame and the seed of its noise.
#[derive(Debug, Clone)]
pub struct ClipRequest {
    pub context: Vec<u8>,
    pub context_masks: Vec<u8>,
    pub masks: Vec<u8>,
    pub noise_seed: u64,
}

/// What the evaluation needs to know of a model's clips: their frame size,
/// length, and which earlier frames a clip's context holds.
pub trait ClipModel: Sync {
    fn frame_size(&self) -> usize;
    fn frames_per_clip(&self) -> usize;
    /// The frames (indices into the sequence, 0 = the first frame) of the
    /// context of the clip whose first frame is `first_target`.
    fn context_indices(&self, first_target: usize) -> Vec<usize>;
    fn windows_per_clip(&self) -> usize {
        self.frames_per_clip() / 4
    }
}

impl ClipModel for ModelConfig {
    fn frame_size(&self) -> usize {
        self.frame_size
    }
    fn frames_per_clip(&self) -> usize {
        self.frames_per_clip
    }
    fn context_indices(&self, first_target: usize) -> Vec<usize> {
        self.context_frame_indices(first_target)
    }
}

impl ClipModel for MatrixGameConfig {
    fn frame_size(&self) -> usize {
        self.frame_size
    }
    fn frames_per_clip(&self) -> usize {
        self.frames_per_clip
    }
    /// The first frame, then the clip before (the first frame repeated
    /// before clip 1), as `wc_matrix_game::model::context_rows` packs them.
    fn context_indices(&self, first_target: usize) -> Vec<usize> {
        let f = self.frames_per_clip;
        std::iter::once(0).chain((0..f).map(|i| if first_target > f { first_target - f + i } else { 0 })).collect()
    }
}

/// The clip geometry of a loaded model.
pub fn clip_model(m: &LoadedVideoModel) -> &dyn ClipModel {
    match m {
        LoadedVideoModel::World(m) => &m.model.cfg,
        LoadedVideoModel::MatrixGame(m) => &m.policy.model.cfg,
    }
}

/// The action mask into frame `i` of a sequence (0 for the first frame).
fn mask_into(actions: &[ActionMask], i: usize) -> u8 {
    if i == 0 { 0 } else { actions[(i - 1) / 4].0 }
}

/// Generate a batch of clips in one sampler run (each from its own context
/// and seeded noise, as [`generate_clip`] would one by one). Returns each
/// clip's frames, u8 HWC.
pub fn generate_clips(m: &LoadedVideoModel, requests: &[ClipRequest], sampler: &SamplerConfig) -> Result<Vec<Vec<u8>>, StageError> {
    match m {
        LoadedVideoModel::World(m) => generate_world_clips(m, requests, sampler),
        LoadedVideoModel::MatrixGame(m) => generate_matrix_game_clips(m, requests, sampler),
    }
}

/// [`generate_clips`] of Matrix-Game: the context rows packed from the
/// context frames and the actions into them, encoded once for the batch.
fn generate_matrix_game_clips(m: &LoadedMatrixGame, requests: &[ClipRequest], sampler: &SamplerConfig) -> Result<Vec<Vec<u8>>, StageError> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let cfg = &m.policy.model.cfg;
    if cfg.reads_frozen_networks() {
        return Err(StageError::invalid(
            &m.path,
            "eval generates with the pixel codec and the first frame's patches (the embedded Matrix-Game configurations); this model reads the Wan VAE and CLIP tokens: compare its runs with `worldcompass report` instead",
        ));
    }
    let (size, f, d, b) = (cfg.frame_size, cfg.frames_per_clip, cfg.frame_len(), requests.len());
    let dev = m.policy.params.device().clone();
    let mut rows = Vec::with_capacity(b * cfg.context_frames() * cfg.row_len());
    for r in requests {
        rows.extend(pack_context(cfg, &encode_frames(&PixelCodec, &r.context, size)?, &r.context_masks));
    }
    // The prompts' conditioning from their first frames (the evaluation
    // runs on the embedded world: the pixel codec, no frozen networks).
    let firsts: Vec<u8> = requests.iter().flat_map(|r| r.context[..size * size * 3].iter().copied()).collect();
    let prompts = wc_matrix_game::PromptEncoder::without_weights(cfg)?.encode(&Tensor::from_vec(firsts, (b, size, size, 3), &candle_core::Device::Cpu)?)?;
    let context = wc_matrix_game::MatrixGameInput {
        rows: Tensor::from_vec(rows, (b, cfg.context_frames(), cfg.row_len()), &dev)?,
        condition: prompts.condition.to_device(&dev)?,
        image_tokens: prompts.image_tokens.to_device(&dev)?,
    };
    let noise: Vec<Tensor> = requests.iter().map(|r| seeded_noise(r.noise_seed, &[1, f, d], &dev)).collect::<Result<_, _>>()?;
    let cache = m.policy.model.encode_context(&context)?;
    let masks: Vec<Vec<u8>> = requests.iter().map(|r| r.masks.clone()).collect();
    let x = wc_model::flow::sample(&m.policy.model, &cache, &Tensor::cat(&noise, 0)?, &masks, sampler)?;
    let rgb = decode_frames(&PixelCodec, &x.flatten_all()?.to_vec1::<f32>()?, size)?;
    Ok(rgb.chunks_exact(rgb.len() / b).map(|c| c.to_vec()).collect())
}

/// [`generate_clips`] of the embedded clip transformer.
pub fn generate_world_clips(m: &LoadedModel, requests: &[ClipRequest], sampler: &SamplerConfig) -> Result<Vec<Vec<u8>>, StageError> {
    if requests.is_empty() {
        return Ok(Vec::new());
    }
    let cfg = &m.model.cfg;
    let (size, tpf, tok, b) = (cfg.frame_size, cfg.tokens_per_frame(), cfg.token_dim(), requests.len());
    let codec = PixelCodec;
    let dev = m.params.device().clone();
    let mut context = Vec::with_capacity(b * cfg.context_slots() * tpf * tok);
    for r in requests {
        context.extend(patchify(&encode_frames(&codec, &r.context, size)?, 3, size, cfg.patch));
    }
    let context = Tensor::from_vec(context, (b, cfg.context_slots() * tpf, tok), &dev)?;
    let noise: Vec<Tensor> = requests.iter().map(|r| seeded_noise(r.noise_seed, &[1, cfg.frames_per_clip * tpf, tok], &dev)).collect::<Result<_, _>>()?;
    let cache = m.model.encode_context(&context)?;
    let masks: Vec<Vec<u8>> = requests.iter().map(|r| r.masks.clone()).collect();
    let rgb = decode_frames(&codec, &wc_stages::world::sample_latents(&m.model, sampler, &cache, &masks, &Tensor::cat(&noise, 0)?)?, size)?;
    Ok(rgb.chunks_exact(rgb.len() / b).map(|c| c.to_vec()).collect())
}

/// Clips the evaluation generates in one sampler run (a memory bound for
/// large models; the batch does not change the numbers).
pub const EVAL_BATCH: usize = 64;

/// The context of the clip whose first frame is `first_target`
/// ([`ClipModel::context_indices`]), u8 HWC frames concatenated.
pub fn context_frames(frames: &[Vec<u8>], first_target: usize, cfg: &dyn ClipModel) -> Vec<u8> {
    cfg.context_indices(first_target).into_iter().flat_map(|i| frames[i].iter().copied()).collect()
}

/// A held-out sequence.
#[derive(Debug, Clone)]
pub struct HeldOut {
    pub kind: String,
    pub scene_seed: u64,
    pub actions: Vec<ActionMask>,
}

/// Held-out sequences of a dataset: `per_kind` of each kind.
pub fn held_out(store: &RunStore, per_kind: usize) -> Result<Vec<HeldOut>, StageError> {
    let set = wc_data::read::open_dataset(store).map_err(|e| StageError::artifact(format!("the dataset under {}", store.uri()), e))?;
    let read = |name: &str, schema: wc_schemas::TableSchema| -> Result<arrow::array::RecordBatch, StageError> {
        let p = format!("{}/{name}", wc_data::DATASET_DIR);
        Ok(wc_schemas::read_table(&schema, &store.uri_of(&p), set.read(&p)?)?)
    };
    let prompts = read("prompts.parquet", wc_schemas::tables::prompts())?;
    let seqs = read("sequences.parquet", wc_schemas::tables::sequences())?;
    let seeds = prompts.column_by_name("scene_seed").and_then(|c| c.as_any().downcast_ref::<Int64Array>().cloned()).expect("validated");
    let pid = seqs.column_by_name("prompt_id").and_then(|c| c.as_any().downcast_ref::<Int64Array>().cloned()).expect("validated");
    let kind = seqs.column_by_name("kind").and_then(|c| c.as_any().downcast_ref::<StringArray>().cloned()).expect("validated");
    let acts = seqs.column_by_name("actions").and_then(|c| c.as_any().downcast_ref::<ListArray>().cloned()).expect("validated");
    let mut out = Vec::new();
    for k in ["basic", "combined"] {
        for i in (0..seqs.num_rows()).filter(|i| kind.value(*i) == k).take(per_kind) {
            let l = acts.value(i);
            let masks = l.as_any().downcast_ref::<UInt8Array>().expect("validated").values().iter().map(|m| ActionMask(*m)).collect();
            out.push(HeldOut { kind: k.to_string(), scene_seed: seeds.value(pid.value(i) as usize) as u64, actions: masks });
        }
    }
    Ok(out)
}

/// One length of the protocol (Table 1's short, medium, long), in clips.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalLength {
    pub name: String,
    pub clips: usize,
}

/// Parse `short=1,medium=2,long=4` (names and clip counts, increasing).
pub fn parse_lengths(text: &str) -> Result<Vec<EvalLength>, String> {
    let mut out: Vec<EvalLength> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, clips) = part.split_once('=').ok_or_else(|| format!("{part:?}: expected NAME=CLIPS, e.g. short=1"))?;
        let clips: usize = clips.trim().parse().map_err(|_| format!("{part:?}: {clips:?} is not a number of clips"))?;
        if clips == 0 {
            return Err(format!("{part:?}: a length needs at least 1 clip"));
        }
        if out.last().is_some_and(|l| l.clips >= clips) {
            return Err(format!("{part:?}: lengths must grow (short to long)"));
        }
        out.push(EvalLength { name: name.trim().to_string(), clips });
    }
    if out.is_empty() {
        return Err("no lengths given".into());
    }
    Ok(out)
}

/// Where each clip's context comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextSource {
    /// The model's own earlier frames (autoregressive: the paper's
    /// protocol). The camera is tracked by the probe: each window is judged
    /// from the pose the probe found at the end of the window before, so an
    /// early mistake is not charged again to the windows after it.
    Generated,
    /// The simulator's true frames (teacher forcing): isolates per-clip
    /// action following from drift.
    GroundTruth,
}

impl ContextSource {
    pub fn name(self) -> &'static str {
        match self {
            ContextSource::Generated => "generated",
            ContextSource::GroundTruth => "ground_truth",
        }
    }
}

/// What one held-out sequence scored: per window (rotation right,
/// translation right, static camera's (rotation, translation) right) and the
/// VQ of every 4th generated frame.
struct SequenceScore {
    windows: Vec<((bool, bool), (bool, bool))>,
    frame_vq: Vec<f64>,
}

/// Generates clip `n` (1-based) of a batch of sequences, one
/// [`ClipRequest`] each (`seqs[i]` is request i's sequence); returns their
/// frames, u8 HWC.
type ClipGenerator<'a> = dyn FnMut(usize, &[&HeldOut], &[ClipRequest]) -> Result<Vec<Vec<u8>>, StageError> + 'a;

/// One sequence under evaluation: its scene, true frames, the frames made
/// so far, the camera pose the probe tracked, and the score.
struct SequenceRun<'s> {
    s: &'s HeldOut,
    scene: Scene,
    poses: Vec<Pose>,
    truth: Vec<Vec<u8>>,
    generated: Vec<Vec<u8>>,
    tracked: Pose,
    score: SequenceScore,
}

/// Score sequences clip after clip: every sequence's clip `n` is generated
/// in batches of [`EVAL_BATCH`], then every window is judged by the probe
/// (in parallel over sequences). `tick` is called once per sequence and
/// clip judged.
fn score_sequences(
    cfg: &dyn ClipModel,
    seqs: &[&HeldOut],
    clips: usize,
    source: ContextSource,
    generate: &mut ClipGenerator,
    tick: &(dyn Fn() + Sync),
) -> Result<Vec<SequenceScore>, StageError> {
    let size = cfg.frame_size();
    let kin = Kinematics::default();
    let rcfg = RenderConfig { width: size, height: size, ..Default::default() };
    let windows_per_clip = cfg.windows_per_clip();
    let per_frame = size * size * 3;
    let mut runs: Vec<SequenceRun> = seqs
        .par_iter()
        .map(|s| {
            let scene = Scene::generate(s.scene_seed);
            let poses = kin.trajectory(Pose::START, &s.actions[..clips * windows_per_clip]);
            let truth: Vec<Vec<u8>> = poses.iter().map(|p| render(&scene, p, &rcfg).to_u8()).collect();
            let generated = vec![truth[0].clone()];
            SequenceRun { s, scene, poses, truth, generated, tracked: Pose::START, score: SequenceScore { windows: Vec::new(), frame_vq: Vec::new() } }
        })
        .collect();
    for n in 1..=clips {
        let first = 1 + (n - 1) * cfg.frames_per_clip();
        let requests: Vec<ClipRequest> = runs
            .iter()
            .map(|r| ClipRequest {
                context: match source {
                    ContextSource::Generated => context_frames(&r.generated, first, cfg),
                    ContextSource::GroundTruth => context_frames(&r.truth, first, cfg),
                },
                context_masks: cfg.context_indices(first).into_iter().map(|i| mask_into(&r.s.actions, i)).collect(),
                masks: (0..cfg.frames_per_clip()).map(|j| r.s.actions[(first - 1 + j) / 4].0).collect(),
                noise_seed: 0,
            })
            .collect();
        let mut made = Vec::with_capacity(runs.len());
        for (batch, reqs) in seqs.chunks(EVAL_BATCH).zip(requests.chunks(EVAL_BATCH)) {
            made.extend(generate(n, batch, reqs)?);
        }
        runs.par_iter_mut().zip(made).for_each(|(r, clip)| {
            r.generated.extend(clip.chunks_exact(per_frame).map(|f| f.to_vec()));
            let clip_f32: Vec<f32> = clip.iter().map(|v| *v as f32 / 255.0).collect();
            for w in 0..windows_per_clip {
                let wi = (n - 1) * windows_per_clip + w;
                let start = match source {
                    ContextSource::Generated => r.tracked,
                    ContextSource::GroundTruth => r.poses[wi * 4],
                };
                let (found, end) = track_window(&r.scene, &start, &clip_f32[w * 4 * per_frame..(w + 1) * 4 * per_frame], &kin, &rcfg);
                r.tracked = end;
                let action = r.s.actions[wi];
                r.score.windows.push((judge(found, action), judge(ActionMask(0), action)));
            }
            tick();
        });
    }
    Ok(runs
        .into_par_iter()
        .map(|mut r| {
            let frames: Vec<wc_world::Frame> = r.generated[1..].iter().map(|f| wc_world::Frame::from_u8(size, size, f)).collect();
            r.score.frame_vq = wc_scorers::vq::clip_vq(&frames, VQ_FRAME_STRIDE, wc_scorers::vq::VqMode::Absolute, None).1;
            r.score
        })
        .collect())
}

/// A model as a [`ClipGenerator`]: each sequence's clip from its own seeded
/// noise.
fn model_generator<'a>(m: &'a LoadedVideoModel, sampler: &'a SamplerConfig, seed: u64) -> impl FnMut(usize, &[&HeldOut], &[ClipRequest]) -> Result<Vec<Vec<u8>>, StageError> + 'a {
    move |n, seqs, requests| {
        let seeded: Vec<ClipRequest> = seqs
            .iter()
            .zip(requests)
            .map(|(s, r)| ClipRequest { noise_seed: derive_seed(seed, n as u64, SeedDomain::Eval, s.scene_seed, s.actions.len() as u64), ..r.clone() })
            .collect();
        generate_clips(m, &seeded, sampler)
    }
}

/// VQ is the mean over every 4th generated frame (the paper's sampling).
pub const VQ_FRAME_STRIDE: usize = 4;

/// One model's results per (length, kind), with its label.
pub struct ProtocolResult {
    pub length: EvalLength,
    pub kind: String,
    pub sequences: usize,
    pub accuracy: Accuracy,
    pub static_accuracy: Accuracy,
    pub vq: f64,
}

/// The evaluation protocol of the paper's section 4.2 for one model: every
/// held-out sequence is generated once at the longest length (clip after
/// clip, context from `source`), every window is judged by the re-render
/// probe, and each length's numbers are taken over its first clips (the
/// same seeds make a shorter generation the prefix of a longer one).
pub fn evaluate(
    m: &LoadedVideoModel,
    seqs: &[HeldOut],
    lengths: &[EvalLength],
    source: ContextSource,
    sampler: &SamplerConfig,
    seed: u64,
    tick: &(dyn Fn() + Sync),
) -> Result<Vec<ProtocolResult>, StageError> {
    let cfg = clip_model(m);
    let windows_per_clip = cfg.windows_per_clip();
    let longest = lengths.iter().map(|l| l.clips).max().unwrap_or(0);
    if let Some(s) = seqs.iter().find(|s| s.actions.len() < longest * windows_per_clip) {
        return Err(StageError::invalid(
            "eval --lengths",
            format!("the longest length needs {longest} clips of {windows_per_clip} windows, but held-out sequences have {} windows (make a dataset with longer sequences)", s.actions.len()),
        ));
    }
    let mut out = Vec::new();
    for kind in ["basic", "combined"] {
        let of_kind: Vec<&HeldOut> = seqs.iter().filter(|s| s.kind == kind).collect();
        let scored = score_sequences(cfg, &of_kind, longest, source, &mut model_generator(m, sampler, seed), tick)?;
        for l in lengths {
            let (mut tally, mut still) = (AccuracyTally::default(), AccuracyTally::default());
            let (mut vq_sum, mut vq_n) = (0.0, 0usize);
            let frames = l.clips * cfg.frames_per_clip();
            for sc in &scored {
                for ((r, t), (r0, t0)) in &sc.windows[..l.clips * windows_per_clip] {
                    tally.add(*r, *t);
                    still.add(*r0, *t0);
                }
                let sampled = sc.frame_vq.iter().take(frames / VQ_FRAME_STRIDE);
                vq_n += sampled.len();
                vq_sum += sampled.sum::<f64>();
            }
            out.push(ProtocolResult {
                length: l.clone(),
                kind: kind.to_string(),
                sequences: of_kind.len(),
                accuracy: tally.accuracy(),
                static_accuracy: still.accuracy(),
                vq: if vq_n > 0 { vq_sum / vq_n as f64 } else { f64::NAN },
            });
        }
    }
    Ok(out)
}

/// Generate a whole sequence autoregressively from a first frame (u8 HWC):
/// clip after clip, each from the model's own recent frames. Returns all
/// frames (the first frame, then 4 per window), u8 HWC.
pub fn rollout_sequence(
    m: &LoadedModel,
    first_frame: &[u8],
    actions: &[ActionMask],
    sampler: &SamplerConfig,
    seed: u64,
) -> Result<Vec<Vec<u8>>, StageError> {
    let cfg = &m.model.cfg;
    let size = cfg.frame_size;
    let windows_per_clip = cfg.windows_per_clip();
    let mut frames: Vec<Vec<u8>> = vec![first_frame.to_vec()];
    for (n, clip_actions) in actions.chunks(windows_per_clip).enumerate() {
        let ctx = context_frames(&frames, frames.len(), cfg);
        let masks: Vec<u8> = (0..cfg.frames_per_clip).map(|j| clip_actions[(j / 4).min(clip_actions.len() - 1)].0).collect();
        let rgb = generate_clip(m, &ctx, &masks, sampler, derive_seed(seed, 0, SeedDomain::Eval, n as u64, 1))?;
        let fsize = size * size * 3;
        let take = clip_actions.len() * 4;
        for f in 0..take.min(cfg.frames_per_clip) {
            frames.push(rgb[f * fsize..(f + 1) * fsize].to_vec());
        }
    }
    Ok(frames)
}

/// The rows of `eval_results` for one model's results.
pub fn eval_rows(run_unix_s: i64, label: &str, m: &LoadedVideoModel, source: ContextSource, results: &[ProtocolResult]) -> Vec<wc_stages::tables::EvalRow> {
    results
        .iter()
        .map(|r| wc_stages::tables::EvalRow {
            run_unix_s,
            model: label.to_string(),
            checkpoint: m.path().to_string(),
            step: m.step() as i64,
            context: source.name().to_string(),
            length: r.length.name.clone(),
            clips: r.length.clips as i64,
            kind: r.kind.clone(),
            sequences: r.sequences as i64,
            windows: r.accuracy.windows as i64,
            rot_acc: r.accuracy.rot_acc,
            trans_acc: r.accuracy.trans_acc,
            if_score: r.accuracy.if_score,
            both_right: r.accuracy.both_rate,
            vq_score: r.vq,
            static_if: r.static_accuracy.if_score,
        })
        .collect()
}

/// The results printed like the paper's Table 1: one row per length and
/// model, accuracy (rotation, translation, IF, both right) and VQ per
/// action kind, and with two or more models a delta row under each length
/// for every model after the first (that model minus the first; with two
/// models the row is labelled `delta`).
///
/// With `replicates` (the models after the first are runs of one setting
/// that differ only in their seed) and at least two of them, each length
/// ends with their mean delta and its standard error
/// ([`mean_and_standard_error`]): the effect of the setting with the run-to-
/// run spread taken into account, not one seed's draw.
pub fn table1(rows: &[wc_stages::tables::EvalRow], replicates: bool) -> String {
    use std::fmt::Write;
    let mut models: Vec<&str> = Vec::new();
    let mut lengths: Vec<(&str, i64)> = Vec::new();
    for r in rows {
        if !models.contains(&r.model.as_str()) {
            models.push(&r.model);
        }
        if !lengths.iter().any(|(n, _)| *n == r.length) {
            lengths.push((&r.length, r.clips));
        }
    }
    let cell = |model: &str, length: &str, kind: &str| rows.iter().find(|r| r.model == model && r.length == length && r.kind == kind);
    let metrics = |r: &wc_stages::tables::EvalRow| [r.rot_acc, r.trans_acc, r.if_score, r.both_right, r.vq_score];
    let summary_width = if replicates && models.len() > 2 { format!("mean delta of {}", models.len() - 1).len() } else { 0 };
    let width = models.iter().map(|m| m.len() + if models.len() > 2 { 6 } else { 0 }).max().unwrap_or(5).max(12).max(summary_width);
    let mut out = String::new();
    let head = format!("{:>6} {:>5} {:<width$}", "length", "clips", "model");
    let _ = writeln!(out, "{:w$} | {:^38} | {:^38}", "", "basic", "combined", w = head.len());
    let kind_head = format!("{:>6} {:>6} {:>6} {:>6} {:>9}", "rot", "trans", "IF", "both", "VQ");
    let _ = writeln!(out, "{head} | {kind_head} | {kind_head}");
    let fmt = |v: [f64; 5], signed: bool| {
        if signed {
            format!("{:>+6.3} {:>+6.3} {:>+6.3} {:>+6.3} {:>+9.3}", v[0], v[1], v[2], v[3], v[4])
        } else {
            format!("{:>6.3} {:>6.3} {:>6.3} {:>6.3} {:>9.3}", v[0], v[1], v[2], v[3], v[4])
        }
    };
    for (length, clips) in &lengths {
        for m in &models {
            let cells: Vec<String> = ["basic", "combined"]
                .iter()
                .map(|k| cell(m, length, k).map(|r| fmt(metrics(r), false)).unwrap_or_else(|| format!("{:^38}", "-")))
                .collect();
            let _ = writeln!(out, "{length:>6} {clips:>5} {m:<width$} | {} | {}", cells[0], cells[1]);
        }
        for b in models.iter().skip(1) {
            let a = models[0];
            let cells: Vec<String> = ["basic", "combined"]
                .iter()
                .map(|k| match (cell(a, length, k), cell(b, length, k)) {
                    (Some(ra), Some(rb)) => {
                        let (va, vb) = (metrics(ra), metrics(rb));
                        fmt(std::array::from_fn(|i| vb[i] - va[i]), true)
                    }
                    _ => format!("{:^38}", "-"),
                })
                .collect();
            let label = if models.len() == 2 { "delta".to_string() } else { format!("delta {b}") };
            let _ = writeln!(out, "{length:>6} {clips:>5} {label:<width$} | {} | {}", cells[0], cells[1]);
        }
        if replicates && models.len() > 2 {
            let n = models.len() - 1;
            // Per kind and metric: (mean, standard error) of the replicates' deltas.
            let summary: Vec<Option<[(f64, f64); 5]>> = ["basic", "combined"]
                .iter()
                .map(|k| {
                    let a = cell(models[0], length, k)?;
                    let deltas: Option<Vec<[f64; 5]>> = models[1..]
                        .iter()
                        .map(|b| cell(b, length, k).map(|rb| std::array::from_fn(|i| metrics(rb)[i] - metrics(a)[i])))
                        .collect();
                    let deltas = deltas?;
                    Some(std::array::from_fn(|i| mean_and_standard_error(&deltas.iter().map(|d| d[i]).collect::<Vec<_>>())))
                })
                .collect();
            for (label, signed, pick) in [(format!("mean delta of {n}"), true, 0usize), ("standard error".to_string(), false, 1)] {
                let cells: Vec<String> = summary
                    .iter()
                    .map(|s| match s {
                        Some(v) => fmt(std::array::from_fn(|i| if pick == 0 { v[i].0 } else { v[i].1 }), signed),
                        None => format!("{:^38}", "-"),
                    })
                    .collect();
                let _ = writeln!(out, "{length:>6} {clips:>5} {label:<width$} | {} | {}", cells[0], cells[1]);
            }
        }
    }
    out
}

/// Mean and standard error of the mean of replicate measurements: the
/// sample standard deviation (n - 1 in the denominator) over sqrt(n). The
/// error is NaN for fewer than two values (one draw says nothing of the
/// spread); the mean is NaN for none.
pub fn mean_and_standard_error(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, f64::NAN);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// Write evaluation rows as `eval/eval-<run_unix_s>.parquet` under `store`,
/// create-only: a second evaluation in the same second takes the next
/// suffix (`eval-<s>-1.parquet`, ...), never overwrites. Returns the path.
pub fn write_eval_rows(store: &RunStore, run_unix_s: i64, rows: &[wc_stages::tables::EvalRow]) -> Result<String, StageError> {
    let first = format!("eval/eval-{run_unix_s}.parquet");
    let bytes = wc_schemas::write_table(&wc_schemas::tables::eval_results(), &store.uri_of(&first), &wc_stages::tables::eval_to_batch(rows))?;
    for n in 0.. {
        let path = if n == 0 { first.clone() } else { format!("eval/eval-{run_unix_s}-{n}.parquet") };
        if store.put_if_absent(&path, bytes.clone())? {
            return Ok(path);
        }
    }
    unreachable!("some suffix is free")
}

#[cfg(test)]
mod tests {
    use super::*;
    use wc_stages::tables::EvalRow;

    fn held_out_sequence(kind: &str, actions: &[u8]) -> HeldOut {
        HeldOut { kind: kind.into(), scene_seed: 5, actions: actions.iter().map(|a| ActionMask(*a)).collect() }
    }

    /// The simulator's own frames as the "model": every window is right, in
    /// both context modes (in the autoregressive one only if the probe's
    /// camera tracking follows the found motions).
    fn ground_truth_generator(cfg: &ModelConfig) -> impl FnMut(usize, &[&HeldOut], &[ClipRequest]) -> Result<Vec<Vec<u8>>, StageError> {
        let (size, f) = (cfg.frame_size, cfg.frames_per_clip);
        move |n, seqs, _requests| {
            Ok(seqs
                .iter()
                .map(|s| wc_world::render::ground_truth_u8(s.scene_seed, &s.actions, size).1[1 + (n - 1) * f..1 + n * f].concat())
                .collect())
        }
    }

    #[test]
    fn ground_truth_frames_score_every_window_right_in_both_context_modes() {
        let cfg = ModelConfig { frame_size: 32, ..ModelConfig::tiny() };
        // combined: one translation and one rotation bit per window
        let s = held_out_sequence("combined", &[1 | 64, 2 | 16, 4 | 32, 8 | 128]);
        let other = HeldOut { scene_seed: 9, ..held_out_sequence("combined", &[2 | 128, 1 | 32, 8 | 16, 4 | 64]) };
        for source in [ContextSource::Generated, ContextSource::GroundTruth] {
            let clips = s.actions.len() * 4 / cfg.frames_per_clip;
            let scored = score_sequences(&cfg, &[&s, &other], clips, source, &mut ground_truth_generator(&cfg), &|| {}).unwrap();
            for sc in &scored {
                assert_eq!(sc.windows.len(), 4);
                assert!(sc.windows.iter().all(|((r, t), _)| *r && *t), "{source:?}: {:?}", sc.windows);
                // A static camera gets none of these combined windows right.
                assert!(sc.windows.iter().all(|(_, (r0, t0))| !*r0 && !*t0));
                assert_eq!(sc.frame_vq.len(), 16 / VQ_FRAME_STRIDE);
            }
        }
    }

    #[test]
    fn a_frozen_model_scores_like_the_static_camera() {
        let cfg = ModelConfig { frame_size: 32, ..ModelConfig::tiny() };
        let s = held_out_sequence("basic", &[1, 0, 16, 2]);
        let size = cfg.frame_size * cfg.frame_size * 3;
        // Repeats the last context frame: no motion at all.
        let mut frozen = |_n: usize, _s: &[&HeldOut], reqs: &[ClipRequest]| Ok(reqs.iter().map(|r| r.context[r.context.len() - size..].repeat(cfg.frames_per_clip)).collect());
        let ticks = std::sync::atomic::AtomicUsize::new(0);
        let tick = || {
            ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        let clips = s.actions.len() * 4 / cfg.frames_per_clip;
        let sc = score_sequences(&cfg, &[&s], clips, ContextSource::Generated, &mut frozen, &tick).unwrap().pop().unwrap();
        assert_eq!(ticks.into_inner(), clips, "one tick per sequence and clip");
        let found: Vec<(bool, bool)> = sc.windows.iter().map(|(w, _)| *w).collect();
        let still: Vec<(bool, bool)> = sc.windows.iter().map(|(_, s)| *s).collect();
        assert_eq!(found, still);
        assert_eq!(found, vec![(true, false), (true, true), (false, true), (true, false)]);
    }

    /// A batch of clips is the clips generated one by one, to the bit: the
    /// batch size (EVAL_BATCH) does not change the evaluation's numbers.
    #[test]
    fn a_batch_of_clips_equals_the_clips_one_by_one() {
        let cfg = ModelConfig { frame_size: 16, ..ModelConfig::tiny() };
        let dev = candle_core::Device::Cpu;
        let mut params = wc_model::params::Params::new(3, &dev);
        let model = wc_model::WorldModel::new(&cfg, &mut params).unwrap();
        let m = LoadedVideoModel::World(LoadedModel { model, params, step: 0, path: String::new() });
        let frame = 16 * 16 * 3;
        let requests: Vec<ClipRequest> = (0..3u8)
            .map(|i| ClipRequest {
                context: (0..cfg.context_slots() * frame).map(|j| (j as u8).wrapping_mul(7).wrapping_add(40 * i)).collect(),
                context_masks: Vec::new(),
                masks: vec![1 << i; cfg.frames_per_clip],
                noise_seed: 100 + i as u64,
            })
            .collect();
        let sampler = SamplerConfig { steps: 3, ..Default::default() };
        let batch = generate_clips(&m, &requests, &sampler).unwrap();
        assert_eq!(batch.len(), 3);
        for (r, b) in requests.iter().zip(&batch) {
            let LoadedVideoModel::World(w) = &m else { unreachable!() };
            assert_eq!(&generate_clip(w, &r.context, &r.masks, &sampler, r.noise_seed).unwrap(), b);
        }
        assert_ne!(batch[0], batch[1]);
    }

    /// Matrix-Game's context is the first frame, then the clip before (the
    /// first frame repeated before clip 1), with the actions into them; a
    /// batch of its clips is the clips one by one.
    #[test]
    fn matrix_game_clips_come_from_the_first_frame_and_the_clip_before_batched_or_not() {
        let cfg = MatrixGameConfig::tiny();
        assert_eq!(cfg.context_indices(1), vec![0; 5]);
        assert_eq!(cfg.context_indices(9), vec![0, 5, 6, 7, 8]);
        let actions = [ActionMask(1), ActionMask(4)];
        assert_eq!((mask_into(&actions, 0), mask_into(&actions, 4), mask_into(&actions, 5)), (0, 1, 4));
        let policy = wc_matrix_game::model::fresh_policy(&cfg, 3, &candle_core::Device::Cpu).unwrap();
        let m = LoadedVideoModel::MatrixGame(LoadedMatrixGame { policy, step: 0, path: String::new() });
        let frame = 16 * 16 * 3;
        let requests: Vec<ClipRequest> = (0..3u8)
            .map(|i| ClipRequest {
                context: (0..5 * frame).map(|j| (j as u8).wrapping_mul(7).wrapping_add(40 * i)).collect(),
                context_masks: vec![0, 1 << i, 1 << i, 2, 2],
                masks: vec![1 << i; 4],
                noise_seed: 100 + i as u64,
            })
            .collect();
        let sampler = SamplerConfig { steps: 3, ..Default::default() };
        let batch = generate_clips(&m, &requests, &sampler).unwrap();
        for (r, b) in requests.iter().zip(&batch) {
            assert_eq!(&generate_clips(&m, std::slice::from_ref(r), &sampler).unwrap()[0], b);
        }
        assert_ne!(batch[0], batch[1]);
    }

    /// eval generates from pixel frames; a model on the Wan VAE and CLIP is
    /// refused with the reason, not run on the wrong inputs.
    #[test]
    fn eval_refuses_a_matrix_game_model_on_the_wan_vae() {
        let cfg = MatrixGameConfig::tiny_wan();
        let policy = wc_matrix_game::model::fresh_policy(&cfg, 3, &candle_core::Device::Cpu).unwrap();
        let m = LoadedVideoModel::MatrixGame(LoadedMatrixGame { policy, step: 0, path: "file:///base".into() });
        let r = ClipRequest { context: vec![0; 3 * 16 * 16 * 3], context_masks: vec![0, 0, 0], masks: vec![1; 4], noise_seed: 1 };
        let err = generate_clips(&m, &[r], &SamplerConfig::default()).unwrap_err().to_string();
        assert!(err.contains("file:///base") && err.contains("Wan VAE"), "{err}");
    }

    #[test]
    fn lengths_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_lengths("short=1, medium=2,long=4").unwrap(),
            vec![EvalLength { name: "short".into(), clips: 1 }, EvalLength { name: "medium".into(), clips: 2 }, EvalLength { name: "long".into(), clips: 4 }]
        );
        assert!(parse_lengths("short").unwrap_err().contains("NAME=CLIPS"));
        assert!(parse_lengths("short=x").unwrap_err().contains("not a number"));
        assert!(parse_lengths("long=4,short=1").unwrap_err().contains("grow"));
        assert!(parse_lengths("short=0").unwrap_err().contains("at least 1"));
    }

    fn row(model: &str, length: &str, kind: &str, v: f64) -> EvalRow {
        EvalRow {
            run_unix_s: 0,
            model: model.into(),
            checkpoint: String::new(),
            step: 0,
            context: "generated".into(),
            length: length.into(),
            clips: if length == "short" { 1 } else { 4 },
            kind: kind.into(),
            sequences: 2,
            windows: 8,
            rot_acc: v,
            trans_acc: v / 2.0,
            if_score: 0.75 * v,
            both_right: v / 4.0,
            vq_score: -10.0 * v,
            static_if: 0.5,
        }
    }

    #[test]
    fn table1_has_a_row_per_length_and_model_and_deltas_against_the_first() {
        let mut rows = Vec::new();
        for (m, v) in [("base", 0.5), ("run@24", 0.9)] {
            for l in ["short", "long"] {
                for k in ["basic", "combined"] {
                    rows.push(row(m, l, k, if k == "basic" { v } else { v / 2.0 }));
                }
            }
        }
        let t = table1(&rows, false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2 + 2 * 3, "{t}");
        let delta: Vec<&str> = lines.iter().filter(|l| l.contains("delta")).copied().collect();
        assert_eq!(delta.len(), 2);
        // basic rot 0.9 - 0.5, combined rot 0.45 - 0.25, combined VQ -4.5 - -2.5
        assert!(delta[0].contains("+0.400") && delta[0].contains("+0.200") && delta[0].contains("-2.000"), "{t}");
        assert!(lines[2].starts_with(" short     1 base"), "{t}");
        assert!(lines[5].starts_with("  long     4 base"), "{t}");
        // Three models: a delta row per model after the first, each against the first.
        rows.extend(["basic", "combined"].iter().flat_map(|k| ["short", "long"].map(|l| row("ablation", l, k, 0.4))));
        let t = table1(&rows, false);
        let deltas: Vec<&str> = t.lines().filter(|l| l.contains("delta")).collect();
        assert_eq!(deltas.len(), 4, "{t}");
        assert!(deltas[0].contains("delta run@24") && deltas[1].contains("delta ablation"), "{t}");
        assert!(deltas[1].contains("-0.100"), "{t}"); // basic rot 0.4 - 0.5
        assert!(!t.contains("mean delta"), "summary rows only for replicates: {t}");
    }

    #[test]
    fn mean_and_standard_error_match_a_hand_computation() {
        // 1, 2, 3, 6: mean 3, squared deviations 4 + 1 + 0 + 9 = 14,
        // sample variance 14 / 3, standard error sqrt(14 / 3 / 4).
        let (m, se) = mean_and_standard_error(&[1.0, 2.0, 3.0, 6.0]);
        assert!((m - 3.0).abs() < 1e-12);
        assert!((se - (14.0f64 / 12.0).sqrt()).abs() < 1e-12, "{se}");
        // Identical replicates: no spread.
        assert_eq!(mean_and_standard_error(&[0.25, 0.25, 0.25]), (0.25, 0.0));
        // One value: a mean, but no error.
        let (m, se) = mean_and_standard_error(&[0.5]);
        assert_eq!(m, 0.5);
        assert!(se.is_nan());
    }

    #[test]
    fn replicates_end_each_length_with_their_mean_delta_and_its_standard_error() {
        // Base 0.5; three seeds of one setting at 0.6, 0.7, 0.9 (basic rot):
        // deltas 0.1, 0.2, 0.4, mean 0.233..., standard error
        // sqrt(((0.1333)^2 + (0.0333)^2 + (0.1667)^2) / 2 / 3) = 0.0882.
        let mut rows = Vec::new();
        for (m, v) in [("base", 0.5), ("s1@24", 0.6), ("s2@24", 0.7), ("s3@24", 0.9)] {
            for l in ["short", "long"] {
                for k in ["basic", "combined"] {
                    rows.push(row(m, l, k, v));
                }
            }
        }
        let t = table1(&rows, true);
        let mean: Vec<&str> = t.lines().filter(|l| l.contains("mean delta of 3")).collect();
        let se: Vec<&str> = t.lines().filter(|l| l.contains("standard error")).collect();
        assert_eq!((mean.len(), se.len()), (2, 2), "one pair per length: {t}");
        assert!(mean[0].contains("+0.233"), "{t}");
        assert!(se[0].contains("0.088"), "{t}");
        // VQ is -10 v: mean delta -2.333, standard error 0.882.
        assert!(mean[0].contains("-2.333") && se[0].contains("0.882"), "{t}");
        // The summary follows the per-model deltas of its length.
        let lines: Vec<&str> = t.lines().collect();
        let i = lines.iter().position(|l| l.contains("mean delta of 3")).unwrap();
        assert!(lines[i - 1].contains("delta s3@24") && lines[i + 1].contains("standard error"), "{t}");
        // Every row keeps the columns aligned: the summary labels are
        // longer than these model names.
        let bar = lines[2].find('|').unwrap();
        assert!(lines.iter().skip(1).all(|l| l.find('|') == Some(bar)), "{t}");
        // A single replicate has no spread to report.
        let two: Vec<_> = rows.iter().filter(|r| r.model == "base" || r.model == "s1@24").cloned().collect();
        assert!(!table1(&two, true).contains("mean delta"));
    }

    /// What `worldcompass eval` prints, as the user reads it: one snapshot
    /// of two models, one of a base and three replicates.
    #[test]
    fn table1_printouts_match_their_snapshots() {
        let rows = |models: &[(&str, f64)]| -> Vec<EvalRow> {
            let mut rows = Vec::new();
            for (m, v) in models {
                for l in ["short", "long"] {
                    for k in ["basic", "combined"] {
                        rows.push(row(m, l, k, if k == "basic" { *v } else { v / 2.0 }));
                    }
                }
            }
            rows
        };
        insta::assert_snapshot!("table1_two_models", table1(&rows(&[("base", 0.5), ("run@24", 0.9)]), false));
        insta::assert_snapshot!("table1_replicates", table1(&rows(&[("base", 0.5), ("s1@24", 0.6), ("s2@24", 0.7), ("s3@24", 0.9)]), true));
    }
}
