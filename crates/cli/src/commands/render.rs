//! `worldcompass render`: see [`crate::Command::Render`].

use clap::Args;
use anyhow::Context;
use wc_world::actions::{action_sequence, ActionMask, Kinematics, SequenceKind};

use crate::args::{parse_actions, KindArg};

/// The arguments of `worldcompass render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Scene seed.
    #[arg(long, default_value_t = 0)]
    pub scene: u64,
    /// Comma-separated actions, one per window.
    #[arg(long, value_delimiter = ',')]
    pub actions: Vec<String>,
    /// Kind of random sequence when --actions is not given.
    #[arg(long, value_enum, default_value = "basic")]
    pub kind: KindArg,
    /// Windows of the random sequence.
    #[arg(long, default_value_t = 8)]
    pub windows: usize,
    /// Seed of the random sequence.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Frame size (square), pixels.
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// Output path prefix: writes PREFIX.gif and PREFIX.png.
    #[arg(long)]
    pub out: String,
}

pub fn run(a: RenderArgs) -> anyhow::Result<()> {
    let kin = Kinematics::default();
    let acts: Vec<ActionMask> = if a.actions.is_empty() {
        let kind = match a.kind {
            KindArg::Basic => SequenceKind::Basic,
            KindArg::Combined => SequenceKind::Combined,
        };
        action_sequence(a.seed, kind, a.windows, 1, &kin)
    } else {
        parse_actions(&a.actions)?
    };
    anyhow::ensure!(a.size >= 8 && a.size <= 512, "--size {}: use 8 to 512 pixels", a.size);
    let cfg = wc_world::RenderConfig { width: a.size, height: a.size, ..Default::default() };
    let world = wc_world::Scene::generate(a.scene);
    let frames = wc_world::render::render_trajectory(&world, &kin.trajectory(wc_world::Pose::START, &acts), &cfg);
    let scale = (256 / a.size).max(1);
    let gif = wc_world::media::gif_bytes(&frames, scale, 12)?;
    let png = wc_world::media::png_strip_bytes(&frames, scale.min(4), kin.frames_per_window * 4 + 1)?;
    let out = &a.out;
    std::fs::write(format!("{out}.gif"), gif).with_context(|| format!("writing {out}.gif"))?;
    std::fs::write(format!("{out}.png"), png).with_context(|| format!("writing {out}.png"))?;
    println!("scene {}: {}", a.scene, world.caption);
    println!("actions: {}", acts.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "));
    println!("wrote {out}.gif and {out}.png ({} frames)", frames.len());
    Ok(())
}
