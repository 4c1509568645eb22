//! End-to-end tests of the `worldcompass` binary on file:// runs: commit once,
//! resume after SIGKILL, refuse bad input with clear errors.

use std::time::{Duration, Instant};

use crate::support::*;
use wc_store::RunStore;

fn file_uri(dir: &std::path::Path, name: &str) -> String {
    format!("file://{}/{name}", dir.display())
}

#[test]
fn stage_run_twice_commits_once_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let run = file_uri(tmp.path(), "run");
    wc_ok(&["init", "--run", &run, "--pipeline", &pipeline()], &[]);
    let first = wc_ok(&["stage", "prefix", "--run", &run, "--iter", "0"], &[]);
    assert!(first.contains("committed"), "{first}");
    let store = RunStore::open(&run).unwrap();
    let before = committed_files(&store);
    let manifest = tmp.path().join("run/iters/000000/prefix/shard-000-of-001/_manifest.json");
    let mtime = std::fs::metadata(&manifest).unwrap().modified().unwrap();
    let second = wc_ok(&["stage", "prefix", "--run", &run, "--iter", "0"], &[]);
    assert!(second.contains("already committed"), "{second}");
    assert_eq!(before, committed_files(&store));
    assert_eq!(mtime, std::fs::metadata(&manifest).unwrap().modified().unwrap());
    // init again: no-op
    assert!(wc_ok(&["init", "--run", &run, "--pipeline", &pipeline()], &[]).contains("already initialised"));
}

#[test]
fn killed_stage_leaves_nothing_trusted_and_rerun_is_byte_identical_on_file_store() {
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = heavy_pipeline(tmp.path());
    let root = tmp.path().to_path_buf();
    kill_stage_and_resume(&|i| file_uri(&root, &format!("run{i}")), &[], &pipeline, 8, 11);
}

#[test]
fn killed_train_resumes_to_the_same_final_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = pipeline_with(tmp.path(), &[("latent_dim = 16", "latent_dim = 2048"), ("groups = 8 ", "groups = 24 "), ("prompts = 16 ", "prompts = 24 ")]);
    let reference = file_uri(tmp.path(), "ref");
    let t0 = Instant::now();
    wc_ok(&["train", "--run", &reference, "--pipeline", &pipeline, "--iters", "4"], &[]);
    let full_ms = t0.elapsed().as_millis() as u64;
    let final_ckpt = "checkpoints/000004/policy.safetensors";
    let expected = RunStore::open(&reference).unwrap().get(final_ckpt).unwrap();
    let run = file_uri(tmp.path(), "killed");
    for delay in kill_points(5, 6, full_ms) {
        let mut child = spawn(&["train", "--run", &run, "--pipeline", &pipeline, "--iters", "4"], &[]);
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap();
        child.wait().unwrap();
    }
    wc_ok(&["train", "--run", &run, "--pipeline", &pipeline, "--iters", "4"], &[]);
    let store = RunStore::open(&run).unwrap();
    assert_eq!(store.get(final_ckpt).unwrap(), expected);
    assert_eq!(committed_files(&store), committed_files(&RunStore::open(&reference).unwrap()));
}

#[test]
fn resumed_train_reports_committed_stages_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let run = file_uri(tmp.path(), "run");
    wc_ok(&["train", "--run", &run, "--pipeline", &pipeline(), "--iters", "2"], &[]);
    let again = wc_ok(&["train", "--run", &run, "--pipeline", &pipeline(), "--iters", "3"], &[]);
    let lines: Vec<&str> = again.lines().collect();
    assert!(lines[0].starts_with("iter 0 prefix onwards: 10 stages already committed"), "{again}");
    assert_eq!(lines.iter().filter(|l| l.contains("already committed")).count(), 1, "{again}");
    assert_eq!(lines.iter().filter(|l| l.starts_with("iter 2 ") && l.contains(": committed")).count(), 5, "{again}");
    let third = wc_ok(&["train", "--run", &run, "--iters", "3"], &[]);
    assert!(third.starts_with("iter 0 prefix onwards: 15 stages already committed; nothing to do\ntrained 3 iterations"), "{third}");
}

