//! Test support shared by the end-to-end tests: the `worldcompass` binary,
//! a real S3-compatible server (moto) on loopback, and small helpers.
#![allow(dead_code)]

pub mod fault_proxy;
pub mod slurm;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use wc_store::{CommittedSet, RunStore};

pub const BIN: &str = env!("CARGO_BIN_EXE_worldcompass");

pub fn pipeline() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../pipelines/linear.toml").to_string()
}

/// Write a copy of the embedded pipeline with `replace` edits applied.
pub fn pipeline_with(dir: &std::path::Path, edits: &[(&str, &str)]) -> String {
    let path = wc_bench::stage_runs::pipeline_variant(&pipeline(), edits, &dir.join("pipeline.toml")).unwrap();
    path.to_str().unwrap().to_string()
}

/// Run the binary to completion with extra environment.
pub fn wc(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("WORLDCOMPASS_RUN").env_remove("WORLDCOMPASS_DEVICE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("worldcompass runs")
}

/// Run and require success; returns stdout.
pub fn wc_ok(args: &[&str], env: &[(&str, String)]) -> String {
    let out = wc(args, env);
    assert!(
        out.status.success(),
        "worldcompass {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Run and require a clean failure (exit 1, message, no panic); returns stderr.
pub fn wc_err(args: &[&str], env: &[(&str, String)]) -> String {
    let out = wc(args, env);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "worldcompass {args:?} should fail cleanly; stderr: {stderr}");
    // Warnings logged on the way may come first; the error is a line of its own.
    assert!(stderr.lines().any(|l| l.starts_with("error: ")), "no error message: {stderr}");
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    stderr
}

pub fn spawn(args: &[&str], env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).env_remove("WORLDCOMPASS_RUN").env_remove("WORLDCOMPASS_DEVICE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("worldcompass starts")
}

/// A deterministic pseudo-random sequence for kill points.
pub fn kill_points(seed: u64, n: usize, max_ms: u64) -> Vec<u64> {
    let mut rng = wc_rl::seeds::SplitMix64::new(seed);
    (0..n).map(|_| rng.next_u64() % max_ms.max(1)).collect()
}

/// The loopback S3 server (moto) of the benchmarks, with the helpers the
/// tests use.
#[allow(unused_imports)]
pub use wc_bench::s3_server::{ACCESS_KEY, SECRET_KEY};

pub struct MotoServer(wc_bench::s3_server::LoopbackS3);

impl std::ops::Deref for MotoServer {
    type Target = wc_bench::s3_server::LoopbackS3;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl MotoServer {
    pub fn start() -> MotoServer {
        MotoServer(wc_bench::s3_server::LoopbackS3::start().expect("moto_server starts (run `just setup`)"))
    }

    pub fn create_bucket(&self, name: &str) {
        self.0.create_bucket(name).unwrap();
    }

    /// Set this server's environment in the current (test) process.
    pub fn set_env(&self) {
        for (k, v) in self.env() {
            // SAFETY: tests that call this use the S3 store from one thread at a time.
            unsafe { std::env::set_var(k, v) };
        }
    }
}

/// Every file listed by every manifest of a run, with its bytes.
pub fn committed_files(store: &wc_store::RunStore) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for path in store.list("").unwrap() {
        if path.ends_with(wc_store::MANIFEST_FILE) {
            let set = wc_store::CommittedSet::open(store, &path).unwrap();
            for f in set.paths() {
                out.insert(f.to_string(), set.read(f).unwrap().to_vec());
            }
            out.insert(path.clone(), store.get(&path).unwrap().to_vec());
        }
    }
    out
}

/// A stage that writes many files, so kill points land mid-write.
pub fn heavy_pipeline(dir: &std::path::Path) -> String {
    pipeline_with(dir, &[("groups = 8 ", "groups = 96 "), ("prompts = 16 ", "prompts = 96 "), ("latent_dim = 16", "latent_dim = 4096")])
}

/// Wait until the child has written its first file under `iters` (or has
/// exited, or 30 s have passed): a kill right after lands mid-write however
/// fast or slow this machine is, where a kill after a fixed delay may not.
fn wait_for_first_write(child: &mut Child, store: &RunStore) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if !store.list("iters").map(|l| l.is_empty()).unwrap_or(true) || child.try_wait().unwrap().is_some() {
            return;
        }
        // Poll, not spin: on 2 cores a spinning loop starves the child.
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Kill `stage prefix` at random points (even trials) and right after its
/// first write (odd trials); whatever is left must not be trusted, and the
/// rerun must produce the reference bytes.
pub fn kill_stage_and_resume(runs: &dyn Fn(usize) -> String, env: &[(&str, String)], pipeline: &str, trials: usize, seed: u64) {
    let reference = runs(0);
    wc_ok(&["init", "--run", &reference, "--pipeline", pipeline], env);
    let t0 = Instant::now();
    wc_ok(&["stage", "prefix", "--run", &reference, "--iter", "0"], env);
    let full_ms = t0.elapsed().as_millis() as u64;
    let ref_store = RunStore::open(&reference).unwrap();
    let expected = committed_files(&ref_store);
    let mut killed_mid_write = 0;
    for (t, delay) in kill_points(seed, trials, full_ms).into_iter().enumerate() {
        let run = runs(t + 1);
        wc_ok(&["init", "--run", &run, "--pipeline", pipeline], env);
        let store = RunStore::open(&run).unwrap();
        let mut child = spawn(&["stage", "prefix", "--run", &run, "--iter", "0"], env);
        if t % 2 == 0 {
            std::thread::sleep(Duration::from_millis(delay));
        } else {
            wait_for_first_write(&mut child, &store);
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let manifest = "iters/000000/prefix/shard-000-of-001/_manifest.json";
        match CommittedSet::open(&store, manifest) {
            Err(e) => {
                assert!(e.is_not_found(), "{e}");
                let partial = store.list("iters").unwrap().len();
                killed_mid_write += (partial > 0) as usize;
                // The next stage refuses to read it.
                let err = wc_err(&["stage", "rollout", "--run", &run, "--iter", "0"], env);
                assert!(err.contains("not complete"), "{err}");
            }
            Ok(set) => assert_eq!(set.manifest.files.len(), 96), // it finished before the kill
        }
        wc_ok(&["stage", "prefix", "--run", &run, "--iter", "0"], env);
        assert_eq!(committed_files(&store), expected, "trial {t}: resumed run differs from the reference");
    }
    assert!(killed_mid_write > 0, "no kill landed mid-write (full run {full_ms} ms); the test proved nothing");
}


/// Train a small pose estimator for 16x16 frames (a few steps: it is weak,
/// but real) under `dir/pose`; returns its store URI.
pub fn tiny_pose_model(dir: &std::path::Path) -> String {
    let uri = format!("file://{}", dir.join("pose").display());
    wc_ok(&["scorers", "train-pose", "--out", &uri, "--steps", "6", "--batch", "16", "--hidden", "32", "--frame-size", "16", "--checkpoint-every", "6"], &[]);
    uri
}

/// The embedded pipeline on the world backend with a fresh tiny model and
/// the pose estimator at `pose`, small enough for tests.
pub fn tiny_world_pipeline(dir: &std::path::Path, pose: &str) -> String {
    pipeline_with(
        dir,
        &[
            ("kind = \"linear\"", "kind = \"world\"\npreset = \"tiny\""),
            ("latent_dim = 16", ""),
            ("vq_frame_stride = 4", &format!("vq_frame_stride = 4\npose_model = \"{pose}\"")),
            ("prompts = 16 ", "prompts = 6 "),
            ("groups = 8 ", "groups = 3 "),
            ("candidates = 8 ", "candidates = 4 "),
            ("keep_top = 3 ", "keep_top = 1 "),
            ("keep_bottom = 3 ", "keep_bottom = 1 "),
            ("sampler_steps = 10 ", "sampler_steps = 4 "),
            ("lr = 0.5 ", "lr = 1e-3 "),
        ],
    )
}

/// Overwrite a committed file of a run with `bytes`; with `fix_manifest`,
/// also its size and checksum in the manifest (an artifact that verifies but
/// holds bad content).
pub fn tamper(run_dir: &std::path::Path, manifest_rel: &str, file_rel: &str, bytes: &[u8], fix_manifest: bool) {
    std::fs::write(run_dir.join(file_rel), bytes).unwrap();
    if fix_manifest {
        let mpath = run_dir.join(manifest_rel);
        let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
        for f in m["files"].as_array_mut().unwrap() {
            if f["path"] == file_rel {
                f["bytes"] = bytes.len().into();
                f["sha256"] = wc_store::sha256_hex(bytes).into();
            }
        }
        std::fs::write(&mpath, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    }
}

/// A committed safetensors file of a run with `edit` applied to tensor
/// `name`'s values, the manifest fixed: valid bytes, poisoned content.
pub fn poison_tensor(run_dir: &std::path::Path, manifest_rel: &str, file_rel: &str, name: &str, edit: impl Fn(&mut Vec<f32>)) -> Vec<u8> {
    let original = std::fs::read(run_dir.join(file_rel)).unwrap();
    let mut set = wc_schemas::read_any(file_rel, &original).unwrap();
    let t = set.get(name).unwrap_or_else(|| panic!("{file_rel} has no tensor {name}"));
    let mut values = t.to_f32();
    edit(&mut values);
    let shape = t.shape.clone();
    set.insert(name.to_string(), wc_schemas::Tensor::from_f32(&shape, &values));
    tamper(run_dir, manifest_rel, file_rel, &wc_schemas::write_any(file_rel, &set).unwrap(), true);
    original
}
