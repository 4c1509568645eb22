//! `worldcompass bench all`: every section in one run, one table, one
//! Parquet file. The Table 3 variants and the paper's ratios they are
//! compared with live here.

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::{stage_runs, BenchError, BenchRow, Result};

/// The sections, in the order they run.
pub const SECTIONS: [&str; 5] = ["rollout", "prefix_cache", "compute", "pytorch", "stages"];

/// Table 3 of the paper: iteration time with each speed-up switched off,
/// relative to both on, and the pipeline edits that switch them off.
pub const TABLE3_VARIANTS: [(&str, f64, &[(&str, &str)]); 3] = [
    ("timestep subset + best-of-N", 1.0, &[]),
    ("timestep subset only", 1.42, &[("best_of_n = true", "best_of_n = false")]),
    ("neither", 2.26, &[("best_of_n = true", "best_of_n = false"), ("timestep_fraction = 0.5", "timestep_fraction = 1.0")]),
];

/// What `bench all` runs.
#[derive(Debug, Clone)]
pub struct BenchAll {
    /// Folder for the results and the scratch runs (`work/`).
    pub out_dir: PathBuf,
    /// Pipeline of the stage measurements.
    pub pipeline: PathBuf,
    /// Only these sections (all when empty).
    pub only: Vec<String>,
    /// The `worldcompass` binary the stage measurements run.
    pub exe: PathBuf,
    /// The device the stage processes run on (`WORLDCOMPASS_DEVICE`).
    pub device_name: String,
}

/// Run the sections asked for on `dev`, saying what starts through `note`.
pub fn run(s: &BenchAll, dev: &Device, mut note: impl FnMut(&str)) -> Result<Vec<BenchRow>> {
    if let Some(bad) = s.only.iter().find(|o| !SECTIONS.contains(&o.as_str())) {
        return Err(BenchError::Failed(format!("--only {bad}: unknown section (one of {})", SECTIONS.join(", "))));
    }
    let want = |name: &str| s.only.is_empty() || s.only.iter().any(|o| o == name);
    let io = |what: String| move |source| BenchError::Io { what: what.clone(), source };
    let cfg = wc_model::ModelConfig::default();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::fs::create_dir_all(&s.out_dir).map_err(io(format!("creating {}", s.out_dir.display())))?;
    let mut rows = Vec::new();
    if want("rollout") {
        note("rollout: clip-level vs sample-level, N in {8, 16}, G in {8, 16}");
        rows.extend(crate::rollout::rows(&cfg, 10, &[(8, 8), (8, 16), (16, 8), (16, 16)], 1, dev)?);
    }
    if want("prefix_cache") {
        note("prefix cache: cached vs recomputed, short and long context");
        rows.extend(crate::compute::cache_rows(&cfg, 8, 10, &[2, 8], dev)?);
    }
    if want("compute") {
        note("compute: GFLOP/s against the matmul peak");
        rows.extend(crate::compute::efficiency_rows(&cfg, 8, 24, dev)?);
    }
    if want("pytorch") {
        note("pytorch: the same model in PyTorch");
        rows.extend(crate::pytorch::rows(&cfg, 24, 8, threads, 5, &s.out_dir.join("work"))?);
    }
    if want("stages") {
        rows.extend(stage_rows(s, &mut note)?);
    }
    Ok(rows)
}

/// Table 3, the storage share and the peak memory of real stage processes:
/// two iterations of each Table 3 variant, then the default on a loopback
/// S3 server.
fn stage_rows(s: &BenchAll, note: &mut impl FnMut(&str)) -> Result<Vec<BenchRow>> {
    let io = |what: String| move |source| BenchError::Io { what: what.clone(), source };
    let stage_env = [("WORLDCOMPASS_DEVICE", s.device_name.clone())];
    let work = s.out_dir.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io(format!("creating {}", work.display())))?;
    let work = work.canonicalize().map_err(io(format!("resolving {}", work.display())))?;
    let base = s.pipeline.to_str().ok_or_else(|| BenchError::Failed(format!("pipeline path {} is not UTF-8", s.pipeline.display())))?;
    let name = s.pipeline.file_name().and_then(|n| n.to_str()).unwrap_or(base).to_string();
    let mut measured = Vec::new();
    for (i, (label, paper, edits)) in TABLE3_VARIANTS.into_iter().enumerate() {
        note(&format!("stages: 2 iterations of {name} with {label}, each stage a process"));
        let p = stage_runs::pipeline_variant(base, edits, &work.join(format!("pipeline-{i}.toml")))?;
        let run = format!("file://{}", work.join(format!("run-{i}")).display());
        measured.push((label, paper, stage_runs::run_iterations(&s.exe, &run, &p, 2, &stage_env)?));
    }
    let config = format!("{name}, iteration 1");
    let mut rows = stage_runs::table3_rows(&measured, 1, &config);
    let default_runs = &measured[0].2;
    rows.extend(stage_runs::iteration_rows(default_runs, 1, &config));
    rows.extend(stage_runs::storage_rows(default_runs, 1, "file://", &config));
    note("stages: the same on the loopback S3 server");
    match crate::s3_server::LoopbackS3::start() {
        Ok(s3) => {
            s3.create_bucket("wc-bench")?;
            let s3_runs = stage_runs::run_iterations(&s.exe, "s3://wc-bench/run", &work.join("pipeline-0.toml"), 2, &s3.env())?;
            rows.extend(stage_runs::storage_rows(&s3_runs, 1, "s3:// (moto, loopback)", &config));
        }
        Err(e) => note(&format!("warning: no S3 rows: {e}")),
    }
    let (idle, _) = stage_runs::run_stage(&s.exe, &format!("file://{}", work.join("run-0").display()), "select", 1, &[])?;
    let hold = stage_runs::must_hold_bytes(&work.join("run-0"), 1)?;
    rows.extend(stage_runs::memory_rows(default_runs, &hold, idle.peak_rss_bytes, 1, &config));
    Ok(rows)
}

/// Write `rows` as `bench-<unix time>.parquet` under `out_dir`; returns
/// the file's path.
pub fn write_results(out_dir: &Path, rows: &[BenchRow]) -> Result<PathBuf> {
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let path = out_dir.join(format!("bench-{unix}.parquet"));
    std::fs::write(&path, crate::to_parquet(rows, unix)?).map_err(|source| BenchError::Io { what: format!("writing {}", path.display()), source })?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_section_is_refused_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let s = BenchAll {
            out_dir: dir.path().join("out"),
            pipeline: "pipelines/embedded.toml".into(),
            only: vec!["compute".into(), "gpu".into()],
            exe: "worldcompass".into(),
            device_name: "cpu".into(),
        };
        let err = run(&s, &Device::Cpu, |_| panic!("nothing may start")).unwrap_err().to_string();
        assert!(err.contains("--only gpu: unknown section") && err.contains("prefix_cache"), "{err}");
        assert!(!s.out_dir.exists(), "nothing written");
    }

    #[test]
    fn table3_variants_switch_off_best_of_n_then_the_timestep_subset_too() {
        assert_eq!(TABLE3_VARIANTS[0].2.len(), 0);
        assert!(TABLE3_VARIANTS[1].2.iter().any(|(_, to)| *to == "best_of_n = false"));
        assert!(TABLE3_VARIANTS[2].2.iter().any(|(_, to)| *to == "timestep_fraction = 1.0"));
        // The paper's ratios grow as switches go off.
        assert!(TABLE3_VARIANTS.windows(2).all(|w| w[0].1 < w[1].1));
    }
}
