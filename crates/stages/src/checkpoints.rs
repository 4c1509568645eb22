//! Checkpoint stores and how to read them: a pre-training store
//! (`<store>/pretrain/step-NNNNNNN/`: the model, its optimizer state, its
//! [`PretrainSettings`]), a pose-estimator store
//! (`<store>/pose_estimator/step-NNNNNNN/`, [`PoseSettings`]), and a
//! training run's checkpoints. Writing them is the jobs' work (`wc-jobs`);
//! the stages read them (init copies a base model and a pose estimator into
//! a run).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wc_model::params::Params;
use wc_model::{ModelConfig, WorldModel};
use wc_scorers::pose::{PoseConfig, PoseNet};
use wc_store::{CommittedSet, RunStore, MANIFEST_FILE};

use crate::error::StageError;

/// Everything a pre-training run depends on (its fingerprint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainSettings {
    /// The embedded clip transformer's sizes (its frame size, the dataset's,
    /// is also the Matrix-Game model's).
    pub model: ModelConfig,
    /// Pre-train Matrix-Game's causal action-conditioned transformer of this
    /// configuration instead of the clip transformer (absent: the clip
    /// transformer; the fingerprints of such runs are unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix_game: Option<wc_matrix_game::MatrixGameConfig>,
    pub seed: u64,
    pub batch: usize,
    pub lr: f64,
    pub warmup_steps: u64,
    pub action_dropout: f64,
    pub checkpoint_every: u64,
    /// Digest of the dataset manifest trained on.
    pub dataset: String,
}

impl Default for PretrainSettings {
    /// The embedded base model's settings (`just pretrain`), the dataset
    /// digest left empty.
    fn default() -> Self {
        PretrainSettings {
            model: ModelConfig::default(),
            matrix_game: None,
            seed: 0,
            batch: 24,
            lr: 2e-3,
            warmup_steps: 100,
            action_dropout: 0.1,
            checkpoint_every: 200,
            dataset: String::new(),
        }
    }
}

impl PretrainSettings {
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(serde_json::to_vec(self).expect("serialises")))
    }
}

pub const PRETRAIN_DIR: &str = "pretrain";

pub fn step_dir(step: u64) -> String {
    format!("{PRETRAIN_DIR}/step-{step:07}")
}

/// The newest committed checkpoint with this fingerprint, as (step, set).
pub fn latest_checkpoint(store: &RunStore, fingerprint: &str) -> Result<Option<(u64, CommittedSet)>, StageError> {
    newest_step(store, PRETRAIN_DIR, Some(fingerprint), None)
}

/// The newest committed `<root>/step-NNNNNNN/` checkpoint (with this
/// fingerprint, or at this step, when given), as (step, set).
pub fn newest_step(store: &RunStore, root: &str, fingerprint: Option<&str>, at: Option<u64>) -> Result<Option<(u64, CommittedSet)>, StageError> {
    let mut best = None;
    for path in store.list(root)? {
        let Some(dir) = path.strip_suffix(&format!("/{MANIFEST_FILE}")) else { continue };
        let Some(step) = dir.strip_prefix(&format!("{root}/step-")).and_then(|s| s.parse::<u64>().ok()) else { continue };
        if at.is_some_and(|a| a != step) || best.as_ref().is_some_and(|(s, _)| step <= *s) {
            continue;
        }
        let set = CommittedSet::open(store, &path)?;
        if fingerprint.is_none_or(|f| set.manifest.fingerprint == f) {
            best = Some((step, set));
        }
    }
    Ok(best)
}


/// Load model parameters from a checkpoint file listed in `set`.
pub fn load_params(store: &RunStore, set: &CommittedSet, path: &str, params: &Params) -> Result<(), StageError> {
    let bytes = set.read(path)?;
    let t = wc_schemas::read_any(&store.uri_of(path), &bytes)?;
    params.load(&t).map_err(|e| StageError::artifact(store.uri_of(path), e))
}

/// A loaded checkpoint.
pub struct LoadedModel {
    pub model: WorldModel,
    pub params: Params,
    pub step: u64,
    pub path: String,
}


