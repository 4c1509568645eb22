//! Training, storing and loading the learned pose estimator.
//!
//! `worldcompass scorers train-pose` trains it on fresh simulator renders
//! (see `wc_scorers::pose`) and commits a checkpoint every
//! `checkpoint_every` steps under `<out>/pose_estimator/step-NNNNNNN/`
//! (model, optimizer state, settings). Restarted with the same settings it
//! resumes from the newest checkpoint; batches derive from (seed, step), so
//! the result is the same bytes as an uninterrupted run. A run can also
//! start from another estimator's weights ([`WarmStart`]): a new schedule
//! (and, with a new seed, new windows) on top of a trained estimator.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wc_model::params::Params;
use wc_scorers::pose::{PoseConfig, PoseNet, PoseTrainer};
use wc_store::{ManifestState, PendingCommit, RunStore};

use crate::error::StageError;
use crate::pretrain::{load_params, newest_step};

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

fn step_dir(step: u64) -> String {
    format!("{POSE_DIR}/step-{step:07}")
}

fn err(e: impl std::fmt::Display) -> StageError {
    StageError::invalid("pose estimator", e.to_string())
}

/// Train (or resume) up to `steps`; `on_step(step, loss)` sees every step.
/// A run whose settings have a warm start reads its first weights from
/// `warm_source` (needed only before its first checkpoint).
pub fn train_pose(out: &RunStore, settings: &PoseSettings, steps: u64, warm_source: Option<&RunStore>, mut on_step: impl FnMut(u64, f64)) -> Result<u64, StageError> {
    let fingerprint = settings.fingerprint();
    let device = wc_model::train::default_device();
    let mut t = PoseTrainer::new(&settings.model, settings.seed, settings.batch, settings.lr, &device).map_err(err)?;
    let mut start = 0;
    if let Some((step, set)) = newest_step(out, POSE_DIR, Some(&fingerprint), None)? {
        load_params(out, &set, &format!("{}/model.safetensors", step_dir(step)), &t.params)?;
        let p = format!("{}/optimizer.safetensors", step_dir(step));
        t.opt.load(&wc_schemas::read_any(&out.uri_of(&p), &set.read(&p)?)?).map_err(err)?;
        start = step;
        tracing::info!(step, "resuming pose-estimator training");
    } else if let Some(w) = &settings.warm_start {
        let source = warm_source.ok_or_else(|| StageError::invalid(out.uri(), "the settings start from another estimator: name its store (--init-from)".to_string()))?;
        let (_, set) = newest_step(source, POSE_DIR, Some(&w.fingerprint), Some(w.step))?
            .ok_or_else(|| StageError::invalid(source.uri(), format!("no pose estimator at step {} with settings fingerprint {}", w.step, w.fingerprint)))?;
        let from = read_settings(source, w.step)?;
        if from.model != settings.model {
            return Err(StageError::invalid(
                source.uri_of(&step_dir(w.step)),
                format!("a warm start needs the same estimator: it is {:?}, this run's is {:?}", from.model, settings.model),
            ));
        }
        load_params(source, &set, &format!("{}/model.safetensors", step_dir(w.step)), &t.params)?;
        tracing::info!(source = %source.uri(), step = w.step, "warm start");
    }
    for step in start..steps {
        let loss = t.step(step, settings.schedule_steps).map_err(err)?;
        on_step(step, loss);
        let done = step + 1;
        if done % settings.checkpoint_every == 0 || done == steps {
            let dir = step_dir(done);
            let mut pending = PendingCommit::begin(out, &dir, "pose_estimator", Some(done), None, &fingerprint);
            if let ManifestState::Committed(_) = pending.check(false)? {
                continue;
            }
            let p = format!("{dir}/model.safetensors");
            pending.write(&p, wc_schemas::write_any(&out.uri_of(&p), &t.params.to_tensor_set().map_err(err)?)?)?;
            let p = format!("{dir}/optimizer.safetensors");
            pending.write(&p, wc_schemas::write_any(&out.uri_of(&p), &t.opt.to_tensor_set().map_err(err)?)?)?;
            let p = format!("{dir}/settings.json");
            pending.write(&p, Bytes::from(serde_json::to_vec_pretty(settings).expect("serialises")))?;
            pending.commit()?;
        }
    }
    Ok(steps.max(start))
}

/// The settings of the checkpoint at `step`.
pub fn read_settings(store: &RunStore, step: u64) -> Result<PoseSettings, StageError> {
    let (_, set) = newest_step(store, POSE_DIR, None, Some(step))?.ok_or_else(|| StageError::invalid(store.uri(), format!("no pose estimator at step {step}")))?;
    let p = format!("{}/settings.json", step_dir(step));
    serde_json::from_slice(&set.read(&p)?).map_err(|e| StageError::invalid(store.uri_of(&p), e.to_string()))
}

/// A loaded pose estimator.
pub struct LoadedPose {
    pub net: PoseNet,
    pub params: Params,
    pub step: u64,
    pub path: String,
}

/// Load the newest committed pose estimator under `store`.
pub fn load_pose(store: &RunStore) -> Result<LoadedPose, StageError> {
    let (step, set) = newest_step(store, POSE_DIR, None, None)?
        .ok_or_else(|| StageError::invalid(store.uri(), format!("no committed pose estimator under {POSE_DIR}/ (train one with `worldcompass scorers train-pose`)")))?;
    let dir = step_dir(step);
    let settings: PoseSettings = serde_json::from_slice(&set.read(&format!("{dir}/settings.json"))?)
        .map_err(|e| StageError::invalid(store.uri_of(&format!("{dir}/settings.json")), e.to_string()))?;
    let mut params = Params::new(0, &wc_model::train::default_device());
    let net = PoseNet::new(&settings.model, &mut params).map_err(err)?;
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
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/pose/pose_estimator/step-0003000");
        let settings: PoseSettings = serde_json::from_slice(&std::fs::read(format!("{root}/settings.json")).unwrap()).unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(format!("{root}/_manifest.json")).unwrap()).unwrap();
        assert_eq!(manifest["fingerprint"].as_str().unwrap(), settings.fingerprint());
        let w = settings.warm_start.clone().expect("the shipped estimator is warm-started");
        let other = PoseSettings { warm_start: Some(WarmStart { step: w.step + 1, ..w }), ..settings.clone() };
        assert_ne!(other.fingerprint(), settings.fingerprint());
        // Settings without a warm start serialise as before warm starts
        // existed (no key): the first stage's fingerprint is unchanged.
        let scratch = PoseSettings { warm_start: None, ..settings.clone() };
        assert!(!serde_json::to_string(&scratch).unwrap().contains("warm_start"));
    }
}