#[test]
fn seed_flag_is_the_same_as_editing_the_pipelines_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let edited = pipeline_with(tmp.path(), &[("seed = 20261125", "seed = 7")]);
    let (by_flag, by_file, other) = (file_uri(tmp.path(), "flag"), file_uri(tmp.path(), "file"), file_uri(tmp.path(), "other"));
    let said = wc_ok(&["train", "--run", &by_flag, "--pipeline", &pipeline(), "--seed", "7", "--iters", "1"], &[]);
    assert!(said.contains("seed 7"), "the override is reported: {said}");
    wc_ok(&["train", "--run", &by_file, "--pipeline", &edited, "--iters", "1"], &[]);
    wc_ok(&["train", "--run", &other, "--pipeline", &pipeline(), "--seed", "8", "--iters", "1"], &[]);
    let ckpt = |run: &str| RunStore::open(run).unwrap().get("checkpoints/000001/policy.safetensors").unwrap();
    assert_eq!(ckpt(&by_flag), ckpt(&by_file), "--seed 7 must train exactly what seed = 7 in the file trains");
    assert_ne!(ckpt(&by_flag), ckpt(&other), "another seed must give another run");
    // The seed is part of the run's config: another one is refused, the same one resumes.
    let err = wc_err(&["init", "--run", &by_flag, "--pipeline", &pipeline(), "--seed", "8"], &[]);
    assert!(err.contains("different pipeline config"), "{err}");
    assert!(wc_ok(&["init", "--run", &by_flag, "--pipeline", &edited], &[]).contains("already initialised"));
    // --seed only means something when initialising from a pipeline.
    let out = wc(&["train", "--run", &by_flag, "--seed", "7"], &[]);
    assert_eq!(out.status.code(), Some(2), "clap usage error: {}", String::from_utf8_lossy(&out.stderr));
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_device_on_a_cpu_only_build_is_a_clear_error_that_commits_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let run = file_uri(tmp.path(), "run");
    wc_ok(&["init", "--run", &run, "--pipeline", &pipeline()], &[]);
    let store = RunStore::open(&run).unwrap();
    let before = committed_files(&store);
    let says_why = |e: &str| {
        assert!(e.contains("device cuda:0") && e.contains("`cuda` feature") && e.contains("section \"GPU\""), "{e}");
        assert!(!e.contains("panicked"), "{e}");
    };
    says_why(&wc_err(&["stage", "prefix", "--run", &run, "--iter", "0", "--device", "cuda:0"], &[]));
    says_why(&wc_err(&["train", "--run", &run, "--iters", "1", "--device", "cuda"], &[]));
    says_why(&wc_err(&["stage", "rollout", "--run", &run, "--iter", "0"], &[("WORLDCOMPASS_DEVICE", "cuda:0".into())]));
    assert_eq!(committed_files(&store), before, "a refused device commits nothing");
    // A name that is no device is a usage error (exit 2), as clap gives.
    let out = wc(&["stage", "prefix", "--run", &run, "--iter", "0", "--device", "tpu"], &[]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(e.contains("'tpu' is not a device") && e.contains("cuda:N"), "{e}");

    // A run whose config names a GPU: init needs no device; the flag wins.
    let gpu_run = file_uri(tmp.path(), "gpu-run");
    let gpu_pipeline = pipeline_with(tmp.path(), &[("[run]", "[run]\ndevice = \"cuda:0\"")]);
    wc_ok(&["init", "--run", &gpu_run, "--pipeline", &gpu_pipeline], &[]);
    says_why(&wc_err(&["stage", "prefix", "--run", &gpu_run, "--iter", "0"], &[]));
    assert!(wc_ok(&["stage", "prefix", "--run", &gpu_run, "--iter", "0", "--device", "cpu"], &[]).contains("committed"));
}

#[test]
fn bench_devices_compares_the_cpu_with_itself_and_passes() {
    let out = wc_ok(&["bench", "devices", "--preset", "tiny", "--device", "cpu"], &[]);
    let rows: Vec<&str> = out.lines().filter(|l| l.ends_with("  ok")).collect();
    assert_eq!(rows.len(), 5, "velocity, sample, bf16 sample, loss and weights:\n{out}");
    assert!(rows.iter().filter(|r| !r.contains("bf16")).all(|r| r.contains(" 0.000e0 ")), "one build on one device is exact in f32:\n{out}");
}

/// Regression test for "non-finite weights are committed" (issue 28, 1) on
/// the linear backend: a NaN momentum made optimize commit NaN weights.
#[test]
fn non_finite_linear_checkpoints_are_refused_and_commit_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let run = file_uri(tmp.path(), "run");
    let dir = tmp.path().join("run");
    wc_ok(&["init", "--run", &run, "--pipeline", &pipeline()], &[]);
    for stage in ["prefix", "rollout", "reward", "select"] {
        wc_ok(&["stage", stage, "--run", &run, "--iter", "0"], &[]);
    }
    poison_tensor(&dir, "init/_manifest.json", "checkpoints/000000/optimizer.safetensors", "momentum.bias", |v| v[0] = f32::NAN);
    let e = wc_err(&["stage", "optimize", "--run", &run, "--iter", "0"], &[]);
    assert!(e.contains("optimizer.safetensors") && e.contains("non-finite"), "{e}");
    assert!(!dir.join("iters/000000/optimize/_manifest.json").exists() && !dir.join("checkpoints/000001").exists());
}

