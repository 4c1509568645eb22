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
use wc_model::codec::PixelCodec;
use wc_model::optim::{OptimConfig, Optimizer};
use wc_model::params::Params;
use wc_model::train::{pretrain_step, PretrainConfig, StepReport, Video};
use wc_model::{ModelConfig, WorldModel};
use wc_stages::checkpoints::{latest_checkpoint, load_params, step_dir, PretrainSettings};
use wc_stages::StageError;
use wc_store::{ManifestState, PendingCommit, RunStore};

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
    let batch = wc_stages::tables::pretrain_metrics_to_batch(log);
    let p = format!("{dir}/metrics.parquet");
    pending.write(&p, wc_schemas::write_table(&wc_schemas::tables::pretrain_metrics(), &out.uri_of(&p), &batch)?)?;
    pending.commit()?;
    Ok(())
}
