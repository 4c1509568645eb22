//! The Kubernetes and AWS Batch job definitions in `pipelines/`, executed the
//! way each engine would: every task runs the container's command with the
//! environment the engine gives it (its index variable, plus the count the
//! manifest sets). Each chain must commit every shard and end with the same
//! checkpoint bytes as `worldcompass train`.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use crate::support::*;
use wc_store::RunStore;

const ITERS: u64 = 2;
const SHARDS: usize = 3;
const STAGES: [&str; 5] = ["prefix", "rollout", "reward", "select", "optimize"];

fn repo(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

/// The policy after the last iteration of `run`.
fn final_checkpoint(run: &str) -> Vec<u8> {
    RunStore::open(run).unwrap().get(&format!("checkpoints/{ITERS:06}/policy.safetensors")).unwrap().to_vec()
}

/// The final checkpoint of local `train` (the reference), and a fresh
/// initialised run named `name` for an engine to drive.
fn reference_and_run(dir: &Path, name: &str) -> (Vec<u8>, String) {
    let local = format!("file://{}", dir.join("local").display());
    wc_ok(&["train", "--run", &local, "--pipeline", &pipeline(), "--iters", &ITERS.to_string()], &[]);
    let run = format!("file://{}", dir.join(name).display());
    wc_ok(&["init", "--run", &run, "--pipeline", &pipeline()], &[]);
    (final_checkpoint(&local), run)
}

fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Run one task as the engine would: `command` (whose first word is the
/// `worldcompass` of the image) with exactly `env`.
fn run_task(command: &[String], env: &[(String, String)]) {
    assert_eq!(command[0], "worldcompass", "the image's entry point: {command:?}");
    let args: Vec<&str> = command[1..].iter().map(String::as_str).collect();
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    wc_ok(&args, &env);
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

fn name_values(v: &Value) -> Vec<(String, String)> {
    let Some(items) = v.as_array() else { return Vec::new() };
    items.iter().map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].as_str().unwrap().to_string())).collect()
}

fn assert_shards_committed(run: &str, iter: u64, stage: &str, shards: usize) {
    let store = RunStore::open(run).unwrap();
    let manifests: Vec<String> = store
        .list(&format!("iters/{iter:06}/{stage}"))
        .unwrap()
        .into_iter()
        .filter(|p| p.ends_with("_manifest.json"))
        .collect();
    if matches!(stage, "prefix" | "rollout" | "reward") {
        let expected: Vec<String> = (0..shards)
            .map(|i| format!("iters/{iter:06}/{stage}/shard-{i:03}-of-{shards:03}/_manifest.json"))
            .collect();
        assert_eq!(manifests, expected, "{stage} {iter}: one commit per index");
    } else {
        assert_eq!(manifests, vec![format!("iters/{iter:06}/{stage}/_manifest.json")]);
    }
}

#[test]
fn kubernetes_indexed_jobs_map_the_completion_index_and_match_local_train() {
    let tmp = tempfile::tempdir().unwrap();
    let (expected, run) = reference_and_run(tmp.path(), "k8s");
    for iter in 0..ITERS {
        for stage in STAGES {
            let yaml = stdout_of(Command::new(repo("pipelines/k8s/render.sh")).args([
                "test",
                &run,
                stage,
                &iter.to_string(),
                &SHARDS.to_string(),
            ]));
            let json = stdout_of(
                Command::new("python3")
                    .args(["-c", "import sys, json, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))"])
                    .stdin(std::fs::File::open(write_temp(tmp.path(), "job.yaml", &yaml)).unwrap()),
            );
            let job: Value = serde_json::from_str(&json).unwrap();
            assert_eq!(job["kind"], "Job");
            assert_eq!(job["metadata"]["name"], format!("wc-test-{iter}-{stage}"));
            assert_eq!(job["spec"]["completionMode"], "Indexed");
            let completions = job["spec"]["completions"].as_u64().unwrap() as usize;
            let sharded = matches!(stage, "prefix" | "rollout" | "reward");
            assert_eq!(completions, if sharded { SHARDS } else { 1 });
            let container = &job["spec"]["template"]["spec"]["containers"][0];
            let command = strings(&container["command"]);
            let env = name_values(&container["env"]);
            assert!(env.contains(&("JOB_COMPLETIONS".to_string(), completions.to_string())), "{env:?}");
            for index in 0..completions {
                let mut task_env = env.clone();
                task_env.push(("JOB_COMPLETION_INDEX".to_string(), index.to_string())); // set by Kubernetes
                run_task(&command, &task_env);
            }
            assert_shards_committed(&run, iter, stage, SHARDS);
        }
    }
    assert!(final_checkpoint(&run) == expected, "Kubernetes chain checkpoint differs from local train");
}

#[test]
fn aws_batch_array_jobs_map_the_array_index_and_match_local_train() {
    let tmp = tempfile::tempdir().unwrap();
    let (expected, run) = reference_and_run(tmp.path(), "batch");
    let definition: Value = serde_json::from_str(&std::fs::read_to_string(repo("pipelines/aws-batch/job-definition.json")).unwrap()).unwrap();
    let requests = stdout_of(
        Command::new(repo("pipelines/aws-batch/submit.sh"))
            .args([&run, &ITERS.to_string(), &SHARDS.to_string(), "test-queue"])
            .env("WC_DRY_RUN", "1"),
    );
    let requests: Vec<Value> = requests.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(requests.len(), STAGES.len() * ITERS as usize);
    for (step, req) in requests.iter().enumerate() {
        // Each request depends on the one before, so running them in order is the engine's order.
        if step > 0 {
            assert_eq!(req["dependsOn"][0]["dependsOnStep"], step as u64 - 1);
        }
        assert_eq!(req["jobDefinition"], definition["jobDefinitionName"]);
        let params = &req["parameters"];
        let (stage, iter) = (params["stage"].as_str().unwrap(), params["iter"].as_str().unwrap().parse::<u64>().unwrap());
        // AWS Batch substitutes Ref::name with the job's parameters.
        let command: Vec<String> = strings(&definition["containerProperties"]["command"])
            .into_iter()
            .map(|w| match w.strip_prefix("Ref::") {
                Some(p) => params[p].as_str().unwrap_or_else(|| panic!("no parameter {p}")).to_string(),
                None => w,
            })
            .collect();
        let mut env = name_values(&definition["containerProperties"]["environment"]);
        env.extend(name_values(&req["containerOverrides"]["environment"]));
        match req["arrayProperties"]["size"].as_u64() {
            Some(size) => {
                assert_eq!(size as usize, SHARDS);
                for index in 0..size {
                    let mut task_env = env.clone();
                    task_env.push(("AWS_BATCH_JOB_ARRAY_INDEX".to_string(), index.to_string())); // set by AWS Batch
                    run_task(&command, &task_env);
                }
            }
            None => run_task(&command, &env),
        }
        assert_shards_committed(&run, iter, stage, SHARDS);
    }
    assert!(final_checkpoint(&run) == expected, "AWS Batch chain checkpoint differs from local train");
}

fn write_temp(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}
