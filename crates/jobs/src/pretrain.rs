//! `pretrain`: train the base world model on a dataset's ground-truth clips:
//! the embedded clip transformer, or Matrix-Game's causal transformer
//! (`PretrainSettings::matrix_game`).
//!
//! A batch job like the stages: it reads the committed dataset, trains, and
//! commits a checkpoint every `checkpoint_every` steps under
//! `<out>/pretrain/step-<s>/` (model, optimizer state, the loss of the steps
//! since the previous checkpoint, the model config). Restarted, it resumes
//! from the newest checkpoint committed under the same settings; batches,
//! noise and times derive from (seed, step), so the result is the same bytes
//! as an uninterrupted run. A time budget ([`TimeLimit`]) may end it early
//! at a step boundary, with a checkpoint at the step it reached.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wc_model::codec::PixelCodec;
use wc_model::optim::{OptimConfig, Optimizer};
use wc_model::params::Params;
use wc_model::train::{pretrain_step, PretrainConfig, StepReport, Video};
use wc_matrix_game::{MatrixGameConfig, MatrixGameModel};
use wc_model::{ModelConfig, WorldModel};
use wc_stages::checkpoints::{latest_checkpoint, load_params, step_dir, PretrainSettings};
use wc_stages::StageError;
use wc_store::{ManifestState, PendingCommit, RunStore};

/// Stops a loop of steps before a step that would end past a wall-clock
/// budget, judging by the longest step so far (pre-training on a time
/// budget: the learning rate is constant after warm-up, so where it stops
/// changes how far it got, not its schedule).
#[derive(Debug, Clone)]
pub struct TimeLimit {
    budget: Duration,
    started: Instant,
    last: Instant,
    longest_step: Duration,
}

impl TimeLimit {
    /// A budget of `budget` from `now`.
    pub fn new(budget: Duration, now: Instant) -> Self {
        TimeLimit { budget, started: now, last: now, longest_step: Duration::ZERO }
    }

    /// Call when a step ends at `now`: whether another step of the longest
    /// length seen so far still ends within the budget.
    pub fn another_fits(&mut self, now: Instant) -> bool {
        self.longest_step = self.longest_step.max(now.saturating_duration_since(self.last));
        self.last = now;
        now.saturating_duration_since(self.started) + self.longest_step <= self.budget
    }
}

/// The network being pre-trained.
enum Network {
    World(WorldModel),
    MatrixGame(MatrixGameModel),
}

/// Run (or resume) pre-training up to `steps`. `on_step` sees each step's
/// report; when it returns `ControlFlow::Break`, pre-training stops there
/// with a checkpoint of the steps done. Returns the step reached.
pub fn run_pretrain(
    data: &RunStore,
    out: &RunStore,
    settings_in: PretrainSettings,
    steps: u64,
    device: &candle_core::Device,
    mut on_step: impl FnMut(u64, &StepReport) -> ControlFlow<()>,
) -> Result<u64, StageError> {
    let dataset = wc_data::read::open_dataset(data).map_err(|e| StageError::artifact(format!("the dataset under {}", data.uri()), e))?;
    let (gt, size) = wc_data::read::pretrain_videos(data).map_err(|e| StageError::artifact(format!("the pre-training clips under {}", data.uri()), e))?;
    // The dataset decides the frame size.
    let model = ModelConfig { frame_size: size, ..settings_in.model.clone() };
    let matrix_game = settings_in.matrix_game.clone().map(|m| MatrixGameConfig { frame_size: size, ..m });
    if let Some(m) = &matrix_game {
        m.validate().map_err(|e| StageError::invalid("pretrain", format!("{e} (the dataset's frames are {size}x{size})")))?;
    }
    let settings = PretrainSettings { dataset: dataset.digest.clone(), model, matrix_game, ..settings_in };
    let videos: Vec<Video> = gt.into_iter().map(|v| Video { frames: v.frames, actions: v.actions }).collect();
    if videos.is_empty() {
        return Err(StageError::invalid(data.uri(), "the dataset has no pre-training clips"));
    }
    let fingerprint = settings.fingerprint();
    let mut params = Params::new(settings.seed, device);
    let network = match &settings.matrix_game {
        None => Network::World(WorldModel::new(&settings.model, &mut params)?),
        Some(m) => Network::MatrixGame(MatrixGameModel::new(m, &mut params)?),
    };
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
        let r = match &network {
            Network::World(m) => pretrain_step(m, &params, &mut opt, &videos, &PixelCodec, &pc, step)?,
            Network::MatrixGame(m) => wc_matrix_game::train::pretrain_step(m, &params, &mut opt, &videos, &PixelCodec, &pc, step)?,
        };
        if !r.applied {
            tracing::warn!(step, loss = r.loss, grad_norm = r.grad_norm, "non-finite step skipped");
        }
        let flow = on_step(step, &r);
        log.push((step, r));
        let done = step + 1;
        let stop = flow.is_break();
        if done % settings.checkpoint_every == 0 || done == steps || stop {
            commit_checkpoint(out, &settings, &fingerprint, done, &params, &opt, &log)?;
            log.clear();
        }
        if stop {
            return Ok(done);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_limit_stops_before_a_step_that_would_end_past_it() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut limit = TimeLimit::new(s(10), t0);
        // Steps of 3 s: after 3 and 6 s another fits (9 <= 10), after 9 s not.
        assert!(limit.another_fits(t0 + s(3)));
        assert!(limit.another_fits(t0 + s(6)));
        assert!(!limit.another_fits(t0 + s(9)));
        // The longest step counts, not the last: one slow step of 5 s among
        // short steps keeps the margin at 5 s: after 7.5 s a 2 s step would
        // fit, a 5 s one not.
        let mut limit = TimeLimit::new(s(12), t0);
        assert!(limit.another_fits(t0 + s(5)));
        assert!(limit.another_fits(t0 + Duration::from_millis(5500)));
        assert!(!limit.another_fits(t0 + Duration::from_millis(7500)));
        // A zero budget stops after the first step.
        assert!(!TimeLimit::new(Duration::ZERO, t0).another_fits(t0 + Duration::from_millis(1)));
    }
}
