//! The model backend the stages call: one trait ([`Backend`]) and one
//! registry ([`with_backend`], [`write_initial_checkpoint`]), the only
//! place that names architectures.
//!
//! A stage body is generic over [`Backend`]: it reads the committed inputs,
//! derives every seed, asks the backend for what only a model can do
//! (sample clips, decode them for the scorers, train on the selected ones,
//! move the old policy), and commits. Implementations: [`world::WorldBackend`]
//! (the candle world model and its pixel codec),
//! [`matrix_game::MatrixGameBackend`] (Matrix-Game 2.0's causal transformer,
//! the same pixel codec) and [`linear::LinearBackend`] (the linear-Gaussian
//! test double).

pub mod linear;
pub mod matrix_game;
pub mod pixels;
pub mod world;

use wc_config::ModelSection;
use wc_store::{CommittedSet, PendingCommit, RunStore};
use wc_world::Frame;

use crate::error::StageError;
use crate::runner::RunContext;
use crate::tables::GroupRow;

/// Which weights of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The policy being trained.
    Policy,
    /// The old (EMA) policy, as the optimizer and the EMA update use it
    /// (f32).
    OldPolicy,
    /// The old policy as prefix and rollout sample with it: in the run's
    /// sampling dtype (`[run] dtype`).
    Sampler,
}

impl Role {
    /// The checkpoint file's stem.
    pub fn file_stem(self) -> &'static str {
        match self {
            Role::Policy => "policy",
            Role::OldPolicy | Role::Sampler => "old_policy",
        }
    }
}

/// One clip to generate: its per-window action masks and its noise seed.
#[derive(Debug, Clone)]
pub struct ClipRequest {
    pub windows: Vec<u8>,
    pub noise_seed: u64,
}

/// A sequence generated from its prompt's first frame, clip after clip.
#[derive(Debug, Clone)]
pub struct SequenceRequest {
    pub prompt_id: i64,
    pub clips: Vec<ClipRequest>,
}

/// Generated clips: their latents and the noise each started from, clips
/// concatenated in order.
#[derive(Debug, Clone, Default)]
pub struct Sampled {
    pub latents: Vec<f32>,
    pub noise: Vec<f32>,
}

/// A group's candidates as the scorers read them.
pub enum Decoded {
    /// Frames (a video model).
    Frames(GroupFrames),
    /// Latent vectors (the linear test double): the clip before the
    /// candidates, and each candidate's latents.
    Latents { before: Vec<f32>, candidates: Vec<Vec<f32>> },
}

/// One group's frames as the reward reads them.
pub struct GroupFrames {
    /// The prompt's first frame (VQ drift's reference).
    pub first: Frame,
    /// The prefix's frames (clips 1..n-1; none at sample level).
    pub prefix: Vec<Frame>,
    /// Each candidate's frames after the frame before them (`[0]`).
    pub candidates: Vec<Vec<Frame>>,
}

/// A selected candidate of one group, as optimize trains on it.
pub struct Selected<'a> {
    pub group: u64,
    pub row: &'a GroupRow,
    /// The group's shared prefix latents (empty at sample level).
    pub prefix: &'a [f32],
    /// Index of the candidate in its group.
    pub candidate: usize,
    /// The candidate's latents: clip n (clip level) or its whole sequence.
    pub latents: &'a [f32],
    /// Its optimality probability r.
    pub r: f64,
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    pub loss: f64,
    pub grad_norm: f64,
    pub samples: usize,
    pub applied: bool,
}

/// What the stages need of a model.
pub trait Backend {
    /// Loaded weights (a policy or the old policy).
    type Policy;
    /// Loaded optimizer state.
    type Optimizer;

    /// The latent shape of one clip, as prefix and rollout files store it.
    fn clip_shape(&self) -> Vec<usize>;

    /// The weights of checkpoint `k` (listed in `set`).
    fn load_policy(&self, set: &CommittedSet, k: u64, role: Role) -> Result<Self::Policy, StageError>;

    /// The optimizer state of checkpoint `k`, over `policy`.
    fn load_optimizer(&self, set: &CommittedSet, k: u64, policy: &Self::Policy) -> Result<Self::Optimizer, StageError>;

    /// Write checkpoint `k`: the policy, the old policy and the optimizer
    /// state, into `pending`.
    fn save_checkpoint(&self, pending: &mut PendingCommit, k: u64, policy: &Self::Policy, old: &Self::Policy, opt: &Self::Optimizer) -> Result<(), StageError>;

    /// Sequences from their prompts, each clip after the request's earlier
    /// ones, all requests advanced one clip at a time (one batch where the
    /// model batches); `on_clip` is called after each clip index.
    fn sequences(&self, old: &Self::Policy, requests: &[SequenceRequest], on_clip: &dyn Fn()) -> Result<Vec<Sampled>, StageError>;

    /// Candidates of the clip after `prefix` (latents of whole clips, made
    /// under the action masks `prefix_windows`, one per window), one per
    /// noise seed, sharing the prefix's context; `windows` are the
    /// candidates' own.
    fn candidates(&self, old: &Self::Policy, prompt_id: i64, prefix: &[f32], prefix_windows: &[u8], windows: &[u8], seeds: &[u64]) -> Result<Sampled, StageError>;

    /// A group's candidates (`candidates`: each `clips_per_candidate` clips)
    /// after `prefix`, as the scorers read them.
    fn decode(&self, prompt_id: i64, prefix: &[f32], candidates: &[f32], clips_per_candidate: usize) -> Result<Decoded, StageError>;

