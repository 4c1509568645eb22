//! End-to-end tests of the world backend: the candle world model in the
//! five stages, driven through the real `worldcompass` binary.

use std::time::{Duration, Instant};

use crate::support::*;
use wc_store::RunStore;

fn file_uri(dir: &std::path::Path, name: &str) -> String {
    format!("file://{}", dir.join(name).display())
}

/// Train the tiny world pipeline (run `a`) and a variant of it with one
/// key added under `[reward]` (run `b`) for `iters` iterations each.
fn train_reward_variant(key: &str, iters: &str) -> (tempfile::TempDir, String, String) {
    let tmp = tempfile::tempdir().unwrap();
    let pose = tiny_pose_model(tmp.path());
    let a = tiny_world_pipeline(tmp.path(), &pose);
    let text = std::fs::read_to_string(&a).unwrap().replacen("vq_frame_stride = 4", &format!("vq_frame_stride = 4\n{key}"), 1);
    let b = tmp.path().join("variant.toml");
    std::fs::write(&b, text).unwrap();
    for (name, pipeline) in [("a", a.as_str()), ("b", b.to_str().unwrap())] {
        wc_ok(&["train", "--run", &file_uri(tmp.path(), name), "--pipeline", pipeline, "--iters", iters], &[]);
    }
    let dir = |name: &str| tmp.path().join(name).to_str().unwrap().to_string();
    let (a, b) = (dir("a"), dir("b"));
    (tmp, a, b)
}

