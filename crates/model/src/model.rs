//! The world model: a causal, action-conditioned clip transformer.
//!
//! Tokens are patches of latent frames. The context (slot 0: the world
//! prompt's first frame; slots 1..=K: the K most recent frames) is encoded
//! with full attention among its own tokens and a fixed "clean" condition;
//! its per-layer keys and values form the [`ContextCache`]. The noisy target
//! clip's tokens attend to the cache and to each other, conditioned (adaLN)
//! per frame on the flow time t and the frame's action (8 basic actions as a
//! multi-hot vector, plus a "dropped" flag for classifier-free guidance).
//! The action also enters every token's input.
//!
//! Because context tokens never attend to target tokens, the cache computed
//! once per prefix is exact for every candidate and every sampler step.

use candle_core::{DType, Tensor};

use crate::config::{ModelConfig, Prediction, ACTION_INPUTS};
use crate::attention::attention;
use crate::fused;
use crate::nn::{timestep_embedding, Linear};
use crate::params::{Init, Params};
use crate::{ModelError, Result};

const NORM_EPS: f64 = 1e-6;
/// Smallest t used when turning a clean prediction into a velocity.
pub const MIN_T: f64 = 0.05;
const TIME_DIM: usize = 64;
/// Standard deviation of the modulation and output weights at init.
const ADA_INIT_STD: f64 = 0.01;

/// An encoded context: per layer, the q, k, v projections of the
/// context's tokens, [B, tokens, 3 d] (the target's tokens read its keys
/// and values).
#[derive(Debug, Clone)]
pub struct ContextCache {
    pub qkv: Vec<Tensor>,
}

impl ContextCache {
    pub fn batch(&self) -> usize {
        self.qkv.first().map_or(0, |t| t.dims()[0])
    }

    /// The same projections without the graph that computed them (for
    /// sampling, where no gradient flows).
    pub fn detach(&self) -> ContextCache {
        ContextCache { qkv: self.qkv.iter().map(Tensor::detach).collect() }
    }
}

struct Block {
    qkv: Linear,
    proj: Linear,
    fc1: Linear,
    fc2: Linear,
    /// adaLN: condition -> (shift1, scale1, gate1, shift2, scale2, gate2).
    ada: Linear,
    heads: usize,
}

impl Block {
    fn new(cfg: &ModelConfig, p: &mut Params, name: &str) -> Result<Self> {
        let d = cfg.d_model;
        Ok(Block {
            qkv: Linear::new(p, &format!("{name}.attn.qkv"), d, 3 * d, None, true)?,
            proj: Linear::new(p, &format!("{name}.attn.proj"), d, d, None, true)?,
            fc1: Linear::new(p, &format!("{name}.mlp.fc1"), d, cfg.mlp_ratio * d, None, true)?,
            fc2: Linear::new(p, &format!("{name}.mlp.fc2"), cfg.mlp_ratio * d, d, None, true)?,
            // Near-zero modulation: every block starts close to the identity
            // (adaLN-zero), yet gradients reach every weight from step one.
            ada: Linear::new(p, &format!("{name}.ada"), d, 6 * d, Some(Init::Normal(ADA_INIT_STD)), true)?,
            heads: cfg.heads,
        })
    }

    /// One block. `mods`: [6d] for every token, or [B, F, 6d], a row per
    /// frame of the tokens [B, F T, d] (see `fused::norm_modulate`). With `cache` (the
    /// context's q, k, v projections of this block), the tokens also attend
    /// to the context's keys and values. Returns the output and this
    /// block's q, k, v projections [B, N, 3d].
    fn forward(&self, x: &Tensor, mods: &Tensor, cache: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        // mods: shift, scale, gate of attention, then of the MLP.
        let h = fused::norm_modulate(x, mods, 0, 1, NORM_EPS)?;
        let qkv = self.qkv.forward(&h)?;
        let att = attention(&qkv, cache, self.heads)?;
        let x = fused::gated_residual(x, &self.proj.forward(&att)?, mods, 2)?;
        let h2 = fused::norm_modulate(&x, mods, 3, 4, NORM_EPS)?;
        let mlp = self.fc2.forward(&fused::gelu(&self.fc1.forward(&h2)?)?)?;
        let x = fused::gated_residual(&x, &mlp, mods, 5)?;
        Ok((x, qkv))
    }
}

