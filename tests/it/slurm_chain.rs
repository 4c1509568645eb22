//! Scale-out on a real batch engine: iterations submitted to a single-node
//! Slurm cluster as chains of job arrays (pipelines/slurm/submit.sh) over an
//! s3:// run on a loopback S3 server end with the same checkpoint bytes as
//! `worldcompass train` run locally, also when an array task is cancelled
//! mid-run and requeued.
//!
//! "Mid-run" is made certain, not hoped for: the requeued chain runs the
//! binary through a wrapper that stops the first rollout task of iteration 0
//! right after it has written its first group file (and before its commit),
//! and says which task it holds. Timing the requeue against a running task
//! failed in CI once the stages got fast enough to end between `squeue` and
//! `scontrol requeue`.

use std::path::Path;
use std::process::Command;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use crate::support::slurm::SlurmCluster;
use crate::support::*;
use wc_store::RunStore;

const ITERS: &str = "2";
const SHARDS: &str = "3";
const FINAL_CKPT: &str = "checkpoints/000002/policy.safetensors";

/// One submitted job: (stage, iteration, job id).
type Jobs = Vec<(String, u64, String)>;

fn submit(cluster: &SlurmCluster, moto: &MotoServer, run: &str, pipeline: &str, logs: &Path, bin: &str) -> Jobs {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../pipelines/slurm/submit.sh");
    let mut cmd = Command::new(script);
    cmd.args([run, ITERS, SHARDS, pipeline])
        .env("SLURM_CONF", &cluster.conf)
        .env("WORLDCOMPASS_BIN", bin)
        .env("WC_SLURM_LOGS", logs)
        .env_remove("WORLDCOMPASS_RUN");
    for (k, v) in moto.env() {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "submit.sh: {}", String::from_utf8_lossy(&out.stderr));
    let jobs: Jobs = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), f[1].parse().unwrap(), f[2].to_string())
        })
        .collect();
    // init, then five stages per iteration.
    assert_eq!(jobs.len(), 1 + 5 * 2, "{jobs:?}");
    jobs
}

fn assert_all_completed(cluster: &SlurmCluster, jobs: &Jobs) {
    for (stage, iter, id) in jobs {
        let states = cluster.job_states(id);
        let tasks = if matches!(stage.as_str(), "prefix" | "rollout" | "reward") { 3 } else { 1 };
        assert_eq!(states.len(), tasks, "{stage} {iter} ({id}): {states:?}");
        assert!(states.iter().all(|s| s == "COMPLETED"), "{stage} {iter} ({id}): {states:?}\n{}", cluster.logs());
    }
}

fn final_checkpoint(moto: &MotoServer, run: &str) -> Vec<u8> {
    moto.set_env();
    RunStore::open(run).unwrap().get(FINAL_CKPT).unwrap().to_vec()
}

