//! The pipeline config: `pipelines/<name>.toml`.
//!
//! One TOML file says everything a run computes with: the dataset, the model
//! backend, the rollout, the rewards, the selection and the optimizer. Each
//! hyper-parameter of the paper (section 4.1) is here, with the paper's value
//! documented beside the embedded default. Unknown keys are errors (a typo
//! must not silently fall back to a default), and [`PipelineConfig::validate`]
//! checks every value's range with a message that names the key.
//!
//! [`PipelineConfig::fingerprint`] is the SHA-256 of the canonical JSON form
//! of the config: a stage commit records it, and a rerun under a different
//! config is refused instead of mixing two configs in one run.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod device;
pub use device::{DeviceParseError, DeviceSpec};

/// A config that could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read pipeline config '{path}': {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pipeline config '{path}' is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("pipeline config '{path}': {key} = {value}: {reason}")]
    Invalid {
        path: String,
        key: &'static str,
        value: String,
        reason: String,
    },
}

/// The whole pipeline config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub run: RunSection,
    pub data: DataSection,
    pub model: ModelSection,
    pub rollout: RolloutSection,
    pub reward: RewardSection,
    pub select: SelectSection,
    pub optimize: OptimizeSection,
}

/// `[run]`: identity and length of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Root of every random draw: (seed, iteration, stage, group, candidate).
    pub seed: u64,
    /// Iterations of the full schedule (eta is annealed over it).
    pub iterations: u64,
    /// Where the model runs: "cpu" (default) or "cuda:N". A command's
    /// `--device` (or `WORLDCOMPASS_DEVICE`) wins over it. Not part of the
    /// fingerprint: the same run may run one stage on a GPU node and the
    /// next on a CPU node.
    #[serde(default, skip_serializing_if = "DeviceSpec::is_cpu")]
    pub device: DeviceSpec,
    /// The dtype the world model samples in (prefix and rollout): "f32"
    /// (default) or "bf16" (CUDA devices only). Weights stay f32 in the
    /// checkpoints and the optimizer step runs in f32; bf16 is a cast of
    /// the old policy for sampling. Part of the fingerprint: it changes
    /// the samples.
    #[serde(default, skip_serializing_if = "SamplingDtype::is_f32")]
    pub dtype: SamplingDtype,
}

/// The dtype a model samples in (`[run] dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SamplingDtype {
    #[default]
    F32,
    Bf16,
}

impl SamplingDtype {
    pub fn is_f32(&self) -> bool {
        *self == SamplingDtype::F32
    }

    /// The name as the config writes it.
    pub fn name(&self) -> &'static str {
        match self {
            SamplingDtype::F32 => "f32",
            SamplingDtype::Bf16 => "bf16",
        }
    }
}

/// `[data]`: the prompts and action sequences trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// World prompts (scenes). Paper: 4,000 images with captions.
    pub prompts: u64,
    /// Groups (prompt, action sequence) per iteration.
    pub groups: u64,
    /// Fraction of training sequences that use combined actions.
    pub combined_fraction: f64,
}

/// Which model backend a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// A linear-Gaussian policy over small latent vectors: exercises the
    /// pipeline mechanics (rollout, scoring, selection, updates, commits) in
    /// milliseconds. Not a video model.
    Linear,
    /// The candle world model (`wc-model`): clips are latent video frames,
    /// rewards come from the built-in scorers (`wc-scorers`).
    World,
    /// Matrix-Game 2.0's causal, action-conditioned Wan transformer
    /// (`wc-matrix-game`): the same frames and scorers as `world`.
    MatrixGame,
}

/// How a clip's VQ is computed from its frame scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum VqMode {
    /// Mean score of the sampled frames (the paper).
    #[default]
    Absolute,
    /// Mean of -|score(frame) - score(first frame)| (the reference code).
    Drift,
}

/// What a candidate's interaction-following scores (rot_acc, trans_acc,
/// IF) measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum IfSignal {
    /// The share of windows whose estimated motion the metric reads as the
    /// command (the paper): a clip of one window scores 0, 0.5 or 1.
    #[default]
    Accuracy,
    /// The expected accuracy under the pose estimator's class
    /// probabilities: per window, the probability it gives the commanded
    /// rotation and the commanded translation. Graded where the paper's
    /// metric ties; equal to it when the estimator is certain.
    Expected,
}

/// What reads the candidates' camera motion for the IF reward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum IfInstrument {
    /// The pose estimator (`pose_model`): pixels only, as in the paper.
    #[default]
    Estimator,
    /// Diagnostic, never a production reward: the evaluation's re-render
    /// probe, which reads the simulator (the prompt's scene and the camera
    /// tracked from the start). A run with it measures what RL reaches with
    /// a perfect instrument: the ceiling the estimator's errors cost.
    Probe,
}

/// `[model]`: the policy's architecture, a choice tagged by `kind`. Each
/// kind takes only its own keys: `linear` takes `latent_dim`; `world` and
/// `matrix_game` take `base`, `base_step` and `preset`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", try_from = "RawModelSection")]
pub enum ModelSection {
    Linear(LinearModelConfig),
    World(WorldModelConfig),
    /// The same keys as `world`: `base` is a Matrix-Game pre-training
    /// store (`worldcompass pretrain --arch matrix-game`); `preset` (for a
    /// fresh model) is "tiny" or "embedded".
    MatrixGame(WorldModelConfig),
}

/// `[model] kind = "linear"`: the mechanics backend of the tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearModelConfig {
    /// Size of one clip's latent vector.
    pub latent_dim: usize,
}