/// The world model.
pub struct WorldModel {
    pub cfg: ModelConfig,
    patch_in: Linear,
    pos: Tensor,
    slots: Tensor,
    context_cond: Tensor,
    time1: Linear,
    time2: Linear,
    action: Linear,
    blocks: Vec<Block>,
    final_ada: Linear,
    patch_out: Linear,
    /// The dtype of the parameters: inputs are cast to it, outputs come
    /// back as f32.
    dtype: DType,
}

impl WorldModel {
    /// Build the model, creating its parameters in `p`.
    pub fn new(cfg: &ModelConfig, p: &mut Params) -> Result<Self> {
        cfg.validate().map_err(ModelError::Config)?;
        let d = cfg.d_model;
        let tok = cfg.token_dim();
        Ok(WorldModel {
            cfg: cfg.clone(),
            patch_in: Linear::new(p, "patch_in", tok, d, None, true)?,
            pos: p.get("pos_embed", &[cfg.tokens_per_frame(), d], Init::Normal(0.02))?,
            slots: p.get("slot_embed", &[cfg.context_slots() + cfg.frames_per_clip, d], Init::Normal(0.02))?,
            context_cond: p.get("context_cond", &[d], Init::Normal(0.02))?,
            time1: Linear::new(p, "time.fc1", TIME_DIM, d, None, true)?,
            time2: Linear::new(p, "time.fc2", d, d, None, true)?,
            action: Linear::new(p, "action_embed", ACTION_INPUTS, d, Some(Init::Normal(0.5)), true)?,
            blocks: (0..cfg.layers).map(|i| Block::new(cfg, p, &format!("blocks.{i}"))).collect::<Result<_>>()?,
            final_ada: Linear::new(p, "final.ada", d, 2 * d, Some(Init::Normal(ADA_INIT_STD)), true)?,
            patch_out: Linear::new(p, "final.proj", d, tok, Some(Init::Normal(ADA_INIT_STD)), true)?,
            dtype: p.dtype(),
        })
    }

    /// Embed tokens [B, frames * tpf, token_dim] of slots `first_slot..`.
    fn embed(&self, tokens: &Tensor, first_slot: usize) -> Result<Tensor> {
        let (b, n, tok) = tokens.dims3()?;
        let tpf = self.cfg.tokens_per_frame();
        let frames = n / tpf;
        let d = self.cfg.d_model;
        let x = self.patch_in.forward(&tokens.reshape((b, n, tok))?)?;
        // Position in the frame plus the frame's slot: a [frames, tpf, d]
        // table added to every batch row (its gradient one column sum).
        let slot = self.slots.narrow(0, first_slot, frames)?.unsqueeze(1)?;
        let table = self.pos.unsqueeze(0)?.broadcast_add(&slot)?;
        let x = fused::add_bias(&x.reshape((b, n * d))?, &table.flatten_all()?)?;
        Ok(x.reshape((b, n, d))?)
    }

    /// Per-frame values [B, F, k] repeated to every token: [B, F * tpf, k].
    fn per_token(&self, v: &Tensor) -> Result<Tensor> {
        fused::repeat_rows(v, self.cfg.tokens_per_frame())
    }

