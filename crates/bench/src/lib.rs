//! `worldcompass bench`: what an iteration costs, as ratios measured side by
//! side in one process run, each row naming the config it ran and the anchor
//! it is compared with (the paper's figure or the machine's limit).
//!
//! [`all`] runs every section. Sections, one module each:
//! - [`rollout`]: clip-level vs sample-level rollout (paper section 3.2);
//! - [`compute`]: the prefix cache, and GFLOP/s against the matmul peak;
//! - [`pytorch`]: the same model in PyTorch, checked equal, then timed;
//! - [`stage_runs`]: Table 3 iteration times, the default iteration's time
//!   per stage, storage share and peak memory of real `worldcompass stage`
//!   processes;
//! - [`s3_server`]: the loopback S3 server (moto) the storage rows use.
//!
//! Results print as a table and are written as Parquet (schema
//! `bench_results`) so runs can be compared over time.

pub mod all;
pub mod compute;
pub mod pytorch;
pub mod rollout;
pub mod s3_server;
pub mod stage_runs;

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("model: {0}")]
    Model(#[from] wc_model::ModelError),
    #[error("tensor: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("{0}")]
    Failed(String),
    #[error("writing results: {0}")]
    Schema(#[from] wc_schemas::SchemaError),
}

pub type Result<T> = std::result::Result<T, BenchError>;

/// One measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchRow {
    pub section: &'static str,
    pub name: String,
    pub config: String,
    pub value: f64,
    pub unit: &'static str,
    pub anchor: Option<f64>,
    pub anchor_source: String,
    pub detail: String,
}

impl BenchRow {
    pub fn new(section: &'static str, name: impl Into<String>, config: impl Into<String>, value: f64, unit: &'static str) -> Self {
        BenchRow { section, name: name.into(), config: config.into(), value, unit, anchor: None, anchor_source: String::new(), detail: String::new() }
    }

    pub fn anchor(mut self, anchor: f64, source: impl Into<String>) -> Self {
        self.anchor = Some(anchor);
        self.anchor_source = source.into();
        self
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }
}

fn fmt_value(v: f64, unit: &str) -> String {
    match unit {
        "x" => format!("{v:.3}x"),
        "%" => format!("{v:.1}%"),
        "s" => format!("{v:.2} s"),
        _ => format!("{v:.1} {unit}"),
    }
}

/// The rows as an aligned text table, grouped by section.
pub fn render_table(rows: &[BenchRow]) -> String {
    let mut out = String::new();
    let mut section = "";
    for r in rows {
        if r.section != section {
            section = r.section;
            out += &format!("\n== {section}\n");
            out += &format!("{:<52} {:>12} {:>12}  {:<34} {}\n", "measurement", "value", "anchor", "config", "detail");
        }
        let anchor = r.anchor.map(|a| fmt_value(a, r.unit)).unwrap_or_else(|| "-".into());
        out += &format!("{:<52} {:>12} {:>12}  {:<34} {}", r.name, fmt_value(r.value, r.unit), anchor, r.config, r.detail);
        if !r.anchor_source.is_empty() {
            out += &format!(" [anchor: {}]", r.anchor_source);
        }
        out += "\n";
    }
    out
}

/// The rows as a Parquet file with the `bench_results` schema.
pub fn to_parquet(rows: &[BenchRow], run_unix_s: i64) -> Result<Vec<u8>> {
    let strings = |f: &dyn Fn(&BenchRow) -> String| -> ArrayRef { Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>())) };
    let schema = wc_schemas::tables::bench_results();
    let batch = RecordBatch::try_new(
        schema.arrow(),
        vec![
            Arc::new(Int64Array::from(vec![run_unix_s; rows.len()])),
            strings(&|r| r.section.to_string()),
            strings(&|r| r.name.clone()),
            strings(&|r| r.config.clone()),
            Arc::new(Float64Array::from(rows.iter().map(|r| r.value).collect::<Vec<_>>())),
            strings(&|r| r.unit.to_string()),
            Arc::new(Float64Array::from(rows.iter().map(|r| r.anchor).collect::<Vec<_>>())),
            strings(&|r| r.anchor_source.clone()),
            strings(&|r| r.detail.clone()),
        ],
    )
    .map_err(|e| BenchError::Failed(format!("building the results table: {e}")))?;
    Ok(wc_schemas::write_table(&schema, "bench results", &batch)?.to_vec())
}

/// Median seconds of `reps` calls after one warm-up.
pub fn median_seconds(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let s = std::time::Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(|a, b| a.total_cmp(b));
    Ok(t[t.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Array;

    #[test]
    fn results_round_trip_through_parquet_with_null_anchors() {
        let rows = vec![
            BenchRow::new("rollout", "clip/sample wall", "N=8 G=8", 0.25, "x").anchor(0.2344, "paper (N-1+G)/(N*G)").detail("1.0 s vs 4.0 s"),
            BenchRow::new("memory", "peak RSS prefix", "embedded", 120.0, "MB"),
        ];
        let bytes = to_parquet(&rows, 1_700_000_000).unwrap();
        let schema = wc_schemas::tables::bench_results();
        let batch = wc_schemas::read_table(&schema, "bench", bytes.into()).unwrap();
        assert_eq!(batch.num_rows(), 2);
        let anchor = batch.column_by_name("anchor").unwrap().as_any().downcast_ref::<Float64Array>().unwrap();
        assert_eq!(anchor.value(0), 0.2344);
        assert!(anchor.is_null(1));
        let table = render_table(&rows);
        assert!(table.contains("== rollout") && table.contains("0.250x") && table.contains("0.234x") && table.contains("120.0 MB"), "{table}");
    }
}
