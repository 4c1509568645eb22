//! Training the learned pose estimator, and the labelled generated windows
//! it can also train on.
//!
//! `worldcompass scorers train-pose` trains it on fresh simulator renders
//! (see `wc_scorers::pose`) and commits a checkpoint every
//! `checkpoint_every` steps under `<out>/pose_estimator/step-NNNNNNN/`
//! (model, optimizer state, settings). Restarted with the same settings it
//! resumes from the newest checkpoint; batches derive from (seed, step), so
//! the result is the same bytes as an uninterrupted run. A run can also
//! start from another estimator's weights ([`WarmStart`]): a new schedule
//! (and, with a new seed, new windows) on top of a trained estimator.
//!
//! `worldcompass scorers label-windows` commits a run's generated candidate
//! windows labelled by the evaluation's probe under `<out>/labelled_windows/`
//! ([`commit_labelled`], [`load_labelled`]); a training run can mix them
//! into its batches ([`GeneratedMix`]).

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wc_schemas::{tensors, DimBindings};
use wc_scorers::labelled::{self, LabelledWindow};
use wc_scorers::pose::PoseTrainer;
use wc_stages::checkpoints::{load_params, newest_step, pose_err as err, pose_step_dir as step_dir, read_settings, PoseSettings, POSE_DIR};
use wc_stages::StageError;
use wc_store::{ManifestState, PendingCommit, RunStore};

/// Train (or resume) up to `steps`; `on_step(step, loss)` sees every step.
/// A run whose settings have a warm start reads its first weights from
/// `warm_source` (needed only before its first checkpoint); one whose
/// settings mix in generated windows trains on `generated`, the windows of
/// the labelled sets the settings name, in that order.
pub fn train_pose(
    out: &RunStore,
    settings: &PoseSettings,
    steps: u64,
    warm_source: Option<&RunStore>,
    generated: &[LabelledSet],
    device: &candle_core::Device,
    mut on_step: impl FnMut(u64, f64),
) -> Result<u64, StageError> {
    let fingerprint = settings.fingerprint();
    let mut t = PoseTrainer::new(&settings.model, settings.seed, settings.batch, settings.lr, device).map_err(err)?;
    let given: Vec<String> = generated.iter().map(|g| g.identity.clone()).collect();
    match &settings.generated {
        Some(mix) if mix.sets == given => {
            t.generated = generated.iter().flat_map(|g| g.windows.iter().cloned()).collect();
            t.generated_share = mix.share;
            if t.generated.len() != mix.windows {
                return Err(StageError::invalid(out.uri(), format!("the labelled sets hold {} windows, the settings {}", t.generated.len(), mix.windows)));
            }
        }
        None if given.is_empty() => {}
        _ => return Err(StageError::invalid(out.uri(), "the labelled windows given are not the ones the settings name".to_string())),
    }
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
        if !from.model.same_parameters(&settings.model) {
            return Err(StageError::invalid(
                source.uri_of(&step_dir(w.step)),
                format!("a warm start needs the same estimator (frame size, hidden width, derotate): it is {:?}, this run's is {:?}", from.model, settings.model),
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

/// Where `scorers label-windows` commits a run's labelled windows under its
/// store: one commit per iteration read, `labelled_windows/iter-NNNNNN/`.
pub const LABELLED_DIR: &str = "labelled_windows";

/// The iteration of a run a labelled commit was read from (its
/// fingerprint: the same iteration labelled again is the same commit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelledSource {
    pub run: String,
    pub iter: u64,
}

/// Commit iteration `source.iter`'s labelled windows under `out`; false
/// when it was committed already (the command resumes).
pub fn commit_labelled(out: &RunStore, source: &LabelledSource, windows: &[LabelledWindow]) -> Result<bool, StageError> {
    if labelled_is_committed(out, source)? {
        return Ok(false);
    }
    let mut pending = labelled_commit(out, source);
    let dir = labelled_dir(source.iter);
    let size = windows.first().map_or(0, |w| w.frames.first.width);
    let bindings = DimBindings::new().dim("windows", windows.len()).dim("height", size).dim("width", size);
    let p = format!("{dir}/windows.safetensors");
    pending.write(&p, wc_schemas::write_tensors(&tensors::probe_labelled_windows(), &bindings, &out.uri_of(&p), &labelled::to_tensors(windows))?)?;
    pending.write(&format!("{dir}/source.json"), Bytes::from(serde_json::to_vec_pretty(source).expect("serialises")))?;
    pending.commit()?;
    Ok(true)
}

/// Whether `source`'s labelled windows are committed under `out` (a
/// commit of another run's iteration there is an error).
pub fn labelled_is_committed(out: &RunStore, source: &LabelledSource) -> Result<bool, StageError> {
    let mut pending = labelled_commit(out, source);
    match pending.check(false) {
        Ok(state) => Ok(matches!(state, ManifestState::Committed(_))),
        Err(wc_store::StoreError::FingerprintMismatch { path, .. }) => Err(StageError::invalid(
            out.uri_of(&path),
            format!("holds the labelled windows of another run than {} (iteration {}): give each run its own --out", source.run, source.iter),
        )),
        Err(e) => Err(e.into()),
    }
}

fn labelled_dir(iter: u64) -> String {
    format!("{LABELLED_DIR}/iter-{iter:06}")
}

fn labelled_commit(out: &RunStore, source: &LabelledSource) -> PendingCommit {
    let fingerprint = hex::encode(Sha256::digest(serde_json::to_vec(source).expect("serialises")));
    PendingCommit::begin(out, &labelled_dir(source.iter), "label_windows", Some(source.iter), None, &fingerprint)
}

/// Every labelled window committed under a store, and the identity of
/// that content.
#[derive(Debug, Clone)]
pub struct LabelledSet {
    /// SHA-256 over the fingerprints of its commits, in order.
    pub identity: String,
    pub windows: Vec<LabelledWindow>,
}

/// Load every labelled commit under `store` (in iteration order).
pub fn load_labelled(store: &RunStore) -> Result<LabelledSet, StageError> {
    let mut hasher = Sha256::new();
    let mut windows = Vec::new();
    let manifests: Vec<String> = store.list(LABELLED_DIR)?.into_iter().filter(|p| p.ends_with(wc_store::MANIFEST_FILE)).collect();
    if manifests.is_empty() {
        return Err(StageError::invalid(store.uri(), format!("no labelled windows under {LABELLED_DIR}/ (label a run's candidates with `worldcompass scorers label-windows`)")));
    }
    for m in manifests {
        let set = wc_store::CommittedSet::open(store, &m)?;
        hasher.update(set.manifest.fingerprint.as_bytes());
        let p = m.replace(wc_store::MANIFEST_FILE, "windows.safetensors");
        let tensors = wc_schemas::read_tensors(&tensors::probe_labelled_windows(), &DimBindings::new(), &store.uri_of(&p), &set.read(&p)?)?;
        windows.extend(labelled::from_tensors(&tensors).map_err(|e| StageError::artifact(store.uri_of(&p), e))?);
    }
    Ok(LabelledSet { identity: hex::encode(hasher.finalize()), windows })
}