/// A world pipeline whose base model does not exist: it parses, but cannot
/// initialise a run.
fn missing_base_pipeline(dir: &std::path::Path) -> String {
    let embedded = concat!(env!("CARGO_MANIFEST_DIR"), "/../../pipelines/embedded.toml");
    let text = std::fs::read_to_string(embedded).unwrap();
    assert!(text.contains("base = \"models/base\""));
    let path = dir.join("missing-base.toml");
    std::fs::write(&path, text.replacen("base = \"models/base\"", "base = \"/nonexistent/base\"", 1)).unwrap();
    path.to_str().unwrap().to_string()
}

/// Regression test for "a failed init leaves run.toml behind" (issue 28, 8):
/// the corrected init was then refused as "already initialised with a
/// different pipeline config".
#[test]
fn a_failed_init_leaves_no_run_toml_and_a_corrected_init_succeeds() {
    let tmp = tempfile::tempdir().unwrap();
    let run = file_uri(tmp.path(), "run");
    let e = wc_err(&["init", "--run", &run, "--pipeline", &missing_base_pipeline(tmp.path())], &[]);
    assert!(e.contains("/nonexistent/base"), "{e}");
    assert!(!tmp.path().join("run/run.toml").exists() && !tmp.path().join("run/init").exists(), "a failed init writes nothing");
    assert!(wc_ok(&["init", "--run", &run, "--pipeline", &pipeline()], &[]).contains("initialised"));
    // A run.toml left by an interrupted init of an older build (no init
    // commit beside it) is not trusted either.
    let other = file_uri(tmp.path(), "other");
    std::fs::create_dir_all(tmp.path().join("other")).unwrap();
    std::fs::write(tmp.path().join("other/run.toml"), "[run]\nseed = 1\n").unwrap();
    assert!(wc_ok(&["init", "--run", &other, "--pipeline", &pipeline()], &[]).contains("initialised"));
}

/// Regression test for "`--force` deletes committed work before the rerun
/// succeeds" (issue 28, 2), for init: `init --force` with a broken config
/// on a trained run overwrote run.toml and data/ and deleted the init
/// manifest before failing.
#[test]
fn init_force_with_a_broken_config_leaves_the_trained_run_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let run = file_uri(tmp.path(), "run");
    wc_ok(&["train", "--run", &run, "--pipeline", &pipeline(), "--iters", "1"], &[]);
    let store = RunStore::open(&run).unwrap();
    let before = committed_files(&store);
    let run_toml = std::fs::read(tmp.path().join("run/run.toml")).unwrap();
    let e = wc_err(&["init", "--run", &run, "--pipeline", &missing_base_pipeline(tmp.path()), "--force"], &[]);
    assert!(e.contains("/nonexistent/base"), "{e}");
    assert_eq!(committed_files(&store), before, "every committed file as it was");
    assert_eq!(std::fs::read(tmp.path().join("run/run.toml")).unwrap(), run_toml);
    wc_ok(&["train", "--run", &run, "--iters", "2"], &[]);
}

/// Regression test for "`--force` deletes committed work before the rerun
/// succeeds" (issue 28, 2): `stage reward --iter 0 --force` over a corrupted
/// rollout file removed reward's manifest, then failed and said "nothing was
/// committed", while select and optimize stayed committed on top of it.
#[test]
fn a_forced_rerun_that_fails_keeps_the_committed_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let run = file_uri(tmp.path(), "run");
    let dir = tmp.path().join("run");
    wc_ok(&["train", "--run", &run, "--pipeline", &pipeline(), "--iters", "1"], &[]);
    let store = RunStore::open(&run).unwrap();
    let (rm, rf) = ("iters/000000/rollout/shard-000-of-001/_manifest.json", "iters/000000/rollout/shard-000-of-001/group-00000.safetensors");
    let original = std::fs::read(dir.join(rf)).unwrap();
    tamper(&dir, rm, rf, b"not a safetensors file", true);
    let before = committed_files(&store);
    let e = wc_err(&["stage", "reward", "--run", &run, "--iter", "0", "--force"], &[]);
    assert!(e.contains("group-00000.safetensors"), "{e}");
    assert_eq!(committed_files(&store), before, "reward (and select and optimize after it) still committed, every file as it was");
    tamper(&dir, rm, rf, &original, true);
    let out = wc_ok(&["stage", "reward", "--run", &run, "--iter", "0", "--force"], &[]);
    assert!(out.contains("committed"), "{out}");
}

