//! Measurements of the model's speed on this machine, each side by side in
//! one process: the f32 matmul peak, a sampler step and a training step.
//! (The prefix cache and the rest of the iteration: the wc-bench crate.)

use std::time::Instant;

use candle_core::{Device, Tensor};

use crate::config::ModelConfig;
use crate::flow::{flow_matching_loss, sampler_velocity, seeded_noise};
use crate::model::{action_input, WorldModel};
use crate::params::Params;
use crate::Result;

/// Multiply-adds of one forward pass, counted from the config: every
/// linear layer (2 FLOPs per multiply-add) and the attention products.
pub fn forward_flops(cfg: &ModelConfig, batch: usize, with_context: bool) -> f64 {
    let d = cfg.d_model as f64;
    let tpf = cfg.tokens_per_frame() as f64;
    let nc = cfg.context_slots() as f64 * tpf;
    let nt = cfg.frames_per_clip as f64 * tpf;
    let per_token_layer = 2.0 * (3.0 * d * d + d * d + 2.0 * cfg.mlp_ratio as f64 * d * d);
    let io = 2.0 * cfg.token_dim() as f64 * d * 2.0; // patch in + out
    let target = nt * (cfg.layers as f64 * per_token_layer + io) + cfg.layers as f64 * 2.0 * 2.0 * nt * (nc + nt) * d;
    let context = nc * (cfg.layers as f64 * per_token_layer + io / 2.0) + cfg.layers as f64 * 2.0 * 2.0 * nc * nc * d;
    batch as f64 * (target + if with_context { context } else { 0.0 })
}

/// The matrix products (m, k, n) of the linear layers of one training
/// forward at batch `batch` (with the context): the projections of every
/// block and the patch embedding and output, on the target's and the
/// context's tokens. Their backward is the same products twice more.
pub fn linear_products(cfg: &ModelConfig, batch: usize) -> Vec<(usize, usize, usize)> {
    let (d, h) = (cfg.d_model, cfg.mlp_ratio * cfg.d_model);
    let tpf = cfg.tokens_per_frame();
    let mut out = Vec::new();
    for rows in [batch * cfg.frames_per_clip * tpf, batch * cfg.context_slots() * tpf] {
        out.push((rows, cfg.token_dim(), d));
        for _ in 0..cfg.layers {
            out.extend([(rows, d, 3 * d), (rows, d, d), (rows, d, h), (rows, h, d)]);
        }
    }
    out.push((batch * cfg.frames_per_clip * tpf, d, cfg.token_dim()));
    out
}

/// Seconds of the products of [`linear_products`], forward and backward
/// (each (m, k, n) also as (m, n, k) and (k, m, n)), alone: the floor the
/// training step's matrix work sets at these shapes.
pub fn linear_products_seconds(cfg: &ModelConfig, batch: usize, dev: &Device) -> Result<(f64, f64)> {
    let mut pairs = Vec::new();
    let mut flops = 0.0;
    for (m, k, n) in linear_products(cfg, batch) {
        for (a, b, c) in [(m, k, n), (m, n, k), (k, m, n)] {
            pairs.push((seeded_noise(8, &[a, b], dev)?, seeded_noise(9, &[b, c], dev)?));
            flops += 2.0 * (a * b * c) as f64;
        }
    }
    let s = time_it(7, || {
        for (a, b) in &pairs {
            a.matmul(b)?;
        }
        Ok(())
    })?;
    Ok((s, flops))
}

/// Seconds per call of `f`, the median of `reps` after one warm-up.
pub fn time_it(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(|a, b| a.total_cmp(b));
    Ok(t[t.len() / 2])
}

/// f32 matmul throughput (GFLOP/s) of an n x n x n product: the best of
/// 15 runs, since a peak is what the machine can do (a median moved by 15%
/// between runs on a shared machine, and every "% of peak" with it).
pub fn matmul_gflops(n: usize, device: &Device) -> Result<f64> {
    let a = seeded_noise(1, &[n, n], device)?;
    let b = seeded_noise(2, &[n, n], device)?;
    a.matmul(&b)?;
    let mut best = f64::INFINITY;
    for _ in 0..15 {
        let s = Instant::now();
        a.matmul(&b)?;
        best = best.min(s.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n as f64).powi(3) / best / 1e9)
}

/// One row of the model benchmark.
#[derive(Debug, Clone)]
pub struct BenchRow {
    pub name: String,
    pub seconds: f64,
    pub gflops: Option<f64>,
    pub note: String,
}

