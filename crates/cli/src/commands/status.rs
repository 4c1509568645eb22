//! `worldcompass status`: see [`crate::Command::Status`].

use clap::Args;
use wc_stages::{run_status, status_table, RunContext};

/// The arguments of `worldcompass status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Run URI, e.g. file:///data/runs/exp1 or s3://bucket/runs/exp1.
    #[arg(long, env = "WORLDCOMPASS_RUN", hide_env_values = true)]
    pub run: String,
}

pub fn run(a: StatusArgs) -> anyhow::Result<()> {
    let ctx = RunContext::open(&a.run)?;
    print!("{}", status_table(ctx.store.uri(), &ctx.fingerprint, &run_status(&ctx)?));
    Ok(())
}
