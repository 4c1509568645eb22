//! Flow matching: training loss and sampler.
//!
//! Convention: z_t = (1 - t) x + t eps, t = 1 is noise; the model predicts
//! the velocity v = eps - x. Training weights each sample by min(1, 4 t^2),
//! which is the clean-clip loss ||x_hat - x||^2 weighted by min(1/t^2, 4):
//! low-noise steps, where the target is nearly the input, count less.
//!
//! Written once over [`VelocityModel`]: every model of the project trains
//! and samples through these functions.

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use wc_rl::schedule::sampler_times;

use crate::velocity::{ContextInput, EncodedContext, VelocityModel};
use crate::Result;

/// Per-sample weight of the velocity loss at time t.
pub fn loss_weight(t: f64) -> f64 {
    (4.0 * t * t).min(1.0)
}

/// The flow-matching loss of a batch: clean target tokens `x` [B, N, P],
/// noise `eps` (same shape), times `t` (one per sample), context tokens and
/// action input. Returns the scalar loss.
pub fn flow_matching_loss<M: VelocityModel>(
    model: &M,
    context: &M::Input,
    x: &Tensor,
    eps: &Tensor,
    t: &[f32],
    actions: &Tensor,
) -> Result<Tensor> {
    let dev = x.device();
    let b = t.len();
    let tt = Tensor::from_vec(t.to_vec(), (b, 1, 1), dev)?;
    let z = (x.broadcast_mul(&(1.0 - &tt)?)? + eps.broadcast_mul(&tt)?)?;
    let v = (eps - x)?;
    let cache = model.encode_context(context)?;
    let v_hat = model.velocity(&cache, &z, &Tensor::from_vec(t.to_vec(), b, dev)?, actions)?;
    let w: Vec<f32> = t.iter().map(|t| loss_weight(*t as f64) as f32).collect();
    let w = Tensor::from_vec(w, (b, 1, 1), dev)?;
    let per = (v_hat - v)?.sqr()?.broadcast_mul(&w)?;
    Ok(per.mean_all()?)
}

/// Sampler settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    pub steps: usize,
    pub shift: f64,
    /// Classifier-free guidance over the action (1 = off).
    pub guidance: f64,
}

impl Default for SamplerConfig {
    /// The command line's defaults: 10 steps, shift 3, no guidance.
    fn default() -> Self {
        SamplerConfig { steps: 10, shift: 3.0, guidance: 1.0 }
    }
}

/// Classifier-free guidance: v_u + g (v_c - v_u).
pub fn guide(v_cond: &Tensor, v_uncond: &Tensor, g: f64) -> Result<Tensor> {
    Ok((v_uncond + ((v_cond - v_uncond)? * g)?)?)
}

/// Whether guidance scale `g` guides at all (1 = off: one forward, the
/// conditional prediction alone).
pub fn is_guided(g: f64) -> bool {
    (g - 1.0).abs() > 1e-12
}

/// [`guide`] over the output of one forward of a doubled batch [2B, ...]:
/// the first B rows with the action, the last B without.
pub fn guide_halves(out: &Tensor, g: f64) -> Result<Tensor> {
    let b = out.dim(0)? / 2;
    guide(&out.narrow(0, 0, b)?, &out.narrow(0, b, b)?, g)
}

/// Rows of the batch per part in [`sampler_velocity`].
pub const SAMPLER_PART_ROWS: usize = 4;

