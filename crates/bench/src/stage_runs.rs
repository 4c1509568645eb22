//! Measurements of real `worldcompass stage` processes, each stage a child
//! process as a batch engine would run it: Table 3 iteration times, the
//! share of each stage's wall time spent on storage (file:// and the
//! loopback S3 server), and each stage's peak memory (VmHWM, reported by the
//! stage itself) against the bytes it must hold.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::{BenchError, BenchRow, Result};

pub const STAGES: [&str; 5] = ["prefix", "rollout", "reward", "select", "optimize"];

/// One stage process.
#[derive(Debug, Clone, PartialEq)]
pub struct StageRun {
    pub stage: &'static str,
    pub iter: u64,
    /// Wall time of the process, start to exit (model loading included).
    pub process_s: f64,
    /// What the stage reported about itself.
    pub stats: StageStats,
}

/// What a stage process reports about itself in its `stats:` line: wall
/// time inside the command, the part of it spent in storage calls, the
/// bytes moved, and its peak resident memory. `worldcompass stage` prints
/// it (Display); the bench parses it back ([`parse_stats`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StageStats {
    pub wall_s: f64,
    pub io_s: f64,
    pub io_calls: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub peak_rss_bytes: u64,
}

impl StageStats {
    /// The stats of the stage this process ran: its wall time and storage
    /// I/O as measured by the caller, and this process's peak memory.
    pub fn of_this_process(wall_s: f64, io_s: f64, io_calls: u64, read_bytes: u64, written_bytes: u64) -> StageStats {
        StageStats { wall_s, io_s, io_calls, read_bytes, written_bytes, peak_rss_bytes: own_peak_rss_bytes() }
    }
}

impl std::fmt::Display for StageStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stats: wall_s={:.4} io_s={:.4} io_calls={} read_bytes={} written_bytes={} peak_rss_bytes={}",
            self.wall_s, self.io_s, self.io_calls, self.read_bytes, self.written_bytes, self.peak_rss_bytes
        )
    }
}

/// Parse the `stats:` line out of a stage's stdout.
pub fn parse_stats(stdout: &str) -> Option<StageStats> {
    let line = stdout.lines().find_map(|l| l.strip_prefix("stats: "))?;
    let get = |k: &str| line.split_whitespace().find_map(|kv| kv.strip_prefix(k)?.strip_prefix('=')).map(str::to_string);
    Some(StageStats {
        wall_s: get("wall_s")?.parse().ok()?,
        io_s: get("io_s")?.parse().ok()?,
        io_calls: get("io_calls")?.parse().ok()?,
        read_bytes: get("read_bytes")?.parse().ok()?,
        written_bytes: get("written_bytes")?.parse().ok()?,
        peak_rss_bytes: get("peak_rss_bytes")?.parse().ok()?,
    })
}

/// This process's peak resident set size (VmHWM of /proc/self/status; 0
/// where there is none). Measured from inside: a parent's wait4 would also
/// count the pages of the parent the child was forked from.
pub fn own_peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmHWM:").map(str::to_string)))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Run `exe args` to completion with extra `env`; returns stdout and the
/// process's wall time (start to exit).
pub fn run_measured(exe: &Path, args: &[&str], env: &[(&'static str, String)]) -> Result<(String, f64)> {
    let t0 = Instant::now();
    let out = Command::new(exe)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| BenchError::Io { what: format!("running {}", exe.display()), source: e })?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        return Err(BenchError::Failed(format!("{} {} failed:\n{stdout}{}", exe.display(), args.join(" "), String::from_utf8_lossy(&out.stderr))));
    }
    Ok((stdout, t0.elapsed().as_secs_f64()))
}