/// Regression test for "`status` calls an unparseable manifest committed"
/// (issue 28, 9).
#[test]
fn status_calls_an_unparseable_manifest_corrupt_not_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let run = file_uri(tmp.path(), "run");
    wc_ok(&["train", "--run", &run, "--pipeline", &pipeline(), "--iters", "1"], &[]);
    std::fs::write(tmp.path().join("run/iters/000000/select/_manifest.json"), b"{ not json").unwrap();
    std::fs::write(tmp.path().join("run/iters/000000/reward/shard-000-of-001/_manifest.json"), b"").unwrap();
    let out = wc_ok(&["status", "--run", &run], &[]);
    for stage in ["select", "reward"] {
        let line = out.lines().find(|l| l.contains(&format!("     0  {stage}"))).unwrap_or_else(|| panic!("{out}"));
        assert!(line.contains("corrupt manifest"), "{line}");
    }
    assert!(out.lines().any(|l| l.contains("     0  optimize") && l.contains("committed")), "{out}");
}

/// Regression test for "no upper bounds on sizes" (issue 28, 7): `train
/// --iters` at a huge value.
#[test]
fn train_iters_beyond_the_maximum_is_a_usage_error() {
    let out = wc(&["train", "--run", "memory://x", "--iters", "18446744073709551615"], &[]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{e}");
    assert!(e.contains("--iters") && e.contains("1000000"), "{e}");
}

#[test]
fn bad_config_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let run = file_uri(tmp.path(), "run");
    let err = wc_err(&["init", "--run", &run, "--pipeline", "/nonexistent/p.toml"], &[]);
    assert!(err.contains("/nonexistent/p.toml"), "{err}");
    let typo = pipeline_with(tmp.path(), &[("keep_top = 3", "keep_topp = 3")]);
    let err = wc_err(&["init", "--run", &run, "--pipeline", &typo], &[]);
    assert!(err.contains("keep_topp"), "{err}");
    let bad = pipeline_with(tmp.path(), &[("z = 2.0", "z = -1.0")]);
    let err = wc_err(&["init", "--run", &run, "--pipeline", &bad], &[]);
    assert!(err.contains("select.z = -1"), "{err}");
    let garbage = tmp.path().join("garbage.toml");
    std::fs::write(&garbage, "[run\nseed = ").unwrap();
    wc_err(&["init", "--run", &run, "--pipeline", garbage.to_str().unwrap()], &[]);
    assert!(!tmp.path().join("run/init").exists(), "nothing may be committed");
}

#[test]
fn run_uri_with_dotdot_and_uninitialised_runs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let err = wc_err(&["stage", "prefix", "--run", &format!("file://{}/a/../b", tmp.path().display()), "--iter", "0"], &[]);
    assert!(err.contains("'..'"), "{err}");
    let err = wc_err(&["status", "--run", &file_uri(tmp.path(), "none")], &[]);
    assert!(err.contains("not initialised") && err.contains("worldcompass init"), "{err}");
    // Regression test for "read-only commands create directories for a
    // mistyped URI" (issue 28, 4).
    for args in [vec!["status", "--run"], vec!["stage", "prefix", "--iter", "0", "--run"], vec!["report", "--run"], vec!["train", "--run"]] {
        let mut args = args.clone();
        let typo = file_uri(tmp.path(), "typo");
        args.push(&typo);
        wc_err(&args, &[]);
        assert!(!tmp.path().join("typo").exists(), "{args:?} created the mistyped folder");
    }
}

#[test]
fn missing_input_manifest_is_refused_without_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let run = file_uri(tmp.path(), "run");
    wc_ok(&["init", "--run", &run, "--pipeline", &pipeline()], &[]);
    let err = wc_err(&["stage", "select", "--run", &run, "--iter", "0"], &[]);
    assert!(err.contains("reward of iteration 0 is not complete") && err.contains("nothing was committed"), "{err}");
    let err = wc_err(&["stage", "prefix", "--run", &run, "--iter", "3"], &[]);
    assert!(err.contains("optimize of iteration 2 is not complete"), "{err}");
    assert!(!tmp.path().join("run/iters/000000/select").exists());
}

