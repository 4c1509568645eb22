//! `worldcompass eval`: see [`crate::Command::Eval`].

use clap::Args;
use anyhow::Context;
use wc_jobs::evaluate::{self, ContextSource};
use wc_store::RunStore;

use crate::args::{DeviceArgs, SamplerArgs};

/// The arguments of `worldcompass eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Store URI holding the dataset (its prompts are held out of pre-training).
    #[arg(long)]
    pub data: String,
    /// A model to evaluate: STORE (pre-training checkpoints) or RUN@K
    /// (checkpoint K of a training run, its policy). Repeat to compare.
    #[arg(long, required = true)]
    pub model: Vec<String>,
    /// Pre-training checkpoint step for STORE models (default: the newest).
    #[arg(long)]
    pub step: Option<u64>,
    /// Sequences of each kind.
    #[arg(long, default_value_t = 16)]
    pub sequences: usize,
    /// Lengths as NAME=CLIPS, shortest first. The held-out sequences
    /// must have enough windows for the longest.
    #[arg(long, default_value = "short=1,medium=2,long=4")]
    pub lengths: String,
    /// Generate each clip from the simulator's true frames (teacher
    /// forcing) instead of the model's own.
    #[arg(long)]
    pub teacher_forced: bool,
    /// Store URI to write the results to (eval/eval-<unix time>.parquet).
    #[arg(long)]
    pub out: Option<String>,
    /// The models after the first are replicates of one setting (runs
    /// that differ only in their seed): end each length with their
    /// mean delta and its standard error. `just seeds` uses it.
    #[arg(long)]
    pub replicates: bool,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    let lengths = evaluate::parse_lengths(&a.lengths).map_err(|e| anyhow::anyhow!("--lengths: {e}"))?;
    let source = if a.teacher_forced { ContextSource::GroundTruth } else { ContextSource::Generated };
    let seqs = evaluate::held_out(&RunStore::open_existing(&a.data)?, a.sequences)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let s = &a.sampler;
    println!(
        "{} held-out sequences per kind, context: {}, T={}, shift={}, guidance={}, seed {}",
        a.sequences,
        source.name(),
        s.sampler_steps,
        s.shift,
        s.guidance,
        s.seed
    );
    let mut rows = Vec::new();
    let longest = lengths.iter().map(|l| l.clips).max().unwrap_or(0);
    for spec in &a.model {
        let m = super::load_video_model_spec(spec, a.step, a.device.or_cpu())?;
        let bar = super::item_bar((seqs.len() * longest) as u64, "eval", "clips");
        let results = evaluate::evaluate(&m, &seqs, &lengths, source, &s.config(), s.seed, &|| bar.inc(1)).with_context(|| format!("evaluating {spec}"))?;
        bar.finish_and_clear();
        println!("{spec}: {} (step {})", m.path(), m.step());
        rows.extend(evaluate::eval_rows(now, spec, &m, source, &results));
    }
    print!("{}", evaluate::table1(&rows, a.replicates));
    if let Some(out) = a.out {
        let store = RunStore::open(&out)?;
        let path = evaluate::write_eval_rows(&store, now, &rows)?;
        println!("wrote {}", store.uri_of(&path));
    }
    Ok(())
}
