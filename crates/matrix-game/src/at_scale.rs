//! Matrix-Game 2.0's two hot paths at any size, with random weights: what a
//! GPU run of the `matrix_game` backend spends its time and memory on.
//!
//! - [`rollout_chunk`]: G candidates of one causal block generated from a
//!   context block cached once (batch 1, shared): the few-step sampler
//!   (`causal_sampler::generate_block`: three denoising passes, then the
//!   clean pass that commits), as rollout runs it per group.
//! - [`nft_step`]: one NFT optimizer step on a minibatch: the policy's
//!   teacher-forced block-causal forward of [clean context block, noisy
//!   target block] (the way Matrix-Game trains), the old policy's forward,
//!   the NFT loss (`wc_model::nft::nft_loss`), backward, and Muon/AdamW on
//!   f32 weights. With `dtype` bf16 the network computes in bf16 from the
//!   f32 weights (mixed precision).
//!
//! Inputs are random (latents, CLIP-sized image tokens, idle actions): the
//! cost does not depend on their values.

use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use wc_model::flow::loss_weight;
use wc_model::nft::nft_loss;
use wc_model::optim::{OptimConfig, Optimizer};
use wc_model::params::Params;
use wc_model::Result;
use wc_wan::causal_sampler::{few_step_schedule, generate_block};
use wc_wan::{Actions, CausalSpec, KvCache, WanTransformerConfig, Weights};

use crate::model::build_network;
use crate::wan_error;

/// What to time: the network, one block's latent grid (latent frames x
/// height x width), the batch (G candidates, or the minibatch) and the
/// network's dtype.
#[derive(Debug, Clone)]
pub struct AtScale {
    pub cfg: WanTransformerConfig,
    pub block: [usize; 3],
    pub batch: usize,
    pub dtype: DType,
    /// Image tokens the cross-attention reads (Matrix-Game 2.0: 257 CLIP tokens).
    pub image_tokens: usize,
}

/// Time of the parts of one measurement.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Building the model(s) (random or seeded weights).
    pub build: Duration,
    /// The measured work.
    pub run: Duration,
}

impl AtScale {
    fn spec(&self) -> CausalSpec {
        // Matrix-Game 2.0: blocks of 3 latent frames, a window of 2 blocks, no sink.
        CausalSpec { frames_per_block: self.block[0], local_window_frames: 2 * self.block[0], sink_frames: 0, first_block_frames: 0 }
    }

    /// Idle keyboard and mouse inputs for `frames` latent frames (or none
    /// for a network without action modules).
    fn idle_actions(&self, rows: usize, frames: usize, device: &Device) -> Result<Option<(Tensor, Tensor)>> {
        Ok(match &self.cfg.action {
            None => None,
            Some(a) => {
                let n = 1 + a.time_compression * (frames - 1);
                Some((Tensor::zeros((rows, n, a.keyboard_dim_in), self.dtype, device)?, Tensor::zeros((rows, n, a.mouse_dim_in), self.dtype, device)?))
            }
        })
    }

    fn latent(&self, rows: usize, channels: usize, frames: usize, device: &Device) -> Result<Tensor> {
        let [_, h, w] = self.block;
        Ok(Tensor::randn(0f32, 1.0, (rows, channels, frames, h, w), device)?.to_dtype(self.dtype)?)
    }
}

fn actions(a: &Option<(Tensor, Tensor)>) -> Option<Actions<'_>> {
    a.as_ref().map(|(keyboard, mouse)| Actions { keyboard, mouse })
}

/// Force the device to finish `t` (a GPU runs asynchronously).
fn settle(t: &Tensor) -> Result<()> {
    t.flatten_all()?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    Ok(())
}

/// G (= `s.batch`) candidates of one block after a cached context block,
/// through Matrix-Game 2.0's three-step sampler. Returns the time and the
/// candidates' clean latents [G, C_out, F, H, W].
pub fn rollout_chunk(s: &AtScale, device: &Device) -> Result<(Timing, Tensor)> {
    let started = Instant::now();
    let net = wc_wan::WanTransformer::new(&s.cfg, &Weights::random(device), s.dtype).map_err(wan_error)?;
    let build = started.elapsed();
    let (f, out, cin) = (s.block[0], s.cfg.out_channels, s.cfg.in_channels);
    let spec = s.spec();
    let image = Tensor::randn(0f32, 1.0, (1, s.image_tokens, s.cfg.text_dim), device)?.to_dtype(s.dtype)?;
    let started = Instant::now();
    // The context block, encoded once for the group.
    let mut cache = KvCache::new();
    let ctx_actions = s.idle_actions(1, f, device)?;
    let t0 = Tensor::zeros((1, f), DType::F32, device)?;
    net.forward_and_commit(&s.latent(1, cin, f, device)?, &t0, &image, actions(&ctx_actions), &spec, &mut cache).map_err(wan_error)?;
    // G candidates of the next block from that cache.
    let schedule = few_step_schedule(&[1000, 666, 333], 5.0).map_err(wan_error)?;
    let noises: Vec<Tensor> = (0..schedule.len()).map(|_| s.latent(s.batch, out, f, device)).collect::<Result<_>>()?;
    let cond = (cin > out).then(|| s.latent(s.batch, cin - out, f, device)).transpose()?;
    let cand_actions = s.idle_actions(s.batch, 2 * f, device)?;
    let image_g = image.broadcast_as((s.batch, s.image_tokens, s.cfg.text_dim))?.contiguous()?;
    let x = generate_block(&net, &schedule, &noises, cond.as_ref(), &image_g, actions(&cand_actions), &spec, &mut cache).map_err(wan_error)?;
    settle(&x)?;
    Ok((Timing { build, run: started.elapsed() }, x))
}