/// Rewrite a committed file and (optionally) its manifest entry, as a buggy
/// external worker or a damaged disk would.
fn parquet_without_column(src: &[u8], drop: &str) -> Vec<u8> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::copy_from_slice(src)).unwrap().build().unwrap();
    let batch = reader.map(|b| b.unwrap()).next().unwrap();
    let keep: Vec<usize> = (0..batch.num_columns()).filter(|&i| batch.schema().field(i).name() != drop).collect();
    let batch = batch.project(&keep).unwrap();
    let mut out = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    out
}

/// `src` (one record batch of Parquet) with row 0 of column `column` set
/// to `value` (an i64 or f64 column).
fn parquet_with_value(src: &[u8], column: &str, value: f64) -> Vec<u8> {
    use arrow::array::{Array, Float64Array, Int64Array};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::copy_from_slice(src)).unwrap().build().unwrap();
    let batch = reader.map(|b| b.unwrap()).next().unwrap();
    let i = batch.schema().index_of(column).unwrap();
    let mut columns = batch.columns().to_vec();
    let old = &columns[i];
    columns[i] = if let Some(a) = old.as_any().downcast_ref::<Int64Array>() {
        std::sync::Arc::new(Int64Array::from_iter_values((0..a.len()).map(|k| if k == 0 { value as i64 } else { a.value(k) })))
    } else {
        let a = old.as_any().downcast_ref::<Float64Array>().unwrap();
        std::sync::Arc::new(Float64Array::from_iter_values((0..a.len()).map(|k| if k == 0 { value } else { a.value(k) })))
    };
    let batch = arrow::array::RecordBatch::try_new(batch.schema(), columns).unwrap();
    let mut out = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    out
}

/// A linear run under `tmp` with the stages of iteration 0 before `stage`
/// committed; then, once per (column, value, message), `file` (committed by
/// `manifest`) holds that value in row 0 and `stage` must fail with the
/// message and commit nothing; restored, `stage` commits.
fn refuses_each_poisoned_value(stage: &str, manifest: &str, file: &str, cases: &[(&str, f64, &str)]) {
    let tmp = tempfile::tempdir().unwrap();
    let run = file_uri(tmp.path(), "run");
    let dir = tmp.path().join("run");
    wc_ok(&["init", "--run", &run, "--pipeline", &pipeline()], &[]);
    for before in ["prefix", "rollout", "reward", "select"].into_iter().take_while(|s| *s != stage) {
        wc_ok(&["stage", before, "--run", &run, "--iter", "0"], &[]);
    }
    let original = std::fs::read(dir.join(file)).unwrap();
    for (column, value, says) in cases {
        tamper(&dir, manifest, file, &parquet_with_value(&original, column, *value), true);
        let e = wc_err(&["stage", stage, "--run", &run, "--iter", "0"], &[]);
        assert!(e.contains(says), "{column} = {value}: {e}");
        assert!(!dir.join(format!("iters/000000/{stage}/_manifest.json")).exists(), "{column} = {value}: nothing committed");
    }
    tamper(&dir, manifest, file, &original, true);
    wc_ok(&["stage", stage, "--run", &run, "--iter", "0"], &[]);
}

/// Regression test for "selection rows are not validated" (issue 28, 6): a
/// candidate index out of range in `selection.parquet` panicked optimize;
/// NaN or huge r was accepted.
#[test]
fn out_of_range_selection_rows_are_clear_errors_not_panics() {
    refuses_each_poisoned_value(
        "optimize",
        "iters/000000/select/_manifest.json",
        "iters/000000/select/selection.parquet",
        &[
            ("candidate", 99.0, "selection.parquet: row 0 (group 0, candidate 99): candidate 99 is out of range"),
            ("candidate", -1.0, "candidate -1 is out of range"),
            ("group_id", 1e6, "group 1000000 is out of range"),
            ("r", f64::NAN, "r = NaN is not a probability"),
            ("r", 1e300, "is not a probability"),
            ("if_score", 7.0, "if_score = 7 is outside [0, 1]"),
        ],
    );
}

/// Regression test for "one score of 1e308 zeroes its group's VQ
/// advantages; scores outside their range are accepted" (issue 28, 9).
#[test]
fn select_refuses_scores_outside_their_ranges() {
    refuses_each_poisoned_value(
        "select",
        "iters/000000/reward/shard-000-of-001/_manifest.json",
        "iters/000000/reward/shard-000-of-001/scores.parquet",
        &[
            ("vq_score", 1e308, "group 0, candidate 0: vq_score = 1e308 is not a finite score within"),
            ("vq_score", f64::NEG_INFINITY, "row 0: vq_score is -inf"),
            ("if_score", 1.5, "if_score = 1.5 is outside [0, 1]"),
            ("rot_acc", -0.1, "rot_acc = -0.1 is outside [0, 1]"),
        ],
    );
}