/// One sampler step's velocity of a batch `z` [B, ...] (no gradient is
/// taken through it).
///
/// On the CPU the batch is cut into parts of [`SAMPLER_PART_ROWS`] rows,
/// and each part runs the whole network as one rayon task. At a sampler's
/// batch (G = 8 clips, 512 tokens of the default model) every op is a few
/// tens of microseconds of work, so handing each op's pieces to the other
/// threads and waking them cost as much as the op: on 2 cores the default
/// model's step took 0.011-0.013 s as one batch, 0.008 s in parts of 4
/// rows, 0.010 s in parts of 2 and 0.012-0.014 s in parts of 1.
///
/// The parts do not depend on the thread count, so neither do the bits
/// (tested). Rows do not interact, but a part's matrix products may sum in
/// other blocks than the whole batch's (the matrix library chooses by row
/// count): within 1e-4 (tested). On the project's machines parts of 4 rows
/// gave the bits of one batch, and the default run the same bytes.
/// Elsewhere (a GPU, a batch of at most one part) it is one call of the
/// model.
pub fn sampler_velocity<M>(model: &M, context: &M::Context, z: &Tensor, t: &Tensor, actions: &Tensor) -> Result<Tensor>
where
    M: VelocityModel + Sync,
    M::Context: Sync,
{
    let b = z.dim(0)?;
    if !z.device().is_cpu() || b <= SAMPLER_PART_ROWS {
        return model.velocity(context, z, t, actions);
    }
    let starts: Vec<usize> = (0..b).step_by(SAMPLER_PART_ROWS).collect();
    let outs = starts
        .par_iter()
        .map(|&start| {
            let len = SAMPLER_PART_ROWS.min(b - start);
            model.velocity(&context.rows(start, len)?, &z.narrow(0, start, len)?, &t.narrow(0, start, len)?, &actions.narrow(0, start, len)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&outs, 0)?)
}

/// The sampler: clips by Euler integration from `noise` [G, ...] at t = 1
/// to t = 0, all G together (each step's velocity by [`sampler_velocity`]:
/// on the CPU in parts of the batch), with one encoded context (batch 1 or G)
/// reused for every step; `masks` are each clip's per-frame actions. The
/// result stays on the noise's device.
pub fn sample<M>(model: &M, cache: &M::Context, noise: &Tensor, masks: &[Vec<u8>], cfg: &SamplerConfig) -> Result<Tensor>
where
    M: VelocityModel + Sync,
    M::Context: Sync,
{
    let g = noise.dim(0)?;
    let dev = noise.device();
    let (actions, uncond) = (&model.action_input(masks, &vec![false; g], dev)?, &model.action_input(masks, &vec![true; g], dev)?);
    let times = sampler_times(cfg.steps, cfg.shift);
    let guided = is_guided(cfg.guidance);
    // Sampling needs no gradients: detached, each step's graph is freed
    // instead of being kept alive by the next x (memory grew with T).
    let cache = &cache.detach();
    let (acts, cache2) = if guided {
        (Tensor::cat(&[actions, uncond], 0)?, cache.doubled()?)
    } else {
        (actions.clone(), cache.clone())
    };
    let mut x = noise.clone();
    for w in times.windows(2) {
        let (t, t_next) = (w[0], w[1]);
        let v = if guided {
            let both = Tensor::cat(&[&x, &x], 0)?;
            let tt = Tensor::full(t as f32, 2 * g, dev)?;
            let out = sampler_velocity(model, &cache2, &both, &tt, &acts)?;
            guide_halves(&out, cfg.guidance)?
        } else {
            sampler_velocity(model, &cache2, &x, &Tensor::full(t as f32, g, dev)?, &acts)?
        };
        x = (x + (v * (t_next - t))?)?.detach();
    }
    Ok(x)
}

/// The same sampler without the prefix cache: the context is re-encoded for
/// every candidate at every step (what clip-level rollout avoids). Used to
/// check the cache and to measure what it saves.
pub fn sample_recomputing<M: VelocityModel>(model: &M, context: &M::Input, noise: &Tensor, masks: &[Vec<u8>], cfg: &SamplerConfig) -> Result<Tensor> {
    let g = noise.dim(0)?;
    let dev = noise.device();
    let (actions, uncond) = (&model.action_input(masks, &vec![false; g], dev)?, &model.action_input(masks, &vec![true; g], dev)?);
    // The batch-1 context once per candidate.
    let ctx_g = ContextInput::concat(&vec![context; g])?;
    let mut x = noise.clone();
    for w in sampler_times(cfg.steps, cfg.shift).windows(2) {
        let (t, t_next) = (w[0], w[1]);
        let tt = Tensor::full(t as f32, g, dev)?;
        let vc = model.velocity(&model.encode_context(&ctx_g)?, &x, &tt, actions)?;
        let v = if is_guided(cfg.guidance) {
            let vu = model.velocity(&model.encode_context(&ctx_g)?, &x, &tt, uncond)?;
            guide(&vc, &vu, cfg.guidance)?
        } else {
            vc
        };
        x = (x + (v * (t_next - t))?)?.detach();
    }
    Ok(x)
}

/// Standard-normal noise from a seed (ChaCha8: the same on every machine).
pub fn seeded_noise(seed: u64, shape: &[usize], device: &Device) -> Result<Tensor> {
    use rand::SeedableRng;
    use rand_distr::Distribution;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rand_distr::StandardNormal.sample(&mut rng)).collect();
    Ok(Tensor::from_vec(v, shape, device)?)
}
