//! `worldcompass compare`: see [`crate::Command::Compare`].

use clap::Args;
use anyhow::Context;

use crate::args::{DeviceArgs, PromptArgs, SamplerArgs};

/// The arguments of `worldcompass compare`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// First model (left column).
    #[arg(long)]
    pub a: String,
    /// Second model (middle column).
    #[arg(long)]
    pub b: String,
    #[command(flatten)]
    pub prompt: PromptArgs,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    /// Output path prefix: writes PREFIX.gif and PREFIX.png.
    #[arg(long)]
    pub out: String,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(a: CompareArgs) -> anyhow::Result<()> {
    let device = a.device.or_cpu();
    let (ma, mb) = (super::load_model_spec(&a.a, None, device)?, super::load_model_spec(&a.b, None, device)?);
    anyhow::ensure!(ma.model.cfg.frame_size == mb.model.cfg.frame_size, "the two models make frames of different sizes");
    let size = ma.model.cfg.frame_size;
    let acts = a.prompt.actions()?;
    let (world, truth) = wc_world::render::ground_truth_u8(a.prompt.scene, &acts, size);
    let ga = wc_jobs::evaluate::rollout_sequence(&ma, &truth[0], &acts, &a.sampler.config(), a.sampler.seed)?;
    let gb = wc_jobs::evaluate::rollout_sequence(&mb, &truth[0], &acts, &a.sampler.config(), a.sampler.seed)?;
    let labels = wc_report::compose::window_labels(&acts, truth.len());
    let frames = wc_report::compose::side_by_side(&[ga, gb, truth], size, 4, &["A", "B", "TRUTH"], &labels)?;
    let out = &a.out;
    std::fs::write(format!("{out}.gif"), wc_world::media::gif_bytes(&frames, 1, 12)?).with_context(|| format!("writing {out}.gif"))?;
    std::fs::write(format!("{out}.png"), wc_world::media::png_strip_bytes(&frames, 1, 4)?).with_context(|| format!("writing {out}.png"))?;
    println!("A = {} ; B = {} ; scene {}: {}", ma.path, mb.path, a.prompt.scene, world.caption);
    println!("wrote {out}.gif and {out}.png ({} frames: A left, B middle, ground truth right)", frames.len());
    Ok(())
}