#[test]
fn corrupted_truncated_and_mis_shaped_inputs_are_clear_errors_and_commit_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let run = file_uri(tmp.path(), "run");
    wc_ok(&["init", "--run", &run, "--pipeline", &pipeline()], &[]);
    for stage in ["prefix", "rollout", "reward"] {
        wc_ok(&["stage", stage, "--run", &run, "--iter", "0"], &[]);
    }
    let rm = "iters/000000/reward/shard-000-of-001/_manifest.json";
    let scores = "iters/000000/reward/shard-000-of-001/scores.parquet";
    let original = std::fs::read(dir.join(scores)).unwrap();
    let select = ["stage", "select", "--run", run.as_str(), "--iter", "0"];

    // Checksum mismatch: same size, one byte flipped.
    let mut flipped = original.clone();
    flipped[original.len() / 2] ^= 0xFF;
    tamper(&dir, rm, scores, &flipped, false);
    let err = wc_err(&select, &[]);
    assert!(err.contains("checksum") && err.contains(scores), "{err}");

    // Truncated: size mismatch.
    tamper(&dir, rm, scores, &original[..original.len() / 2], false);
    let err = wc_err(&select, &[]);
    assert!(err.contains("bytes but its manifest lists") && err.contains(scores), "{err}");

    // Truncated but listed as such (a worker committed a broken file): Parquet error.
    tamper(&dir, rm, scores, &original[..original.len() / 2], true);
    let err = wc_err(&select, &[]);
    assert!(err.contains("not a readable Parquet file") && err.contains(scores), "{err}");

    // Schema mismatch: a column missing.
    tamper(&dir, rm, scores, &parquet_without_column(&original, "vq_score"), true);
    let err = wc_err(&select, &[]);
    assert!(err.contains("column 'vq_score' is missing") && err.contains(scores), "{err}");
    assert!(!dir.join("iters/000000/select/_manifest.json").exists());

    // Tensor shape mismatch in a prefix file: the rollout names file, tensor, shapes.
    let pm = "iters/000000/prefix/shard-000-of-001/_manifest.json";
    let pf = "iters/000000/prefix/shard-000-of-001/group-00000.safetensors";
    let mut t = wc_schemas::TensorSet::new();
    t.insert("latents".into(), wc_schemas::Tensor::from_f32(&[1, 5], &[0.0; 5]));
    let bad = wc_schemas::write_tensors(
        &wc_schemas::tensors::prefix_clips(),
        &wc_schemas::DimBindings::new().dim("P", 1).splice("latent", &[5]),
        "x",
        &t,
    )
    .unwrap();
    tamper(&dir, pm, pf, &bad, true);
    std::fs::remove_dir_all(dir.join("iters/000000/rollout")).unwrap();
    let err = wc_err(&["stage", "rollout", "--run", &run, "--iter", "0"], &[]);
    assert!(err.contains(pf) && err.contains("'latents'") && err.contains("[1, 5]") && err.contains("[0, 16]"), "{err}");
    // Corrupted safetensors header.
    tamper(&dir, pm, pf, b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage", true);
    let err = wc_err(&["stage", "rollout", "--run", &run, "--iter", "0"], &[]);
    assert!(err.contains("not a readable safetensors file"), "{err}");
    assert!(!dir.join("iters/000000/rollout/shard-000-of-001/_manifest.json").exists());
}

#[test]
fn status_shows_committed_partial_and_interrupted_work() {
    let tmp = tempfile::tempdir().unwrap();
    let run = file_uri(tmp.path(), "run");
    wc_ok(&["train", "--run", &run, "--pipeline", &pipeline(), "--iters", "1"], &[]);
    wc_ok(&["stage", "prefix", "--run", &run, "--iter", "1", "--shard", "1/3"], &[]);
    std::fs::create_dir_all(tmp.path().join("run/iters/000001/rollout/shard-000-of-002")).unwrap();
    std::fs::write(tmp.path().join("run/iters/000001/rollout/shard-000-of-002/group-00000.safetensors"), b"x").unwrap();
    let out = wc_ok(&["status", "--run", &run], &[]);
    let line = |needle: &str| out.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no '{needle}' in:\n{out}")).to_string();
    assert!(line("optimize").contains("committed"));
    let p = line("     1  prefix");
    assert!(p.contains("3 shards") && p.contains("partial") && p.contains("[1]"), "{p}");
    assert!(line("     1  rollout").contains("uncommitted files"), "{out}");
    // The printout as the user reads it, the temporary folder and the
    // config's fingerprint (it follows every pipeline key) masked.
    let fingerprint = out.lines().next().and_then(|l| l.split("(config ").nth(1)).unwrap().trim_end_matches(')').to_string();
    let shown = out.replace(&run, "file://[RUN]").replace(&fingerprint, "[CONFIG]");
    insta::assert_snapshot!("status_committed_partial_and_interrupted", shown);
}

