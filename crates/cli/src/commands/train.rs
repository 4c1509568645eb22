//! `worldcompass train`: see [`crate::Command::Train`].

use clap::Args;
use wc_config::PipelineConfig;
use wc_stages::{init_run, train, InitOutcome, RunContext, StageOutcome};
use wc_store::RunStore;

use super::{seed_note, with_seed};
use crate::args::DeviceArgs;

/// The arguments of `worldcompass train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Run URI, e.g. file:///data/runs/exp1 or s3://bucket/runs/exp1.
    #[arg(long, env = "WORLDCOMPASS_RUN", hide_env_values = true)]
    pub run: String,
    /// Initialise the run with this config first if it is not initialised.
    #[arg(long)]
    pub pipeline: Option<String>,
    /// Run iterations 0..ITERS (default: run.iterations of the config).
    #[arg(long, value_parser = clap::value_parser!(u64).range(..=1_000_000))]
    pub iters: Option<u64>,
    /// With --pipeline: initialise with this seed instead of the
    /// pipeline's run.seed (a run initialised with another is refused).
    #[arg(long, requires = "pipeline")]
    pub seed: Option<u64>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(a: TrainArgs) -> anyhow::Result<()> {
    // Only a train that may initialise the run creates its folder.
    let store = if a.pipeline.is_some() { RunStore::open(&a.run)? } else { RunStore::open_existing(&a.run)? };
    if let Some(p) = &a.pipeline {
        let cfg = with_seed(PipelineConfig::load(p)?, a.seed);
        if init_run(&store, &cfg, false)? == InitOutcome::Created {
            println!("initialised {} with {p}{}", store.uri(), seed_note(a.seed));
        }
    }
    let ctx = RunContext::from_store(store)?.on_device(a.device.device);
    let iters = a.iters.unwrap_or(ctx.cfg.run.iterations);
    let bar = super::item_bar(iters * 5, "train", "stages");
    let mut t0 = std::time::Instant::now();
    // Stages committed earlier are reported as one line per run of them (a
    // resumed run would otherwise print five lines per finished iteration).
    let mut skipped: Option<(String, usize)> = None;
    let flush = |skipped: &mut Option<(String, usize)>| {
        if let Some((from, n)) = skipped.take() {
            println!("{from} onwards: {n} stage{} already committed; nothing to do", if n == 1 { "" } else { "s" });
        }
    };
    train(&ctx, iters, |k, stage, outcome| {
        let secs = t0.elapsed().as_secs_f64();
        t0 = std::time::Instant::now();
        bar.set_message(format!("iter {k} {}", stage.name()));
        bar.inc(1);
        if matches!(outcome, StageOutcome::AlreadyCommitted { .. }) {
            skipped.get_or_insert_with(|| (format!("iter {k} {}", stage.name()), 0)).1 += 1;
            return;
        }
        bar.suspend(|| {
            flush(&mut skipped);
            println!("iter {k} {}: {outcome} [{secs:.1} s]", stage.name())
        });
    })?;
    bar.finish_and_clear();
    flush(&mut skipped);
    println!("trained {iters} iterations; checkpoint: {}/checkpoints/{iters:06}", ctx.store.uri());
    Ok(())
}