/// Run one stage process and read its stats line.
pub fn run_stage(exe: &Path, run: &str, stage: &str, iter: u64, env: &[(&'static str, String)]) -> Result<(StageStats, f64)> {
    let iter = iter.to_string();
    let (stdout, process_s) = run_measured(exe, &["stage", stage, "--run", run, "--iter", &iter], env)?;
    let stats = parse_stats(&stdout).ok_or_else(|| BenchError::Failed(format!("no stats line from stage {stage}:\n{stdout}")))?;
    Ok((stats, process_s))
}

/// A pipeline config variant: the text of `base` with `edits` applied.
pub fn pipeline_variant(base: &str, edits: &[(&str, &str)], out: &Path) -> Result<PathBuf> {
    let mut text = std::fs::read_to_string(base).map_err(|e| BenchError::Io { what: format!("reading {base}"), source: e })?;
    for (from, to) in edits {
        if !text.contains(from) {
            return Err(BenchError::Failed(format!("pipeline {base} has no '{from}' to change")));
        }
        text = text.replacen(from, to, 1);
    }
    std::fs::write(out, text).map_err(|e| BenchError::Io { what: format!("writing {}", out.display()), source: e })?;
    Ok(out.to_path_buf())
}

/// Initialise `run` with `pipeline` and run iterations 0..iters stage by
/// stage, each a child process.
pub fn run_iterations(exe: &Path, run: &str, pipeline: &Path, iters: u64, env: &[(&'static str, String)]) -> Result<Vec<StageRun>> {
    let pipeline = pipeline.to_str().ok_or_else(|| BenchError::Failed(format!("pipeline path {} is not UTF-8", pipeline.display())))?;
    run_measured(exe, &["init", "--run", run, "--pipeline", pipeline], env)?;
    let mut out = Vec::new();
    for k in 0..iters {
        for stage in STAGES {
            let (stats, process_s) = run_stage(exe, run, stage, k, env)?;
            out.push(StageRun { stage, iter: k, process_s, stats });
        }
    }
    Ok(out)
}

/// Seconds of iteration `k`: the sum of its stage processes.
pub fn iteration_seconds(runs: &[StageRun], k: u64) -> f64 {
    runs.iter().filter(|r| r.iter == k).map(|r| r.process_s).sum()
}

/// Table 3: iteration time with timestep subset + best-of-N, subset only,
/// neither (paper: 1.00x, 1.42x, 2.26x), relative to the first.
pub fn table3_rows(variants: &[(&str, f64, Vec<StageRun>)], k: u64, config: &str) -> Vec<BenchRow> {
    let base = iteration_seconds(&variants[0].2, k);
    variants
        .iter()
        .map(|(name, paper, runs)| {
            let t = iteration_seconds(runs, k);
            let opt = runs.iter().find(|r| r.iter == k && r.stage == "optimize").map_or(0.0, |r| r.process_s);
            BenchRow::new("table3", format!("iteration time, {name}"), config, t / base, "x")
                .anchor(*paper, "paper Table 3")
                .detail(format!("{t:.2} s per iteration (optimize {opt:.2} s)"))
        })
        .collect()
}

/// The default iteration `k`'s time, stage by stage (each stage a process,
/// model loading included) and in total.
pub fn iteration_rows(runs: &[StageRun], k: u64, config: &str) -> Vec<BenchRow> {
    let mut rows: Vec<BenchRow> = runs
        .iter()
        .filter(|r| r.iter == k)
        .map(|r| BenchRow::new("iteration", format!("{} time", r.stage), config, r.process_s, "s").detail(format!("{:.2} s inside the command", r.stats.wall_s)))
        .collect();
    rows.push(BenchRow::new("iteration", "iteration time, all stages", config, iteration_seconds(runs, k), "s"));
    rows
}

/// Storage share of each stage's wall time in iteration `k`.
pub fn storage_rows(runs: &[StageRun], k: u64, backend: &str, config: &str) -> Vec<BenchRow> {
    runs.iter()
        .filter(|r| r.iter == k)
        .map(|r| {
            let st = &r.stats;
            BenchRow::new("storage", format!("{} storage share, {backend}", r.stage), config, 100.0 * st.io_s / st.wall_s, "%").detail(format!(
                "{:.3} s of {:.3} s; read {:.2} MB, wrote {:.2} MB",
                st.io_s,
                st.wall_s,
                st.read_bytes as f64 / 1e6,
                st.written_bytes as f64 / 1e6
            ))
        })
        .collect()
}

/// Bytes of a file, or of every file under a folder.
fn tree_size(p: &Path) -> Result<u64> {
    let io = |e| BenchError::Io { what: format!("size of {}", p.display()), source: e };
    let meta = std::fs::metadata(p).map_err(io)?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    let mut total = 0;
    for entry in std::fs::read_dir(p).map_err(io)? {
        total += tree_size(&entry.map_err(io)?.path())?;
    }
    Ok(total)
}

/// What each stage must hold in memory, from the sizes of a file:// run's
/// artifacts at iteration `k`: weights, optimizer state, latents.
pub fn must_hold_bytes(run_dir: &Path, k: u64) -> Result<Vec<(&'static str, u64, String)>> {
    let size = |rel: String| tree_size(&run_dir.join(rel));
    let ck = format!("checkpoints/{k:06}");
    let policy = size(format!("{ck}/policy.safetensors"))?;
    let old = size(format!("{ck}/old_policy.safetensors"))?;
    let optim = size(format!("{ck}/optimizer.safetensors"))?;
    let pose = size("data/pose_estimator".into())?;
    let it = format!("iters/{k:06}");
    let prefix = size(format!("{it}/prefix"))?;
    let rollout = size(format!("{it}/rollout"))?;
    let reward = size(format!("{it}/reward"))?;
    let mb = |b: u64| b as f64 / 1e6;
    Ok(vec![
        ("prefix", old + prefix, format!("old policy {:.1} MB + prefix latents {:.2} MB", mb(old), mb(prefix))),
        ("rollout", old + rollout, format!("old policy {:.1} MB + candidate latents {:.2} MB", mb(old), mb(rollout))),
        ("reward", pose + rollout, format!("pose estimator {:.1} MB + candidate latents {:.2} MB", mb(pose), mb(rollout))),
        ("select", reward, format!("reward tables {:.3} MB", mb(reward))),
        (
            "optimize",
            2 * policy + old + optim + rollout,
            format!("policy + gradients {:.1} MB + old policy {:.1} MB + optimizer {:.1} MB + latents {:.2} MB", mb(2 * policy), mb(old), mb(optim), mb(rollout)),
        ),
    ])
}

/// Peak memory of each stage of iteration `k` against what it must hold,
/// plus the footprint of a process that only opens the run.
pub fn memory_rows(runs: &[StageRun], must_hold: &[(&'static str, u64, String)], baseline_rss: u64, k: u64, config: &str) -> Vec<BenchRow> {
    let mut rows = vec![BenchRow::new("memory", "baseline: peak RSS of a stage with nothing to do", config, baseline_rss as f64 / 1e6, "MB")
        .detail("a rerun of a committed stage: start, open the run, read a manifest, exit")];
    for r in runs.iter().filter(|r| r.iter == k) {
        if let Some((_, hold, what)) = must_hold.iter().find(|(s, _, _)| *s == r.stage) {
            let rss = r.stats.peak_rss_bytes;
            rows.push(
                BenchRow::new("memory", format!("{} peak RSS", r.stage), config, rss as f64 / 1e6, "MB")
                    .anchor(*hold as f64 / 1e6, "bytes it must hold")
                    .detail(format!("{:.1}x of {what}; above baseline {:.1} MB", rss as f64 / *hold as f64, rss.saturating_sub(baseline_rss) as f64 / 1e6)),
            );
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_line_parses() {
        let out = "rollout iter 1 shard 0/1: committed\nstats: wall_s=2.5000 io_s=0.1250 io_calls=9 read_bytes=100 written_bytes=2048 peak_rss_bytes=4096\n";
        let st = parse_stats(out).unwrap();
        assert_eq!((st.wall_s, st.io_s, st.io_calls, st.read_bytes, st.written_bytes, st.peak_rss_bytes), (2.5, 0.125, 9, 100, 2048, 4096));
        // What a stage prints is what the bench reads.
        assert_eq!(parse_stats(&format!("committed\n{st}\n")), Some(st));
        assert_eq!(parse_stats("no stats"), None);
    }

    #[test]
    fn table3_ratios_are_relative_to_the_first_variant() {
        let stats = StageStats { wall_s: 1.0, io_s: 0.0, io_calls: 0, read_bytes: 0, written_bytes: 0, peak_rss_bytes: 0 };
        let run = |stage, s| StageRun { stage, iter: 1, process_s: s, stats };
        let a = vec![run("rollout", 2.0), run("optimize", 2.0)];
        let b = vec![run("rollout", 2.0), run("optimize", 6.0)];
        let rows = table3_rows(&[("both", 1.0, a), ("neither", 2.26, b)], 1, "cfg");
        assert_eq!(rows[0].value, 1.0);
        assert_eq!(rows[1].value, 2.0);
        assert_eq!(rows[1].anchor, Some(2.26));
    }

    #[test]
    fn iteration_rows_give_each_stage_of_the_iteration_and_their_sum() {
        let stats = StageStats { wall_s: 1.0, io_s: 0.0, io_calls: 0, read_bytes: 0, written_bytes: 0, peak_rss_bytes: 0 };
        let run = |stage, iter, s| StageRun { stage, iter, process_s: s, stats };
        let runs = vec![run("prefix", 0, 9.0), run("prefix", 1, 0.5), run("rollout", 1, 2.0), run("optimize", 1, 3.25)];
        let rows = iteration_rows(&runs, 1, "cfg");
        let got: Vec<(&str, f64)> = rows.iter().map(|r| (r.name.as_str(), r.value)).collect();
        assert_eq!(got, [("prefix time", 0.5), ("rollout time", 2.0), ("optimize time", 3.25), ("iteration time, all stages", 5.75)]);
    }
}
