//! `worldcompass stage`: see [`crate::Command::Stage`].

use clap::Args;
use anyhow::Context;
use wc_stages::{run_stage, RunContext, StageRequest};
use wc_store::ShardSpec;

use crate::args::{resolve_shard, DeviceArgs, StageArg};

/// The arguments of `worldcompass stage`.
#[derive(Debug, Args)]
pub struct StageArgs {
    /// The stage to run.
    #[arg(value_enum)]
    pub stage: StageArg,
    /// Run URI, e.g. file:///data/runs/exp1 or s3://bucket/runs/exp1.
    #[arg(long, env = "WORLDCOMPASS_RUN", hide_env_values = true)]
    pub run: String,
    /// Iteration K (0-based).
    #[arg(long)]
    pub iter: u64,
    /// Shard I/N of a sharded stage. Without it, the shard is read from
    /// SLURM_ARRAY_TASK_ID + SLURM_ARRAY_TASK_COUNT, JOB_COMPLETION_INDEX +
    /// JOB_COMPLETIONS (Kubernetes Indexed Job), or AWS_BATCH_JOB_ARRAY_INDEX +
    /// AWS_BATCH_JOB_ARRAY_SIZE; else the whole stage runs as one shard.
    #[arg(long)]
    pub shard: Option<String>,
    /// Replace a commit made under a different config.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(a: StageArgs) -> anyhow::Result<()> {
    let shard = resolve_shard(a.shard.as_deref(), |k| std::env::var(k).ok()).map_err(anyhow::Error::msg)?;
    let stage = a.stage.stage();
    let shard = match shard {
        Some(s) if !stage.sharded() && s.count > 1 => {
            anyhow::bail!("stage {} is not sharded: run it as a single job (got shard {s})", stage.name())
        }
        Some(s) if stage.sharded() => s,
        _ => ShardSpec::WHOLE,
    };
    let iter = a.iter;
    let t0 = std::time::Instant::now();
    let ctx = RunContext::open(&a.run)?.on_device(a.device.device);
    let outcome = run_stage(&ctx, StageRequest { stage, iter, shard, force: a.force })
        .with_context(|| format!("stage {} of iteration {iter} (shard {shard}) failed; nothing was committed", stage.name()))?;
    println!("{} iter {iter} shard {shard}: {outcome}", stage.name());
    // One machine-readable line for batch logs (and `worldcompass bench`).
    let io = ctx.store.io_stats();
    println!("{}", wc_bench::stage_runs::StageStats::of_this_process(t0.elapsed().as_secs_f64(), io.seconds, io.calls, io.bytes_read, io.bytes_written));
    Ok(())
}
