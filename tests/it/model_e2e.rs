//! End-to-end tests of the model commands on tiny configs: pretrain (and its
//! resume), eval, sample; the checkpoint read by Python's safetensors.

use crate::support::*;
use wc_store::RunStore;

fn file_uri(dir: &std::path::Path, name: &str) -> String {
    format!("file://{}/{name}", dir.display())
}

const TINY: [&str; 14] = [
    "--d-model", "48", "--layers", "1", "--heads", "2", "--patch", "4", "--context-frames", "1", "--batch", "4", "--mlp-ratio", "2",
];

fn tiny_dataset(dir: &std::path::Path) -> String {
    let data = file_uri(dir, "data");
    wc_ok(
        &["data", "--out", &data, "--prompts", "3", "--sequences", "2", "--clips", "2", "--pretrain-clips", "12", "--pretrain-windows", "2", "--size", "16"],
        &[],
    );
    data
}

fn pretrain(data: &str, out: &str, steps: &str) -> String {
    let mut args = vec!["pretrain", "--data", data, "--out", out, "--steps", steps, "--checkpoint-every", "3", "--warmup", "2"];
    args.extend(TINY);
    wc_ok(&args, &[])
}

#[test]
fn pretraining_resumes_to_the_same_bytes_and_python_reads_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_dataset(tmp.path());
    let straight = file_uri(tmp.path(), "straight");
    assert!(pretrain(&data, &straight, "6").contains("pre-trained to step 6"));
    let resumed = file_uri(tmp.path(), "resumed");
    pretrain(&data, &resumed, "3");
    pretrain(&data, &resumed, "6");
    let ckpt = "pretrain/step-0000006/model.safetensors";
    let a = RunStore::open(&straight).unwrap().get(ckpt).unwrap();
    let b = RunStore::open(&resumed).unwrap().get(ckpt).unwrap();
    assert_eq!(a, b, "resumed pre-training differs from the uninterrupted run");
    let opt = "pretrain/step-0000006/optimizer.safetensors";
    assert_eq!(RunStore::open(&straight).unwrap().get(opt).unwrap(), RunStore::open(&resumed).unwrap().get(opt).unwrap());

    let path = tmp.path().join("straight").join(ckpt);
    let py = std::process::Command::new("python3")
        .args(["-c", "import sys; from safetensors.numpy import load_file\nt = load_file(sys.argv[1])\nprint(len(t), t['blocks.0.attn.qkv.weight'].shape, t['patch_in.weight'].dtype)"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    let text = String::from_utf8_lossy(&py.stdout);
    assert!(text.contains("(144, 48) float32"), "{text}");
}

#[test]
fn pretraining_on_a_time_budget_stops_with_a_checkpoint_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_dataset(tmp.path());
    let out = file_uri(tmp.path(), "budget");
    // A zero budget: one step, then a checkpoint there, although
    // --checkpoint-every is 3.
    let mut args = vec!["pretrain", "--data", &data, "--out", &out, "--steps", "1000", "--checkpoint-every", "3", "--warmup", "2", "--time-limit", "0"];
    args.extend(TINY);
    let text = wc_ok(&args, &[]);
    assert!(text.contains("pre-trained to step 1 (the time limit of 0 s stopped it"), "{text}");
    let store = RunStore::open(&out).unwrap();
    assert!(store.get("pretrain/step-0000001/_manifest.json").is_ok());
    // The same run without the budget resumes from step 1 to the same bytes
    // as an uninterrupted run.
    assert!(pretrain(&data, &out, "3").contains("pre-trained to step 3;"));
    let straight = file_uri(tmp.path(), "straight");
    pretrain(&data, &straight, "3");
    let ckpt = "pretrain/step-0000003/model.safetensors";
    assert_eq!(store.get(ckpt).unwrap(), RunStore::open(&straight).unwrap().get(ckpt).unwrap());
    let bad = wc_err(&["pretrain", "--data", &data, "--out", &out, "--time-limit=-1"], &[]);
    assert!(bad.contains("--time-limit must be a number of seconds >= 0"), "{bad}");
}

#[test]
fn eval_and_sample_run_on_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tiny_dataset(tmp.path());
    let model = file_uri(tmp.path(), "model");
    pretrain(&data, &model, "3");
    let early = file_uri(tmp.path(), "early");
    pretrain(&data, &early, "1");
    // Table 1 of two models; results appended to a store as Parquet.
    let results = file_uri(tmp.path(), "results");
    let eval = |extra: &[&str]| {
        let mut args = vec!["eval", "--data", &data, "--model", &early, "--model", &model, "--sequences", "1", "--sampler-steps", "2", "--lengths", "short=1,long=2", "--out", &results];
        args.extend_from_slice(extra);
        wc_ok(&args, &[])
    };
    let generated = eval(&[]);
    assert_eq!(generated.lines().filter(|l| l.contains(" delta ")).count(), 2, "{generated}");
    assert!(generated.contains("context: generated"), "{generated}");
    let forced = eval(&["--teacher-forced"]);
    assert!(forced.contains("context: ground_truth"), "{forced}");
    let script = r#"
