//! `worldcompass bench`: see [`crate::Command::Bench`].

use clap::{Args, Subcommand};
use anyhow::Context;
use wc_bench::all::BenchAll;

use crate::args::DeviceArgs;

/// The arguments of `worldcompass bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchWhat,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// What `bench` measures.
#[derive(Debug, Subcommand)]
pub enum BenchWhat {
    /// Everything, as ratios measured side by side in this one run: clip-
    /// vs sample-level rollout, the prefix cache, Table 3 iteration times,
    /// GFLOP/s against the matmul peak, candle against PyTorch, the storage
    /// share of each stage (file:// and a loopback S3 server), and each
    /// stage's peak memory. Prints a table and writes it as Parquet.
    ///
    /// Needs python3 with torch and safetensors for the PyTorch rows and
    /// moto_server for the S3 rows (`just bench` installs them); run it from
    /// the repository root (the pipeline's models/ paths are relative).
    All {
        /// Folder for the results (bench-<unix time>.parquet) and scratch runs.
        #[arg(long, default_value = "runs/bench")]
        out: String,
        /// Pipeline of the stage measurements.
        #[arg(long, default_value = "pipelines/embedded.toml")]
        pipeline: String,
        /// Only these sections (comma-separated): rollout, prefix_cache,
        /// compute, pytorch, stages (Table 3, storage, memory).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Do the CPU and --device compute the same? The world model with the
    /// same seeds and inputs on both: a velocity, a guided sample and one
    /// NFT optimizer step, each against its f32 tolerance. Exits non-zero
    /// if one is outside it.
    ///
    /// Example: worldcompass bench devices --device cuda:0
    Devices {
        /// Model size: tiny or default (the embedded model).
        #[arg(long, default_value = "default")]
        preset: String,
    },
    /// The world model at its default config: the matmul peak, a sampler
    /// step and a training step (quick; `bench all` has the rest).
    Model {
        /// Candidates G per group (the sampler step's batch).
        #[arg(long, default_value_t = 8)]
        candidates: usize,
        /// Training batch.
        #[arg(long, default_value_t = 24)]
        batch: usize,
    },
}


pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    let device = a.device.or_cpu();
    match a.what {
        BenchWhat::All { out, pipeline, only } => {
            let settings = BenchAll {
                out_dir: out.into(),
                pipeline: pipeline.into(),
                only,
                exe: std::env::current_exe().context("locating the worldcompass binary")?,
                device_name: device.to_string(),
            };
            let started = std::time::Instant::now();
            let rows = wc_bench::all::run(&settings, &wc_model::device::open(device)?, |s| eprintln!("[{:>6.1} s] {s}", started.elapsed().as_secs_f64()))
                .context("bench all")?;
            println!("{}", wc_bench::render_table(&rows));
            let path = wc_bench::all::write_results(&settings.out_dir, &rows)?;
            println!("wrote {} ({} rows, {:.0} s)", path.display(), rows.len(), started.elapsed().as_secs_f64());
        }
        BenchWhat::Model { candidates, batch } => {
            let cfg = wc_model::ModelConfig::default();
            println!("model: {cfg:?}");
            println!("{:<48} {:>10} {:>9}  note", "measurement", "seconds", "GFLOP/s");
            for r in wc_model::bench::model_bench(&cfg, candidates, batch, &wc_model::device::open(device)?)? {
                let g = r.gflops.map(|g| format!("{g:.1}")).unwrap_or_else(|| "-".into());
                println!("{:<48} {:>10.4} {:>9}  {}", r.name, r.seconds, g, r.note);
            }
        }
        BenchWhat::Devices { preset } => {
            let cfg = match preset.as_str() {
                "tiny" => wc_model::ModelConfig::tiny(),
                "default" => wc_model::ModelConfig::default(),
                other => anyhow::bail!("--preset {other}: must be tiny or default"),
            };
            println!("the {preset} world model on cpu and on {device}, same seeds and inputs");
            let rows = wc_model::device_check::compare_with_cpu(&cfg, &wc_model::device::open(device)?)?;
            print!("{}", wc_model::device_check::comparison_table(&rows));
            let failed = rows.iter().filter(|r| !r.passes()).count();
            anyhow::ensure!(failed == 0, "{failed} of {} quantities differ between cpu and {device} beyond their tolerance", rows.len());
        }
    }
    Ok(())
}