/// `[model] kind = "world"`: the candle world model of `wc-model`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldModelConfig {
    /// The store holding the base model's pre-training checkpoints
    /// (`<base>/pretrain/step-*/`), a URI or a local path (relative to the
    /// directory `init` runs in). `init` copies its weights into checkpoint
    /// 0, so later stages never read it. Empty: a fresh, seeded model of
    /// `preset` (for tests).
    #[serde(default)]
    pub base: String,
    /// Base checkpoint step (default: the newest).
    #[serde(default)]
    pub base_step: Option<u64>,
    /// Architecture of a fresh model when `base` is empty: "tiny" or "default".
    #[serde(default = "default_preset")]
    pub preset: String,
}

impl ModelSection {
    /// Which kind of model this is.
    pub fn kind(&self) -> ModelKind {
        match self {
            ModelSection::Linear(_) => ModelKind::Linear,
            ModelSection::World(_) => ModelKind::World,
            ModelSection::MatrixGame(_) => ModelKind::MatrixGame,
        }
    }
}

/// `[model]` as written: every key of every kind, so that each kind can
/// name a key that belongs to another. Runs made before `[model]` became a
/// tagged choice stored every key in their run.toml; a key of another kind
/// is accepted at the value those runs stored (`latent_dim = 0`, `base =
/// ""`, `preset = "tiny"`) and refused otherwise.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModelSection {
    kind: ModelKind,
    latent_dim: Option<usize>,
    base: Option<String>,
    base_step: Option<u64>,
    preset: Option<String>,
}

impl TryFrom<RawModelSection> for ModelSection {
    type Error = String;

    fn try_from(r: RawModelSection) -> Result<Self, String> {
        let foreign = |key: &str, kind: &str, own: &str| format!("`{key}` is a key of kind = \"{kind}\"; this kind takes {own}");
        match r.kind {
            ModelKind::Linear => {
                let own = "latent_dim";
                if r.base.as_deref().is_some_and(|b| !b.is_empty()) {
                    return Err(foreign("base", "world", own));
                }
                if r.base_step.is_some() {
                    return Err(foreign("base_step", "world", own));
                }
                if r.preset.as_deref().is_some_and(|p| p != "tiny") {
                    return Err(foreign("preset", "world", own));
                }
                let latent_dim = r.latent_dim.ok_or("kind = \"linear\" needs latent_dim (the size of a clip's latent vector, at least 8)")?;
                Ok(ModelSection::Linear(LinearModelConfig { latent_dim }))
            }
            ModelKind::World | ModelKind::MatrixGame => {
                if r.latent_dim.is_some_and(|d| d != 0) {
                    return Err(foreign("latent_dim", "linear", "base, base_step and preset"));
                }
                let m = WorldModelConfig { base: r.base.unwrap_or_default(), base_step: r.base_step, preset: r.preset.unwrap_or_else(default_preset) };
                Ok(if r.kind == ModelKind::World { ModelSection::World(m) } else { ModelSection::MatrixGame(m) })
            }
        }
    }
}

/// `[model]` in the flat layout the fingerprint hashes: every key of every
/// kind, as before `[model]` became a tagged choice, so that runs made
/// before it keep their fingerprint.
#[derive(Serialize)]
struct FingerprintModel<'a> {
    kind: ModelKind,
    latent_dim: usize,
    base: &'a str,
    base_step: Option<u64>,
    preset: &'a str,
}

impl<'a> From<&'a ModelSection> for FingerprintModel<'a> {
    fn from(m: &'a ModelSection) -> Self {
        match m {
            ModelSection::Linear(l) => FingerprintModel { kind: ModelKind::Linear, latent_dim: l.latent_dim, base: "", base_step: None, preset: "tiny" },
            ModelSection::World(w) => FingerprintModel { kind: ModelKind::World, latent_dim: 0, base: &w.base, base_step: w.base_step, preset: &w.preset },
            ModelSection::MatrixGame(w) => FingerprintModel { kind: ModelKind::MatrixGame, latent_dim: 0, base: &w.base, base_step: w.base_step, preset: &w.preset },
        }
    }
}

/// What the fingerprint hashes: the config, `[model]` in its flat layout.
/// The fields are those of [`PipelineConfig`], in its order.
#[derive(Serialize)]
struct FingerprintView<'a> {
    run: &'a RunSection,
    data: &'a DataSection,
    model: FingerprintModel<'a>,
    rollout: &'a RolloutSection,
    reward: &'a RewardSection,
    select: &'a SelectSection,
    optimize: &'a OptimizeSection,
}

fn default_preset() -> String {
    "tiny".to_string()
}

/// Rollout granularity (Table 2 ablation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutMode {
    /// The paper's clip-level rollout: shared prefix, G candidates of clip n.
    Clip,
    /// Sample-level: G whole sequences per group, scored as a whole.
    Sample,
}

/// `[rollout]`: clips, candidates, sampler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSection {
    pub mode: RolloutMode,
    /// N clips per sequence. Paper: 16.
    pub clips: u64,
    /// 4-frame action windows per clip. Paper: 4 (16 frames per clip).
    pub windows_per_clip: u64,
    /// G candidates per group. Paper: 16.
    pub candidates: u64,
    /// T sampler steps. Paper: 40.
    pub sampler_steps: u64,
    /// Timestep shift of the flow-matching schedule (1 = none).
    pub timestep_shift: f64,
    /// Classifier-free guidance scale over the action (1 = off).
    #[serde(default = "one")]
    pub guidance: f64,
}

fn one() -> f64 {
    1.0
}

/// Which rewards drive the update (Table 2 ablation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardSet {
    Both,
    IfOnly,
    VqOnly,
}