/// The newest committed pre-training checkpoint under `store` (or `step`):
/// its step, commit, folder and settings.
fn pretrain_checkpoint(store: &RunStore, step: Option<u64>) -> Result<(u64, CommittedSet, String, PretrainSettings), StageError> {
    let (s, set) = newest_step(store, PRETRAIN_DIR, None, step)?.ok_or_else(|| {
        StageError::invalid(store.uri(), format!("no committed checkpoint{} under {PRETRAIN_DIR}/", step.map(|s| format!(" at step {s}")).unwrap_or_default()))
    })?;
    let dir = step_dir(s);
    let path = format!("{dir}/settings.json");
    let settings: PretrainSettings = serde_json::from_slice(&set.read(&path)?).map_err(|e| StageError::artifact(store.uri_of(&path), e))?;
    Ok((s, set, dir, settings))
}

/// Load the newest pre-training checkpoint under `store` (or `step`)
/// on `device`.
pub fn load_checkpoint(store: &RunStore, step: Option<u64>, device: &candle_core::Device) -> Result<LoadedModel, StageError> {
    let (s, set, dir, settings) = pretrain_checkpoint(store, step)?;
    if settings.matrix_game.is_some() {
        return Err(StageError::invalid(store.uri_of(&dir), "this is a Matrix-Game checkpoint, not one of the embedded clip transformer (use [model] kind = \"matrix_game\")"));
    }
    let mut params = Params::new(0, device);
    let model = WorldModel::new(&settings.model, &mut params)?;
    load_params(store, &set, &format!("{dir}/model.safetensors"), &params)?;
    Ok(LoadedModel { model, params, step: s, path: store.uri_of(&dir) })
}

/// Load the newest Matrix-Game pre-training checkpoint under `store` (or
/// `step`) on `device`: its config and weights, its step and where it is.
pub fn load_matrix_game_checkpoint(
    store: &RunStore,
    step: Option<u64>,
    device: &candle_core::Device,
) -> Result<(wc_matrix_game::MatrixGamePolicy, u64, String), StageError> {
    let (s, set, dir, settings) = pretrain_checkpoint(store, step)?;
    let cfg = settings.matrix_game.ok_or_else(|| {
        StageError::invalid(store.uri_of(&dir), "this is a checkpoint of the embedded clip transformer, not of Matrix-Game (use [model] kind = \"world\", or pre-train with --arch matrix-game)")
    })?;
    let policy = wc_matrix_game::model::fresh_policy(&cfg, 0, device)?;
    load_params(store, &set, &format!("{dir}/model.safetensors"), &policy.params)?;
    Ok((policy, s, store.uri_of(&dir)))
}

/// Files of a Matrix-Game base store's frozen networks, in a checkpoint's
/// folder beside `model.safetensors` (`worldcompass model import` writes
/// them): the Wan VAE and the CLIP vision tower.
pub const FROZEN_VAE_FILE: &str = "vae.safetensors";
pub const FROZEN_CLIP_FILE: &str = "clip_vision.safetensors";

/// The frozen networks' files the Matrix-Game checkpoint under `store` (or
/// `step`) needs, as (the run's path for the file, bytes): the VAE when
/// its config codes with the Wan VAE, the CLIP tower when it reads CLIP
/// tokens; an error names a missing one.
pub fn matrix_game_frozen_files(store: &RunStore, step: Option<u64>) -> Result<Vec<(&'static str, bytes::Bytes)>, StageError> {
    use wc_matrix_game::config::{ImageEncoderConfig, LatentCodecConfig};
    let (_, set, dir, settings) = pretrain_checkpoint(store, step)?;
    let Some(cfg) = settings.matrix_game else { return Ok(Vec::new()) };
    let mut files = Vec::new();
    let needed = [
        (matches!(cfg.codec, LatentCodecConfig::WanVae(_)), FROZEN_VAE_FILE, crate::layout::MATRIX_GAME_VAE),
        (matches!(cfg.image_encoder, ImageEncoderConfig::ClipVision(_)), FROZEN_CLIP_FILE, crate::layout::MATRIX_GAME_CLIP),
    ];
    for (_, name, run_path) in needed.iter().filter(|(need, _, _)| *need) {
        let path = format!("{dir}/{name}");
        if !set.paths().any(|p| p == path) {
            return Err(StageError::invalid(store.uri_of(&path), "the Matrix-Game config needs this frozen network, and the base store does not have it (make the store with `worldcompass model import`)"));
        }
        files.push((*run_path, set.read(&path)?));
    }
    Ok(files)
}