import sys, glob, polars as pl
files = glob.glob(sys.argv[1] + "/eval/eval-*.parquet")
assert len(files) == 2, files
both = pl.concat([pl.read_parquet(f) for f in files])
gen, forced = both.filter(pl.col("context") == "generated"), both.filter(pl.col("context") == "ground_truth")
assert gen.height == 2 * 2 * 2 and (gen["context"] == "generated").all() and (forced["context"] == "ground_truth").all()
assert sorted(gen["windows"].to_list()) == [1] * 4 + [2] * 4, gen
assert gen["vq_score"].is_finite().all() and gen["both_right"].is_between(0, 1).all()
# The first clip's context is the first frame either way: identical numbers.
key = ["model", "kind"]
a = gen.filter(pl.col("length") == "short").sort(key)
b = forced.filter(pl.col("length") == "short").sort(key)
for c in ["rot_acc", "trans_acc", "if_score", "both_right", "vq_score"]:
    assert (a[c] - b[c]).abs().max() < 1e-12, c
# IF is the mean of its two accuracies.
assert ((gen["if_score"] - (gen["rot_acc"] + gen["trans_acc"]) / 2).abs() < 1e-12).all()
print("ok")
"#;
    let out = std::process::Command::new("python3").args(["-c", script, tmp.path().join("results").to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let err = wc_err(&["eval", "--data", &data, "--model", &model, "--sequences", "1", "--lengths", "short=1,long=5"], &[]);
    assert!(err.contains("held-out sequences have 2 windows"), "{err}");
    let prefix = tmp.path().join("gen");
    let p = prefix.to_str().unwrap();
    let out = wc_ok(&["sample", "--model", &model, "--scene", "2", "--actions", "forward,turn_left", "--sampler-steps", "2", "--truth", "--out", p], &[]);
    assert!(out.contains("9 frames, generated left, ground truth right"), "{out}");
    assert!(std::fs::metadata(format!("{p}.gif")).unwrap().len() > 100);
    let err = wc_err(&["eval", "--data", &data, "--model", &file_uri(tmp.path(), "nothing")], &[]);
    assert!(err.contains("does not exist") && !tmp.path().join("nothing").exists(), "{err}");
    std::fs::create_dir_all(tmp.path().join("nothing")).unwrap();
    let err = wc_err(&["eval", "--data", &data, "--model", &file_uri(tmp.path(), "nothing")], &[]);
    assert!(err.contains("no committed checkpoint"), "{err}");
}

fn wan_fixture(name: &str) -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/wan/").to_string() + name
}