    /// The frame size of decoded frames (None: the backend decodes to
    /// latents only).
    fn frame_size(&self) -> Option<usize>;

    /// Train `policy` on the selected candidates of iteration `iter` (v_old
    /// from `old`); one report per optimizer step. A step with a non-finite
    /// result is not applied and says so.
    fn optimize(&self, policy: &mut Self::Policy, old: &Self::Policy, opt: &mut Self::Optimizer, selected: &[Selected], iter: u64) -> Result<Vec<StepReport>, StageError>;

    /// The old policy's EMA update, old <- eta old + (1 - eta) policy;
    /// refused if it gives non-finite weights.
    fn ema(&self, old: &mut Self::Policy, policy: &Self::Policy, eta: f64) -> Result<(), StageError>;
}

/// A selected candidate's clip that optimize trains on, with the noise seed
/// and flow time of each of its samples (one per trained timestep).
pub struct TrainedClip<'s, 'a> {
    pub selected: &'s Selected<'a>,
    /// The clip's index in its sequence (1-based).
    pub clip_index: u64,
    /// The latents before the clip (whole clips).
    pub history: &'a [f32],
    pub clip: &'a [f32],
    /// (noise seed, t) per sample.
    pub draws: Vec<(u64, f32)>,
}

/// What the NFT step of iteration `iter` trains on, whatever the model:
/// every selected candidate's trained clips (clip n, or every clip at
/// sample level), each at the iteration's random subset of the sampler's
/// timesteps with its own seeded noise. The one place that numbers the
/// noise: clip-level keeps the historical id j of candidate j;
/// sample-level numbers (clip, candidate) pairs clip-major.
pub fn nft_plan<'s, 'a>(ctx: &RunContext, iter: u64, selected: &'s [Selected<'a>], clip_len: usize) -> Vec<TrainedClip<'s, 'a>> {
    use wc_rl::schedule::{sampler_times, timestep_subset};
    use wc_rl::seeds::{derive_seed, SeedDomain};
    let steps = ctx.cfg.rollout.sampler_steps as usize;
    let times = sampler_times(steps, ctx.cfg.rollout.timestep_shift);
    let subset = timestep_subset(steps, ctx.cfg.optimize.timestep_fraction, derive_seed(ctx.cfg.run.seed, iter, SeedDomain::Optimize, 0, 0));
    let (sample_level, g_count) = (crate::stages::sample_level(ctx), ctx.cfg.rollout.candidates as usize);
    let mut plan = Vec::new();
    for s in selected {
        for (c, history, clip) in crate::stages::trained_clips(ctx, iter, s.prefix, s.latents, clip_len) {
            let id = if sample_level { (c as usize - 1) * g_count + s.candidate } else { s.candidate };
            let draws = subset
                .iter()
                .map(|&ti| (derive_seed(ctx.cfg.run.seed, iter, SeedDomain::Optimize, s.group, (id * steps + ti) as u64 + 1), times[ti] as f32))
                .collect();
            plan.push(TrainedClip { selected: s, clip_index: c, history, clip, draws });
        }
    }
    plan
}

/// The parts of a minibatch that pass forward and backward together
/// (`[optimize] microbatch`; 0: the whole minibatch).
pub fn microbatches<S>(batch: &[S], microbatch: u64) -> std::slice::Chunks<'_, S> {
    batch.chunks(if microbatch == 0 { batch.len().max(1) } else { microbatch as usize })
}

/// Run `step` on `samples` in minibatches of `minibatch`, with a progress
/// bar; one report per step.
pub fn nft_minibatches<S>(samples: &[S], minibatch: usize, mut step: impl FnMut(&[S]) -> Result<StepReport, StageError>) -> Result<Vec<StepReport>, StageError> {
    let pb = crate::stages::progress(samples.len().div_ceil(minibatch), "optimize");
    let mut reports = Vec::new();
    for batch in samples.chunks(minibatch) {
        reports.push(step(batch)?);
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok(reports)
}

/// Something to run with the run's backend (a stage body).
pub trait WithBackend {
    type Output;
    fn run<B: Backend>(self, backend: &B) -> Result<Self::Output, StageError>;
}

/// Run `body` with the backend the run's `[model]` names: the registry.
pub fn with_backend<W: WithBackend>(ctx: &RunContext, body: W) -> Result<W::Output, StageError> {
    match &ctx.cfg.model {
        ModelSection::Linear(m) => body.run(&linear::LinearBackend::open(ctx, m)?),
        ModelSection::World(_) => body.run(&world::WorldBackend::open(ctx)?),
        ModelSection::MatrixGame(_) => body.run(&matrix_game::MatrixGameBackend::open(ctx)?),
    }
}

/// Checkpoint 0 of a new run (and what the backend needs beside it), for
/// `init`: the registry's other entry.
pub fn write_initial_checkpoint(
    store: &RunStore,
    cfg: &wc_config::PipelineConfig,
    prompts: &[wc_data::rows::PromptRow],
    files: &mut crate::init::InitFiles,
) -> Result<(), StageError> {
    match &cfg.model {
        ModelSection::Linear(m) => linear::write_initial_checkpoint(store, cfg, m, files),
        ModelSection::World(m) => world::write_initial_checkpoint(store, cfg, m, prompts, files),
        ModelSection::MatrixGame(m) => matrix_game::write_initial_checkpoint(store, cfg, m, prompts, files),
    }
}