/// A `WORLDCOMPASS_BIN` that runs the real binary, except for the first
/// attempt of the first rollout task of iteration 0 to write a group file:
/// that one it stops (SIGSTOP) right after the write, with the stage's work
/// half done and nothing committed, and writes the task's id ("ARRAY_INDEX")
/// to `held`. The store's debug log says when a file is written.
fn holding_wrapper(dir: &Path, held: &Path) -> String {
    let path = dir.join("hold-first-rollout.sh");
    let script = format!(
        r#"#!/usr/bin/env bash
set -u
real={real:?}
held={held:?}
if [[ "${{2:-}}" != rollout || "${{6:-}}" != 0 || "${{SLURM_RESTART_COUNT:-0}}" != 0 ]] || ! mkdir "$held.lock" 2>/dev/null; then
    exec "$real" "$@"
fi
log="$held.$SLURM_ARRAY_TASK_ID.fifo"
mkfifo "$log"
WORLDCOMPASS_LOG=wc_store=debug "$real" "$@" 2>"$log" &
pid=$!
while IFS= read -r line; do
    printf '%s\n' "$line" >&2
    if [[ "$line" == *" put "*"/rollout/shard-"*"/group-"* ]]; then
        kill -STOP "$pid"
        echo "${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}" > "$held.tmp" && mv "$held.tmp" "$held"
    fi
done < "$log"
wait "$pid"
"#,
        real = BIN,
        held = held.display().to_string(),
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn slurm_array_chain_over_s3_matches_local_train_also_after_a_requeue() {
    let tmp = tempfile::tempdir().unwrap();
    let pose = tiny_pose_model(tmp.path());
    let pipeline = tiny_world_pipeline(tmp.path(), &pose);

    // The reference: the same config trained locally in one process.
    let local = format!("file://{}", tmp.path().join("local").display());
    wc_ok(&["train", "--run", &local, "--pipeline", &pipeline, "--iters", ITERS], &[]);
    let expected = RunStore::open(&local).unwrap().get(FINAL_CKPT).unwrap().to_vec();

    let moto = MotoServer::start();
    moto.create_bucket("wc-slurm");
    let cluster = SlurmCluster::start(&tmp.path().join("slurm"));
    let t0 = Instant::now();

    // 1. Two iterations as job-array chains with 3 shards.
    let run = "s3://wc-slurm/runs/chain";
    let logs = tmp.path().join("logs-chain");
    let jobs = submit(&cluster, &moto, run, &pipeline, &logs, BIN);
    cluster.wait_idle(Duration::from_secs(900));
    assert_all_completed(&cluster, &jobs);
    eprintln!("chain of {} jobs done in {:?}", jobs.len(), t0.elapsed());
    assert!(final_checkpoint(&moto, run) == expected, "Slurm chain checkpoint differs from local train");
    let status = wc_ok(&["status", "--run", run], &moto.env());
    assert!(status.contains("3 shards"), "status shows the sharded stages: {status}");

    // 2. The same, with one array task requeued while it runs: the wrapper
    // holds a rollout task of iteration 0 stopped after its first group file.
    let run = "s3://wc-slurm/runs/requeued";
    let logs = tmp.path().join("logs-requeue");
    let held = tmp.path().join("held-task");
    let bin = holding_wrapper(tmp.path(), &held);
    let jobs = submit(&cluster, &moto, run, &pipeline, &logs, &bin);
    let (_, iter, rollout_job) = jobs.iter().find(|(s, i, _)| s == "rollout" && *i == 0).unwrap().clone();
    cluster.wait_for(Duration::from_secs(600), "the wrapper to hold a rollout task mid-run", || held.exists());
    let task = std::fs::read_to_string(&held).unwrap().trim().to_string();
    assert!(task.starts_with(&format!("{rollout_job}_")), "held {task}, not a task of rollout job {rollout_job}");
    assert_eq!(cluster.job_states(&task), ["RUNNING"], "the held task is running");
    cluster.run("scontrol", &["requeue", &task]);
    // A requeued job waits out a fixed eligibility delay (about two
    // minutes) once it is pending again; release it now, as an operator
    // would.
    cluster.wait_for(Duration::from_secs(60), &format!("{task} to be pending after its requeue"), || {
        cluster.job_states(&task).iter().any(|s| s == "PENDING")
    });
    // Release it only once slurmd has finished the cancelled run and a
    // clock second has passed: a requeue revokes the job's credential,
    // and slurmd refuses a relaunch whose credential was made in the
    // same second ("Killing non-startable batch JobId=38: Job credential
    // revoked", a failure seen in CI: the task ended FAILED and its
    // dependents were cancelled).
    let raw_id = cluster.raw_job_id(&task);
    let done = format!("[{raw_id}.batch] done with job");
    cluster.wait_for(Duration::from_secs(60), &format!("slurmd to finish the cancelled run of {task}"), || {
        cluster.slurmd_log().contains(&done)
    });
    let finished_at = std::time::SystemTime::now();
    cluster.wait_for(Duration::from_secs(10), "the credential revocation's second to pass", || {
        finished_at.elapsed().is_ok_and(|d| d >= Duration::from_secs(2))
    });
    cluster.run("scontrol", &["update", &format!("jobid={task}"), "StartTime=now"]);
    eprintln!("requeued {task} (rollout of iteration {iter}) mid-run at {:?}", t0.elapsed());
    cluster.wait_idle(Duration::from_secs(900));
    assert_all_completed(&cluster, &jobs);
    let (array, index) = task.split_once('_').unwrap();
    let log = std::fs::read_to_string(logs.join(format!("wc-{iter}-rollout-{array}_{index}.out"))).unwrap();
    assert!(log.contains("/group-"), "the held task had written a group file before its requeue:\n{log}");
    assert!(log.contains("DUE TO JOB REQUEUE"), "the task was not cancelled mid-run by the requeue:\n{log}");
    assert!(log.contains("restart 1"), "the task did not run again after its requeue:\n{log}");
    assert!(final_checkpoint(&moto, run) == expected, "requeued Slurm chain checkpoint differs from local train");
}
