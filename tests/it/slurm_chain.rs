//! Scale-out on a real batch engine: iterations submitted to a single-node
//! Slurm cluster as chains of job arrays (pipelines/slurm/submit.sh) over an
//! s3:// run on a loopback S3 server end with the same checkpoint bytes as
//! `worldcompass train` run locally, also when an array task is cancelled
//! mid-run and requeued.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::slurm::SlurmCluster;
use crate::support::*;
use wc_store::RunStore;

const ITERS: &str = "2";
const SHARDS: &str = "3";
const FINAL_CKPT: &str = "checkpoints/000002/policy.safetensors";

/// One submitted job: (stage, iteration, job id).
type Jobs = Vec<(String, u64, String)>;

fn submit(cluster: &SlurmCluster, moto: &MotoServer, run: &str, pipeline: &str, logs: &Path) -> Jobs {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../pipelines/slurm/submit.sh");
    let mut cmd = Command::new(script);
    cmd.args([run, ITERS, SHARDS, pipeline])
        .env("SLURM_CONF", &cluster.conf)
        .env("WORLDCOMPASS_BIN", BIN)
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

#[test]
fn slurm_array_chain_over_s3_matches_local_train_also_after_a_requeue() {
    let tmp = tempfile::tempdir().unwrap();
    let pose = tiny_pose_model(tmp.path());
    // 40 sampler steps, not the tiny pipeline's 4: a rollout task must last
    // long enough for the requeue below to catch it running (with 4, CI saw
    // every requeue land after its task had ended).
    let tiny = std::fs::read_to_string(tiny_world_pipeline(tmp.path(), &pose)).unwrap();
    assert!(tiny.contains("sampler_steps = 4 "), "the tiny pipeline's sampler steps moved");
    let pipeline = tmp.path().join("slurm-pipeline.toml");
    std::fs::write(&pipeline, tiny.replacen("sampler_steps = 4 ", "sampler_steps = 40 ", 1)).unwrap();
    let pipeline = pipeline.to_str().unwrap().to_string();

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
    let jobs = submit(&cluster, &moto, run, &pipeline, &logs);
    cluster.wait_idle(Duration::from_secs(900));
    assert_all_completed(&cluster, &jobs);
    eprintln!("chain of {} jobs done in {:?}", jobs.len(), t0.elapsed());
    assert!(final_checkpoint(&moto, run) == expected, "Slurm chain checkpoint differs from local train");
    let status = wc_ok(&["status", "--run", run], &moto.env());
    assert!(status.contains("3 shards"), "status shows the sharded stages: {status}");

    // 2. The same, with one array task requeued while it runs. Try the
    // sharded stages in order until a requeue lands on a running task.
    let run = "s3://wc-slurm/runs/requeued";
    let logs = tmp.path().join("logs-requeue");
    let jobs = submit(&cluster, &moto, run, &pipeline, &logs);
    let mut requeued = None;
    // Rollout first: it samples candidates and runs longest; iteration 0's
    // prefix has no clips to make and ends in tens of milliseconds, too fast
    // to catch mid-run (a failure seen in CI).
    let order = |s: &str| ["rollout", "reward", "prefix"].iter().position(|x| *x == s);
    let mut sharded: Vec<_> = jobs.iter().filter(|(s, _, _)| order(s).is_some()).collect();
    sharded.sort_by_key(|(s, iter, _)| (order(s), *iter));
    for (stage, iter, id) in sharded {
        let mut running = None;
        cluster.wait_for(Duration::from_secs(600), &format!("a task of {stage} {iter} to run or the array to end"), || {
            let out = cluster.run("squeue", &["-h", "-j", id, "-t", "R", "-o", "%i"]);
            running = out.lines().next().map(str::to_string);
            running.is_some() || cluster.run("squeue", &["-h", "-j", id]).trim().is_empty()
        });
        let Some(task) = running else { continue };
        let out = cluster.command("scontrol").args(["requeue", &task]).output().unwrap();
        if !out.status.success() {
            continue; // it ended between squeue and scontrol
        }
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
        // `scontrol requeue` also requeues a task that finished between
        // squeue and scontrol (a failure seen in CI): then its log has no
        // cancellation, and the next array is tried. A task cancelled
        // mid-run has the line once it is pending again; allow its writer
        // a moment.
        let (array, index) = task.split_once('_').unwrap();
        let log_path = logs.join(format!("wc-{iter}-{stage}-{array}_{index}.out"));
        let cancelled = || std::fs::read_to_string(&log_path).unwrap_or_default().contains("DUE TO JOB REQUEUE");
        let t_check = Instant::now();
        while !cancelled() && t_check.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !cancelled() {
            eprintln!("requeue of {task} ({stage} of iteration {iter}) landed after it had ended; trying the next array");
            continue;
        }
        requeued = Some((stage.clone(), *iter, task));
        break;
    }
    let (stage, iter, task) = requeued.expect("no array task could be requeued while running");
    eprintln!("requeued {task} ({stage} of iteration {iter}) mid-run at {:?}", t0.elapsed());
    cluster.wait_idle(Duration::from_secs(900));
    assert_all_completed(&cluster, &jobs);
    let (array, index) = task.split_once('_').unwrap();
    let log = std::fs::read_to_string(logs.join(format!("wc-{iter}-{stage}-{array}_{index}.out"))).unwrap();
    assert!(log.contains("DUE TO JOB REQUEUE"), "the task was not cancelled mid-run by the requeue:\n{log}");
    assert!(log.contains("restart 1"), "the task did not run again after its requeue:\n{log}");
    assert!(final_checkpoint(&moto, run) == expected, "requeued Slurm chain checkpoint differs from local train");
}
