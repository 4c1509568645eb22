//! One module per subcommand: its arguments (a clap `Args` struct, turned
//! into the library's settings type where there is one) and `run`, which
//! calls the library and prints what the user reads.

pub mod bench;
pub mod compare;
pub mod data;
pub mod eval;
pub mod init;
pub mod metric;
pub mod model;
pub mod plan;
pub mod pretrain;
pub mod render;
pub mod report;
pub mod sample;
pub mod schemas;
pub mod scorers;
pub mod stage;
pub mod status;
pub mod train;

use wc_config::{DeviceSpec, PipelineConfig};
use wc_store::RunStore;

/// A step progress bar on stderr (hidden when stderr is not a terminal).
pub(crate) fn step_bar(len: u64, label: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} steps {msg} ({elapsed}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}

/// A progress bar over `len` items named `unit`, on stderr.
pub(crate) fn item_bar(len: u64, label: &str, unit: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!("{{prefix:>10}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{msg}} ({{elapsed}})"))
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}

/// The pipeline config with `run.seed` replaced by `--seed`, if given.
pub(crate) fn with_seed(mut cfg: PipelineConfig, seed: Option<u64>) -> PipelineConfig {
    if let Some(s) = seed {
        cfg.run.seed = s;
    }
    cfg
}

/// ", seed S" where `--seed` replaced the pipeline's seed.
pub(crate) fn seed_note(seed: Option<u64>) -> String {
    seed.map(|s| format!(", seed {s}")).unwrap_or_default()
}

/// [`load_model_spec`] for commands that take either video architecture
/// (the embedded clip transformer or Matrix-Game).
pub(crate) fn load_video_model_spec(spec: &str, step: Option<u64>, device: DeviceSpec) -> anyhow::Result<wc_stages::checkpoints::LoadedVideoModel> {
    match spec.rsplit_once('@') {
        Some((uri, k)) if k.parse::<u64>().is_ok() => Ok(wc_stages::checkpoints::load_video_run_checkpoint(&RunStore::open_existing(uri)?, k.parse()?, "policy", device)?),
        _ => Ok(wc_stages::checkpoints::load_video_checkpoint(&RunStore::open_existing(spec)?, step, &wc_model::device::open(device)?)?),
    }
}

/// Load a model named on the command line: RUN@K (checkpoint K of a
/// training run, its policy) or STORE (a pre-training store: checkpoint
/// `step`, default the newest).
pub(crate) fn load_model_spec(spec: &str, step: Option<u64>, device: DeviceSpec) -> anyhow::Result<wc_stages::checkpoints::LoadedModel> {
    match spec.rsplit_once('@') {
        Some((uri, k)) if k.parse::<u64>().is_ok() => Ok(wc_stages::checkpoints::load_run_checkpoint(&RunStore::open_existing(uri)?, k.parse()?, "policy", device)?),
        _ => Ok(wc_stages::checkpoints::load_checkpoint(&RunStore::open_existing(spec)?, step, &wc_model::device::open(device)?)?),
    }
}