/// A loaded Matrix-Game model (a pre-training checkpoint or a run's).
pub struct LoadedMatrixGame {
    pub policy: wc_matrix_game::MatrixGamePolicy,
    pub step: u64,
    pub path: String,
}

/// A loaded model of either video architecture (what `eval` compares).
pub enum LoadedVideoModel {
    World(LoadedModel),
    MatrixGame(LoadedMatrixGame),
}

impl LoadedVideoModel {
    pub fn step(&self) -> u64 {
        match self {
            LoadedVideoModel::World(m) => m.step,
            LoadedVideoModel::MatrixGame(m) => m.step,
        }
    }

    pub fn path(&self) -> &str {
        match self {
            LoadedVideoModel::World(m) => &m.path,
            LoadedVideoModel::MatrixGame(m) => &m.path,
        }
    }
}

/// The newest pre-training checkpoint under `store` (or `step`), of
/// whichever architecture it holds.
pub fn load_video_checkpoint(store: &RunStore, step: Option<u64>, device: &candle_core::Device) -> Result<LoadedVideoModel, StageError> {
    let (s, _, _, settings) = pretrain_checkpoint(store, step)?;
    if settings.matrix_game.is_some() {
        let (policy, step, path) = load_matrix_game_checkpoint(store, Some(s), device)?;
        Ok(LoadedVideoModel::MatrixGame(LoadedMatrixGame { policy, step, path }))
    } else {
        Ok(LoadedVideoModel::World(load_checkpoint(store, Some(s), device)?))
    }
}

/// Checkpoint `k` of a run (`which`: "policy" or "old_policy"), of the
/// architecture its `[model]` names.
pub fn load_video_run_checkpoint(run: &RunStore, k: u64, which: &str, device: wc_config::DeviceSpec) -> Result<LoadedVideoModel, StageError> {
    let ctx = crate::runner::RunContext::from_store(run.clone())?.on_device(Some(device));
    match &ctx.cfg.model {
        wc_config::ModelSection::MatrixGame(_) => {
            let b = crate::backend::matrix_game::MatrixGameBackend::open(&ctx)?;
            let set = crate::inputs::checkpoint_set(&ctx, k)?;
            let policy = b.load(&set, k, which)?;
            Ok(LoadedVideoModel::MatrixGame(LoadedMatrixGame { policy, step: k, path: run.uri_of(&crate::layout::checkpoint_file(k, which)) }))
        }
        wc_config::ModelSection::Linear(_) => Err(StageError::invalid(run.uri(), "a linear-backend run has no video model to load")),
        wc_config::ModelSection::World(_) => Ok(LoadedVideoModel::World(load_run_checkpoint(run, k, which, device)?)),
    }
}

/// Load checkpoint `k` of a world-backend run (`which`: "policy" or
/// "old_policy") on `device`.
pub fn load_run_checkpoint(run: &RunStore, k: u64, which: &str, device: wc_config::DeviceSpec) -> Result<LoadedModel, StageError> {
    let ctx = crate::runner::RunContext::from_store(run.clone())?.on_device(Some(device));
    let init = crate::inputs::init_set(&ctx)?;
    let cfg = crate::world::model_config(&ctx, &init)?;
    let set = crate::inputs::checkpoint_set(&ctx, k)?;
    let p = crate::world::load_policy(&ctx, &cfg, &set, k, which)?;
    Ok(LoadedModel { model: p.model, params: p.params, step: k, path: run.uri_of(&crate::layout::checkpoint_file(k, which)) })
}

/// Where pose estimator checkpoints live under their store.
pub const POSE_DIR: &str = "pose_estimator";

/// Everything a pose-estimator training run depends on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoseSettings {
    pub model: PoseConfig,
    pub seed: u64,
    pub batch: usize,
    pub lr: f64,
    /// Steps of the cosine learning-rate schedule.
    pub schedule_steps: u64,
    pub checkpoint_every: u64,
    /// Start from these weights instead of random ones (absent from the
    /// settings of a run from scratch, so their fingerprint is unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_start: Option<WarmStart>,
    /// Generated windows labelled by the probe mixed into every batch
    /// (absent from renders-only settings, so their fingerprint is
    /// unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated: Option<GeneratedMix>,
}

