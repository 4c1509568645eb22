//! Reports of a training run, computed with Polars.
//!
//! - [`reward_log`]: every committed reward-log table of a run (one per
//!   iteration, `reward_log/iter-<k>.parquet`), read through the run's
//!   store (any backend) into one Polars `DataFrame`;
//! - [`iteration_summary`]: per iteration, the mean rewards (IF, rotation,
//!   translation, VQ), the selection statistics (mean r of the selected
//!   candidates, spread of the combined advantage) and counts: the same
//!   numbers a user gets from `polars.scan_parquet("<run>/reward_log/**")`;
//! - [`reward_charts`] and [`chart`]: PNG line charts of the reward curves
//!   (plotters, with an embedded font), per iteration and per target clip;
//! - [`compose`]: several frame sequences side by side, labelled.

pub mod chart;
pub mod compose;

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
    #[error(transparent)]
    Chart(#[from] chart::ChartError),
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

/// Split a per-iteration curve by target clip: for each clip index in
/// ascending order, its (iteration, value) points in iteration order.
pub fn per_clip_points(iters: &[i64], clips: &[i64], values: &[f64]) -> Vec<(i64, Vec<(i64, f64)>)> {
    let mut distinct = clips.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    distinct
        .into_iter()
        .map(|c| {
            let mut pts: Vec<(i64, f64)> = (0..iters.len()).filter(|&i| clips[i] == c).map(|i| (iters[i], values[i])).collect();
            pts.sort_by_key(|p| p.0);
            (c, pts)
        })
        .collect()
}

/// Colours of the series, in order (matplotlib's tab10).
const PALETTE: [chart::Rgb; 8] =
    [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75], [227, 119, 194], [127, 127, 127]];

/// The reward-curve charts of a summary, as PNG bytes of (file name,
/// chart): IF and its components, and VQ, per iteration (the paper's
/// Figure 2); and IF and VQ per iteration with one line per target clip
/// index. The curriculum trains clip n = (k mod N) + 1 in iteration k, so
/// the overall curves are periodic; the per-clip lines show each clip's
/// own trend.
pub fn reward_charts(summary: &DataFrame) -> Result<Vec<(&'static str, Vec<u8>)>, ReportError> {
    use chart::{LineChart, Series};
    let it: Vec<i64> = column_f64(summary, "iter")?.into_iter().map(|v| v as i64).collect();
    let clip: Vec<i64> = column_f64(summary, "clip")?.into_iter().map(|v| v as i64).collect();
    let pts = |name: &str| -> Result<Vec<(i64, f64)>, ReportError> { Ok(it.iter().copied().zip(column_f64(summary, name)?).collect()) };
    let by_clip = |name: &str, what: &str| -> Result<LineChart, ReportError> {
        let series = per_clip_points(&it, &clip, &column_f64(summary, name)?)
            .into_iter()
            .enumerate()
            .map(|(k, (c, points))| Series { name: format!("clip {c}"), color: PALETTE[k % PALETTE.len()], points })
            .collect();
        Ok(LineChart { title: format!("{what} per iteration, by target clip"), x_label: "iteration".into(), series })
    };
    let if_chart = LineChart {
        title: "Interaction following (IF) per iteration".into(),
        x_label: "iteration".into(),
        series: vec![
            Series { name: "IF".into(), color: PALETTE[0], points: pts("if_mean")? },
            Series { name: "rotation acc".into(), color: PALETTE[2], points: pts("rot_mean")? },
            Series { name: "translation acc".into(), color: PALETTE[3], points: pts("trans_mean")? },
        ],
    };
    let vq_chart = LineChart {
        title: "Visual quality (VQ) per iteration".into(),
        x_label: "iteration".into(),
        series: vec![Series { name: "VQ".into(), color: PALETTE[1], points: pts("vq_mean")? }],
    };
    let charts = [
        ("reward_if.png", if_chart),
        ("reward_vq.png", vq_chart),
        ("reward_if_by_clip.png", by_clip("if_mean", "IF")?),
        ("reward_vq_by_clip.png", by_clip("vq_mean", "VQ")?),
    ];
    charts.into_iter().map(|(name, c)| Ok((name, c.png(720, 400)?))).collect()
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
        assert_eq!(charts.len(), 4);
        assert!(charts.iter().all(|(_, png)| png.starts_with(&[0x89, b'P', b'N', b'G'])));
    }

    #[test]
    fn per_clip_points_follow_each_clip_through_the_curriculum() {
        // N = 3 clips: iteration k trains clip (k mod 3) + 1.
        let iters = [0, 1, 2, 3, 4, 5, 6];
        let clips = [1, 2, 3, 1, 2, 3, 1];
        let values = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6];
        let by = per_clip_points(&iters, &clips, &values);
        assert_eq!(by.iter().map(|(c, _)| *c).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(by[0].1, vec![(0, 0.0), (3, 0.3), (6, 0.6)]);
        assert_eq!(by[2].1, vec![(2, 0.2), (5, 0.5)]);
    }
}