#[test]
fn model_forward_reproduces_diffusers_from_both_layouts_and_names_a_bad_key() {
    let tmp = tempfile::tempdir().unwrap();
    let expected = candle_core::safetensors::load(wan_fixture("transformer_io.safetensors"), &candle_core::Device::Cpu).unwrap();
    for weights in ["transformer_wan.safetensors", "transformer_diffusers.safetensors"] {
        let out = tmp.path().join(format!("{weights}.out"));
        let text = wc_ok(
            &["model", "forward", "--config", &wan_fixture("transformer_config.json"), "--weights", &wan_fixture(weights), "--inputs", &wan_fixture("transformer_io.safetensors"), "--out", out.to_str().unwrap()],
            &[],
        );
        assert!(text.contains("74208 parameters"), "{text}");
        let got = candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap();
        let diff = (&got["out"] - &expected["out"]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "{weights}: {diff}");
    }
    // The same weights without one tensor, and with one of the wrong shape.
    let mut tensors = candle_core::safetensors::load(wan_fixture("transformer_wan.safetensors"), &candle_core::Device::Cpu).unwrap();
    tensors.remove("blocks.1.cross_attn.norm_k.weight");
    let missing = tmp.path().join("missing.safetensors");
    candle_core::safetensors::save(&tensors, &missing).unwrap();
    let args = |w: &str| -> Vec<String> {
        ["model", "forward", "--config", &wan_fixture("transformer_config.json"), "--weights", w, "--inputs", &wan_fixture("transformer_io.safetensors"), "--out", "/dev/null"].map(String::from).to_vec()
    };
    let a = args(missing.to_str().unwrap());
    let err = wc_err(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert!(err.contains("no tensor `blocks.1.cross_attn.norm_k.weight`") && err.contains("[48]"), "{err}");
    tensors.insert("blocks.1.cross_attn.norm_k.weight".into(), candle_core::Tensor::zeros(47, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap());
    let misshaped = tmp.path().join("misshaped.safetensors");
    candle_core::safetensors::save(&tensors, &misshaped).unwrap();
    let a = args(misshaped.to_str().unwrap());
    let err = wc_err(&a.iter().map(String::as_str).collect::<Vec<_>>(), &[]);
    assert!(err.contains("`blocks.1.cross_attn.norm_k.weight` has shape [47], the model expects [48]"), "{err}");
}

#[test]
fn model_forward_runs_the_vae_encoder_and_decoder_like_diffusers() {
    let tmp = tempfile::tempdir().unwrap();
    let io = candle_core::safetensors::load(wan_fixture("vae_io.safetensors"), &candle_core::Device::Cpu).unwrap();
    for (part, outputs) in [("vae-encode", ["mean", "logvar"].as_slice()), ("vae-decode", ["decoded"].as_slice())] {
        let out = tmp.path().join(format!("{part}.safetensors"));
        let text = wc_ok(
            &["model", "forward", "--part", part, "--config", &wan_fixture("vae_config.json"), "--weights", &wan_fixture("vae_wan.safetensors"), "--inputs", &wan_fixture("vae_io.safetensors"), "--out", out.to_str().unwrap()],
            &[],
        );
        assert!(text.contains("Wan2.1 VAE (Wan layout), 221647 parameters"), "{text}");
        let got = candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap();
        for name in outputs {
            let diff = (&got[*name] - &io[*name]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-4, "{part} {name}: {diff}");
        }
    }
    // The encoder asks for `video`; the transformer's inputs do not have it.
    let err = wc_err(
        &["model", "forward", "--part", "vae-encode", "--config", &wan_fixture("vae_config.json"), "--weights", &wan_fixture("vae_wan.safetensors"), "--inputs", &wan_fixture("transformer_io.safetensors"), "--out", "/dev/null"],
        &[],
    );
    assert!(err.contains("has no tensor `video`"), "{err}");
}

#[test]
fn model_forward_runs_the_clip_vision_tower_like_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("clip.json");
    std::fs::write(&config, r#"{"image_size": 42, "patch_size": 14, "dim": 32, "mlp_dim": 128, "heads": 4, "layers": 3, "layers_run": 2, "eps": 1e-5}"#).unwrap();
    let out = tmp.path().join("tokens.safetensors");
    let text = wc_ok(
        &["model", "forward", "--part", "clip-vision", "--config", config.to_str().unwrap(), "--weights", &wan_fixture("clip_vision_wan.safetensors"), "--inputs", &wan_fixture("clip_vision_io.safetensors"), "--out", out.to_str().unwrap()],
        &[],
    );
    // The file's third block and post-norm are skipped: 2 blocks' worth.
    assert!(text.contains("CLIP vision tower (2 of 3 blocks, width 32), 44640 parameters"), "{text}");
    let io = candle_core::safetensors::load(wan_fixture("clip_vision_io.safetensors"), &candle_core::Device::Cpu).unwrap();
    let got = candle_core::safetensors::load(&out, &candle_core::Device::Cpu).unwrap();
    let diff = (&got["tokens"] - &io["tokens"]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-4, "tokens differ by {diff}");
    // The same weights as Wan ships its CLIP file: a PyTorch checkpoint.
    let from_pth = tmp.path().join("tokens-pth.safetensors");
    wc_ok(
        &["model", "forward", "--part", "clip-vision", "--config", config.to_str().unwrap(), "--weights", &wan_fixture("clip_vision_wan.pth"), "--inputs", &wan_fixture("clip_vision_io.safetensors"), "--out", from_pth.to_str().unwrap()],
        &[],
    );
    let again = candle_core::safetensors::load(&from_pth, &candle_core::Device::Cpu).unwrap();
    assert_eq!(again["tokens"].flatten_all().unwrap().to_vec1::<f32>().unwrap(), got["tokens"].flatten_all().unwrap().to_vec1::<f32>().unwrap());
    // A file that is not a checkpoint says so, and which file it was.
    let bad = tmp.path().join("not-a-checkpoint.pth");
    std::fs::copy(wan_fixture("make_fixtures.py"), &bad).unwrap();
    let err = wc_err(
        &["model", "forward", "--part", "clip-vision", "--config", config.to_str().unwrap(), "--weights", bad.to_str().unwrap(), "--inputs", &wan_fixture("clip_vision_io.safetensors"), "--out", "/dev/null"],
        &[],
    );
    assert!(err.contains("not-a-checkpoint.pth") && err.contains("a PyTorch checkpoint (a pickled state dict) was expected"), "{err}");
}

#[test]
fn model_size_times_the_vaes_image_condition_of_a_clip() {
    // The released VAE with random weights, a 2-frame latent of 4x4: an
    // image of 32x32 and 4 grey frames.
    let text = wc_ok(&["model", "size", "--preset", "wan2.1-vae", "--latent", "2x4x4", "--condition"], &[]);
    assert!(text.contains("126892531 parameters") && text.contains("image condition of 2 latent frames (5 pixel frames of 32x32) [1, 20, 2, 4, 4]"), "{text}");
    for preset in ["matrix-game-2", "clip-vit-h-14"] {
        let err = wc_err(&["model", "size", "--preset", preset, "--condition"], &[]);
        assert!(err.contains("--condition is the VAE's"), "{preset}: {err}");
    }
}
