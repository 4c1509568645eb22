//! `worldcompass data`: see [`crate::Command::Data`].

use clap::Args;
use wc_data::{DataOutcome, DatasetSpec, DATASET_DIR};
use wc_store::RunStore;

/// The arguments of `worldcompass data`.
#[derive(Debug, Args)]
pub struct DataArgs {
    /// Store URI the dataset is written under.
    #[arg(long)]
    pub out: String,
    #[arg(long, default_value_t = DatasetSpec::default().seed)]
    pub seed: u64,
    /// World prompts (scenes).
    #[arg(long, default_value_t = DatasetSpec::default().prompts)]
    pub prompts: usize,
    /// Action sequences of each kind (basic, combined).
    #[arg(long, default_value_t = DatasetSpec::default().sequences_per_kind)]
    pub sequences: usize,
    /// Clips per action sequence.
    #[arg(long, default_value_t = DatasetSpec::default().clips)]
    pub clips: usize,
    /// 4-frame windows per clip.
    #[arg(long, default_value_t = DatasetSpec::default().windows_per_clip)]
    pub windows_per_clip: usize,
    /// Ground-truth pre-training clips.
    #[arg(long, default_value_t = DatasetSpec::default().pretrain_clips)]
    pub pretrain_clips: usize,
    /// Windows per pre-training clip.
    #[arg(long, default_value_t = DatasetSpec::default().pretrain_windows)]
    pub pretrain_windows: usize,
    /// Share of pre-training windows with a combined action.
    #[arg(long, default_value_t = DatasetSpec::default().pretrain_combined_rate)]
    pub combined_rate: f64,
    /// Frame size (square), pixels.
    #[arg(long, default_value_t = DatasetSpec::default().render.width)]
    pub size: usize,
    /// Replace a dataset written with other settings.
    #[arg(long)]
    pub force: bool,
}

impl DataArgs {
    /// The library's dataset settings.
    pub fn spec(&self) -> DatasetSpec {
        let d = DatasetSpec::default();
        DatasetSpec {
            seed: self.seed,
            prompts: self.prompts,
            sequences_per_kind: self.sequences,
            clips: self.clips,
            windows_per_clip: self.windows_per_clip,
            pretrain_clips: self.pretrain_clips,
            pretrain_windows: self.pretrain_windows,
            pretrain_combined_rate: self.combined_rate,
            render: wc_world::RenderConfig { width: self.size, height: self.size, ..d.render },
            ..d
        }
    }
}

pub fn run(a: DataArgs) -> anyhow::Result<()> {
    let store = RunStore::open(&a.out)?;
    match wc_data::write_dataset(&store, &a.spec(), a.force)? {
        DataOutcome::Written { files } => println!("wrote {files} files under {}/{DATASET_DIR}", store.uri()),
        DataOutcome::AlreadyWritten => println!("{}/{DATASET_DIR} already holds this dataset; nothing to do", store.uri()),
        DataOutcome::LostRace => println!("another worker wrote this dataset first; nothing to do"),
    }
    Ok(())
}
