//! `worldcompass metric`: see [`crate::Command::Metric`].

use clap::Args;
use wc_world::actions::{Kinematics, SequenceKind};
use wc_world::metric::MetricConfig;

/// The arguments of `worldcompass metric`.
#[derive(Debug, Args)]
pub struct MetricArgs {
    /// Sequences of each kind.
    #[arg(long, default_value_t = 500)]
    pub sequences: usize,
    /// Clips per sequence.
    #[arg(long, default_value_t = 4)]
    pub clips: usize,
    /// 4-frame windows per clip.
    #[arg(long, default_value_t = 4)]
    pub windows_per_clip: usize,
    /// Switch to a new action every this many windows.
    #[arg(long, default_value_t = 1)]
    pub hold: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Rotation threshold in degrees.
    #[arg(long, default_value_t = 1.0)]
    pub tau_rot: f64,
    /// Translation thresholds (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.02,0.03,0.04,0.05")]
    pub thresholds: Vec<f64>,
}

pub fn run(a: MetricArgs) -> anyhow::Result<()> {
    let cfg = MetricConfig { tau_rot_deg: a.tau_rot, trans_thresholds: a.thresholds, ..Default::default() };
    let kin = Kinematics::default();
    println!("{:<9} {:<15} {:>8} {:>8} {:>9} {:>6} {:>10}", "kind", "model", "windows", "rot_acc", "trans_acc", "IF", "both_right");
    for kind in [SequenceKind::Basic, SequenceKind::Combined] {
        for (name, s) in wc_world::metric::reference_scores(kind, a.sequences, a.clips * a.windows_per_clip, a.hold, a.seed, &cfg, &kin) {
            println!("{:<9} {:<15} {:>8} {:>8.3} {:>9.3} {:>6.3} {:>10.3}", kind.name(), name, s.windows, s.rot_acc, s.trans_acc, s.if_score, s.both_rate);
        }
    }
    Ok(())
}
