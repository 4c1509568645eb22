//! End-to-end tests of the `matrix_game` backend: Matrix-Game 2.0's causal,
//! action-conditioned transformer (`wc-matrix-game`) pre-trained on the
//! simulator and post-trained through the five stages, driven through the
//! real `worldcompass` binary.

use crate::support::*;

fn file_uri(dir: &std::path::Path, name: &str) -> String {
    format!("file://{}", dir.join(name).display())
}

/// Run a Python check with these arguments; it fails the test with its output.
fn python_check(script: &str, args: &[&str]) {
    let out = std::process::Command::new("python3").arg("-c").arg(script).args(args).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_pretrained_matrix_game_base_runs_two_iterations_of_all_five_stages() {
    let tmp = tempfile::tempdir().unwrap();
    // Pre-train a Matrix-Game base on a small dataset of 16x16 frames.
    let data = file_uri(tmp.path(), "data");
    wc_ok(&["data", "--out", &data, "--prompts", "3", "--sequences", "2", "--clips", "2", "--pretrain-clips", "12", "--pretrain-windows", "2", "--size", "16"], &[]);
    let base = file_uri(tmp.path(), "base");
    let out = wc_ok(&["pretrain", "--arch", "matrix-game", "--data", &data, "--out", &base, "--steps", "3", "--checkpoint-every", "3", "--warmup", "2", "--batch", "4"], &[]);
    assert!(out.contains("pre-trained to step 3"), "{out}");
    // Stopped after step 1 and resumed, pre-training gives the same bytes.
    let resumed = file_uri(tmp.path(), "resumed");
    for steps in ["1", "3"] {
        wc_ok(&["pretrain", "--arch", "matrix-game", "--data", &data, "--out", &resumed, "--steps", steps, "--checkpoint-every", "1", "--warmup", "2", "--batch", "4"], &[]);
    }
    let weights = |store: &str| std::fs::read(tmp.path().join(store).join("pretrain/step-0000003/model.safetensors")).unwrap();
    assert!(weights("base") == weights("resumed"), "a resumed Matrix-Game pre-training differs from an uninterrupted one");
    // A clip-transformer run refuses it, saying why.
    let pose = tiny_pose_model(tmp.path());
    let world = tiny_world_pipeline(tmp.path(), &pose);
    let text = std::fs::read_to_string(&world).unwrap().replace("preset = \"tiny\"", &format!("base = \"{}\"", tmp.path().join("base").display()));
    let wrong = tmp.path().join("wrong.toml");
    std::fs::write(&wrong, &text).unwrap();
    let err = wc_err(&["init", "--run", &file_uri(tmp.path(), "wrong"), "--pipeline", wrong.to_str().unwrap()], &[]);
    assert!(err.contains("is a Matrix-Game checkpoint") && err.contains("matrix_game"), "{err}");
    // The same pipeline on the matrix_game backend: two iterations.
    let pipeline = tmp.path().join("mg.toml");
    std::fs::write(&pipeline, text.replace("kind = \"world\"", "kind = \"matrix_game\"")).unwrap();
    let run = file_uri(tmp.path(), "run");
    let out = wc_ok(&["train", "--run", &run, "--pipeline", pipeline.to_str().unwrap(), "--iters", "2"], &[]);
    assert!(out.contains("iter 1 optimize: committed"), "{out}");
    let script = r#"
import sys, glob, json, polars as pl
from safetensors.numpy import load_file
run, base = sys.argv[1], sys.argv[2]
cfg = json.load(open(f"{run}/checkpoints/000000/model.json"))
assert cfg["transformer"]["context"] == "clip_image" and cfg["frame_size"] == 16 and cfg["frames_per_clip"] == 4, cfg
# checkpoint 0 holds the base's weights, under Wan's names
b = load_file(glob.glob(f"{base}/pretrain/step-0000003/model.safetensors")[0])
p0 = load_file(f"{run}/checkpoints/000000/policy.safetensors")
assert set(p0) == set(b) and any(k.startswith("blocks.0.action_model.") for k in p0), sorted(p0)[:5]
assert all((p0[k] == b[k]).all() for k in b)
# two optimizer steps moved the policy; the old policy is its EMA
p2 = load_file(f"{run}/checkpoints/000002/policy.safetensors")
assert any(not (p2[k] == p0[k]).all() for k in p0)
for it in ["000000", "000001"]:
    files = sorted(glob.glob(f"{run}/iters/{it}/rollout/*/group-*.safetensors"))
    assert len(files) == 3, files
    t = load_file(files[0])
    lat, noise = t["latents"], t["noise"]
    assert lat.shape == (4, 4, 3, 16, 16) and noise.shape == lat.shape, lat.shape
    assert len({row.tobytes() for row in lat.reshape(4, -1)}) == 4, "each candidate from its own noise"
    s = pl.read_parquet(glob.glob(f"{run}/iters/{it}/reward/*/scores.parquet")[0])
    assert s.height == 12 and s["vq_score"].is_finite().all(), s
    o = pl.read_parquet(f"{run}/iters/{it}/optimize/metrics.parquet")
    assert o["samples"].sum() == 3 * 2 * 2 and o["loss"].is_finite().all() and o["applied"].all(), o
print("ok")
"#;
    python_check(script, &[tmp.path().join("run").to_str().unwrap(), tmp.path().join("base").to_str().unwrap()]);
    // Table 1 of the base and the run's checkpoint 2, both Matrix-Game.
    let results = file_uri(tmp.path(), "eval");
    let at2 = format!("{run}@2");
    let out = wc_ok(&["eval", "--data", &data, "--model", &base, "--model", &at2, "--sequences", "1", "--sampler-steps", "2", "--lengths", "short=1,long=2", "--out", &results], &[]);
    assert!(out.contains("step 3") && out.contains("step 2") && out.contains("delta"), "{out}");
    let script = r#"
import sys, glob, polars as pl
r = pl.read_parquet(glob.glob(f"{sys.argv[1]}/**/*.parquet", recursive=True))
assert r.height == 2 * 2 * 2, r  # 2 models x 2 lengths x 2 kinds
assert r["if_score"].is_between(0, 1).all() and r["vq_score"].is_finite().all(), r
assert sorted(r["step"].unique().to_list()) == [2, 3]
print("ok")
"#;
    python_check(script, &[tmp.path().join("eval").to_str().unwrap()]);
}

#[test]
fn a_fresh_tiny_matrix_game_trains_at_sample_level() {
    let tmp = tempfile::tempdir().unwrap();
    let pose = tiny_pose_model(tmp.path());
    let text = std::fs::read_to_string(tiny_world_pipeline(tmp.path(), &pose))
        .unwrap()
        .replace("kind = \"world\"", "kind = \"matrix_game\"")
        .replace("mode = \"clip\"", "mode = \"sample\"");
    let pipeline = tmp.path().join("mg.toml");
    std::fs::write(&pipeline, text).unwrap();
    let run = file_uri(tmp.path(), "run");
    let out = wc_ok(&["train", "--run", &run, "--pipeline", pipeline.to_str().unwrap(), "--iters", "1"], &[]);
    assert!(out.contains("iter 0 optimize: committed"), "{out}");
    let script = r#"
import sys, glob, polars as pl
from safetensors.numpy import load_file
run = sys.argv[1]
t = load_file(glob.glob(f"{run}/iters/000000/rollout/*/group-*.safetensors")[0])
assert t["latents"].shape[:2] == (4, 4), t["latents"].shape
o = pl.read_parquet(f"{run}/iters/000000/optimize/metrics.parquet")
assert o["samples"].sum() == 3 * 2 * 4 * 2 and o["loss"].is_finite().all(), o
print("ok")
"#;
    python_check(script, &[tmp.path().join("run").to_str().unwrap()]);
}

/// Matrix-Game 2.0's full-size code paths at a tiny size: a transformer in
/// the released layout (`model.`-prefixed keys, seeded weights), the
/// fixtures' tiny Wan VAE and CLIP tower (checked against diffusers and
/// transformers in wc-wan), imported into a base store and post-trained
/// through the five stages: VAE latents with 2 frames per latent frame,
/// the image-to-video condition and the CLIP tokens in every context, the
/// scorers reading frames decoded through the VAE's stream.
#[test]
fn released_layout_weights_import_and_train_through_the_five_stages_on_vae_latents() {
    let tmp = tempfile::tempdir().unwrap();
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/wan");
    let cfg = wc_matrix_game::MatrixGameConfig::tiny_wan();
    let released: std::collections::HashMap<String, candle_core::Tensor> = wc_jobs::import::random_release(&cfg, 11).unwrap().transformer.into_iter().collect();
    let transformer = tmp.path().join("base_distill.safetensors");
    candle_core::safetensors::save(&released, &transformer).unwrap();
    let base = tmp.path().join("base");
    let import = |out: &std::path::Path| {
        wc_ok(
            &[
                "model", "import", "--preset", "tiny-wan",
                "--transformer", transformer.to_str().unwrap(),
                "--vae", fixtures.join("vae_wan.safetensors").to_str().unwrap(),
                "--clip", fixtures.join("clip_vision_wan.pth").to_str().unwrap(),
                "--out", out.to_str().unwrap(),
            ],
            &[],
        )
    };
    let out = import(&base);
    assert!(out.contains("imported: transformer") && out.contains("frames 16x16"), "{out}");
    assert!(import(&base).contains("already imported"));
    // A fresh model of the preset has no VAE or CLIP weights: init says so.
    let pose = tiny_pose_model(tmp.path());
    let text = std::fs::read_to_string(tiny_world_pipeline(tmp.path(), &pose)).unwrap().replace("kind = \"world\"", "kind = \"matrix_game\"");
    let fresh = tmp.path().join("fresh.toml");
    std::fs::write(&fresh, text.replace("preset = \"tiny\"", "preset = \"tiny-wan\"")).unwrap();
    let err = wc_err(&["init", "--run", &file_uri(tmp.path(), "fresh"), "--pipeline", fresh.to_str().unwrap()], &[]);
    assert!(err.contains("tiny-wan") && err.contains("model import"), "{err}");
    // From the imported base: one iteration of the five stages.
    let pipeline = tmp.path().join("mg2.toml");
    std::fs::write(&pipeline, text.replace("preset = \"tiny\"", &format!("base = \"{}\"", base.display()))).unwrap();
    let run = file_uri(tmp.path(), "run");
    let out = wc_ok(&["train", "--run", &run, "--pipeline", pipeline.to_str().unwrap(), "--iters", "1"], &[]);
    assert!(out.contains("iter 0 optimize: committed"), "{out}");
    let script = r#"
import sys, glob, json, polars as pl
from safetensors.numpy import load_file
run, base = sys.argv[1], sys.argv[2]
cfg = json.load(open(f"{run}/checkpoints/000000/model.json"))
assert cfg["codec"]["kind"] == "wan_vae" and cfg["image_encoder"]["kind"] == "clip_vision", cfg
# the frozen networks are the run's own copies of the base's
for name in ["vae", "clip_vision"]:
    a = load_file(glob.glob(f"{run}/**/data/matrix_game/{name}.safetensors", recursive=True)[0])
    b = load_file(f"{base}/pretrain/step-0000000/{name}.safetensors")
    assert set(a) == set(b) and all((a[k] == b[k]).all() for k in b), name
p0, b = load_file(f"{run}/checkpoints/000000/policy.safetensors"), load_file(f"{base}/pretrain/step-0000000/model.safetensors")
assert set(p0) == set(b) and all((p0[k] == b[k]).all() for k in b)
p1 = load_file(f"{run}/checkpoints/000001/policy.safetensors")
assert any(not (p1[k] == p0[k]).all() for k in p0), "the optimizer step moved the policy"
files = sorted(glob.glob(f"{run}/iters/000000/rollout/*/group-*.safetensors"))
assert len(files) == 3, files
lat = load_file(files[0])["latents"]
# G = 4 candidates of one clip: 2 latent frames of 4 channels, 4x4 (16x16 frames, 4 frames)
assert lat.shape == (4, 2, 4, 4, 4), lat.shape
assert len({row.tobytes() for row in lat.reshape(4, -1)}) == 4
s = pl.read_parquet(glob.glob(f"{run}/iters/000000/reward/*/scores.parquet")[0])
assert s.height == 12 and s["vq_score"].is_finite().all() and s["if_score"].is_between(0, 1).all(), s
o = pl.read_parquet(f"{run}/iters/000000/optimize/metrics.parquet")
assert o["loss"].is_finite().all() and o["applied"].all(), o
print("ok")
"#;
    python_check(script, &[tmp.path().join("run").to_str().unwrap(), base.to_str().unwrap()]);
    // Gradient accumulation: the same iteration with one sample per
    // forward and backward pass makes the same optimizer steps, up to the
    // order of float sums.
    let micro = tmp.path().join("micro.toml");
    std::fs::write(&micro, std::fs::read_to_string(&pipeline).unwrap().replace("[optimize]", "[optimize]\nmicrobatch = 1")).unwrap();
    let out = wc_ok(&["train", "--run", &file_uri(tmp.path(), "micro"), "--pipeline", micro.to_str().unwrap(), "--iters", "1"], &[]);
    assert!(out.contains("iter 0 optimize: committed"), "{out}");
    let script = r#"
import sys, numpy as np, polars as pl
from safetensors.numpy import load_file
a, b = (load_file(f"{r}/checkpoints/000001/policy.safetensors") for r in sys.argv[1:3])
p0 = load_file(f"{sys.argv[1]}/checkpoints/000000/policy.safetensors")
moved = max(float(np.abs(a[k] - p0[k]).max()) for k in a)
diff = max(float(np.abs(a[k] - b[k]).max()) for k in a)
assert moved > 1e-6 and diff < 1e-2 * moved, (moved, diff)  # the parts agree 100x closer than the step moved
m = [pl.read_parquet(f"{r}/iters/000000/optimize/metrics.parquet") for r in sys.argv[1:3]]
assert m[0]["samples"].to_list() == m[1]["samples"].to_list()
assert (m[0]["loss"] - m[1]["loss"]).abs().max() < 1e-5, (m[0], m[1])
print("ok", moved, diff)
"#;
    python_check(script, &[tmp.path().join("run").to_str().unwrap(), tmp.path().join("micro").to_str().unwrap()]);
}
