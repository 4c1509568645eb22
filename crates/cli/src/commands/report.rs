//! `worldcompass report`: see [`crate::Command::Report`].

use clap::Args;
use anyhow::Context;
use wc_store::RunStore;

/// The arguments of `worldcompass report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Run URI, e.g. file:///data/runs/exp1 or s3://bucket/runs/exp1.
    #[arg(long, env = "WORLDCOMPASS_RUN", hide_env_values = true)]
    pub run: String,
    /// Local folder for the charts: reward_if.png and reward_vq.png, and
    /// the same per target clip (reward_if_by_clip.png, reward_vq_by_clip.png).
    #[arg(long)]
    pub out: Option<String>,
}

pub fn run(a: ReportArgs) -> anyhow::Result<()> {
    let store = RunStore::open_existing(&a.run)?;
    let log = wc_report::reward_log(&store)?;
    let summary = wc_report::iteration_summary(&log)?;
    println!("run {}: {} reward-log rows", store.uri(), log.height());
    println!("{}", wc_report::summary_table(&summary)?);
    if let Some(dir) = a.out {
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {dir}"))?;
        for (name, png) in wc_report::reward_charts(&summary)? {
            let path = std::path::Path::new(&dir).join(name);
            std::fs::write(&path, png).with_context(|| format!("cannot write {}", path.display()))?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}
