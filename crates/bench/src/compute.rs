//! The prefix cache and the model's compute efficiency.
//!
//! Prefix cache: G candidates sampled with the context encoded once vs
//! re-encoded at every step, at a short and a long context; the anchor is
//! the FLOP ratio of the two (from the config's FLOP count), i.e. what a
//! compute-bound machine would save. Compute: achieved GFLOP/s of the
//! sampler step, the training forward and forward+backward against the f32
//! matmul peak measured in the same run (wc_model::bench).

use candle_core::Device;
use wc_model::bench::{forward_flops, model_bench};
use wc_model::flow::{sample, sample_recomputing, seeded_noise, SamplerConfig};
use wc_model::params::Params;
use wc_model::{ModelConfig, WorldModel};

use crate::{median_seconds, BenchRow, Result};

/// FLOPs of sampling G candidates for T steps with the cache (one context
/// encoding) and without (one per step).
pub fn cache_flops(cfg: &ModelConfig, g: usize, steps: usize) -> (f64, f64) {
    let target = forward_flops(cfg, g, false);
    let context = forward_flops(cfg, 1, true) - forward_flops(cfg, 1, false);
    let cached = steps as f64 * target + context;
    let recomputed = steps as f64 * (target + g as f64 * context);
    (cached, recomputed)
}

/// Prefix cache rows at each context length (frames of memory).
pub fn cache_rows(base: &ModelConfig, g: usize, steps: usize, context_frames: &[usize], dev: &Device) -> Result<Vec<BenchRow>> {
    let dev = dev.clone();
    let mut rows = Vec::new();
    for &cf in context_frames {
        let cfg = ModelConfig { context_frames: cf, ..base.clone() };
        let mut p = Params::new(0, &dev);
        let m = WorldModel::new(&cfg, &mut p)?;
        let (tpf, tok) = (cfg.tokens_per_frame(), cfg.token_dim());
        let ctx = seeded_noise(3, &[1, cfg.context_slots() * tpf, tok], &dev)?;
        let noise = seeded_noise(4, &[g, cfg.frames_per_clip * tpf, tok], &dev)?;
        let masks = vec![vec![1u8; cfg.frames_per_clip]; g];
        let sc = SamplerConfig { steps, shift: 3.0, guidance: 1.0 };
        let cached = median_seconds(3, || {
            let c = m.encode_context(&ctx)?;
            sample(&m, &c, &noise, &masks, &sc)?;
            Ok(())
        })?;
        let recomputed = median_seconds(3, || {
            sample_recomputing(&m, &ctx, &noise, &masks, &sc)?;
            Ok(())
        })?;
        let (fc, fr) = cache_flops(&cfg, g, steps);
        rows.push(
            BenchRow::new(
                "prefix_cache",
                format!("recomputed/cached time, {} context tokens", cfg.context_slots() * tpf),
                format!("G={g} T={steps} context_frames={cf}"),
                recomputed / cached,
                "x",
            )
            .anchor(fr / fc, "FLOP ratio (compute-bound saving)")
            .detail(format!("{cached:.4} s cached vs {recomputed:.4} s recomputed")),
        );
    }
    Ok(rows)
}

/// GFLOP/s rows from the model benchmark, as a share of the matmul peak.
pub fn efficiency_rows(cfg: &ModelConfig, g: usize, batch: usize, dev: &Device) -> Result<Vec<BenchRow>> {
    let measured = model_bench(cfg, g, batch, dev)?;
    let peak = measured.first().and_then(|r| r.gflops).unwrap_or(f64::NAN);
    let mut rows = vec![BenchRow::new("compute", "f32 matmul 1024^3 (the machine's peak here)", "candle + gemm x86-v4, all threads", peak, "GFLOP/s")];
    for r in measured.iter().skip(1) {
        if let Some(gf) = r.gflops {
            rows.push(
                BenchRow::new("compute", format!("{} / peak", r.name), format!("default model, G={g}, batch {batch}"), 100.0 * gf / peak, "%")
                    .anchor(100.0, "the f32 matmul peak measured above")
                    .detail(format!("{gf:.1} GFLOP/s, {:.4} s; {}", r.seconds, r.note)),
            );
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_saves_the_context_encodings_of_every_step_and_candidate() {
        let cfg = ModelConfig::tiny();
        let (c, r) = cache_flops(&cfg, 4, 10);
        let target = forward_flops(&cfg, 4, false);
        let context = forward_flops(&cfg, 1, true) - forward_flops(&cfg, 1, false);
        assert!(context > 0.0);
        assert_eq!(c, 10.0 * target + context);
        assert_eq!(r - c, (10.0 * 4.0 - 1.0) * context);
    }
}
