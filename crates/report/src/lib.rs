//! Reports of a training run, computed with Polars.
//!
//! - [`reward_log`]: every committed reward-log table of a run (one per
//!   iteration, `reward_log/iter-<k>.parquet`), read through the run's
//!   store (any backend) into one Polars `DataFrame`;
//! - [`iteration_summary`]: per iteration, the mean rewards (IF, rotation,
//!   translation, VQ), the selection statistics (mean r of the selected
//!   candidates, spread of the combined advantage) and counts: the same
//!   numbers a user gets from `polars.scan_parquet("<run>/reward_log/**")`;
//! - [`chart`]: PNG line charts drawn without system fonts ([`font`]).

pub mod chart;
pub mod compose;
pub mod font;

use polars::prelude::*;
use wc_store::RunStore;

/// Errors of the reports.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] wc_store::StoreError),
    #[error("{what}: {source}")]
    Polars {
        what: String,
        #[source]
        source: PolarsError,
    },
    #[error("run {0} has no reward log yet (reward_log/ is empty): run at least one iteration's select stage")]
    Empty(String),
}

fn pl_err(what: impl Into<String>) -> impl FnOnce(PolarsError) -> ReportError {
    let what = what.into();
    move |source| ReportError::Polars { what, source }
}

/// Where the reward log lives under a run.
pub const REWARD_LOG_DIR: &str = "reward_log";

/// The run's reward log as one table (rows of every iteration).
pub fn reward_log(store: &RunStore) -> Result<DataFrame, ReportError> {
    let mut paths: Vec<String> = store.list(REWARD_LOG_DIR)?.into_iter().filter(|p| p.ends_with(".parquet")).collect();
    paths.sort();
    let mut frames = Vec::with_capacity(paths.len());
    for p in &paths {
        let bytes = store.get(p)?;
        let df = ParquetReader::new(std::io::Cursor::new(bytes.to_vec())).finish().map_err(pl_err(store.uri_of(p)))?;
        frames.push(df.lazy());
    }
    if frames.is_empty() {
        return Err(ReportError::Empty(store.uri().to_string()));
    }
    concat(frames, UnionArgs::default()).and_then(|lf| lf.collect()).map_err(pl_err("reward log"))
}

/// Per-iteration means and selection statistics, sorted by iteration.
pub fn iteration_summary(log: &DataFrame) -> Result<DataFrame, ReportError> {
    log.clone()
        .lazy()
        .group_by([col("iter")])
        .agg([
            len().alias("candidates"),
            col("clip_index").first().alias("clip"),
            col("if_score").mean().alias("if_mean"),
            col("rot_acc").mean().alias("rot_mean"),
            col("trans_acc").mean().alias("trans_mean"),
            col("vq_score").mean().alias("vq_mean"),
            col("if_score").filter(col("selected")).mean().alias("if_selected"),
            col("r").filter(col("selected")).mean().alias("r_selected"),
            col("adv").std(1).alias("adv_std"),
            col("selected").cast(DataType::Int64).sum().alias("selected"),
        ])
        .sort(["iter"], Default::default())
        .collect()
        .map_err(pl_err("iteration summary"))
}

/// A column of a summary as f64 values (nulls as NaN).
pub fn column_f64(df: &DataFrame, name: &str) -> Result<Vec<f64>, ReportError> {
    let s = df.column(name).map_err(pl_err(name))?.cast(&DataType::Float64).map_err(pl_err(name))?;
    let ca = s.f64().map_err(pl_err(name))?;
    Ok(ca.iter().map(|v| v.unwrap_or(f64::NAN)).collect())
}

