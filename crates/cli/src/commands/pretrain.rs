//! `worldcompass pretrain`: see [`crate::Command::Pretrain`].

use clap::Args;
use wc_model::ModelConfig;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use wc_jobs::pretrain::{run_pretrain, TimeLimit};
use wc_stages::checkpoints::{step_dir, PretrainSettings};
use wc_store::RunStore;

use crate::args::DeviceArgs;

/// Which network `pretrain` trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    World,
    MatrixGame,
}

/// The arguments of `worldcompass pretrain`.
#[derive(Debug, Args)]
pub struct PretrainArgs {
    /// Store URI holding the dataset (written by `worldcompass data`).
    #[arg(long)]
    pub data: String,
    /// Store URI the checkpoints are committed under.
    #[arg(long)]
    pub out: String,
    /// Train up to this many steps in total.
    #[arg(long, default_value_t = 3000)]
    pub steps: u64,
    /// Stop early, with a checkpoint, before a step that would end more than
    /// this many seconds after the start (judged by the longest step so
    /// far): pre-training on a time budget, e.g. inside a batch job's
    /// wall-clock limit. A later run resumes from that checkpoint.
    #[arg(long, value_name = "SECONDS")]
    pub time_limit: Option<f64>,
    /// The network to pre-train: the embedded clip transformer (`world`), or
    /// Matrix-Game 2.0's causal action-conditioned transformer at the
    /// embedded size (`matrix-game`; the model flags below are the clip
    /// transformer's and do not apply to it).
    #[arg(long, value_enum, default_value_t = Arch::World)]
    pub arch: Arch,
    #[arg(long, default_value_t = PretrainSettings::default().batch)]
    pub batch: usize,
    #[arg(long, default_value_t = PretrainSettings::default().lr)]
    pub lr: f64,
    #[arg(long, default_value_t = PretrainSettings::default().warmup_steps)]
    pub warmup: u64,
    #[arg(long, default_value_t = PretrainSettings::default().checkpoint_every)]
    pub checkpoint_every: u64,
    #[arg(long, default_value_t = PretrainSettings::default().seed)]
    pub seed: u64,
    /// Model width.
    #[arg(long, default_value_t = ModelConfig::default().d_model)]
    pub d_model: usize,
    #[arg(long, default_value_t = ModelConfig::default().layers)]
    pub layers: usize,
    #[arg(long, default_value_t = ModelConfig::default().heads)]
    pub heads: usize,
    /// Patch size in pixels (a token is one patch of one frame).
    #[arg(long, default_value_t = ModelConfig::default().patch)]
    pub patch: usize,
    /// Recent frames in the context besides the first frame.
    #[arg(long, default_value_t = ModelConfig::default().context_frames)]
    pub context_frames: usize,
    /// MLP width as a multiple of the model width.
    #[arg(long, default_value_t = ModelConfig::default().mlp_ratio)]
    pub mlp_ratio: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl PretrainArgs {
    /// The library's pre-training settings (the dataset digest is filled
    /// in by `run_pretrain`).
    pub fn settings(&self) -> anyhow::Result<PretrainSettings> {
        anyhow::ensure!(self.checkpoint_every > 0, "--checkpoint-every must be at least 1");
        let d = PretrainSettings::default();
        Ok(PretrainSettings {
            model: ModelConfig {
                d_model: self.d_model,
                layers: self.layers,
                heads: self.heads,
                patch: self.patch,
                context_frames: self.context_frames,
                mlp_ratio: self.mlp_ratio,
                ..d.model
            },
            matrix_game: (self.arch == Arch::MatrixGame).then(wc_matrix_game::MatrixGameConfig::embedded),
            seed: self.seed,
            batch: self.batch,
            lr: self.lr,
            warmup_steps: self.warmup,
            checkpoint_every: self.checkpoint_every,
            ..d
        })
    }
}

pub fn run(a: PretrainArgs) -> anyhow::Result<()> {
    let settings = a.settings()?;
    let budget = match a.time_limit {
        Some(t) if !(t.is_finite() && t >= 0.0) => anyhow::bail!("--time-limit must be a number of seconds >= 0, not {t}"),
        Some(t) => Some(Duration::from_secs_f64(t)),
        None => None,
    };
    let data = RunStore::open_existing(&a.data)?;
    let out = RunStore::open(&a.out)?;
    let bar = super::step_bar(a.steps, "pretrain");
    let mut ema_loss: Option<f64> = None;
    let mut first = true;
    let mut limit = budget.map(|b| TimeLimit::new(b, Instant::now()));
    let done = run_pretrain(&data, &out, settings, a.steps, &wc_model::device::open(a.device.or_cpu())?, |step, r| {
        if first {
            bar.set_position(step);
            first = false;
        }
        let l = ema_loss.map_or(r.loss, |e| 0.98 * e + 0.02 * r.loss);
        ema_loss = Some(l);
        bar.set_message(format!("loss {l:.4} lr {:.1e}", r.lr));
        bar.inc(1);
        // Without a terminal (a batch log), a line every 50 steps instead.
        if bar.is_hidden() && (step + 1) % 50 == 0 {
            eprintln!("step {} loss {l:.4} grad_norm {:.3}", step + 1, r.grad_norm);
        }
        if limit.as_mut().is_some_and(|l| !l.another_fits(Instant::now())) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })?;
    bar.finish_and_clear();
    let stopped = if done < a.steps { format!(" (the time limit of {} s stopped it; rerun to resume)", a.time_limit.unwrap_or(0.0)) } else { String::new() };
    println!("pre-trained to step {done}{stopped}; checkpoint: {}/{}", out.uri(), step_dir(done));
    Ok(())
}