/// Run the model benchmark at `cfg` with G candidates, T steps, training batch B.
pub fn model_bench(cfg: &ModelConfig, g: usize, train_batch: usize, dev: &Device) -> Result<Vec<BenchRow>> {
    let dev = dev.clone();
    let mut p = Params::new(0, &dev);
    let m = WorldModel::new(cfg, &mut p)?;
    let (tpf, tok) = (cfg.tokens_per_frame(), cfg.token_dim());
    let ctx = seeded_noise(3, &[1, cfg.context_slots() * tpf, tok], &dev)?;
    let noise = seeded_noise(4, &[g, cfg.frames_per_clip * tpf, tok], &dev)?;
    let masks = vec![vec![1u8; cfg.frames_per_clip]; g];
    let acts = action_input(&masks, &vec![false; g], &dev)?;
    let peak = matmul_gflops(1024, &dev)?;
    let mut rows = vec![BenchRow { name: "f32 matmul 1024^3 (machine peak, best of 15)".into(), seconds: 2.0 * 1024f64.powi(3) / peak / 1e9, gflops: Some(peak), note: "candle + gemm x86-v4".into() }];

    let cache = m.encode_context(&ctx)?.detach();
    let t = Tensor::full(0.5f32, g, &dev)?;
    // What the sampler runs per step (`flow::sampler_velocity`).
    let step = time_it(5, || {
        sampler_velocity(&m, &cache, &noise, &t, &acts)?;
        Ok(())
    })?;
    let f = forward_flops(cfg, g, false);
    rows.push(BenchRow { name: format!("sampler step, batch G={g}, cached prefix"), seconds: step, gflops: Some(f / step / 1e9), note: format!("{:.0}% of peak", 100.0 * f / step / 1e9 / peak) });

    let b = train_batch;
    let bctx = seeded_noise(5, &[b, cfg.context_slots() * tpf, tok], &dev)?;
    let x = seeded_noise(6, &[b, cfg.frames_per_clip * tpf, tok], &dev)?;
    let eps = seeded_noise(7, &[b, cfg.frames_per_clip * tpf, tok], &dev)?;
    let bacts = action_input(&vec![vec![1u8; cfg.frames_per_clip]; b], &vec![false; b], &dev)?;
    let times: Vec<f32> = (0..b).map(|i| (i as f32 + 0.5) / b as f32).collect();
    let fwd = time_it(7, || {
        flow_matching_loss(&m, &bctx, &x, &eps, &times, &bacts)?;
        Ok(())
    })?;
    let fwd_bwd = time_it(7, || {
        flow_matching_loss(&m, &bctx, &x, &eps, &times, &bacts)?.backward()?;
        Ok(())
    })?;
    let ff = forward_flops(cfg, b, true);
    rows.push(BenchRow { name: format!("training forward, batch {b}"), seconds: fwd, gflops: Some(ff / fwd / 1e9), note: format!("{:.0}% of peak", 100.0 * ff / fwd / 1e9 / peak) });
    rows.push(BenchRow {
        name: format!("training forward+backward, batch {b}"),
        seconds: fwd_bwd,
        gflops: Some(3.0 * ff / fwd_bwd / 1e9),
        note: format!("{:.0}% of peak; backward/forward {:.1}x", 100.0 * 3.0 * ff / fwd_bwd / 1e9 / peak, (fwd_bwd - fwd) / fwd),
    });
    let (lin, lin_flops) = linear_products_seconds(cfg, b, &dev)?;
    rows.push(BenchRow {
        name: format!("its linear layers' products alone, batch {b}"),
        seconds: lin,
        gflops: Some(lin_flops / lin / 1e9),
        note: format!("{:.0}% of peak: the ceiling at these shapes; {:.0}% of forward+backward's time", 100.0 * lin_flops / lin / 1e9 / peak, 100.0 * lin / fwd_bwd),
    });
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flop_count_of_a_hand_sized_config() {
        // d = 4, 1 layer, mlp 1, 1 token per frame (frame = patch), token dim 3*2*2 = 12,
        // context 2 slots, 1 target frame.
        let cfg = ModelConfig { frame_size: 2, patch: 2, frames_per_clip: 1, context_frames: 1, d_model: 4, layers: 1, heads: 1, mlp_ratio: 1, ..Default::default() };
        // per token-layer: 2*(3*16 + 16 + 2*16) = 192; io = 2*12*4*2 = 192
        // target (nt=1, nc=2): 1*(192 + 192) + 4*1*3*4 = 432
        // context: 2*(192 + 96) + 4*4*4 = 640
        assert_eq!(forward_flops(&cfg, 1, false), 432.0);
        assert_eq!(forward_flops(&cfg, 2, true), 2.0 * (432.0 + 640.0));
    }

    #[test]
    fn the_linear_products_are_the_linear_part_of_the_flop_count() {
        // Without attention products (1 token, no context: the attention
        // term is 2*2*1*(nc + 1)*d), the linear products' FLOPs equal
        // forward_flops's linear part.
        let cfg = ModelConfig { frame_size: 2, patch: 2, frames_per_clip: 1, context_frames: 1, d_model: 4, layers: 1, heads: 1, mlp_ratio: 1, ..Default::default() };
        let linear: f64 = linear_products(&cfg, 2).iter().map(|(m, k, n)| 2.0 * (m * k * n) as f64).sum();
        // target: 1*(192 + 192) per batch row, context 2*(192 + 96).
        assert_eq!(linear, 2.0 * (384.0 + 576.0));
    }
}