/// The summary as a fixed-width text table (one row per iteration).
pub fn summary_table(summary: &DataFrame) -> Result<String, ReportError> {
    const COLS: [&str; 11] = ["iter", "clip", "candidates", "if_mean", "rot_mean", "trans_mean", "vq_mean", "if_selected", "r_selected", "adv_std", "selected"];
    let cols: Vec<Vec<f64>> = COLS.iter().map(|c| column_f64(summary, c)).collect::<Result<_, _>>()?;
    let mut out = COLS.iter().map(|c| format!("{c:>11}")).collect::<Vec<_>>().join(" ");
    for i in 0..summary.height() {
        out.push('\n');
        let cells: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(j, c)| if [0, 1, 2, 10].contains(&j) { format!("{:>11}", c[i] as i64) } else { format!("{:>11.4}", c[i]) })
            .collect();
        out.push_str(&cells.join(" "));
    }
    Ok(out)
}

/// The reward-curve charts of a summary (IF and VQ, as the paper's Figure
/// 2, and the IF components): PNG bytes of (name, chart).
pub fn reward_charts(summary: &DataFrame) -> Result<Vec<(&'static str, Vec<u8>)>, ReportError> {
    use chart::{LineChart, Series};
    let it = column_f64(summary, "iter")?;
    let pts = |name: &str| -> Result<Vec<(f64, f64)>, ReportError> { Ok(it.iter().copied().zip(column_f64(summary, name)?).collect()) };
    let if_chart = LineChart {
        title: "Interaction following (IF) per iteration".into(),
        x_label: "iteration".into(),
        series: vec![
            Series { name: "IF".into(), color: [31, 119, 180], points: pts("if_mean")? },
            Series { name: "rotation acc".into(), color: [44, 160, 44], points: pts("rot_mean")? },
            Series { name: "translation acc".into(), color: [214, 39, 40], points: pts("trans_mean")? },
        ],
    };
    let vq_chart = LineChart {
        title: "Visual quality (VQ) per iteration".into(),
        x_label: "iteration".into(),
        series: vec![Series { name: "VQ".into(), color: [255, 127, 14], points: pts("vq_mean")? }],
    };
    Ok(vec![("reward_if.png", if_chart.render(640, 360).png()), ("reward_vq.png", vq_chart.render(640, 360).png())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_matches_hand_computed_means() {
        let log = df!(
            "iter" => [0i64, 0, 0, 0, 1, 1],
            "clip_index" => [1i64, 1, 1, 1, 2, 2],
            "if_score" => [1.0f64, 0.5, 0.0, 0.5, 1.0, 0.0],
            "rot_acc" => [1.0f64, 1.0, 0.0, 0.0, 1.0, 0.0],
            "trans_acc" => [1.0f64, 0.0, 0.0, 1.0, 1.0, 0.0],
            "vq_score" => [-3.0f64, -4.0, -5.0, -4.0, -2.0, -2.0],
            "adv" => [1.0f64, 0.0, -1.0, 0.0, 1.0, -1.0],
            "r" => [0.75f64, 0.5, 0.25, 0.5, 0.75, 0.25],
            "selected" => [true, false, true, false, true, true],
        )
        .unwrap();
        let s = iteration_summary(&log).unwrap();
        assert_eq!(column_f64(&s, "iter").unwrap(), vec![0.0, 1.0]);
        assert_eq!(column_f64(&s, "if_mean").unwrap(), vec![0.5, 0.5]);
        assert_eq!(column_f64(&s, "vq_mean").unwrap(), vec![-4.0, -2.0]);
        assert_eq!(column_f64(&s, "r_selected").unwrap(), vec![0.5, 0.5]);
        assert_eq!(column_f64(&s, "if_selected").unwrap(), vec![0.5, 0.5]);
        assert_eq!(column_f64(&s, "selected").unwrap(), vec![2.0, 2.0]);
        let std0 = (2.0f64 / 3.0).sqrt(); // sample std of [1, 0, -1, 0]
        assert!((column_f64(&s, "adv_std").unwrap()[0] - std0).abs() < 1e-12);
        let table = summary_table(&s).unwrap();
        assert_eq!(table.lines().count(), 3, "{table}");
        assert!(table.lines().nth(1).unwrap().contains("0.5000"), "{table}");
        let charts = reward_charts(&s).unwrap();
        assert_eq!(charts.len(), 2);
        assert!(charts.iter().all(|(_, png)| png.starts_with(&[0x89, b'P', b'N', b'G'])));
    }
}