#[test]
fn python_reads_the_run_with_the_documented_schema_and_the_same_means() {
    let tmp = tempfile::tempdir().unwrap();
    let run = file_uri(tmp.path(), "run");
    wc_ok(&["train", "--run", &run, "--pipeline", &pipeline(), "--iters", "3"], &[]);
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let out = std::process::Command::new("python3")
        .arg(format!("{root}/tests/python/read_run.py"))
        .arg(tmp.path().join("run"))
        .arg(format!("{root}/schemas"))
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "python reader failed (run `just setup`): {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tables"]["prompts"], 16);
    let log = v["reward_log"].as_array().unwrap();
    assert_eq!(log.len(), 3);
    let store = RunStore::open(&run).unwrap();
    for (k, row) in log.iter().enumerate() {
        assert_eq!(row["iter"], k);
        assert_eq!(row["rows"], 64);
        assert_eq!(row["selected"], 48);
        let path = format!("reward_log/iter-{k:06}.parquet");
        let b = wc_schemas::read_table(&wc_schemas::tables::selection(), &path, store.get(&path).unwrap()).unwrap();
        let ifs = b.column_by_name("if_score").unwrap().as_any().downcast_ref::<arrow::array::Float64Array>().unwrap();
        let mean = ifs.values().iter().sum::<f64>() / ifs.len() as f64;
        assert!((row["mean_if"].as_f64().unwrap() - mean).abs() < 1e-12, "iter {k}");
    }
}

#[test]
fn dataset_is_read_by_python_with_the_documented_schema() {
    let tmp = tempfile::tempdir().unwrap();
    let out = file_uri(tmp.path(), "ds");
    let args = ["data", "--out", out.as_str(), "--prompts", "6", "--sequences", "5", "--pretrain-clips", "40", "--size", "24"];
    assert!(wc_ok(&args, &[]).contains("wrote"));
    assert!(wc_ok(&args, &[]).contains("already holds this dataset"));
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let py = std::process::Command::new("python3")
        .arg(format!("{root}/tests/python/read_dataset.py"))
        .arg(tmp.path().join("ds"))
        .arg(format!("{root}/schemas"))
        .output()
        .expect("python3 runs");
    assert!(py.status.success(), "python reader failed (run `just setup`): {}", String::from_utf8_lossy(&py.stderr));
    let v: serde_json::Value = serde_json::from_slice(&py.stdout).unwrap();
    assert_eq!(v["rows"]["prompts"], 6);
    assert_eq!(v["rows"]["sequences"], 10);
    assert_eq!(v["rows"]["pretrain_clips"], 40);
    assert_eq!(v["rows"]["pretrain_poses"], 40 * 9);
    assert_eq!(v["first_frames"], serde_json::json!([6, 24, 24, 3]));
    assert_eq!(v["frame_files"]["frames-00000.safetensors"], serde_json::json!([40, 9, 24, 24, 3]));
    assert!(v["worst_pose_error"].as_f64().unwrap() < 1e-9, "{v}");
    assert!(v["combined_share"].as_f64().unwrap() < 0.2, "{v}");
    assert_eq!(v["kinds"], serde_json::json!(["basic", "combined"]));
    // Deterministic: a second dataset with the same seed has the same bytes.
    let again = file_uri(tmp.path(), "ds2");
    let args2 = ["data", "--out", again.as_str(), "--prompts", "6", "--sequences", "5", "--pretrain-clips", "40", "--size", "24"];
    wc_ok(&args2, &[]);
    let a = committed_files(&RunStore::open(&out).unwrap());
    let b = committed_files(&RunStore::open(&again).unwrap());
    assert_eq!(a, b);
}

