//! External scorers: the reward stage delegates scoring to a command (the
//! production path for HPSv3 or a 3D foundation model) and keeps the commit.
//!
//! The contract, for a command `reward.external_command = [prog, args...]`:
//!
//! - the stage writes a work folder with one `group-<g>.safetensors` per
//!   group (`frames`: u8 `[G, F + 1, H, W, 3]`; frame 0 is the frame before
//!   the clip, then the clip's F frames) and `job.json` (iteration, shard,
//!   clip index, the groups with their prompt and per-window actions, the
//!   frame files, where to write the output, and the schema it must have);
//! - it runs `prog args... <work>/job.json` with `WORLDCOMPASS_JOB` set to the
//!   same path, in a process group of its own, its stdout and stderr to
//!   `<work>/scorer.stdout` and `scorer.stderr` (files, not pipes: a
//!   background child that keeps them open cannot hold the stage), and
//!   kills the whole group after `reward.external_timeout_s`;
//! - the command writes `scores.parquet` (the `reward_scores` schema, one row
//!   per candidate) where `job.json` says;
//! - the stage validates the table (schema, exactly one row per group and
//!   candidate of this shard, this iteration and clip, finite scores) and
//!   only then puts it into the commit. A non-zero exit, a timeout, a missing
//!   file or a bad table is an error that names the problem; nothing is
//!   committed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::StageError;
use crate::tables::{scores_from_batch, ScoreRow};

/// One group's entry in the job manifest.
#[derive(Debug, Clone, Serialize)]
pub struct JobGroup {
    pub group_id: u64,
    pub prompt_id: i64,
    /// Action bit mask of each window of the clip.
    pub actions: Vec<u8>,
    /// Frames file, relative to the work folder.
    pub frames: String,
}

/// The job manifest an external scorer reads.
#[derive(Debug, Clone, Serialize)]
pub struct JobManifest {
    pub run: String,
    pub iter: u64,
    pub shard: String,
    pub clip_index: u64,
    pub candidates: u64,
    pub frames_per_window: usize,
    pub groups: Vec<JobGroup>,
    /// Absolute path of the table to write.
    pub output: String,
    /// The schema of the table (as in schemas/tables/reward_scores.json).
    pub output_schema: wc_schemas::TableSchema,
}

/// Run the command on the job in `work`; returns the validated rows and
/// the table's bytes.
pub fn run_scorer(command: &[String], timeout: Duration, work: &Path, job: &JobManifest) -> Result<(Vec<ScoreRow>, Vec<u8>), StageError> {
    let job_path = work.join("job.json");
    let what = format!("external scorer `{}`", command.join(" "));
    std::fs::write(&job_path, serde_json::to_vec_pretty(job).expect("serialises")).map_err(StageError::io(format!("writing {}", job_path.display())))?;
    let (prog, args) = command.split_first().ok_or_else(|| StageError::invalid("reward.external_command", "empty command"))?;
    let log = |name: &str| -> Result<(PathBuf, std::fs::File), StageError> {
        let path = work.join(name);
        let file = std::fs::File::create(&path).map_err(StageError::io(format!("creating {}", path.display())))?;
        Ok((path, file))
    };
    let ((out_path, out_file), (err_path, err_file)) = (log("scorer.stdout")?, log("scorer.stderr")?);
    let mut child = Command::new(prog)
        .args(args)
        .arg(&job_path)
        .env("WORLDCOMPASS_JOB", &job_path)
        .stdin(Stdio::null())
        .stdout(out_file)
        .stderr(err_file)
        .process_group(0)
        .spawn()
        .map_err(StageError::io(format!("{what}: cannot start")))?;
    let group = child.id() as i32;
    let deadline = Instant::now().checked_add(timeout).ok_or_else(|| StageError::invalid(&what, format!("a timeout of {} s is out of range", timeout.as_secs())))?;
    let status = loop {
        if let Some(st) = child.try_wait().map_err(StageError::io(format!("{what}: waiting for it")))? {
            break st;
        }
        if Instant::now() >= deadline {
            // The scorer and everything it started.
            // SAFETY: killpg only sends a signal to the group this stage created.
            unsafe {
                libc::killpg(group, libc::SIGKILL);
            }
            let _ = child.wait();
            return Err(StageError::invalid(&what, format!("timed out after {} s and was killed with its process group (reward.external_timeout_s)", timeout.as_secs_f64())));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let (stdout, stderr) = (read(&out_path), read(&err_path));
    for line in stdout.lines() {
        tracing::info!(target: "external_scorer", "{line}");
    }
    if !status.success() {
        let tail: String = stderr.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        return Err(StageError::invalid(&what, format!("exited with {status}; its stderr ends with:\n{tail}")));
    }
    let output = PathBuf::from(&job.output);
    let bytes = std::fs::read(&output).map_err(StageError::io(format!("{what} did not write {}", output.display())))?;
    let artifact = format!("{} (written by {what})", output.display());
    let batch = wc_schemas::read_table(&wc_schemas::tables::reward_scores(), &artifact, bytes::Bytes::from(bytes.clone()))?;
    let rows = scores_from_batch(&batch, &artifact)?;
    validate_rows(&rows, job, &artifact)?;
    Ok((rows, bytes))
}

/// Exactly one row per (group, candidate) of the job, of its iteration and clip.
pub fn validate_rows(rows: &[ScoreRow], job: &JobManifest, artifact: &str) -> Result<(), StageError> {
    let want = job.groups.len() * job.candidates as usize;
    if rows.len() != want {
        return Err(StageError::invalid(artifact, format!("{} rows, expected {want} ({} groups x {} candidates)", rows.len(), job.groups.len(), job.candidates)));
    }
    let groups: BTreeSet<i64> = job.groups.iter().map(|g| g.group_id as i64).collect();
    let mut seen = BTreeSet::new();
    for r in rows {
        if r.iter != job.iter as i64 || r.clip_index != job.clip_index as i64 {
            return Err(StageError::invalid(artifact, format!("row for iter {} clip {}, the job is iter {} clip {}", r.iter, r.clip_index, job.iter, job.clip_index)));
        }
        if !groups.contains(&r.group_id) || r.candidate < 0 || r.candidate >= job.candidates as i64 {
            return Err(StageError::invalid(artifact, format!("row for group {} candidate {} is not part of the job", r.group_id, r.candidate)));
        }
        if !seen.insert((r.group_id, r.candidate)) {
            return Err(StageError::invalid(artifact, format!("group {} candidate {} appears twice", r.group_id, r.candidate)));
        }
    }
    Ok(())
}
