//! Do two devices compute the same thing? The same model, seeds and inputs
//! on the CPU and on another device (a GPU): a velocity, a guided sample and
//! one NFT optimizer step, compared within stated f32 tolerances.
//!
//! `worldcompass bench devices --device cuda:0` prints the table; the GPU
//! check (`pipelines/gpu/gpu-check.sh`) runs it first.

use candle_core::{Device, Tensor};

use crate::flow::{sample, seeded_noise, SamplerConfig};
use crate::nft::{nft_step, NftBatch, NftSettings};
use crate::optim::{OptimConfig, Optimizer};
use crate::velocity::{Policy, VelocityModel};
use crate::{ModelConfig, Result, WorldModel};

/// One quantity computed on both devices.
#[derive(Debug, Clone, PartialEq)]
pub struct Agreement {
    pub name: &'static str,
    /// Largest |cpu - other| over the quantity's values.
    pub max_abs_diff: f64,
    /// Largest |cpu| (the scale the difference is judged against).
    pub scale: f64,
    /// Allowed max_abs_diff / max(1, scale).
    pub tolerance: f64,
}

impl Agreement {
    pub fn passes(&self) -> bool {
        self.max_abs_diff <= self.tolerance * self.scale.max(1.0)
    }
}

/// What one device computed.
struct Computed {
    velocity: Vec<f32>,
    sample: Vec<f32>,
    /// The same guided sample from the bf16 sampling copy of the policy.
    sample_bf16: Vec<f32>,
    loss: Vec<f32>,
    weights: Vec<f32>,
}

fn host(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?.flatten_all()?.to_vec1::<f32>()?)
}

fn compute(cfg: &ModelConfig, dev: &Device) -> Result<Computed> {
    let policy = Policy::fresh(cfg, 7, dev)?;
    let old = Policy::fresh(cfg, 8, dev)?;
    let (tpf, tok, f) = (cfg.tokens_per_frame(), cfg.token_dim(), cfg.frames_per_clip);
    let b = 2;
    let context = seeded_noise(1, &[b, cfg.context_slots() * tpf, tok], dev)?;
    let z = seeded_noise(2, &[b, f * tpf, tok], dev)?;
    let masks: Vec<Vec<u8>> = vec![vec![0b0000_0001; f], vec![0b0100_0100; f]];
    let t = [0.3f32, 0.8];
    let cache = policy.model.encode_context(&context)?;
    let actions = policy.model.action_input(&masks, &[false, false], dev)?;
    let velocity = VelocityModel::velocity(&policy.model, &cache, &z, &Tensor::new(&t, dev)?, &actions)?;
    let sampler = SamplerConfig { steps: 8, shift: 3.0, guidance: 2.5 };
    let sampled = sample(&policy.model, &cache, &z, &masks, &sampler)?;
    let bf16 = policy.to_dtype(candle_core::DType::BF16)?;
    let sampled_bf16 = sample(&bf16.model, &bf16.model.encode_context(&context)?, &z, &masks, &sampler)?;
    let batch = NftBatch {
        context,
        x: seeded_noise(3, &[b, f * tpf, tok], dev)?,
        eps: seeded_noise(4, &[b, f * tpf, tok], dev)?,
        t: t.to_vec(),
        masks,
        r: vec![0.9, 0.2],
    };
    let mut opt = Optimizer::new(OptimConfig::default(), &policy.params)?;
    let step = nft_step::<WorldModel>(&policy, &old, None, &mut opt, &batch, &NftSettings { beta: 1.0, lr: 1e-3, guidance: 1.0 })?;
    let weights = policy.params.vars().values().map(|v| host(v.as_tensor())).collect::<Result<Vec<_>>>()?.concat();
    Ok(Computed { velocity: host(&velocity)?, sample: host(&sampled)?, sample_bf16: host(&sampled_bf16)?, loss: vec![step.loss as f32], weights })
}

fn agreement(name: &'static str, cpu: &[f32], other: &[f32], tolerance: f64) -> Agreement {
    let max_abs_diff = cpu.iter().zip(other).map(|(a, b)| (*a as f64 - *b as f64).abs()).fold(0.0, f64::max);
    let max_abs_diff = if cpu.len() == other.len() { max_abs_diff } else { f64::INFINITY };
    let scale = cpu.iter().map(|a| (*a as f64).abs()).fold(0.0, f64::max);
    Agreement { name, max_abs_diff, scale, tolerance }
}

/// The model of `cfg` on the CPU and on `other`: velocity, guided sample (8
/// steps) and the loss and weights after one NFT step, each with its
/// tolerance (f32; a GPU's reduction order differs from the CPU's); and the
/// guided sample of the bf16 sampling copy on `other` against the CPU's f32
/// one (bf16 precision).
pub fn compare_with_cpu(cfg: &ModelConfig, other: &Device) -> Result<Vec<Agreement>> {
    let (a, b) = (compute(cfg, &Device::Cpu)?, compute(cfg, other)?);
    Ok(vec![
        agreement("velocity", &a.velocity, &b.velocity, 1e-4),
        agreement("guided sample, 8 steps", &a.sample, &b.sample, 1e-3),
        // The run's `[run] dtype = "bf16"`: against the f32 sample on the CPU.
        // bf16 keeps 8 mantissa bits; over 8 guided steps the default model's
        // sample drifts by about 3% of its scale (2.9e-2 on the CPU).
        agreement("guided sample in bf16", &a.sample, &b.sample_bf16, 6e-2),
        agreement("NFT loss", &a.loss, &b.loss, 1e-4),
        agreement("weights after one NFT step", &a.weights, &b.weights, 1e-4),
    ])
}

/// The comparison as the `bench devices` table: one line per quantity with
/// its difference, scale, tolerance and verdict.
pub fn comparison_table(rows: &[Agreement]) -> String {
    use std::fmt::Write;
    let mut out = format!("{:<28} {:>14} {:>12} {:>10}  result\n", "quantity", "max |diff|", "max |cpu|", "tolerance");
    for r in rows {
        let verdict = if r.passes() { "ok" } else { "OUTSIDE THE TOLERANCE" };
        let _ = writeln!(out, "{:<28} {:>14.3e} {:>12.3e} {:>10.0e}  {verdict}", r.name, r.max_abs_diff, r.scale, r.tolerance);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_agrees_with_itself_exactly() {
        let rows = compare_with_cpu(&ModelConfig::tiny(), &Device::Cpu).unwrap();
        assert_eq!(rows.len(), 5);
        for r in &rows {
            assert!(r.scale > 0.0 && r.passes(), "{r:?}");
            if r.name.contains("bf16") {
                // f32 on the CPU against the bf16 copy: close, not equal.
                assert!(r.max_abs_diff > 0.0, "{r:?}");
            } else {
                assert_eq!(r.max_abs_diff, 0.0, "{r:?}");
            }
        }
    }

    #[test]
    fn a_difference_beyond_the_tolerance_fails() {
        let r = agreement("x", &[1.0, 10.0], &[1.0, 10.01], 1e-4);
        assert!((r.max_abs_diff - 0.01).abs() < 1e-5 && r.scale == 10.0);
        assert!(!r.passes(), "0.01 > 1e-4 * 10");
        assert!(agreement("x", &[0.5], &[0.50005], 1e-4).passes(), "scale below 1 is judged against 1");
        assert!(!agreement("x", &[1.0], &[], 1e-4).passes(), "a missing value never passes");
    }
}