/// One NFT optimizer step on a minibatch of `s.batch` (candidate, timestep)
/// samples. Returns the time and the loss.
pub fn nft_step(s: &AtScale, device: &Device) -> Result<(Timing, f64)> {
    let started = Instant::now();
    let mut params = Params::new(1, device);
    let policy = build_network(&s.cfg, &mut params, s.dtype)?;
    let mut old_params = Params::new(2, device);
    let old = build_network(&s.cfg, &mut old_params, s.dtype)?;
    let mut opt = Optimizer::new(OptimConfig::default(), &params)?;
    let build = started.elapsed();
    let (b, f, out, cin) = (s.batch, s.block[0], s.cfg.out_channels, s.cfg.in_channels);
    let spec = s.spec();
    let image = Tensor::randn(0f32, 1.0, (b, s.image_tokens, s.cfg.text_dim), device)?.to_dtype(s.dtype)?;
    let x = s.latent(b, cin, 2 * f, device)?;
    let times: Vec<f32> = (0..b).map(|i| 0.2 + 0.6 * i as f32 / b.max(2) as f32).collect();
    let per_frame: Vec<f32> = times.iter().flat_map(|t| std::iter::repeat_n(0.0, f).chain(std::iter::repeat_n(t * 1000.0, f))).collect();
    let t = Tensor::from_vec(per_frame, (b, 2 * f), device)?;
    let acts = s.idle_actions(b, 2 * f, device)?;
    let target = Tensor::randn(0f32, 1.0, (b, out, f, s.block[1], s.block[2]), device)?;
    let r: Vec<f32> = (0..b).map(|i| if i % 2 == 0 { 0.9 } else { 0.1 }).collect();
    let weights: Vec<f32> = times.iter().map(|t| loss_weight(*t as f64) as f32).collect();
    let started = Instant::now();
    let v = |net: &wc_wan::WanTransformer| -> Result<Tensor> {
        let y = net.forward_block_causal(&x, &t, &image, actions(&acts), &spec).map_err(wan_error)?;
        Ok(y.narrow(2, f, f)?.to_dtype(DType::F32)?)
    };
    let v_old = v(&old)?.detach();
    let v_theta = v(&policy)?;
    let loss = nft_loss(&v_theta.flatten_from(1)?, &v_old.flatten_from(1)?, &target.flatten_from(1)?, &r, &weights, 1.0)?;
    let grads = loss.backward()?;
    opt.apply(&params, &grads, 1e-5)?;
    settle(params.vars().values().next().expect("a parameter").as_tensor())?;
    Ok((Timing { build, run: started.elapsed() }, loss.to_scalar::<f32>()? as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> AtScale {
        AtScale { cfg: WanTransformerConfig::tiny_matrix_game(), block: [3, 4, 4], batch: 2, dtype: DType::F32, image_tokens: 5 }
    }

    #[test]
    fn a_rollout_chunk_and_an_nft_step_run_at_a_tiny_size() {
        let s = tiny();
        let (_, x) = rollout_chunk(&s, &Device::Cpu).unwrap();
        assert_eq!(x.dims(), &[2, 4, 3, 4, 4]);
        // Each candidate from its own noise.
        let d = (x.get(0).unwrap() - x.get(1).unwrap()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d > 1e-3, "{d}");
        let (_, loss) = nft_step(&s, &Device::Cpu).unwrap();
        assert!(loss.is_finite() && loss > 0.0, "{loss}");
    }

    #[test]
    fn the_nft_step_moves_the_f32_weights_of_a_bf16_network() {
        // Built the same way, the step's loss reaches every weight the
        // network reads; checked on the step's own parts.
        let s = AtScale { dtype: DType::BF16, ..tiny() };
        let mut params = Params::new(1, &Device::Cpu);
        let net = build_network(&s.cfg, &mut params, s.dtype).unwrap();
        assert!(params.vars().values().all(|v| v.dtype() == DType::F32));
        let before = params.to_tensor_set().unwrap();
        let x = s.latent(1, s.cfg.in_channels, 3, &Device::Cpu).unwrap();
        let t = Tensor::full(500f32, (1, 3), &Device::Cpu).unwrap();
        let image = Tensor::randn(0f32, 1.0, (1, 5, s.cfg.text_dim), &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
        let acts = s.idle_actions(1, 3, &Device::Cpu).unwrap();
        let y = net.forward_block_causal(&x, &t, &image, actions(&acts), &s.spec()).unwrap();
        assert_eq!(y.dtype(), DType::BF16);
        let grads = y.to_dtype(DType::F32).unwrap().sqr().unwrap().mean_all().unwrap().backward().unwrap();
        let mut opt = Optimizer::new(OptimConfig::default(), &params).unwrap();
        opt.apply(&params, &grads, 1e-3).unwrap();
        assert_ne!(params.to_tensor_set().unwrap(), before);
        assert!(grads.get(params.vars()["head.head.weight"].as_tensor()).is_some());
    }
}