    /// Encode the context tokens [B, context_slots * tpf, token_dim].
    pub fn encode_context(&self, context: &Tensor) -> Result<ContextCache> {
        let expected = self.cfg.context_slots() * self.cfg.tokens_per_frame();
        if context.dim(1)? != expected {
            return Err(ModelError::Config(format!("context has {} tokens, the model needs {expected}", context.dim(1)?)));
        }
        let mut x = self.embed(&context.to_dtype(self.dtype)?, 0)?;
        let c = fused::silu(&self.context_cond)?;
        let mut cache = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let mods = block.ada.forward(&c.unsqueeze(0)?)?.squeeze(0)?;
            let (next, qkv) = block.forward(&x, &mods, None)?;
            x = next;
            cache.push(qkv);
        }
        Ok(ContextCache { qkv: cache })
    }

    /// Predicted velocity of the noisy target clip.
    ///
    /// `z`: [B, frames_per_clip * tpf, token_dim] at times `t`: [B];
    /// `actions`: [B, frames_per_clip, 9] (multi-hot + dropped flag).
    /// The cache may have batch 1 (shared by all B) or batch B.
    pub fn velocity(&self, cache: &ContextCache, z: &Tensor, t: &Tensor, actions: &Tensor) -> Result<Tensor> {
        let b = z.dim(0)?;
        let f = self.cfg.frames_per_clip;
        // The network runs in the parameters' dtype; the velocity is formed
        // in f32 from its output (a no-op cast for an f32 model).
        let dt = self.dtype;
        let a = self.action.forward(&actions.to_dtype(dt)?)?; // [B, F, d]
        let temb = self.time2.forward(&fused::silu(&self.time1.forward(&timestep_embedding(&t.to_dtype(dt)?, TIME_DIM)?)?)?)?; // [B, d]
        let cond = fused::silu(&a.broadcast_add(&temb.unsqueeze(1)?)?)?; // [B, F, d]
        let mut x = self.embed(&z.to_dtype(dt)?, self.cfg.context_slots())?.add(&self.per_token(&a)?)?;
        for (block, qkv) in self.blocks.iter().zip(&cache.qkv) {
            // One modulation row per frame, for the frame's tokens.
            x = block.forward(&x, &block.ada.forward(&cond)?, Some(qkv))?.0;
        }
        let x = fused::norm_modulate(&x, &self.final_ada.forward(&cond)?, 0, 1, NORM_EPS)?;
        let out = self.patch_out.forward(&x)?.to_dtype(DType::F32)?;
        debug_assert_eq!(out.dims(), &[b, f * self.cfg.tokens_per_frame(), self.cfg.token_dim()]);
        match self.cfg.prediction {
            Prediction::Velocity => Ok(out),
            // v = (z - x_hat) / t, with t kept away from 0.
            Prediction::Clean => {
                let t = t.clamp(MIN_T, 1.0)?.reshape((b, 1, 1))?;
                Ok((z - out)?.broadcast_div(&t)?)
            }
        }
    }
}

