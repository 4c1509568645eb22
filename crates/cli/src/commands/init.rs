//! `worldcompass init`: see [`crate::Command::Init`].

use clap::Args;
use wc_config::PipelineConfig;
use wc_stages::{init_run, InitOutcome};
use wc_store::RunStore;

use super::{seed_note, with_seed};

/// The arguments of `worldcompass init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Run URI, e.g. file:///data/runs/exp1 or s3://bucket/runs/exp1.
    #[arg(long, env = "WORLDCOMPASS_RUN", hide_env_values = true)]
    pub run: String,
    /// Pipeline config (TOML), e.g. pipelines/embedded.toml.
    #[arg(long, default_value = "pipelines/embedded.toml")]
    pub pipeline: String,
    /// Replace a run initialised with a different config.
    #[arg(long)]
    pub force: bool,
    /// Use this seed instead of the pipeline's run.seed: replicates of
    /// one setting without a config file per seed.
    #[arg(long)]
    pub seed: Option<u64>,
}

pub fn run(a: InitArgs) -> anyhow::Result<()> {
    let cfg = with_seed(PipelineConfig::load(&a.pipeline)?, a.seed);
    let store = RunStore::open(&a.run)?;
    match init_run(&store, &cfg, a.force)? {
        InitOutcome::Created => println!("initialised {} with {}{}", store.uri(), a.pipeline, seed_note(a.seed)),
        InitOutcome::AlreadyInitialised => println!("{} is already initialised with this config; nothing to do", store.uri()),
    }
    Ok(())
}