/// `[reward]`: the action-accuracy metric and the quality scorer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardSection {
    /// Rotation threshold tau_rot in degrees. Paper: 1.
    pub tau_rot_deg: f64,
    /// Translation thresholds; a window is right under any of them.
    /// Paper: [0.01, 0.02, 0.03, 0.04, 0.05].
    pub trans_thresholds: Vec<f64>,
    /// Score frames sampled every this many frames for VQ. Paper: 4.
    pub vq_frame_stride: u64,
    /// External scorer command (program and arguments); empty = built-in.
    #[serde(default)]
    pub external_command: Vec<String>,
    /// Seconds before an external scorer is killed.
    #[serde(default = "default_timeout")]
    pub external_timeout_s: u64,
    /// World backend: the store holding the pose estimator
    /// (`<pose_model>/pose_estimator/step-*/`), a URI or a local path; `init`
    /// copies it into the run.
    #[serde(default)]
    pub pose_model: String,
    /// Absolute VQ (paper) or drift from the first frame (reference code).
    #[serde(default)]
    pub vq_mode: VqMode,
    /// Built-in scorer: the paper's action accuracy or its expectation
    /// under the estimator's probabilities (finer: fewer tied groups).
    #[serde(default)]
    pub if_signal: IfSignal,
    /// Built-in scorer: the pose estimator (default) or, as a diagnostic
    /// ceiling, the simulator-reading probe of the evaluation.
    #[serde(default)]
    pub if_instrument: IfInstrument,
}

fn default_timeout() -> u64 {
    3600
}

/// `[select]`: advantages, optimality probability, best-of-N.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelectSection {
    pub rewards: RewardSet,
    /// lambda: weight of IF in the combined advantage. Paper: 2/3.
    pub lambda: f64,
    /// Z: advantage normaliser inside the clip. Paper: 2.
    pub z: f64,
    /// Best-of-N on/off (Table 3 ablation).
    pub best_of_n: bool,
    /// Keep this many top and this many bottom candidates. Paper: 3 and 3.
    pub keep_top: u64,
    pub keep_bottom: u64,
}

/// `[optimize]`: the NFT update, optimizer and old-policy EMA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizeSection {
    /// Learning rate. Paper: 1e-5 for an 8B model.
    pub lr: f64,
    /// NFT beta. Paper: 1.
    pub beta: f64,
    /// Fraction of the T timesteps trained on per iteration. Paper: 0.5.
    pub timestep_fraction: f64,
    /// EMA decay of the old policy, annealed linearly. Paper: 0.4 -> 0.8.
    pub eta_start: f64,
    pub eta_end: f64,
    /// Momentum of the optimizer.
    pub momentum: f64,
    /// Weight of the optional KL term to the reference model. Paper: off (0).
    pub kl_weight: f64,
    /// World backend: (candidate, timestep) samples per optimizer step; the
    /// selected samples of an iteration make one pass in minibatches.
    #[serde(default = "default_minibatch")]
    pub minibatch: u64,
    /// Guidance of the policy the NFT loss trains. 1 (the default): the
    /// conditional model, sampled and evaluated without guidance
    /// (DiffusionNFT is CFG-free). Set to `rollout.guidance` to train the
    /// guided sampler the rollouts come from (both its conditional and
    /// unconditional predictions), which is then evaluated with that
    /// guidance. Not serialised at 1, so configs without it keep their
    /// fingerprint.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub guidance: f64,
    /// Samples per forward and backward pass within a minibatch (gradient
    /// accumulation: the step is the minibatch's, its activations held for
    /// `microbatch` samples at a time). 0 (the default): the whole
    /// minibatch in one pass. Not serialised at 0, so configs without it
    /// keep their fingerprint.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub microbatch: u64,
}