/// Actions [B][F] masks -> the model's action input [B, F, 9]; `dropped`
/// rows get no action and the dropped flag (the unconditional branch).
pub fn action_input(masks: &[Vec<u8>], dropped: &[bool], device: &candle_core::Device) -> Result<Tensor> {
    let b = masks.len();
    let f = masks.first().map_or(0, |m| m.len());
    let mut v = vec![0.0f32; b * f * ACTION_INPUTS];
    for (i, row) in masks.iter().enumerate() {
        for (j, m) in row.iter().enumerate() {
            let base = (i * f + j) * ACTION_INPUTS;
            if dropped[i] {
                v[base + 8] = 1.0;
            } else {
                for a in 0..8 {
                    if m & (1 << a) != 0 {
                        v[base + a] = 1.0;
                    }
                }
            }
        }
    }
    Ok(Tensor::from_vec(v, (b, f, ACTION_INPUTS), device)?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::flow::{flow_matching_loss, sample, sample_recomputing, seeded_noise, SamplerConfig};

    fn setup(seed: u64) -> (WorldModel, Params) {
        let mut p = Params::new(seed, &Device::Cpu);
        let m = WorldModel::new(&ModelConfig::tiny(), &mut p).unwrap();
        (m, p)
    }

    fn inputs(m: &WorldModel, b: usize) -> (Tensor, Tensor, Tensor, Tensor) {
        let c = &m.cfg;
        let (tpf, tok) = (c.tokens_per_frame(), c.token_dim());
        let dev = Device::Cpu;
        let ctx = seeded_noise(1, &[b, c.context_slots() * tpf, tok], &dev).unwrap();
        let x = seeded_noise(2, &[b, c.frames_per_clip * tpf, tok], &dev).unwrap();
        let eps = seeded_noise(3, &[b, c.frames_per_clip * tpf, tok], &dev).unwrap();
        let masks: Vec<Vec<u8>> = (0..b).map(|i| vec![1u8 << (i % 8); c.frames_per_clip]).collect();
        let acts = action_input(&masks, &vec![false; b], &dev).unwrap();
        (ctx, x, eps, acts)
    }

    #[test]
    fn one_backward_reaches_every_parameter_with_a_finite_nonzero_gradient() {
        let (m, p) = setup(0);
        let (ctx, x, eps, acts) = inputs(&m, 3);
        let loss = flow_matching_loss(&m, &ctx, &x, &eps, &[0.9, 0.5, 0.2], &acts).unwrap();
        let grads = loss.backward().unwrap();
        for (name, var) in p.vars() {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
            let v: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
            assert!(v.iter().all(|x| x.is_finite()), "{name}: non-finite gradient");
            assert!(v.iter().any(|x| *x != 0.0), "{name}: gradient is all zero");
        }
    }

    #[test]
    fn same_seed_same_bytes() {
        let (m1, p1) = setup(7);
        let (m2, p2) = setup(7);
        assert_eq!(p1.to_tensor_set().unwrap(), p2.to_tensor_set().unwrap());
        let (ctx, x, eps, acts) = inputs(&m1, 2);
        let l1: f32 = flow_matching_loss(&m1, &ctx, &x, &eps, &[0.3, 0.7], &acts).unwrap().to_scalar().unwrap();
        let l2: f32 = flow_matching_loss(&m2, &ctx, &x, &eps, &[0.3, 0.7], &acts).unwrap().to_scalar().unwrap();
        assert_eq!(l1.to_bits(), l2.to_bits());
    }

    #[test]
    fn cached_prefix_sampler_matches_recomputing_the_prefix() {
        let (m, _p) = setup(3);
        let g = 4;
        let c = &m.cfg;
        let (tpf, tok) = (c.tokens_per_frame(), c.token_dim());
        let dev = Device::Cpu;
        let ctx = seeded_noise(11, &[1, c.context_slots() * tpf, tok], &dev).unwrap();
        let noise = seeded_noise(12, &[g, c.frames_per_clip * tpf, tok], &dev).unwrap();
        let masks = vec![vec![0b0100_0001u8; c.frames_per_clip]; g];
        for guidance in [1.0, 2.5] {
            let cfg = SamplerConfig { steps: 5, shift: 3.0, guidance };
            let cache = m.encode_context(&ctx).unwrap();
            let fast: Vec<f32> = sample(&m, &cache, &noise, &masks, &cfg).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let slow: Vec<f32> = sample_recomputing(&m, &ctx, &noise, &masks, &cfg).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let max = fast.iter().zip(&slow).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(max < 1e-4, "guidance {guidance}: cached and recomputed samples differ by {max}");
        }
    }

    /// The sampler's velocity in parts of 4 rows, at the default model's
    /// size, against one batch: with a shared context and a context per
    /// row, at a sampler's batch of 8 (and 16, guided) and at 5 (a part of
    /// 1 row), within 1e-4; and the same bits whatever the thread count.
    /// (Whether a part sums its products in the same blocks as the whole
    /// batch is the matrix library's choice for the machine: on the
    /// project's machines parts of 4 rows gave the same bits, and the
    /// default run the same bytes.)
    #[test]
    fn the_samplers_velocity_in_parts_equals_one_batch() {
        use crate::flow::sampler_velocity;
        use crate::velocity::EncodedContext;
        let mut p = Params::new(4, &Device::Cpu);
        let m = WorldModel::new(&ModelConfig::default(), &mut p).unwrap();
        for (name, var) in p.vars() {
            if name.ends_with("ada.weight") || name == "final.proj.weight" {
                var.set(&(var.as_tensor() * 20.0).unwrap()).unwrap();
            }
        }
        let bits = |v: &Tensor| -> Vec<u32> { v.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect() };
        let pools: Vec<_> = [1, 3].iter().map(|n| rayon::ThreadPoolBuilder::new().num_threads(*n).build().unwrap()).collect();
        for b in [5, 8, 16] {
            let (ctx, x, _, acts) = inputs(&m, b);
            let t = Tensor::from_vec((0..b).map(|i| (i as f32 + 0.5) / b as f32).collect(), b, &Device::Cpu).unwrap();
            for rows in [1, b] {
                let cache = m.encode_context(&ctx.narrow(0, 0, rows).unwrap()).unwrap().detach();
                let whole = m.velocity(&cache, &x, &t, &acts).unwrap();
                let parts: Vec<Tensor> = pools.iter().map(|pool| pool.install(|| sampler_velocity(&m, &cache, &x, &t, &acts)).unwrap()).collect();
                assert_eq!(bits(&parts[0]), bits(&parts[1]), "batch {b}, context batch {rows}: the thread count changed the bits");
                let diff = (&whole - &parts[0]).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
                assert!(diff < 1e-4, "batch {b}, context batch {rows}: the parts differ from one batch by {diff}");
                assert_eq!(cache.rows(2, 3).unwrap().batch(), if rows == 1 { 1 } else { 3 });
            }
        }
    }

    #[test]
    fn the_action_changes_the_prediction() {
        let (m, p) = setup(5);
        // Give the modulation weights some size, as training would.
        for (name, var) in p.vars() {
            if name.ends_with("ada.weight") || name == "final.proj.weight" {
                var.set(&(var.as_tensor() * 20.0).unwrap()).unwrap();
            }
        }
        let (ctx, x, _, _) = inputs(&m, 1);
        let cache = m.encode_context(&ctx).unwrap();
        let t = Tensor::new(&[0.5f32], &Device::Cpu).unwrap();
        let dev = Device::Cpu;
        let f = m.cfg.frames_per_clip;
        let v = |mask: u8| -> Vec<f32> {
            let a = action_input(&[vec![mask; f]], &[false], &dev).unwrap();
            m.velocity(&cache, &x, &t, &a).unwrap().flatten_all().unwrap().to_vec1().unwrap()
        };
        let (fw, tl) = (v(1), v(64));
        let diff = fw.iter().zip(&tl).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff > 1e-3, "forward and turn-left give the same velocity ({diff})");
    }

    /// The bf16 sampling copy of a policy: its network runs in bf16 and
    /// gives the f32 model's velocities and samples within bf16 precision;
    /// an f32 copy computes the same bits.
    #[test]
    fn a_bf16_copy_samples_like_the_f32_model_within_bf16_precision() {
        use crate::velocity::Policy;
        let p = Policy::<WorldModel>::fresh(&ModelConfig::tiny(), 9, &Device::Cpu).unwrap();
        let (ctx, _, _, _) = inputs(&p.model, 1);
        let c = &p.model.cfg;
        let g = 3;
        let noise = seeded_noise(13, &[g, c.frames_per_clip * c.tokens_per_frame(), c.token_dim()], &Device::Cpu).unwrap();
        let masks = vec![vec![0b0000_0101u8; c.frames_per_clip]; g];
        let cfg = SamplerConfig { steps: 4, shift: 3.0, guidance: 2.0 };
        let run = |q: &Policy<WorldModel>| -> Vec<f32> {
            let cache = q.model.encode_context(&ctx).unwrap();
            let x = sample(&q.model, &cache, &noise, &masks, &cfg).unwrap();
            assert_eq!(x.dtype(), DType::F32, "samples come back as f32");
            x.flatten_all().unwrap().to_vec1().unwrap()
        };
        let f32_run = run(&p);
        assert_eq!(run(&p.to_dtype(DType::F32).unwrap()), f32_run, "an f32 copy is the same model");
        let bf16 = p.to_dtype(DType::BF16).unwrap();
        assert!(bf16.params.vars().values().all(|v| v.dtype() == DType::BF16));
        let bf16_run = run(&bf16);
        let scale = f32_run.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = f32_run.iter().zip(&bf16_run).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        // bf16 keeps 8 bits of mantissa (relative 2^-8 = 0.4% per value).
        assert!(diff > 0.0, "bf16 computed something else than f32");
        assert!(diff < 0.03 * scale, "bf16 samples differ by {diff} at scale {scale}");
    }
}