/// The labelled generated windows a run mixes in, by identity: the
/// fingerprint of each labelled store's content ([`LabelledSet::identity`])
/// and the share of every batch they fill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratedMix {
    pub sets: Vec<String>,
    pub windows: usize,
    pub share: f64,
}

/// The trained estimator a run starts from, by identity rather than
/// location: the fingerprint of its settings and its step. (A location would
/// make the settings, and so the resume, depend on where the source lay.)
/// Its optimizer state is not carried over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WarmStart {
    pub fingerprint: String,
    pub step: u64,
}

impl WarmStart {
    /// The newest estimator under `source`.
    pub fn newest(source: &RunStore) -> Result<WarmStart, StageError> {
        let (step, _) = newest_step(source, POSE_DIR, None, None)?
            .ok_or_else(|| StageError::invalid(source.uri(), format!("no committed pose estimator under {POSE_DIR}/ to start from")))?;
        Ok(WarmStart { fingerprint: read_settings(source, step)?.fingerprint(), step })
    }
}

impl PoseSettings {
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(serde_json::to_vec(self).expect("serialises")))
    }
}

/// The folder of a pose-estimator checkpoint under its store.
pub fn pose_step_dir(step: u64) -> String {
    format!("{POSE_DIR}/step-{step:07}")
}

/// A failure of the pose estimator's own code, kept as the cause.
pub fn pose_err(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> StageError {
    StageError::artifact("the pose estimator", e)
}

/// The settings of the checkpoint at `step`.
pub fn read_settings(store: &RunStore, step: u64) -> Result<PoseSettings, StageError> {
    let (_, set) = newest_step(store, POSE_DIR, None, Some(step))?.ok_or_else(|| StageError::invalid(store.uri(), format!("no pose estimator at step {step}")))?;
    let p = format!("{}/settings.json", pose_step_dir(step));
    serde_json::from_slice(&set.read(&p)?).map_err(|e| StageError::artifact(store.uri_of(&p), e))
}

/// A loaded pose estimator.
pub struct LoadedPose {
    pub net: PoseNet,
    pub params: Params,
    pub step: u64,
    pub path: String,
}

/// Load the newest committed pose estimator under `store` onto `device`.
pub fn load_pose(store: &RunStore, device: &candle_core::Device) -> Result<LoadedPose, StageError> {
    let (step, set) = newest_step(store, POSE_DIR, None, None)?
        .ok_or_else(|| StageError::invalid(store.uri(), format!("no committed pose estimator under {POSE_DIR}/ (train one with `worldcompass scorers train-pose`)")))?;
    let dir = pose_step_dir(step);
    let settings: PoseSettings = serde_json::from_slice(&set.read(&format!("{dir}/settings.json"))?)
        .map_err(|e| StageError::artifact(store.uri_of(&format!("{dir}/settings.json")), e))?;
    let mut params = Params::new(0, device);
    let net = PoseNet::new(&settings.model, &mut params).map_err(pose_err)?;
    load_params(store, &set, &format!("{dir}/model.safetensors"), &params)?;
    Ok(LoadedPose { net, params, step, path: store.uri_of(&dir) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_estimators_settings_keep_their_fingerprint() {
        // The shipped estimator's settings (a warm start) must parse and
        // fingerprint to what its manifest records, or `just pose` would
        // retrain it instead of resuming; a different source step is a
        // different run.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/pose/pose_estimator");
        let steps: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(steps.len(), 1, "models/pose ships one checkpoint: {steps:?}");
        let root = steps[0].display().to_string();
        let settings: PoseSettings = serde_json::from_slice(&std::fs::read(format!("{root}/settings.json")).unwrap()).unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(format!("{root}/_manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["fingerprint"].as_str().unwrap(), settings.fingerprint());
        let w = settings.warm_start.clone().expect("the shipped estimator is warm-started");
        let other = PoseSettings { warm_start: Some(WarmStart { step: w.step + 1, ..w }), ..settings.clone() };
        assert_ne!(other.fingerprint(), settings.fingerprint());
        // Settings without a warm start serialise as before warm starts
        // existed (no key): the first stage's fingerprint is unchanged.
        let scratch = PoseSettings { warm_start: None, ..settings.clone() };
        assert!(!serde_json::to_string(&settings).unwrap().contains("generated"));
        assert!(!serde_json::to_string(&scratch).unwrap().contains("warm_start"));
    }
}