fn is_one(v: &f64) -> bool {
    *v == 1.0
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// `text` with every line longer than `max` characters cut there (a parse
/// error quotes the offending line, which may be megabytes long).
fn clip_lines(text: &str, max: usize) -> String {
    text.lines()
        .map(|l| match l.char_indices().nth(max) {
            Some((at, _)) => format!("{}... ({} more characters)", &l[..at], l[at..].chars().count()),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The longest `reward.external_timeout_s` accepted (a week).
pub const MAX_EXTERNAL_TIMEOUT_S: u64 = 7 * 24 * 3600;

/// The largest `optimize.lr` accepted.
pub const MAX_LR: f64 = 10.0;
/// The largest `optimize.beta` accepted.
pub const MAX_BETA: f64 = 100.0;

fn default_minibatch() -> u64 {
    32
}

impl PipelineConfig {
    /// Read and validate a config file.
    pub fn load(path: &str) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_string(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parse and validate config text; `origin` names it in errors.
    pub fn parse(origin: &str, text: &str) -> Result<Self, ConfigError> {
        let cfg: PipelineConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: clip_lines(&e.to_string(), 200),
        })?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// The config as TOML (what `init` stores as the run's `run.toml`).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// SHA-256 of the canonical JSON of the config, without `run.device`
    /// (where a stage runs is not what it computes).
    pub fn fingerprint(&self) -> String {
        let mut run = self.run.clone();
        run.device = DeviceSpec::Cpu;
        let view = FingerprintView {
            run: &run,
            data: &self.data,
            model: FingerprintModel::from(&self.model),
            rollout: &self.rollout,
            reward: &self.reward,
            select: &self.select,
            optimize: &self.optimize,
        };
        let json = serde_json::to_vec(&view).expect("config serialises");
        hex::encode(Sha256::digest(&json))
    }

    /// Check every value's range.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |key: &'static str, value: String, reason: &str| {
            Err(ConfigError::Invalid {
                path: origin.to_string(),
                key,
                value,
                reason: reason.to_string(),
            })
        };
        let unit = |x: f64| (0.0..=1.0).contains(&x);
        let r = &self.rollout;
        let s = &self.select;
        let o = &self.optimize;
        // Upper bounds first: every size that allocates or multiplies, so a
        // huge value is an error that names its key, not an overflow panic
        // or an aborted allocation.
        let sizes: [(&'static str, u64, u64); 13] = [
            ("run.iterations", self.run.iterations, 1_000_000),
            ("data.prompts", self.data.prompts, 10_000_000),
            ("data.groups", self.data.groups, 1_000_000),
            ("model.latent_dim", if let ModelSection::Linear(m) = &self.model { m.latent_dim as u64 } else { 0 }, 1 << 20),
            ("rollout.clips", r.clips, 1024),
            ("rollout.windows_per_clip", r.windows_per_clip, 256),
            ("rollout.candidates", r.candidates, 4096),
            ("rollout.sampler_steps", r.sampler_steps, 10_000),
            ("reward.vq_frame_stride", self.reward.vq_frame_stride, 4096),
            ("reward.external_timeout_s", self.reward.external_timeout_s, MAX_EXTERNAL_TIMEOUT_S),
            ("select.keep_top", s.keep_top, 4096),
            ("optimize.minibatch", o.minibatch, 65_536),
            ("optimize.microbatch", o.microbatch, 65_536),
        ];
        for (key, value, max) in sizes {
            if value > max {
                return bad(key, value.to_string(), &format!("must be at most {max}"));
            }
        }
        if s.keep_bottom > 4096 {
            return bad("select.keep_bottom", s.keep_bottom.to_string(), "must be at most 4096");
        }
        if self.run.iterations == 0 {
            return bad("run.iterations", "0".into(), "must be at least 1");
        }
        if self.data.prompts == 0 {
            return bad("data.prompts", "0".into(), "must be at least 1");
        }
        if self.data.groups == 0 {
            return bad("data.groups", "0".into(), "must be at least 1");
        }
        if !unit(self.data.combined_fraction) {
            return bad("data.combined_fraction", self.data.combined_fraction.to_string(), "must be in [0, 1]");
        }
        let linear = self.model.kind() == ModelKind::Linear;
        match &self.model {
            ModelSection::Linear(_) if !self.reward.external_command.is_empty() => {
                return bad("reward.external_command", format!("{:?}", self.reward.external_command), "external scorers read frames: they need model.kind = \"world\"");
            }
            ModelSection::Linear(m) if m.latent_dim < 8 => {
                return bad("model.latent_dim", m.latent_dim.to_string(), "the linear backend needs at least 8 (one per basic action)");
            }
            ModelSection::World(m) if m.base.is_empty() && !["tiny", "default"].contains(&m.preset.as_str()) => {
                return bad("model.preset", m.preset.clone(), "must be \"tiny\" or \"default\" (or set model.base)");
            }
            ModelSection::MatrixGame(m) if m.base.is_empty() && !["tiny", "embedded"].contains(&m.preset.as_str()) => {
                return bad(
                    "model.preset",
                    m.preset.clone(),
                    "must be \"tiny\" or \"embedded\" (or set model.base: the Wan VAE and CLIP layouts, \"tiny-wan\" and \"matrix-game-2\", start from a store made by `worldcompass model import`)",
                );
            }
            ModelSection::World(_) | ModelSection::MatrixGame(_) if self.reward.pose_model.is_empty() && self.reward.external_command.is_empty() && self.reward.if_instrument != IfInstrument::Probe => {
                return bad("reward.pose_model", "\"\"".into(), "the world and matrix_game backends need a pose estimator (or reward.external_command, or if_instrument = \"probe\")");
            }
            _ if self.reward.if_signal == IfSignal::Expected && (linear || !self.reward.external_command.is_empty()) => {
                return bad("reward.if_signal", "\"expected\"".into(), "the expected accuracy is the built-in pose estimator's: it needs model.kind = \"world\" and no reward.external_command");
            }
            ModelSection::Linear(_) if self.optimize.guidance != 1.0 => {
                return bad("optimize.guidance", self.optimize.guidance.to_string(), "a guided policy needs model.kind = \"world\" (the linear backend has no guidance)");
            }
            ModelSection::Linear(_) if !self.run.dtype.is_f32() => {
                return bad("run.dtype", format!("\"{}\"", self.run.dtype.name()), "the linear backend computes in f32 only (the dtype is the world model's)");
            }
            ModelSection::Linear(_) if self.rollout.mode == RolloutMode::Sample => {
                return bad("rollout.mode", "\"sample\"".into(), "sample-level rollout needs model.kind = \"world\" (the linear backend is clip-level only)");
            }
            _ => {}
        }
        if self.reward.if_instrument == IfInstrument::Probe {
            let why = if linear {
                "the probe re-renders the simulator's scenes: it needs model.kind = \"world\""
            } else if !self.reward.external_command.is_empty() {
                "the probe is a built-in scorer: it cannot be combined with reward.external_command"
            } else if self.reward.if_signal == IfSignal::Expected {
                "the probe gives no class probabilities: it needs if_signal = \"accuracy\""
            } else {
                ""
            };
            if !why.is_empty() {
                return bad("reward.if_instrument", "\"probe\"".into(), why);
            }
        }
        if !(r.guidance >= 1.0 && r.guidance.is_finite()) {
            return bad("rollout.guidance", r.guidance.to_string(), "must be >= 1 (1 = no guidance)");
        }
        if !(self.optimize.guidance >= 1.0 && self.optimize.guidance.is_finite()) {
            return bad("optimize.guidance", self.optimize.guidance.to_string(), "must be >= 1 (1 = the conditional model)");
        }
        if self.optimize.minibatch == 0 {
            return bad("optimize.minibatch", "0".into(), "must be at least 1");
        }
        if r.clips == 0 {
            return bad("rollout.clips", "0".into(), "must be at least 1");
        }
        if r.windows_per_clip == 0 {
            return bad("rollout.windows_per_clip", "0".into(), "must be at least 1");
        }
        if r.candidates < 2 {
            return bad("rollout.candidates", r.candidates.to_string(), "need at least 2 candidates for a group advantage");
        }
        if r.sampler_steps == 0 {
            return bad("rollout.sampler_steps", "0".into(), "must be at least 1");
        }
        if !(r.timestep_shift > 0.0 && r.timestep_shift.is_finite()) {
            return bad("rollout.timestep_shift", r.timestep_shift.to_string(), "must be a positive number");
        }
        let rw = &self.reward;
        if !(rw.tau_rot_deg > 0.0 && rw.tau_rot_deg.is_finite()) {
            return bad("reward.tau_rot_deg", rw.tau_rot_deg.to_string(), "must be a positive number of degrees");
        }
        if rw.trans_thresholds.is_empty() || rw.trans_thresholds.iter().any(|t| !(*t > 0.0 && t.is_finite())) {
            return bad("reward.trans_thresholds", format!("{:?}", rw.trans_thresholds), "must be a non-empty list of positive numbers");
        }
        if rw.vq_frame_stride == 0 {
            return bad("reward.vq_frame_stride", "0".into(), "must be at least 1");
        }
        if !unit(s.lambda) {
            return bad("select.lambda", s.lambda.to_string(), "must be in [0, 1]");
        }
        if !(s.z > 0.0 && s.z.is_finite()) {
            return bad("select.z", s.z.to_string(), "must be a positive number");
        }
        if s.best_of_n && s.keep_top + s.keep_bottom > r.candidates {
            return bad(
                "select.keep_top",
                s.keep_top.to_string(),
                &format!("keep_top + keep_bottom ({}) exceeds rollout.candidates ({})", s.keep_top + s.keep_bottom, r.candidates),
            );
        }
        if s.best_of_n && s.keep_top + s.keep_bottom == 0 {
            return bad("select.keep_top", "0".into(), "best_of_n keeps nothing: set keep_top/keep_bottom or best_of_n = false");
        }
        // Models compute in f32: a value finite as f64 may not be as f32
        // (1e39), and no learning rate near that trains anything.
        if !(o.lr > 0.0 && o.lr <= MAX_LR) {
            return bad("optimize.lr", o.lr.to_string(), &format!("must be in (0, {MAX_LR}]"));
        }
        if !(o.beta > 0.0 && o.beta <= MAX_BETA) {
            return bad("optimize.beta", o.beta.to_string(), &format!("must be in (0, {MAX_BETA}]"));
        }
        if !(o.timestep_fraction > 0.0 && o.timestep_fraction <= 1.0) {
            return bad("optimize.timestep_fraction", o.timestep_fraction.to_string(), "must be in (0, 1]");
        }
        if !unit(o.eta_start) {
            return bad("optimize.eta_start", o.eta_start.to_string(), "must be in [0, 1]");
        }
        if !unit(o.eta_end) {
            return bad("optimize.eta_end", o.eta_end.to_string(), "must be in [0, 1]");
        }
        if !(0.0..1.0).contains(&o.momentum) {
            return bad("optimize.momentum", o.momentum.to_string(), "must be in [0, 1)");
        }
        if !(o.kl_weight >= 0.0 && o.kl_weight.is_finite()) {
            return bad("optimize.kl_weight", o.kl_weight.to_string(), "must be >= 0");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embedded() -> String {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../pipelines/linear.toml");
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn shipped_pipelines_parse_and_validate() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../pipelines");
        let mut n = 0;
        for dir in [root.to_string(), format!("{root}/ablations")] {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "toml") {
                    PipelineConfig::load(path.to_str().unwrap()).unwrap_or_else(|e| panic!("{e}"));
                    n += 1;
                }
            }
        }
        assert!(n >= 5, "{n} pipelines");
    }

    #[test]
    fn ablation_pipelines_change_only_their_switch() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../pipelines");
        let default = PipelineConfig::load(&format!("{root}/embedded.toml")).unwrap();
        let switches: [(&str, fn(&mut PipelineConfig)); 7] = [
            ("sample-level", |c| c.rollout.mode = RolloutMode::Sample),
            ("if-only", |c| c.select.rewards = RewardSet::IfOnly),
            ("vq-only", |c| c.select.rewards = RewardSet::VqOnly),
            ("no-best-of-n", |c| c.select.best_of_n = false),
            ("all-timesteps", |c| c.optimize.timestep_fraction = 1.0),
            ("probe-reward", |c| c.reward.if_instrument = IfInstrument::Probe),
            ("guided-policy", |c| c.optimize.guidance = c.rollout.guidance),
        ];
        for (name, switch) in switches {
            let ablation = PipelineConfig::load(&format!("{root}/ablations/{name}.toml")).unwrap();
            let mut expected = default.clone();
            switch(&mut expected);
            assert_ne!(expected, default, "{name} switches nothing");
            assert_eq!(ablation, expected, "pipelines/ablations/{name}.toml differs from pipelines/embedded.toml in more than its switch");
        }
    }

    #[test]
    fn the_scale_study_pipeline_changes_only_its_scale() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../pipelines");
        let default = PipelineConfig::load(&format!("{root}/embedded.toml")).unwrap();
        let study = PipelineConfig::load(&format!("{root}/gpu/scale-study.toml")).unwrap();
        let mut expected = default.clone();
        expected.data.groups = 32;
        expected.rollout.candidates = 16;
        expected.optimize.minibatch = 192;
        expected.run.iterations = 12;
        expected.model = ModelSection::World(WorldModelConfig { base: "runs/scale-study/base".into(), base_step: None, preset: default_preset() });
        assert_eq!(study, expected, "pipelines/gpu/scale-study.toml differs from pipelines/embedded.toml in more than its scale");
    }

    #[test]
    fn the_matrix_game_pipeline_changes_only_the_model() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../pipelines");
        let default = PipelineConfig::load(&format!("{root}/embedded.toml")).unwrap();
        let mg = PipelineConfig::load(&format!("{root}/matrix-game.toml")).unwrap();
        let mut expected = default.clone();
        expected.model = ModelSection::MatrixGame(WorldModelConfig { base: "models/matrix-game".into(), base_step: None, preset: default_preset() });
        assert_eq!(mg, expected, "pipelines/matrix-game.toml differs from pipelines/embedded.toml in more than [model]");
        assert_ne!(mg.fingerprint(), default.fingerprint());
        // A fresh model takes Matrix-Game's presets, and says which.
        let text = std::fs::read_to_string(format!("{root}/matrix-game.toml")).unwrap();
        let fresh = text.replace("base = \"models/matrix-game\"", "preset = \"default\"");
        let err = PipelineConfig::parse("f.toml", &fresh).unwrap_err().to_string();
        assert!(err.contains("\"tiny\" or \"embedded\""), "{err}");
        assert!(PipelineConfig::parse("g.toml", &fresh.replace("\"default\"", "\"embedded\"")).is_ok());
    }

    #[test]
    fn the_full_size_matrix_game_pipeline_is_one_block_per_clip_three_steps_in_bf16() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../pipelines");
        let mg2 = PipelineConfig::load(&format!("{root}/matrix-game-2.toml")).unwrap();
        assert_eq!(mg2.model.kind(), ModelKind::MatrixGame);
        assert_eq!((mg2.rollout.windows_per_clip, mg2.rollout.sampler_steps, mg2.rollout.candidates), (3, 3, 16));
        assert!(!mg2.run.dtype.is_f32());
    }

    #[test]
    fn the_microbatch_defaults_to_the_whole_minibatch_without_changing_the_fingerprint() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../pipelines");
        let text = std::fs::read_to_string(format!("{root}/embedded.toml")).unwrap();
        let default = PipelineConfig::parse("a.toml", &text).unwrap();
        assert_eq!(default.optimize.microbatch, 0);
        let explicit = PipelineConfig::parse("b.toml", &text.replace("[optimize]", "[optimize]\nmicrobatch = 0")).unwrap();
        assert_eq!(explicit.fingerprint(), default.fingerprint());
        let micro = PipelineConfig::parse("c.toml", &text.replace("[optimize]", "[optimize]\nmicrobatch = 4")).unwrap();
        assert_eq!(micro.optimize.microbatch, 4);
        assert_ne!(micro.fingerprint(), default.fingerprint());
        assert_eq!(PipelineConfig::parse("d.toml", &micro.to_toml()).unwrap(), micro, "round trip keeps it");
        let err = PipelineConfig::parse("e.toml", &text.replace("[optimize]", "[optimize]\nmicrobatch = 70000")).unwrap_err().to_string();
        assert!(err.contains("optimize.microbatch"), "{err}");
        let mg2 = PipelineConfig::load(&format!("{root}/matrix-game-2.toml")).unwrap();
        assert_eq!(mg2.optimize.microbatch, 1);
    }

    #[test]
    fn the_policy_guidance_defaults_to_one_without_changing_the_fingerprint() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../pipelines");
        let text = std::fs::read_to_string(format!("{root}/embedded.toml")).unwrap();
        let default = PipelineConfig::parse("a.toml", &text).unwrap();
        assert_eq!(default.optimize.guidance, 1.0);
        // Runs initialised before the key existed keep resuming: an explicit
        // 1 is the same config, and it is not written out.
        let explicit = PipelineConfig::parse("b.toml", &text.replace("[optimize]", "[optimize]\nguidance = 1.0")).unwrap();
        assert_eq!(explicit.fingerprint(), default.fingerprint());
        let optimize_section = default.to_toml().split("[optimize]").nth(1).unwrap().split("\n[").next().unwrap().to_string();
        assert!(optimize_section.contains("beta") && !optimize_section.contains("guidance"), "{optimize_section}");
        let guided = PipelineConfig::parse("c.toml", &text.replace("[optimize]", "[optimize]\nguidance = 2.5")).unwrap();
        assert_eq!(guided.optimize.guidance, 2.5);
        assert_ne!(guided.fingerprint(), default.fingerprint());
        assert_eq!(PipelineConfig::parse("d.toml", &guided.to_toml()).unwrap(), guided, "round trip keeps it");
        let err = PipelineConfig::parse("e.toml", &text.replace("[optimize]", "[optimize]\nguidance = 0.5")).unwrap_err().to_string();
        assert!(err.contains("optimize.guidance"), "{err}");
        let err = PipelineConfig::parse("f.toml", &embedded().replace("[optimize]", "[optimize]\nguidance = 2.5")).unwrap_err().to_string();
        assert!(err.contains("optimize.guidance") && err.contains("world"), "linear backend: {err}");
    }

    #[test]
    fn sample_level_rollout_is_refused_by_the_linear_backend() {
        let text = embedded().replace("mode = \"clip\"", "mode = \"sample\"");
        let err = PipelineConfig::parse("x.toml", &text).unwrap_err().to_string();
        assert!(err.contains("rollout.mode") && err.contains("world"), "{err}");
    }

    #[test]
    fn expected_if_signal_needs_the_built_in_pose_estimator() {
        let text = embedded().replace("vq_frame_stride = 4", "vq_frame_stride = 4\nif_signal = \"expected\"");
        let err = PipelineConfig::parse("x.toml", &text).unwrap_err().to_string();
        assert!(err.contains("reward.if_signal") && err.contains("world"), "{err}");
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../pipelines");
        let world = std::fs::read_to_string(format!("{root}/embedded.toml")).unwrap().replace("if_signal = \"accuracy\"", "if_signal = \"expected\"");
        let cfg = PipelineConfig::parse("world.toml", &world).unwrap();
        assert_eq!(cfg.reward.if_signal, IfSignal::Expected);
        let external = world.replace("[reward]", "[reward]\nexternal_command = [\"python3\", \"score.py\"]");
        let err = PipelineConfig::parse("x.toml", &external).unwrap_err().to_string();
        assert!(err.contains("reward.if_signal") && err.contains("external_command"), "{err}");
    }

    #[test]
    fn the_probe_instrument_needs_the_world_backend_and_hard_accuracy() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../pipelines");
        let default = PipelineConfig::load(&format!("{root}/embedded.toml")).unwrap();
        assert_eq!(default.reward.if_instrument, IfInstrument::Estimator, "the default reads pixels only");
        let world = std::fs::read_to_string(format!("{root}/embedded.toml")).unwrap().replace("if_instrument = \"estimator\"", "if_instrument = \"probe\"");
        assert_eq!(PipelineConfig::parse("world.toml", &world).unwrap().reward.if_instrument, IfInstrument::Probe);
        let cases = [
            ("if_signal = \"accuracy\"", world.replace("if_signal = \"accuracy\"", "if_signal = \"expected\"")),
            ("external_command", world.replace("[reward]", "[reward]\nexternal_command = [\"python3\", \"score.py\"]")),
            ("model.kind = \"world\"", embedded().replace("vq_frame_stride = 4", "vq_frame_stride = 4\nif_instrument = \"probe\"")),
        ];
        for (why, text) in cases {
            let err = PipelineConfig::parse("x.toml", &text).unwrap_err().to_string();
            assert!(err.contains("reward.if_instrument") && err.contains(why), "{why}: {err}");
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let text = embedded().replace("[select]", "[select]\nlambdaa = 0.5");
        let err = PipelineConfig::parse("x.toml", &text).unwrap_err().to_string();
        assert!(err.contains("lambdaa") && err.contains("x.toml"), "{err}");
    }

    #[test]
    fn bad_value_is_named_with_reason() {
        let cfg = PipelineConfig::parse("e", &embedded()).unwrap();
        let text = embedded().replace(&format!("lambda = {}", cfg.select.lambda), "lambda = 1.5");
        let err = PipelineConfig::parse("x.toml", &text).unwrap_err().to_string();
        assert!(err.contains("select.lambda = 1.5") && err.contains("[0, 1]"), "{err}");
        let text = embedded().replace("[rollout]", "[rollout]\n").replace(&format!("candidates = {}", cfg.rollout.candidates), "candidates = \"eight\"");
        let err = PipelineConfig::parse("x.toml", &text).unwrap_err().to_string();
        assert!(err.contains("candidates"), "{err}");
    }

    #[test]
    fn fingerprint_changes_with_any_value_and_survives_roundtrip() {
        let cfg = PipelineConfig::parse("e", &embedded()).unwrap();
        let back = PipelineConfig::parse("roundtrip", &cfg.to_toml()).unwrap();
        assert_eq!(cfg, back);
        assert_eq!(cfg.fingerprint(), back.fingerprint());
        let mut other = cfg.clone();
        other.optimize.lr *= 2.0;
        assert_ne!(cfg.fingerprint(), other.fingerprint());
    }

    /// Regression test for "a TOML parse error echoes the whole offending
    /// line" (issue 28, 9; 157 MB once).
    #[test]
    fn a_parse_error_quotes_a_long_line_only_in_part() {
        let text = format!("{}\n[extra]\nkey = \"{}\" junk\n", embedded(), "x".repeat(1_000_000));
        let err = PipelineConfig::parse("x.toml", &text).unwrap_err().to_string();
        assert!(err.len() < 2_000 && err.contains("x.toml") && err.contains("more characters"), "{} bytes: {}", err.len(), &err[..err.len().min(300)]);
    }

    /// Regression test for "no upper bounds on sizes" (issue 28, 7): huge
    /// values panicked on overflow or aborted on allocation.
    #[test]
    fn huge_sizes_are_range_errors_that_name_the_key() {
        for (key, line) in [
            ("run.iterations", "iterations = 8 "),
            ("data.prompts", "prompts = 16 "),
            ("data.groups", "groups = 8 "),
            ("model.latent_dim", "latent_dim = 16"),
            ("rollout.clips", "clips = 4 "),
            ("rollout.windows_per_clip", "windows_per_clip = 1 "),
            ("rollout.candidates", "candidates = 8 "),
            ("rollout.sampler_steps", "sampler_steps = 10 "),
            ("reward.vq_frame_stride", "vq_frame_stride = 4 "),
        ] {
            let name = line.split(" = ").next().unwrap();
            let text = embedded().replacen(line, &format!("{name} = 18446744073709551615 "), 1);
            assert_ne!(text, embedded(), "no '{line}'");
            let err = PipelineConfig::parse("x.toml", &text).unwrap_err().to_string();
            assert!(err.contains(&format!("{key} = 18446744073709551615")) && err.contains("must be at most"), "{key}: {err}");
        }
        let text = embedded().replacen("vq_frame_stride = 4 ", "vq_frame_stride = 4\nexternal_timeout_s = 18446744073709551615 ", 1);
        let err = PipelineConfig::parse("x.toml", &text).unwrap_err().to_string();
        assert!(err.contains("reward.external_timeout_s") && err.contains("at most 604800"), "{err}");
    }

    #[test]
    fn an_lr_finite_as_f64_but_infinite_as_f32_is_refused() {
        let with = |from: &str, to: &str| {
            let text = embedded().replacen(from, to, 1);
            assert_ne!(text, embedded(), "the embedded pipeline has no '{from}'");
            PipelineConfig::parse("x.toml", &text).unwrap_err().to_string()
        };
        for lr in ["1e39", "1e300", "11.0", "0.0", "-1e-5", "nan", "inf"] {
            let err = with("lr = 0.5", &format!("lr = {lr}"));
            assert!(err.contains("optimize.lr") && err.contains("(0, 10]"), "{lr}: {err}");
        }
        assert!(with("beta = 1.0", "beta = 1e39").contains("optimize.beta"));
    }

    #[test]
    fn run_device_is_read_written_and_left_out_of_the_fingerprint() {
        let cfg = PipelineConfig::parse("e", &embedded()).unwrap();
        assert_eq!(cfg.run.device, DeviceSpec::Cpu);
        assert!(!cfg.to_toml().contains("device"), "the default device is not written: old run.toml files stay byte-identical");
        let text = embedded().replace("[run]", "[run]\ndevice = \"cuda:1\"");
        let gpu = PipelineConfig::parse("gpu.toml", &text).unwrap();
        assert_eq!(gpu.run.device, DeviceSpec::Cuda(1));
        assert_eq!(PipelineConfig::parse("back", &gpu.to_toml()).unwrap(), gpu);
        assert_eq!(gpu.fingerprint(), cfg.fingerprint(), "where a stage runs is not what it computes");
        let err = PipelineConfig::parse("x.toml", &embedded().replace("[run]", "[run]\ndevice = \"tpu\"")).unwrap_err().to_string();
        assert!(err.contains("x.toml") && err.contains("'tpu' is not a device"), "{err}");
    }

    fn shipped(name: &str) -> String {
        std::fs::read_to_string(format!("{}/../../pipelines/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn each_model_kind_takes_only_its_own_keys() {
        let linear = embedded();
        let err = PipelineConfig::parse("x.toml", &linear.replacen("latent_dim = 16", "latent_dim = 16\nbase = \"models/base\"", 1)).unwrap_err().to_string();
        assert!(err.contains("`base` is a key of kind = \"world\"") && err.contains("takes latent_dim"), "{err}");
        let err = PipelineConfig::parse("x.toml", &linear.replacen("latent_dim = 16", "", 1)).unwrap_err().to_string();
        assert!(err.contains("needs latent_dim"), "{err}");
        let world = shipped("embedded.toml");
        let err = PipelineConfig::parse("x.toml", &world.replacen("base = \"models/base\"", "base = \"models/base\"\nlatent_dim = 16", 1)).unwrap_err().to_string();
        assert!(err.contains("`latent_dim` is a key of kind = \"linear\"") && err.contains("base, base_step and preset"), "{err}");
        let err = PipelineConfig::parse("x.toml", &world.replacen("base = \"models/base\"", "base = \"models/base\"\nlayers = 4", 1)).unwrap_err().to_string();
        assert!(err.contains("layers"), "an unknown key is named: {err}");
        let cfg = PipelineConfig::parse("x.toml", &world).unwrap();
        assert_eq!(cfg.model, ModelSection::World(WorldModelConfig { base: "models/base".into(), base_step: None, preset: "tiny".into() }));
    }

    /// Runs made before `[model]` became a tagged choice stored every key of
    /// every kind in their run.toml, and their manifests carry the
    /// fingerprint of that layout: both still open.
    #[test]
    fn runs_made_before_the_tagged_model_section_keep_their_config_and_fingerprint() {
        // Fingerprints in the manifests of runs made by the previous release
        // (`worldcompass train` on the shipped pipelines, 2026-11-29).
        let cases = [("embedded.toml", "f55c8f49181af7f08e7e8ce6c6477183ff1d87ce5792944b781dc8e87f6ccf41"), ("linear.toml", "dab821a8de35720d4317127ee78646ffc0c97c90bc8181ff7c7af145c838fb9e")];
        for (name, before) in cases {
            let cfg = PipelineConfig::parse(name, &shipped(name)).unwrap();
            assert_eq!(cfg.fingerprint(), before, "{name}");
        }
        // The flat layout those runs stored parses to the same config.
        let flat_world = shipped("embedded.toml").replacen("base = \"models/base\"", "latent_dim = 0\nbase = \"models/base\"\npreset = \"tiny\"", 1);
        assert_eq!(PipelineConfig::parse("run.toml", &flat_world).unwrap(), PipelineConfig::parse("e", &shipped("embedded.toml")).unwrap());
        let flat_linear = embedded().replacen("latent_dim = 16", "latent_dim = 16\nbase = \"\"\npreset = \"tiny\"", 1);
        assert_eq!(PipelineConfig::parse("run.toml", &flat_linear).unwrap(), PipelineConfig::parse("l", &embedded()).unwrap());
    }

    #[test]
    fn the_sampling_dtype_is_read_written_and_fingerprinted_and_the_linear_backend_refuses_bf16() {
        let world = shipped("embedded.toml");
        let f32_cfg = PipelineConfig::parse("e", &world).unwrap();
        assert_eq!(f32_cfg.run.dtype, SamplingDtype::F32);
        assert!(!f32_cfg.to_toml().contains("dtype"), "the default is not written (old fingerprints hold)");
        let bf16 = PipelineConfig::parse("e", &world.replacen("[run]\n", "[run]\ndtype = \"bf16\"\n", 1)).unwrap();
        assert_eq!(bf16.run.dtype, SamplingDtype::Bf16);
        assert_eq!(PipelineConfig::parse("roundtrip", &bf16.to_toml()).unwrap(), bf16);
        assert_ne!(bf16.fingerprint(), f32_cfg.fingerprint(), "bf16 samples differ: another config");
        let err = PipelineConfig::parse("x.toml", &embedded().replacen("[run]\n", "[run]\ndtype = \"bf16\"\n", 1)).unwrap_err().to_string();
        assert!(err.contains("run.dtype") && err.contains("linear backend"), "{err}");
        let err = PipelineConfig::parse("x.toml", &world.replacen("[run]\n", "[run]\ndtype = \"fp8\"\n", 1)).unwrap_err().to_string();
        assert!(err.contains("fp8"), "{err}");
    }
}
