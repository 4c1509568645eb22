//! The same world model in PyTorch (`python/world_model_torch.py`): first a
//! check that both give the same velocity and loss for the same weights and
//! inputs, then the time of a forward and a forward+backward of the
//! training loss and of one sampler step (the velocity of G candidates
//! from a cached context of batch 1, no gradient) with the same thread
//! count, as candle/PyTorch ratios.
//!
//! PyTorch is large; it is not installed by CI. `just bench` installs it on
//! demand; without it these rows are reported as not measured.

use std::path::Path;
use std::process::Command;

use candle_core::{Device, Tensor};
use wc_model::flow::{flow_matching_loss, sampler_velocity, seeded_noise};
use wc_model::model::action_input;
use wc_model::params::Params;
use wc_model::{ModelConfig, WorldModel};
use wc_schemas::{Tensor as HostTensor, TensorSet};

use crate::{median_seconds, BenchError, BenchRow, Result};

/// The Python reference, embedded so the bench needs no source checkout.
pub const TORCH_SCRIPT: &str = include_str!("../python/world_model_torch.py");

/// Velocity agreement required (absolute, in units of the velocity).
pub const TOLERANCE: f64 = 1e-3;

/// Whether `python3 -c "import torch"` works.
pub fn torch_available() -> bool {
    Command::new("python3").args(["-c", "import torch, safetensors"]).output().is_ok_and(|o| o.status.success())
}

fn host(t: &Tensor) -> Result<HostTensor> {
    let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
    Ok(HostTensor::from_f32(t.dims(), &v))
}