#[test]
fn render_writes_a_gif_and_a_png_that_open_as_images() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("walk");
    let p = prefix.to_str().unwrap();
    let out = wc_ok(&["render", "--scene", "4", "--actions", "forward,turn_left,left+forward", "--out", p], &[]);
    assert!(out.contains("forward, turn_left, forward+left") && out.contains("13 frames"), "{out}");
    let check = std::process::Command::new("python3")
        .args(["-c", "import sys; from PIL import Image\nfor f in sys.argv[1:]:\n im = Image.open(f); im.load(); print(f, im.format, im.size, getattr(im, 'n_frames', 1))"])
        .arg(format!("{p}.gif"))
        .arg(format!("{p}.png"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    assert!(text.contains("GIF (256, 256) 13") && text.contains("PNG"), "{text}");
    let err = wc_err(&["render", "--actions", "forward,jump", "--out", p], &[]);
    assert!(err.contains("unknown action 'jump'"), "{err}");
}

#[test]
fn metric_reference_points_ground_truth_is_perfect_and_static_is_the_floor() {
    let out = wc_ok(&["metric", "--sequences", "60"], &[]);
    let row = |kind: &str, model: &str| -> Vec<f64> {
        let line = out.lines().find(|l| l.starts_with(kind) && l.contains(model)).unwrap_or_else(|| panic!("{out}"));
        line.split_whitespace().rev().take(4).map(|v| v.parse().unwrap()).collect()
    };
    for kind in ["basic", "combined"] {
        assert_eq!(row(kind, "ground truth"), vec![1.0, 1.0, 1.0, 1.0], "{out}");
        assert_eq!(row(kind, "static model")[0], 0.0, "a static model never gets both right");
    }
    let static_if = |kind| row(kind, "static model")[1];
    assert!((static_if("basic") - 0.5).abs() < 0.01 && (static_if("combined") - 0.167).abs() < 0.03, "{out}");
}

#[test]
fn committed_capacity_plan_matches_the_command_and_follows_the_config() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let pipeline = format!("{root}/pipelines/paper.toml");
    let plan_md = format!("{root}/pipelines/capacity-plan.md");
    let committed = std::fs::read_to_string(&plan_md).unwrap();
    // Run from the repository root, as the committed file's command line says.
    let out = std::process::Command::new(BIN).args(["plan", "--pipeline", "pipelines/paper.toml"]).current_dir(root).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed, committed, "pipelines/capacity-plan.md is stale: rerun `worldcompass plan --out pipelines/capacity-plan.md`");
    assert!(committed.contains("**Bounding stage: rollout.**"), "{committed}");
    // A bigger group size makes the plan bigger: it is computed, not written.
    let tmp = tempfile::tempdir().unwrap();
    let bigger = tmp.path().join("paper-g32.toml");
    std::fs::write(&bigger, std::fs::read_to_string(&pipeline).unwrap().replace("candidates = 16 ", "candidates = 32 ")).unwrap();
    let out = wc_ok(&["plan", "--pipeline", bigger.to_str().unwrap()], &[]);
    assert!(out.contains("G = 32 candidates") && out != committed, "{out}");
    let err = wc_err(&["plan", "--pipeline", &pipeline, "--latent", "60x104"], &[]);
    assert!(err.contains("HEIGHTxWIDTHxCHANNELS"), "{err}");
    // Matrix-Game 2.0's plans on 1 and 8 H200s (`just plan-matrix-game-2`) are current.
    for g in ["1", "8"] {
        let md = format!("pipelines/matrix-game-2-plan-{g}xH200.md");
        let args = ["plan", "--pipeline", "pipelines/matrix-game-2.toml", "--shards", g, "--gpus", g, "--peak-tflops", "989", "--params-b", "1.62", "--layers", "30", "--hidden", "1536", "--latent", "44x80x16", "--context-clips", "1", "--out", &md, "--check"];
        let out = std::process::Command::new(BIN).args(args).current_dir(root).output().unwrap();
        assert!(out.status.success(), "{md} is stale (`just plan-matrix-game-2`): {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn stage_prints_machine_readable_stats_with_storage_time_and_peak_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let run = format!("file://{}", tmp.path().join("run").display());
    wc_ok(&["init", "--run", &run, "--pipeline", &pipeline()], &[]);
    let out = wc_ok(&["stage", "prefix", "--run", &run, "--iter", "0"], &[]);
    let st = wc_bench::stage_runs::parse_stats(&out).unwrap_or_else(|| panic!("no stats line: {out}"));
    let on_disk: u64 = std::fs::read_dir(tmp.path().join("run/iters/000000/prefix/shard-000-of-001"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(st.written_bytes, on_disk, "every byte of the commit, manifest included, is counted");
    assert!(st.read_bytes > 0 && st.io_s > 0.0 && st.io_s <= st.wall_s, "{st:?}");
    assert!(st.peak_rss_bytes > 1 << 20, "{st:?}");
}
