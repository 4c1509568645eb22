//! Pre-training on ground-truth clips: examples, batches and one step.
//!
//! An example is one target clip of a ground-truth video with its context:
//! the video's first frame and the `context_frames` frames just before the
//! target (the first frame repeated where the video is shorter), and the
//! target frames' actions. Which clip of which video, the noise and the
//! times of a step all derive from (seed, step), so a resumed run repeats
//! the uninterrupted one exactly.

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::codec::{encode_frames, patchify, VideoCodec};
use crate::config::ModelConfig;
use crate::flow::{flow_matching_loss, seeded_noise};
use crate::model::{action_input, WorldModel};
use crate::optim::Optimizer;
use crate::params::Params;
use crate::Result;

/// A ground-truth video: frames (u8 RGB HWC; frame 0 is the first frame,
/// then 4 frames per window) and one action mask per window.
#[derive(Debug, Clone)]
pub struct Video {
    pub frames: Vec<u8>,
    pub actions: Vec<u8>,
}

/// A synthetic video for tests of example building: every byte of frame i
/// is 20 i + `seed` (wrapping), window w holds the action bit w mod 8.
pub fn synthetic_video(frame_size: usize, windows: usize, seed: u8) -> Video {
    let fsize = frame_size * frame_size * 3;
    Video {
        frames: (0..(1 + windows * FRAMES_PER_WINDOW) * fsize).map(|i| ((i / fsize) as u8).wrapping_mul(20).wrapping_add(seed)).collect(),
        actions: (0..windows).map(|w| 1u8 << (w % 8)).collect(),
    }
}

/// Tokens of one example.
pub struct Example {
    pub context: Vec<f32>,
    pub target: Vec<f32>,
    /// One action mask per target frame.
    pub masks: Vec<u8>,
}

/// Frames per action window.
pub const FRAMES_PER_WINDOW: usize = 4;

/// Clips (targets) a video holds.
pub fn clips_in(video: &Video, cfg: &ModelConfig) -> usize {
    video.actions.len() * FRAMES_PER_WINDOW / cfg.frames_per_clip
}

/// The example for clip `n` (1-based) of a video.
pub fn example(video: &Video, n: usize, cfg: &ModelConfig, codec: &dyn VideoCodec) -> Result<Example> {
    let s = cfg.frame_size;
    let fsize = s * s * 3;
    let frame = |i: usize| &video.frames[i * fsize..(i + 1) * fsize];
    let first_target = 1 + (n - 1) * cfg.frames_per_clip;
    let ctx_frames: Vec<u8> = cfg.context_frame_indices(first_target).into_iter().flat_map(|i| frame(i).to_vec()).collect();
    let target: Vec<u8> = (first_target..first_target + cfg.frames_per_clip).flat_map(|i| frame(i).to_vec()).collect();
    let tok = |rgb: &[u8]| -> Result<Vec<f32>> { Ok(patchify(&encode_frames(codec, rgb, s)?, codec.geometry().channels, s, cfg.patch)) };
    Ok(Example {
        context: tok(&ctx_frames)?,
        target: tok(&target)?,
        masks: (0..cfg.frames_per_clip)
            .map(|j| video.actions[(first_target - 1 + j) / FRAMES_PER_WINDOW])
            .collect(),
    })
}

/// Pre-training settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PretrainConfig {
    pub seed: u64,
    pub batch: usize,
    pub lr: f64,
    pub warmup_steps: u64,
    /// Share of examples trained without their action (for guidance).
    pub action_dropout: f64,
    /// Timestep shift of the training times (as the sampler's).
    pub time_shift: f64,
}