/// Compare candle and PyTorch on the model `cfg` at training batch `batch`
/// and sampler batch `candidates`.
pub fn rows(cfg: &ModelConfig, batch: usize, candidates: usize, threads: usize, reps: usize, work: &Path) -> Result<Vec<BenchRow>> {
    let dev = Device::Cpu;
    let mut p = Params::new(11, &dev);
    let m = WorldModel::new(cfg, &mut p)?;
    // Trained weights are not near-zero like adaLN-zero init: scale the
    // modulation so the comparison exercises every path.
    for (name, var) in p.vars() {
        if name.ends_with("ada.weight") || name == "final.proj.weight" {
            var.set(&(var.as_tensor() * 20.0)?)?;
        }
    }
    let (tpf, tok) = (cfg.tokens_per_frame(), cfg.token_dim());
    let ctx = seeded_noise(21, &[batch, cfg.context_slots() * tpf, tok], &dev)?;
    let x = seeded_noise(22, &[batch, cfg.frames_per_clip * tpf, tok], &dev)?;
    let eps = seeded_noise(23, &[batch, cfg.frames_per_clip * tpf, tok], &dev)?;
    let times: Vec<f32> = (0..batch).map(|i| (i as f32 + 0.5) / batch as f32).collect();
    let masks: Vec<Vec<u8>> = (0..batch).map(|i| vec![(1u8 << (i % 8)) | (1 << ((i + 3) % 8)); cfg.frames_per_clip]).collect();
    let acts = action_input(&masks, &vec![false; batch], &dev)?;
    let loss = flow_matching_loss(&m, &ctx, &x, &eps, &times, &acts)?;
    let tt = Tensor::from_vec(times.clone(), (batch, 1, 1), &dev)?;
    let z = (x.broadcast_mul(&(1.0 - &tt)?)? + eps.broadcast_mul(&tt)?)?;
    let v = m.velocity(&m.encode_context(&ctx)?, &z, &Tensor::from_vec(times.clone(), batch, &dev)?, &acts)?;
    // A sampler step: G candidates after one context, its cache computed once.
    let g = candidates;
    let sctx = seeded_noise(24, &[1, cfg.context_slots() * tpf, tok], &dev)?;
    let snoise = seeded_noise(25, &[g, cfg.frames_per_clip * tpf, tok], &dev)?;
    let st = Tensor::full(0.5f32, g, &dev)?;
    let sacts = action_input(&(0..g).map(|i| vec![1u8 << (i % 8); cfg.frames_per_clip]).collect::<Vec<_>>(), &vec![false; g], &dev)?;
    let scache = m.encode_context(&sctx)?.detach();
    let sv = sampler_velocity(&m, &scache, &snoise, &st, &sacts)?;

    let fwd = median_seconds(reps, || {
        flow_matching_loss(&m, &ctx, &x, &eps, &times, &acts)?;
        Ok(())
    })?;
    let fwd_bwd = median_seconds(reps, || {
        flow_matching_loss(&m, &ctx, &x, &eps, &times, &acts)?.backward()?;
        Ok(())
    })?;
    // What the sampler runs per step (`flow::sampler_velocity`: parts of
    // the batch, one rayon task each); PyTorch runs the batch as one.
    let step = median_seconds(reps, || {
        sampler_velocity(&m, &scache, &snoise, &st, &sacts)?;
        Ok(())
    })?;

    let config = format!("default model, training batch {batch}, {threads} threads");
    if !torch_available() {
        return Ok(vec![BenchRow::new("pytorch", "not measured: python3 cannot import torch (run `just bench`, which installs it)", config, f64::NAN, "x")]);
    }
    let io = |what: &str, e| BenchError::Io { what: what.to_string(), source: e };
    std::fs::create_dir_all(work).map_err(|e| io("creating the bench folder", e))?;
    let weights = work.join("torch_weights.safetensors");
    let inputs = work.join("torch_inputs.safetensors");
    let script = work.join("world_model_torch.py");
    std::fs::write(&weights, wc_schemas::write_any("bench weights", &p.to_tensor_set()?)?).map_err(|e| io("writing weights", e))?;
    let mut set = TensorSet::new();
    set.insert("context".into(), host(&ctx)?);
    set.insert("x".into(), host(&x)?);
    set.insert("eps".into(), host(&eps)?);
    set.insert("t".into(), HostTensor::from_f32(&[batch], &times));
    set.insert("actions".into(), host(&acts)?);
    set.insert("expected_velocity".into(), host(&v)?);
    set.insert("expected_loss".into(), host(&loss.reshape(1)?)?);
    set.insert("sampler_context".into(), host(&sctx)?);
    set.insert("sampler_noise".into(), host(&snoise)?);
    set.insert("sampler_t".into(), host(&st)?);
    set.insert("sampler_actions".into(), host(&sacts)?);
    set.insert("expected_sampler_velocity".into(), host(&sv)?);
    std::fs::write(&inputs, wc_schemas::write_any("bench inputs", &set)?).map_err(|e| io("writing inputs", e))?;
    std::fs::write(&script, TORCH_SCRIPT).map_err(|e| io("writing the PyTorch script", e))?;
    let cfg_json = serde_json::to_string(cfg).map_err(|e| BenchError::Failed(e.to_string()))?;
    let out = Command::new("python3")
        .args([&script, &weights, &inputs])
        .args([&cfg_json, &threads.to_string(), &reps.to_string()])
        .output()
        .map_err(|e| io("running python3", e))?;
    if !out.status.success() {
        return Err(BenchError::Failed(format!("the PyTorch reference failed: {}", String::from_utf8_lossy(&out.stderr))));
    }
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| BenchError::Failed(format!("PyTorch output: {e}")))?;
    let num = |k: &str| r[k].as_f64().ok_or_else(|| BenchError::Failed(format!("PyTorch output has no {k}: {r}")));
    let (dv, scale, dl) = (num("max_abs_diff_velocity")?, num("max_abs_velocity")?, num("abs_diff_loss")?);
    let (dsv, sscale) = (num("max_abs_diff_sampler_velocity")?, num("max_abs_sampler_velocity")?);
    for (what, d, s) in [("training", dv, scale), ("sampler step", dsv, sscale)] {
        if d.is_nan() || d > TOLERANCE * s.max(1.0) {
            return Err(BenchError::Failed(format!("candle and PyTorch disagree on the {what} velocity: max |v_candle - v_torch| = {d:.3e} (|v| up to {s:.2}); not timing a different model")));
        }
    }
    let (tf, tfb, ts) = (num("forward_s")?, num("forward_backward_s")?, num("sampler_step_s")?);
    let version = r["torch"].as_str().unwrap_or("?");
    Ok(vec![
        BenchRow::new("pytorch", "max |v_candle - v_torch| / max |v|", &config, dv / scale, "x")
            .anchor(TOLERANCE, "tolerance")
            .detail(format!("loss {:.6} vs {:.6} (diff {dl:.2e}); torch {version}", loss.to_scalar::<f32>()?, num("loss")?)),
        BenchRow::new("pytorch", "PyTorch f32 matmul 1024^3", format!("{threads} threads"), num("matmul_gflops")?, "GFLOP/s")
            .detail("compare with candle's matmul in the compute section"),
        BenchRow::new("pytorch", "candle/PyTorch time, forward", &config, fwd / tf, "x").anchor(1.0, "parity").detail(format!("{fwd:.4} s vs {tf:.4} s")),
        BenchRow::new("pytorch", "candle/PyTorch time, forward+backward", &config, fwd_bwd / tfb, "x")
            .anchor(1.0, "parity")
            .detail(format!("{fwd_bwd:.4} s vs {tfb:.4} s")),
        BenchRow::new("pytorch", "candle/PyTorch time, sampler step", format!("default model, G={g} after one cached context, {threads} threads"), step / ts, "x")
            .anchor(1.0, "parity")
            .detail(format!("{step:.4} s vs {ts:.4} s; sampler velocities equal within {:.1e} of |v|", dsv / sscale.max(1.0))),
    ])
}
