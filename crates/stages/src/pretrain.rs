//! `pretrain`: train the base world model on a dataset's ground-truth clips.
//!
//! A batch job like the stages: it reads the committed dataset, trains, and
//! commits a checkpoint every `checkpoint_every` steps under
//! `<out>/pretrain/step-<s>/` (model, optimizer state, the loss of the steps
//! since the previous checkpoint, the model config). Restarted, it resumes
//! from the newest checkpoint committed under the same settings; batches,
//! noise and times derive from (seed, step), so the result is the same bytes
//! as an uninterrupted run.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wc_model::codec::PixelCodec;
use wc_model::optim::{OptimConfig, Optimizer};
use wc_model::params::Params;
use wc_model::train::{pretrain_step, PretrainConfig, StepReport, Video};
use wc_model::{ModelConfig, WorldModel};
use wc_store::{CommittedSet, ManifestState, PendingCommit, RunStore, MANIFEST_FILE};

use crate::error::StageError;

/// Everything a pre-training run depends on (its fingerprint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainSettings {
    pub model: ModelConfig,
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

/// Run (or resume) pre-training up to `steps`. `on_step` sees each step's report.
pub fn run_pretrain(
    data: &RunStore,
    out: &RunStore,
    settings_in: PretrainSettings,
    steps: u64,
    device: &candle_core::Device,
    mut on_step: impl FnMut(u64, &StepReport),
) -> Result<u64, StageError> {
    let dataset = wc_data::read::open_dataset(data).map_err(|e| StageError::artifact(format!("the dataset under {}", data.uri()), e))?;
    let (gt, size) = wc_data::read::pretrain_videos(data).map_err(|e| StageError::artifact(format!("the pre-training clips under {}", data.uri()), e))?;
    // The dataset decides the frame size.
    let model = ModelConfig { frame_size: size, ..settings_in.model.clone() };
    let settings = PretrainSettings { dataset: dataset.digest.clone(), model, ..settings_in };
    let videos: Vec<Video> = gt.into_iter().map(|v| Video { frames: v.frames, actions: v.actions }).collect();
    if videos.is_empty() {
        return Err(StageError::invalid(data.uri(), "the dataset has no pre-training clips"));
    }
    let fingerprint = settings.fingerprint();
    let mut params = Params::new(settings.seed, device);
    let model = WorldModel::new(&settings.model, &mut params)?;
    let mut opt = Optimizer::new(OptimConfig { lr: settings.lr, ..Default::default() }, &params)?;
    let mut start = 0;
    if let Some((step, set)) = latest_checkpoint(out, &fingerprint)? {
        load_params(out, &set, &format!("{}/model.safetensors", step_dir(step)), &params)?;
        let p = format!("{}/optimizer.safetensors", step_dir(step));
        let t = wc_schemas::read_any(&out.uri_of(&p), &set.read(&p)?)?;
        opt.load(&t)?;
        start = step;
        tracing::info!(step, "resuming pre-training");
    }
    let pc = PretrainConfig {
        seed: settings.seed,
        batch: settings.batch,
        lr: settings.lr,
        warmup_steps: settings.warmup_steps,
        action_dropout: settings.action_dropout,
        ..Default::default()
    };
    let mut log: Vec<(u64, StepReport)> = Vec::new();
    for step in start..steps {
        let r = pretrain_step(&model, &params, &mut opt, &videos, &PixelCodec, &pc, step)?;
        if !r.applied {
            tracing::warn!(step, loss = r.loss, grad_norm = r.grad_norm, "non-finite step skipped");
        }
        on_step(step, &r);
        log.push((step, r));
        let done = step + 1;
        if done % settings.checkpoint_every == 0 || done == steps {
            commit_checkpoint(out, &settings, &fingerprint, done, &params, &opt, &log)?;
            log.clear();
        }
    }
    Ok(steps.max(start))
}

fn commit_checkpoint(
    out: &RunStore,
    settings: &PretrainSettings,
    fingerprint: &str,
    step: u64,
    params: &Params,
    opt: &Optimizer,
    log: &[(u64, StepReport)],
) -> Result<(), StageError> {
    let dir = step_dir(step);
    let mut pending = PendingCommit::begin(out, &dir, "pretrain", Some(step), None, fingerprint);
    if let ManifestState::Committed(_) = pending.check(false)? {
        return Ok(());
    }
    let p = format!("{dir}/model.safetensors");
    pending.write(&p, wc_schemas::write_any(&out.uri_of(&p), &params.to_tensor_set()?)?)?;
    let p = format!("{dir}/optimizer.safetensors");
    pending.write(&p, wc_schemas::write_any(&out.uri_of(&p), &opt.to_tensor_set()?)?)?;
    let p = format!("{dir}/settings.json");
    pending.write(&p, Bytes::from(serde_json::to_vec_pretty(settings).expect("serialises")))?;
    let batch = crate::tables::pretrain_metrics_to_batch(log);
    let p = format!("{dir}/metrics.parquet");
    pending.write(&p, wc_schemas::write_table(&wc_schemas::tables::pretrain_metrics(), &out.uri_of(&p), &batch)?)?;
    pending.commit()?;
    Ok(())
}