impl Default for PretrainConfig {
    fn default() -> Self {
        PretrainConfig { seed: 0, batch: 32, lr: 2e-3, warmup_steps: 100, action_dropout: 0.1, time_shift: 1.0 }
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    /// False when the loss or gradient was not finite: nothing was applied.
    pub applied: bool,
}

/// One pre-training step on a batch drawn for `step`.
pub fn pretrain_step(
    model: &WorldModel,
    params: &Params,
    opt: &mut Optimizer,
    videos: &[Video],
    codec: &dyn VideoCodec,
    cfg: &PretrainConfig,
    step: u64,
) -> Result<StepReport> {
    let mc = &model.cfg;
    let dev = params.device().clone();
    let mut rng = ChaCha8Rng::seed_from_u64(wc_rl::seeds::derive_seed(cfg.seed, step, wc_rl::seeds::SeedDomain::Optimize, 0, 0));
    let mut ctx = Vec::new();
    let mut tgt = Vec::new();
    let mut masks = Vec::new();
    let mut dropped = Vec::new();
    let mut times = Vec::new();
    for _ in 0..cfg.batch {
        let v = &videos[rng.random_range(0..videos.len())];
        let n = rng.random_range(1..=clips_in(v, mc));
        let ex = example(v, n, mc, codec)?;
        ctx.extend(ex.context);
        tgt.extend(ex.target);
        masks.push(ex.masks);
        dropped.push(rng.random::<f64>() < cfg.action_dropout);
        let u: f64 = rng.random();
        times.push(training_time(u, cfg.time_shift));
    }
    let (b, tpf, tok) = (cfg.batch, mc.tokens_per_frame(), mc.token_dim());
    let context = Tensor::from_vec(ctx, (b, mc.context_slots() * tpf, tok), &dev)?;
    let x = Tensor::from_vec(tgt, (b, mc.frames_per_clip * tpf, tok), &dev)?;
    let eps = seeded_noise(rng.random(), &[b, mc.frames_per_clip * tpf, tok], &dev)?;
    let actions = action_input(&masks, &dropped, &dev)?;
    let loss = flow_matching_loss(model, &context, &x, &eps, &times, &actions)?;
    apply_loss(params, opt, &loss, cfg, step)
}

/// A training time from a uniform draw `u`, shifted toward noise as the
/// sampler's times are.
pub fn training_time(u: f64, shift: f64) -> f32 {
    (shift * u / (1.0 + (shift - 1.0) * u)) as f32
}

/// The rest of a pre-training step once its loss is computed: backward,
/// the gradient norm, the warmed-up learning rate, and the optimizer step
/// unless the loss or gradient is not finite.
pub fn apply_loss(params: &Params, opt: &mut Optimizer, loss: &Tensor, cfg: &PretrainConfig, step: u64) -> Result<StepReport> {
    let loss_value = loss.to_scalar::<f32>()? as f64;
    let grads = loss.backward()?;
    let grad_norm = Optimizer::grad_norm(params, &grads)?;
    let lr = cfg.lr * ((step + 1) as f64 / cfg.warmup_steps.max(1) as f64).min(1.0);
    if !loss_value.is_finite() || !grad_norm.is_finite() {
        return Ok(StepReport { loss: loss_value, grad_norm, lr, applied: false });
    }
    let applied = opt.apply(params, &grads, lr)?;
    Ok(StepReport { loss: loss_value, grad_norm, lr, applied })
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::codec::PixelCodec;
    use crate::optim::OptimConfig;

    fn video(cfg: &ModelConfig, windows: usize, seed: u8) -> Video {
        synthetic_video(cfg.frame_size, windows, seed)
    }

    #[test]
    fn example_context_is_first_frame_then_recent_frames_padded_with_the_first() {
        let cfg = ModelConfig::tiny(); // 2 context frames, 4 frames per clip
        let v = video(&cfg, 2, 0);
        let codec = PixelCodec;
        let ex = example(&v, 1, &cfg, &codec).unwrap();
        let per_frame = cfg.tokens_per_frame() * cfg.token_dim();
        let value_of = |tokens: &[f32], f: usize| tokens[f * per_frame];
        // frame i has every byte = 20 i; latent = 20 i / 127.5 - 1
        let lat = |i: usize| (20 * i) as f32 / 127.5 - 1.0;
        assert_eq!([value_of(&ex.context, 0), value_of(&ex.context, 1), value_of(&ex.context, 2)], [lat(0), lat(0), lat(0)]);
        assert_eq!(value_of(&ex.target, 0), lat(1));
        assert_eq!(ex.masks, vec![1, 1, 1, 1]);
        let ex2 = example(&v, 2, &cfg, &codec).unwrap();
        assert_eq!([value_of(&ex2.context, 0), value_of(&ex2.context, 1), value_of(&ex2.context, 2)], [lat(0), lat(3), lat(4)]);
        assert_eq!(value_of(&ex2.target, 3), lat(8));
        assert_eq!(ex2.masks, vec![2, 2, 2, 2]);
    }

    #[test]
    fn steps_lower_the_loss_and_are_reproducible() {
        let cfg = ModelConfig::tiny();
        let videos: Vec<Video> = (0..4).map(|s| video(&cfg, 2, s * 7)).collect();
        let pc = PretrainConfig { batch: 4, lr: 3e-3, warmup_steps: 1, ..Default::default() };
        let run = |steps: u64| -> (Vec<f64>, wc_schemas::TensorSet) {
            let mut p = Params::new(1, &Device::Cpu);
            let m = WorldModel::new(&cfg, &mut p).unwrap();
            let mut opt = Optimizer::new(OptimConfig::default(), &p).unwrap();
            let losses = (0..steps).map(|s| pretrain_step(&m, &p, &mut opt, &videos, &PixelCodec, &pc, s).unwrap().loss).collect();
            (losses, p.to_tensor_set().unwrap())
        };
        let (losses, w1) = run(30);
        let first: f64 = losses[..5].iter().sum::<f64>() / 5.0;
        let last: f64 = losses[25..].iter().sum::<f64>() / 5.0;
        assert!(last < 0.7 * first, "loss {first} -> {last}");
        let (_, w2) = run(30);
        assert_eq!(w1, w2, "same seed, same steps, same bytes");
    }
}
