//! `worldcompass sample`: see [`crate::Command::Sample`].

use clap::Args;
use anyhow::Context;
use wc_store::RunStore;

use crate::args::{DeviceArgs, PromptArgs, SamplerArgs};

/// The arguments of `worldcompass sample`.
#[derive(Debug, Args)]
pub struct SampleArgs {
    /// Store URI holding the checkpoints.
    #[arg(long)]
    pub model: String,
    #[arg(long)]
    pub step: Option<u64>,
    #[command(flatten)]
    pub prompt: PromptArgs,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Also render the ground truth beside the generated frames.
    #[arg(long)]
    pub truth: bool,
    /// Output path prefix: writes PREFIX.gif and PREFIX.png.
    #[arg(long)]
    pub out: String,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(a: SampleArgs) -> anyhow::Result<()> {
    let store = RunStore::open_existing(&a.model)?;
    let m = wc_stages::checkpoints::load_checkpoint(&store, a.step, &wc_model::device::open(a.device.or_cpu())?)?;
    let size = m.model.cfg.frame_size;
    let acts = a.prompt.actions()?;
    let (world, truth) = wc_world::render::ground_truth_u8(a.prompt.scene, &acts, size);
    let generated = wc_jobs::evaluate::rollout_sequence(&m, &truth[0], &acts, &a.sampler.config(), a.sampler.seed)?;
    let frames = if a.truth { wc_report::compose::beside(&generated, &truth, size) } else { wc_report::compose::frames(&generated, size) };
    let out = &a.out;
    let scale = (256 / size).max(1);
    std::fs::write(format!("{out}.gif"), wc_world::media::gif_bytes(&frames, scale, 12)?).with_context(|| format!("writing {out}.gif"))?;
    std::fs::write(format!("{out}.png"), wc_world::media::png_strip_bytes(&frames, scale.min(4), 4 * acts.len().min(4) + 1)?)
        .with_context(|| format!("writing {out}.png"))?;
    println!("model {} (step {}); scene {}: {}", m.path, m.step, a.prompt.scene, world.caption);
    println!("wrote {out}.gif and {out}.png ({} frames{})", frames.len(), if a.truth { ", generated left, ground truth right" } else { "" });
    Ok(())
}