/// Run a Python check with these arguments; it fails the test with its output.
fn python_check(script: &str, args: &[&str]) {
    let out = std::process::Command::new("python3").arg("-c").arg(script).args(args).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn world_train_killed_at_random_points_resumes_to_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let pose = tiny_pose_model(tmp.path());
    let pipeline = tiny_world_pipeline(tmp.path(), &pose);
    let reference = file_uri(tmp.path(), "ref");
    let t0 = Instant::now();
    let out = wc_ok(&["train", "--run", &reference, "--pipeline", &pipeline, "--iters", "3"], &[]);
    assert!(out.contains("iter 2 optimize: committed"), "{out}");
    let full_ms = t0.elapsed().as_millis() as u64;
    let final_ckpt = "checkpoints/000003/policy.safetensors";
    let ref_store = RunStore::open(&reference).unwrap();
    let expected = ref_store.get(final_ckpt).unwrap();
    assert_ne!(expected, ref_store.get("checkpoints/000000/policy.safetensors").unwrap(), "training changed the policy");
    let run = file_uri(tmp.path(), "killed");
    for delay in kill_points(7, 5, full_ms) {
        let mut child = spawn(&["train", "--run", &run, "--pipeline", &pipeline, "--iters", "3"], &[]);
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    wc_ok(&["train", "--run", &run, "--pipeline", &pipeline, "--iters", "3"], &[]);
    let store = RunStore::open(&run).unwrap();
    assert_eq!(store.get(final_ckpt).unwrap(), expected);
    assert_eq!(committed_files(&store), committed_files(&ref_store));
}

#[test]
fn world_run_is_self_contained_and_its_tables_read_back_in_python() {
    let tmp = tempfile::tempdir().unwrap();
    let pose = tiny_pose_model(tmp.path());
    let pipeline = tiny_world_pipeline(tmp.path(), &pose);
    let run = file_uri(tmp.path(), "run");
    wc_ok(&["init", "--run", &run, "--pipeline", &pipeline], &[]);
    // The run holds its own copy of the pose estimator: removing the
    // original must not matter.
    std::fs::remove_dir_all(tmp.path().join("pose")).unwrap();
    wc_ok(&["train", "--run", &run, "--pipeline", &pipeline, "--iters", "2"], &[]);
    let script = r#"
import sys, polars as pl
run = sys.argv[1]
log = pl.scan_parquet(run + "/reward_log/**/*.parquet").collect()
assert log.height == 2 * 3 * 4, log.height
for c in ["iter", "group_id", "candidate", "rot_acc", "trans_acc", "if_score", "vq_score", "adv_if", "adv_vq", "r", "selected"]:
    assert c in log.columns, c
assert log["selected"].sum() == 2 * 3 * 2
w = pl.read_parquet(run + "/iters/000001/reward/shard-000-of-001/windows.parquet")
assert w.height == 3 * 4 * 1, w.height
assert w["vq_frame"].null_count() == 0
# IF of a candidate is the mean of its windows' rotation and translation hits.
s = pl.read_parquet(run + "/iters/000001/reward/shard-000-of-001/scores.parquet")
j = w.group_by(["group_id", "candidate"]).agg(((pl.col("rot_ok").cast(pl.Float64).mean() + pl.col("trans_ok").cast(pl.Float64).mean()) / 2).alias("if2"))
m = s.join(j, on=["group_id", "candidate"])
assert ((m["if_score"] - m["if2"]).abs() < 1e-12).all()
print("ok")
"#;
    let dir = tmp.path().join("run");
    let out = std::process::Command::new("python3").args(["-c", script, dir.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // `worldcompass report` (Polars in Rust) gives the per-iteration means
    // that polars.scan_parquet over the reward-log glob gives in Python, and
    // its charts open as images.
    let charts = tmp.path().join("report");
    let table = wc_ok(&["report", "--run", &run, "--out", charts.to_str().unwrap()], &[]);
    let rust: Vec<Vec<f64>> = table
        .lines()
        .filter(|l| l.trim_start().chars().next().is_some_and(|c| c.is_ascii_digit()))
        .map(|l| l.split_whitespace().map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rust.len(), 2, "{table}");
    let py = r#"
import sys, json, polars as pl
from PIL import Image
log = pl.scan_parquet(sys.argv[1] + "/reward_log/**/*.parquet")
s = log.group_by("iter").agg(pl.col("if_score").mean(), pl.col("vq_score").mean(),
                             pl.col("r").filter(pl.col("selected")).mean()).sort("iter").collect()
for name in ["reward_if.png", "reward_vq.png", "reward_if_by_clip.png", "reward_vq_by_clip.png"]:
    im = Image.open(sys.argv[2] + "/" + name); im.load()
    assert im.size == (720, 400) and len(set(im.getdata())) > 3, (name, im.size)
print(json.dumps(s.rows()))
"#;
    let out = std::process::Command::new("python3").args(["-c", py, dir.to_str().unwrap(), charts.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<(i64, f64, f64, f64)> = serde_json::from_slice(&out.stdout).unwrap();
    for (r, p) in rust.iter().zip(&rows) {
        // Columns: iter clip candidates if_mean rot trans vq if_sel r_sel adv_std selected.
        assert_eq!(r[0] as i64, p.0);
        assert!((r[3] - p.1).abs() < 1e-4 && (r[6] - p.2).abs() < 1e-4 && (r[8] - p.3).abs() < 1e-4, "{r:?} vs {p:?}");
    }
}

#[test]
fn expected_if_signal_grades_the_same_readings() {
    // Two runs that differ only in reward.if_signal: the same rollouts and
    // the same estimated motions, but with "expected" the scores are the
    // estimator's probabilities of the command, graded between the
    // paper's 0 / 0.5 / 1 of a one-window clip.
    let script = r#"
import sys, polars as pl
acc, exp = sys.argv[1], sys.argv[2]
shard = "/iters/000000/reward/shard-000-of-001/"
wa, we = pl.read_parquet(acc + shard + "windows.parquet"), pl.read_parquet(exp + shard + "windows.parquet")
assert wa.equals(we), "the switch changed the estimated motions"
sa, se = pl.read_parquet(acc + shard + "scores.parquet"), pl.read_parquet(exp + shard + "scores.parquet")
assert sa.select("group_id", "candidate", "vq_score").equals(se.select("group_id", "candidate", "vq_score"))
assert set(sa["if_score"].to_list()) <= {0.0, 0.5, 1.0}, sa["if_score"]
for c in ["rot_acc", "trans_acc", "if_score"]:
    assert se[c].is_between(0.0, 1.0).all(), se[c]
assert ((se["if_score"] - (se["rot_acc"] + se["trans_acc"]) / 2).abs() < 1e-12).all()
graded = se.filter(~pl.col("if_score").is_in([0.0, 0.5, 1.0])).height
assert graded == se.height, (graded, se)
# Fewer ties: more distinct IF values in a group than the paper's metric gives.
na = sa.group_by("group_id").agg(pl.col("if_score").n_unique())["if_score"].sum()
ne = se.group_by("group_id").agg(pl.col("if_score").n_unique())["if_score"].sum()
assert ne > na, (ne, na)
print("ok")
"#;
    let (_tmp, a, b) = train_reward_variant("if_signal = \"expected\"", "1");
    python_check(script, &[&a, &b]);
}

#[test]
fn probe_instrument_reads_nominal_motions_through_the_prefix() {
    // The diagnostic ceiling: the IF reward read by the re-render probe.
    // Iteration 1 scores clip 2, so the camera is tracked through the
    // prefix. Every window the probe reads is one of its 81 candidate
    // motions (whole turns), never the estimator's probability-scaled ones,
    // and the scores follow from the windows as the metric says.
    let script = r#"
import sys, polars as pl
est, probe = sys.argv[1], sys.argv[2]
turn = 5.0 * 4
def nominal(w):
    # Whole turns: 0 or +-20 degrees (a translation under a turn curves, so
    # only the rotation axes have nominal values to check).
    ok = lambda c: ((pl.col(c).abs() < 1e-6) | ((pl.col(c).abs() - turn).abs() < 1e-6)).all()
    return w.select(ok("est_yaw_deg"), ok("est_pitch_deg")).row(0)
for it in ["000000", "000001"]:
    shard = f"/iters/{it}/reward/shard-000-of-001/"
    wp, we = pl.read_parquet(probe + shard + "windows.parquet"), pl.read_parquet(est + shard + "windows.parquet")
    assert nominal(wp) == (True, True), wp
    assert nominal(we) != (True, True), "the estimator's readings are scaled by their probability"
    sp = pl.read_parquet(probe + shard + "scores.parquet")
    per = wp.group_by("group_id", "candidate").agg(pl.col("rot_ok").mean().alias("r"), pl.col("trans_ok").mean().alias("t"))
    j = sp.join(per, on=["group_id", "candidate"])
    assert j.height == sp.height
    assert ((j["rot_acc"] - j["r"]).abs() < 1e-12).all() and ((j["trans_acc"] - j["t"]).abs() < 1e-12).all(), j
print("ok")
"#;
    let (_tmp, a, b) = train_reward_variant("if_instrument = \"probe\"", "2");
    python_check(script, &[&a, &b]);
}

#[test]
fn agreement_reads_the_candidates_as_the_estimator_and_the_probe_rewards_did() {
    // Iteration 0 of a run rewarded by the estimator and of one rewarded by
    // the probe has the same candidates (same seed, same checkpoint 0), so
    // `scorers agreement` on the first run must report the estimator's
    // rates of its reward table and the probe's rates of the other's.
    let (_tmp, a, b) = train_reward_variant("if_instrument = \"probe\"", "1");
    let table = wc_ok(&["scorers", "agreement", "--run", &format!("file://{a}"), "--from", "0", "--to", "1"], &[]);
    let script = r#"
import sys, polars as pl
est, probe, table = sys.argv[1], sys.argv[2], sys.argv[3]
shard = "/iters/000000/reward/shard-000-of-001/windows.parquet"
groups = pl.read_parquet(est + "/data/groups.parquet").select(pl.col("group_id").alias("row"), "kind")
def rates(run):
    w = pl.read_parquet(run + shard).with_columns((pl.col("group_id") % groups.height).alias("row")).join(groups, on="row")
    return {k: (d["rot_ok"].mean(), d["trans_ok"].mean(), d.height) for (k,), d in w.group_by("kind")}
e, p = rates(est), rates(probe)
lines = {l.split()[0]: l.split() for l in table.splitlines()[1:] if l.strip()}
assert set(lines) == set(e), (lines, e)
for kind, f in lines.items():
    # kind windows | rot_est rot_probe agree | trans_est trans_probe agree est_only | both_est both_probe
    n, rot_e, rot_p, tr_e, tr_p = int(f[1]), float(f[3]), float(f[4]), float(f[7]), float(f[8])
    assert n == e[kind][2] == p[kind][2], (n, e, p)
    assert abs(rot_e - e[kind][0]) < 6e-4 and abs(tr_e - e[kind][1]) < 6e-4, (kind, f, e)
    assert abs(rot_p - p[kind][0]) < 6e-4 and abs(tr_p - p[kind][1]) < 6e-4, (kind, f, p)
print("ok")
"#;
    python_check(script, &[&a, &b, &table]);
}

#[test]
fn sample_level_rollout_scores_and_trains_whole_sequences() {
    let tmp = tempfile::tempdir().unwrap();
    let pose = tiny_pose_model(tmp.path());
    let clip_level = tiny_world_pipeline(tmp.path(), &pose);
    let text = std::fs::read_to_string(&clip_level).unwrap().replace("mode = \"clip\"", "mode = \"sample\"");
    let pipeline = tmp.path().join("sample.toml");
    std::fs::write(&pipeline, text).unwrap();
    let run = file_uri(tmp.path(), "run");
    let out = wc_ok(&["train", "--run", &run, "--pipeline", pipeline.to_str().unwrap(), "--iters", "2"], &[]);
    assert!(out.contains("iter 1 optimize: committed"), "{out}");
    // 3 groups x 4 candidates, N = 4 clips of 1 window, 1 + 1 selected per
    // group, half of the 4 sampler steps trained on.
    let script = r#"
import sys, glob, json, polars as pl
from safetensors.numpy import load_file
run = sys.argv[1]
for it in ["000000", "000001"]:
    assert glob.glob(f"{run}/iters/{it}/prefix/*/group-*.safetensors") == [], "sample-level has no prefix"
    files = sorted(glob.glob(f"{run}/iters/{it}/rollout/*/group-*.safetensors"))
    assert len(files) == 3, files
    t = load_file(files[0])
    lat, noise = t["latents"], t["noise"]
    assert lat.shape[:2] == (4, 4) and lat.shape == noise.shape, lat.shape
    # every clip of every candidate from its own noise
    flat = noise.reshape(16, -1)
    assert len({row.tobytes() for row in flat}) == 16
    s = pl.read_parquet(glob.glob(f"{run}/iters/{it}/reward/*/scores.parquet")[0])
    assert s.height == 12 and (s["clip_index"] == 4).all(), s
    w = pl.read_parquet(glob.glob(f"{run}/iters/{it}/reward/*/windows.parquet")[0])
    assert w.height == 12 * 4 and sorted(w["window"].unique().to_list()) == [0, 1, 2, 3]
    # a candidate's IF is the mean over all windows of its sequence
    j = w.group_by(["group_id", "candidate"]).agg(((pl.col("rot_ok").cast(pl.Float64).mean() + pl.col("trans_ok").cast(pl.Float64).mean()) / 2).alias("if2"))
    m = s.join(j, on=["group_id", "candidate"])
    assert ((m["if_score"] - m["if2"]).abs() < 1e-12).all()
    # NFT trains every clip of each selected sequence
    o = pl.read_parquet(f"{run}/iters/{it}/optimize/metrics.parquet")
    assert o["samples"].sum() == 3 * 2 * 4 * 2, o
print("ok")
"#;
    let dir = tmp.path().join("run");
    let out = std::process::Command::new("python3").args(["-c", script, dir.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn external_scorer_in_python_is_validated_and_committed_and_bad_ones_commit_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let pose = tiny_pose_model(tmp.path());
    let base = tiny_world_pipeline(tmp.path(), &pose);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/python/external_scorer.py");
    let text = std::fs::read_to_string(&base).unwrap().replace(
        "vq_frame_stride = 4",
        &format!("vq_frame_stride = 4\nexternal_command = [\"python3\", \"{script}\"]\nexternal_timeout_s = 5"),
    );
    let pipeline = tmp.path().join("external.toml");
    std::fs::write(&pipeline, text).unwrap();
    let pipeline = pipeline.to_str().unwrap();
    let run = file_uri(tmp.path(), "run");
    wc_ok(&["init", "--run", &run, "--pipeline", pipeline], &[]);
    wc_ok(&["stage", "prefix", "--run", &run, "--iter", "0"], &[]);
    wc_ok(&["stage", "rollout", "--run", &run, "--iter", "0"], &[]);
    let store = RunStore::open(&run).unwrap();
    let manifest = "iters/000000/reward/shard-000-of-001/_manifest.json";
    for (mode, expect) in [
        ("missing_column", "vq_score"),
        ("wrong_rows", "11 rows, expected 12"),
        ("nan", "scores must be finite"),
        ("exit", "scorer failed on purpose"),
        ("sleep", "timed out"),
    ] {
        let err = wc_err(&["stage", "reward", "--run", &run, "--iter", "0"], &[("WC_SCORER_MODE", mode.to_string())]);
        assert!(err.contains(expect), "{mode}: {err}");
        assert!(store.get_opt(manifest).unwrap().is_none(), "{mode}: nothing may be committed");
    }
    wc_ok(&["stage", "reward", "--run", &run, "--iter", "0"], &[]);
    // The committed table is the scorer's, and it measured the frames the
    // stage handed over: its vq_score is the mean of the last frame.
    let set = wc_store::CommittedSet::open(&store, manifest).unwrap();
    let scores = set.read("iters/000000/reward/shard-000-of-001/scores.parquet").unwrap();
    let batch = wc_schemas::read_table(&wc_schemas::tables::reward_scores(), "scores", scores).unwrap();
    assert_eq!(batch.num_rows(), 12);
    let rset = wc_store::CommittedSet::open(&store, "iters/000000/rollout/shard-000-of-001/_manifest.json").unwrap();
    let t = wc_schemas::read_any("rollout", &rset.read("iters/000000/rollout/shard-000-of-001/group-00000.safetensors").unwrap()).unwrap();
    let lat = t["latents"].to_f32(); // [G, F, 3, 16, 16]
    let per_frame = 3 * 16 * 16;
    let last = &lat[3 * per_frame..4 * per_frame]; // candidate 0, frame 3
    let want: f64 = last.iter().map(|v| ((v + 1.0) * 127.5).round().clamp(0.0, 255.0) as f64 / 255.0).sum::<f64>() / per_frame as f64;
    let vq = batch.column_by_name("vq_score").unwrap().as_any().downcast_ref::<arrow::array::Float64Array>().unwrap().value(0);
    assert!((vq - want).abs() < 1e-9, "{vq} vs {want}");
    wc_ok(&["stage", "select", "--run", &run, "--iter", "0"], &[]);
}

#[test]
fn compare_writes_side_by_side_media_of_two_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let pose = tiny_pose_model(tmp.path());
    let pipeline = tiny_world_pipeline(tmp.path(), &pose);
    let run = file_uri(tmp.path(), "run");
    wc_ok(&["train", "--run", &run, "--pipeline", &pipeline, "--iters", "1"], &[]);
    let out = tmp.path().join("cmp");
    let a = format!("{run}@0");
    let b = format!("{run}@1");
    let msg = wc_ok(&["compare", "--a", &a, "--b", &b, "--scene", "3", "--actions", "forward+turn_left,left", "--out", out.to_str().unwrap()], &[]);
    assert!(msg.contains("9 frames"), "{msg}");
    let py = r#"
import sys
from PIL import Image
g = Image.open(sys.argv[1] + ".gif"); assert g.n_frames == 9, g.n_frames
w, h = g.size
assert w == 3 * 64 + 4 * 4 and h == 16 + 64 + 16, g.size
p = Image.open(sys.argv[1] + ".png"); p.load()
assert p.size[0] >= 4 * w and p.size[1] >= 3 * h, p.size  # 9 frames, 4 per row
print("ok")
"#;
    let o = std::process::Command::new("python3").args(["-c", py, out.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn pose_training_warm_starts_from_another_estimators_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tiny_pose_model(tmp.path()); // 6 steps, hidden 32, frames 16
    let args = |out: &str, lr: &str, hidden: &str, init: bool| -> Vec<String> {
        let mut a: Vec<String> = ["scorers", "train-pose", "--out", out, "--steps", "2", "--batch", "8", "--hidden", hidden, "--frame-size", "16", "--checkpoint-every", "2", "--seed", "7", "--lr", lr]
            .map(String::from)
            .to_vec();
        if init {
            a.extend(["--init-from".to_string(), source.clone()]);
        }
        a
    };
    let run = |a: Vec<String>| wc(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    let model = |name: &str, step: &str| std::fs::read(tmp.path().join(name).join(format!("pose_estimator/step-{step}/model.safetensors"))).unwrap();
    // Learning rate 0: the warm-started weights are the source's, exactly.
    let out = run(args(&file_uri(tmp.path(), "frozen"), "0", "32", true));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(model("frozen", "0000002"), model("pose", "0000006"));
    // What the translation network reads may change, its shape not: the
    // coarse-halves estimator starts from the fine-halves source's weights.
    let mut coarse = args(&file_uri(tmp.path(), "coarse"), "0", "32", true);
    coarse.extend(["--fine-halves".to_string(), "false".to_string()]);
    let out = run(coarse);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(model("coarse", "0000002"), model("pose", "0000006"));
    // The same run from scratch does not start there.
    let out = run(args(&file_uri(tmp.path(), "scratch"), "0", "32", false));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_ne!(model("scratch", "0000002"), model("pose", "0000006"));
    // Another estimator's shape is refused, naming both.
    let out = run(args(&file_uri(tmp.path(), "wide"), "1e-3", "64", true));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("same estimator") && err.contains("hidden: 32") && err.contains("hidden: 64"), "{err}");
    assert!(!tmp.path().join("wide/pose_estimator/step-0000002").exists());
}

#[test]
fn labelled_windows_carry_the_probes_readings_and_train_and_test_the_estimator() {
    // Run b is rewarded by the probe, so its windows table holds the probe's
    // reading of every candidate window; `label-windows` must label the same
    // windows with the same classes, in the same order, and the labelled
    // windows must then feed train-pose, eval-pose and agreement.
    let (tmp, a, b) = train_reward_variant("if_instrument = \"probe\"", "2");
    let labelled = file_uri(tmp.path(), "labelled");
    let out = wc_ok(&["scorers", "label-windows", "--run", &format!("file://{b}"), "--from", "0", "--to", "2", "--out", &labelled], &[]);
    assert!(out.contains("of 2 iterations (0 already committed)"), "{out}");
    let script = r#"
import sys, glob, polars as pl
from safetensors.numpy import load_file
probe, labelled = sys.argv[1], sys.argv[2]
sign = lambda m, pos, neg: ((m >> pos) & 1).astype(int) - ((m >> neg) & 1).astype(int)
total = 0
for it in ["000000", "000001"]:
    t = load_file(f"{labelled}/labelled_windows/iter-{it}/windows.safetensors")
    w = pl.read_parquet(f"{probe}/iters/{it}/reward/shard-000-of-001/windows.parquet").sort("group_id", "candidate", "window")
    n = w.height
    assert t["frames"].shape == (n, 3, 16, 16, 3) and t["frames"].dtype.name == "uint8", t["frames"].shape
    found, cmd = t["found"].astype(int), t["commanded"].astype(int)
    assert (cmd == w["action"].to_numpy()).all(), (cmd, w["action"])
    yaw, pitch = sign(found, 7, 6), sign(found, 4, 5)
    assert (yaw * 20.0 == w["est_yaw_deg"].round(6).to_numpy()).all() and (pitch * 20.0 == w["est_pitch_deg"].round(6).to_numpy()).all()
    rot_ok = (yaw == sign(cmd, 7, 6)) & (pitch == sign(cmd, 4, 5))
    trans_ok = (sign(found, 0, 1) == sign(cmd, 0, 1)) & (sign(found, 3, 2) == sign(cmd, 3, 2))
    assert (rot_ok == w["rot_ok"].to_numpy()).all() and (trans_ok == w["trans_ok"].to_numpy()).all()
    total += n
print(total)
"#;
    let out = std::process::Command::new("python3").arg("-c").arg(script).args([&b, tmp.path().join("labelled").to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let total: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    // Labelling again resumes: nothing is read twice.
    let again = wc_ok(&["scorers", "label-windows", "--run", &format!("file://{b}"), "--from", "0", "--to", "2", "--out", &labelled], &[]);
    assert!(again.contains("labelled 0 windows of 0 iterations (2 already committed)"), "{again}");
    // Another run's iteration under the same store is refused, not mixed in.
    let err = wc_err(&["scorers", "label-windows", "--run", &format!("file://{a}"), "--from", "0", "--to", "1", "--out", &labelled], &[]);
    assert!(err.contains("labelled_windows/iter-000000/_manifest.json") && err.contains("give each run its own --out"), "{err}");

    // Training mixes them in, and its settings say so.
    let pose = tmp.path().join("pose");
    let pose_uri = format!("file://{}", pose.display());
    let mixed = file_uri(tmp.path(), "mixed");
    let out = wc(
        &["scorers", "train-pose", "--out", &mixed, "--init-from", &pose_uri, "--generated", &labelled, "--generated-share", "0.25", "--steps", "2", "--batch", "8", "--hidden", "32", "--frame-size", "16", "--checkpoint-every", "2", "--seed", "3"],
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("mixing {total} labelled generated windows into 25% of every batch")), "{stderr}");
    let settings: serde_json::Value = serde_json::from_slice(&std::fs::read(tmp.path().join("mixed/pose_estimator/step-0000002/settings.json")).unwrap()).unwrap();
    assert_eq!((settings["generated"]["windows"].as_u64(), settings["generated"]["share"].as_f64()), (Some(total as u64), Some(0.25)));
    // A store with nothing labelled is a clear error, naming the command that labels.
    std::fs::create_dir_all(tmp.path().join("empty")).unwrap();
    let err = wc_err(&["scorers", "train-pose", "--out", &file_uri(tmp.path(), "none"), "--generated", &file_uri(tmp.path(), "empty"), "--steps", "1", "--frame-size", "16"], &[]);
    assert!(err.contains("label-windows"), "{err}");

    // eval-pose reads the labelled windows against the probe's classes.
    let eval = wc_ok(&["scorers", "eval-pose", "--model", &mixed, "--windows", "8", "--generated", &labelled, "--misreads", "100"], &[]);
    // --misreads lists every window that is not both right, under its kind.
    let held_out = eval.split("\ngenerated windows").next().unwrap();
    for kind in ["basic", "combined"] {
        let mut lines = held_out.lines().skip_while(|l| !l.starts_with(kind));
        let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        let wrong = (8.0 * (1.0 - row[5].parse::<f64>().unwrap())).round() as usize;
        let listed: usize = lines.take_while(|l| l.contains(" read as ")).map(|l| l.split_whitespace().rev().nth(1).unwrap().parse::<usize>().unwrap()).sum();
        assert_eq!(listed, wrong, "{kind}: {eval}");
    }
    let tail: Vec<&str> = eval.split("how often the estimator reads the probe's class").nth(1).unwrap().lines().filter(|l| l.starts_with("basic") || l.starts_with("combined")).collect();
    let counted: usize = tail.iter().map(|l| l.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap()).sum();
    assert_eq!(counted, total, "{eval}");

    // agreement with an estimator under test: the run's own estimator given
    // explicitly reads exactly as the run's copy does.
    let own = wc_ok(&["scorers", "agreement", "--run", &format!("file://{b}"), "--from", "0", "--to", "2"], &[]);
    let under_test = wc_ok(&["scorers", "agreement", "--run", &format!("file://{b}"), "--from", "0", "--to", "2", "--pose-model", &pose_uri], &[]);
    let (header, table) = under_test.split_once('\n').unwrap();
    assert!(header.starts_with("pose estimator under test:") && header.contains("step 6"), "{header}");
    assert_eq!(table, own);
    let other = wc_ok(&["scorers", "agreement", "--run", &format!("file://{b}"), "--from", "0", "--to", "2", "--pose-model", &mixed], &[]);
    assert!(other.contains("pose estimator under test:") && other.contains("step 2"), "{other}");
}

/// Regression test for "non-finite weights are committed" (issue 28, 1): a
/// NaN policy, a NaN optimizer state and an infinite old policy used to pass
/// through optimize (and the EMA) into the next checkpoint with exit 0. Each
/// is now refused where it is read, naming the file, and nothing is
/// committed; the untouched run then trains to finite weights.
#[test]
fn non_finite_weights_are_never_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let pose = tiny_pose_model(tmp.path());
    let pipeline = tiny_world_pipeline(tmp.path(), &pose);
    let run = file_uri(tmp.path(), "run");
    let dir = tmp.path().join("run");
    wc_ok(&["init", "--run", &run, "--pipeline", &pipeline], &[]);
    let (init, ckpt) = ("init/_manifest.json", "checkpoints/000000");
    let committed = |d: &str| dir.join(d).join("_manifest.json").exists();

    // An infinite old policy: prefix samples from it.
    let original = poison_tensor(&dir, init, &format!("{ckpt}/old_policy.safetensors"), "final.proj.weight", |v| v[0] = f32::INFINITY);
    let e = wc_err(&["stage", "prefix", "--run", &run, "--iter", "0"], &[]);
    assert!(e.contains("old_policy.safetensors") && e.contains("non-finite") && e.contains("final.proj.weight"), "{e}");
    assert!(!committed("iters/000000/prefix/shard-000-of-001"));
    tamper(&dir, init, &format!("{ckpt}/old_policy.safetensors"), &original, true);

    for stage in ["prefix", "rollout", "reward", "select"] {
        wc_ok(&["stage", stage, "--run", &run, "--iter", "0"], &[]);
    }
    // A NaN optimizer state (the step itself would have been "applied").
    let file = format!("{ckpt}/optimizer.safetensors");
    let original = poison_tensor(&dir, init, &file, "muon.momentum.blocks.0.attn.qkv.weight", |v| v[5] = f32::NAN);
    let e = wc_err(&["stage", "optimize", "--run", &run, "--iter", "0"], &[]);
    assert!(e.contains("optimizer.safetensors") && e.contains("non-finite"), "{e}");
    tamper(&dir, init, &file, &original, true);
    // A NaN policy.
    let file = format!("{ckpt}/policy.safetensors");
    let original = poison_tensor(&dir, init, &file, "blocks.0.mlp.fc1.weight", |v| v[0] = f32::NAN);
    let e = wc_err(&["stage", "optimize", "--run", &run, "--iter", "0"], &[]);
    assert!(e.contains("policy.safetensors") && e.contains("non-finite"), "{e}");
    assert!(!committed("iters/000000/optimize") && !dir.join("checkpoints/000001").exists(), "nothing committed");
    tamper(&dir, init, &file, &original, true);

    wc_ok(&["stage", "optimize", "--run", &run, "--iter", "0"], &[]);
    for name in ["policy", "old_policy", "optimizer"] {
        let bytes = std::fs::read(dir.join(format!("checkpoints/000001/{name}.safetensors"))).unwrap();
        let set = wc_schemas::read_any(name, &bytes).unwrap();
        assert!(set.values().all(|t| t.to_f32().iter().all(|v| v.is_finite())), "{name} of checkpoint 1 is finite");
    }
}

/// Regression test for "the external scorer's timeout does not hold" (issue
/// 28, 5): the stage waited for the scorer's output pipes, so a scorer that
/// exited but left a background child was waited for past the timeout; on
/// timeout only the direct child was killed, its children kept running.
#[test]
fn an_external_scorer_is_killed_with_its_children_and_never_waited_for_past_its_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let pose = tiny_pose_model(tmp.path());
    let base = tiny_world_pipeline(tmp.path(), &pose);
    let pids = tmp.path().join("pids");
    // The scorer starts a long background child holding its stdout and
    // stderr, records its pid, then exits 3 (MODE=exit) or waits (MODE=hang).
    let script = format!("sleep 120 & echo $! >> {}; if [ \"$WC_SCORER_MODE\" = exit ]; then exit 3; fi; sleep 120", pids.display());
    let text = std::fs::read_to_string(&base)
        .unwrap()
        .replace("vq_frame_stride = 4", &format!("vq_frame_stride = 4\nexternal_command = [\"sh\", \"-c\", {script:?}]\nexternal_timeout_s = 3"));
    let pipeline = tmp.path().join("external.toml");
    std::fs::write(&pipeline, text).unwrap();
    let run = file_uri(tmp.path(), "run");
    wc_ok(&["init", "--run", &run, "--pipeline", pipeline.to_str().unwrap()], &[]);
    wc_ok(&["stage", "prefix", "--run", &run, "--iter", "0"], &[]);
    wc_ok(&["stage", "rollout", "--run", &run, "--iter", "0"], &[]);
    // Running: a /proc entry that is not a zombie (a killed orphan waits
    // as a zombie until PID 1 reaps it).
    let alive = |pid: &str| std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')));

    let t0 = Instant::now();
    let err = wc_err(&["stage", "reward", "--run", &run, "--iter", "0"], &[("WC_SCORER_MODE", "exit".to_string())]);
    assert!(err.contains("exited with exit status: 3"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(60), "the stage waited {:?} for the scorer's background child", t0.elapsed());

    let t0 = Instant::now();
    let err = wc_err(&["stage", "reward", "--run", &run, "--iter", "0"], &[("WC_SCORER_MODE", "hang".to_string())]);
    assert!(err.contains("timed out after 3 s") && err.contains("process group"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(60), "{:?}", t0.elapsed());
    let pids = std::fs::read_to_string(&pids).unwrap();
    let hung = pids.lines().last().unwrap().trim().to_string();
    // The killed group's background child is gone (polled: the kill is
    // asynchronous).
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(&hung) && Instant::now() < deadline {
        std::thread::yield_now();
    }
    assert!(!alive(&hung), "the scorer's background child {hung} outlived the timeout");
    // Leave nothing behind: the first case's child was not ours to kill.
    for pid in pids.lines() {
        let _ = std::process::Command::new("kill").arg(pid.trim()).status();
    }
}
