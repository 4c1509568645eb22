//! The `world` model backend: the candle world model in the five stages.
//!
//! A clip is `frames_per_clip` latent frames (the codec's channels-first
//! layout; stored as safetensors `[.., F, C, H, W]`). The context of clip n
//! is the world prompt's first frame and the `context_frames` most recent
//! frames before it (first frame + prefix clips), exactly as in
//! pre-training.
//!
//! - prefix: clips 1..n-1 of every group of the shard with the old policy,
//!   one clip at a time, all groups of the shard in one batch.
//! - rollout: per group, the prefix context is encoded once into the
//!   model's cache and the G candidates are sampled from it as one batch,
//!   each from its own seeded noise.
//! - reward: candidates are decoded to frames; the pose estimator reads each
//!   window (the frame before it and its last frame) and the metric maps its
//!   motion to rotation and translation labels; VQ scores every
//!   `vq_frame_stride`-th frame.
//! - sample-level mode (`rollout.mode = "sample"`, the Table 2 ablation):
//!   no prefix; rollout generates G whole sequences per group (all G
//!   advanced one clip at a time as a batch, each clip's context the
//!   candidate's own earlier clips), reward judges every window of a
//!   sequence and scores all its frames, optimize trains every clip of each
//!   selected sequence.
//! - optimize: the NFT loss (`wc_model::nft`) on every selected candidate at
//!   a random subset of the sampler's timesteps, v_old from the old (EMA)
//!   policy, Muon/AdamW in minibatches, a step with a non-finite loss or
//!   gradient skipped and reported; then the EMA update of the old policy.

use candle_core::{Device, Tensor};
use wc_model::codec::{patchify, unpatchify, PixelCodec, VideoCodec};
use wc_model::flow::{sample, SamplerConfig};
pub use wc_model::nft::{nft_step, nft_velocities, NftBatch, NftSettings, NftStep};
use wc_model::optim::{OptimConfig, Optimizer};
use wc_model::params::Params;
use wc_model::{ModelConfig, WorldModel};
use wc_store::CommittedSet;

use crate::error::StageError;
use crate::layout;
use crate::runner::RunContext;

/// A policy (or old policy) of the world backend.
pub type WorldPolicy = wc_model::Policy<WorldModel>;

/// The run's model config, from the init commit.
pub fn model_config(ctx: &RunContext, init: &CommittedSet) -> Result<ModelConfig, StageError> {
    let path = layout::model_config_file();
    serde_json::from_slice(&init.read(&path)?).map_err(|e| StageError::artifact(ctx.store.uri_of(&path), e))
}

/// Load `policy` / `old_policy` of checkpoint `k` (listed in `set`).
pub fn load_policy(ctx: &RunContext, cfg: &ModelConfig, set: &CommittedSet, k: u64, name: &str) -> Result<WorldPolicy, StageError> {
    let path = layout::checkpoint_file(k, name);
    let t = wc_schemas::read_any(&ctx.store.uri_of(&path), &set.read(&path)?)?;
    WorldPolicy::from_tensors(cfg, &t, ctx.device()?)
        .map_err(|e| StageError::artifact(ctx.store.uri_of(&path), e))
}

/// The optimizer of checkpoint `k`, over `params`.
pub fn load_optimizer(ctx: &RunContext, set: &CommittedSet, k: u64, params: &Params) -> Result<Optimizer, StageError> {
    let path = layout::checkpoint_file(k, "optimizer");
    let mut opt = Optimizer::new(optim_config(ctx), params)?;
    let t = wc_schemas::read_any(&ctx.store.uri_of(&path), &set.read(&path)?)?;
    opt.load(&t).map_err(|e| StageError::artifact(ctx.store.uri_of(&path), e))?;
    Ok(opt)
}

/// Write checkpoint `k` (policy, old policy, optimizer state) into
/// `pending`.
pub fn save_checkpoint(ctx: &RunContext, pending: &mut wc_store::PendingCommit, k: u64, policy: &Params, old: &Params, opt: &Optimizer) -> Result<(), StageError> {
    for (name, t) in [("policy", policy.to_tensor_set()?), ("old_policy", old.to_tensor_set()?), ("optimizer", opt.to_tensor_set()?)] {
        let p = layout::checkpoint_file(k, name);
        pending.write(&p, wc_schemas::write_any(&ctx.store.uri_of(&p), &t)?)?;
    }
    Ok(())
}

/// The old policy's EMA update, old <- eta old + (1 - eta) policy; refused
/// if it gives non-finite weights.
pub fn ema(old: &Params, policy: &Params, eta: f64) -> Result<(), StageError> {
    old.ema_toward(policy, eta)?;
    if !old.all_finite()? {
        return Err(StageError::invalid("old policy", "the EMA update gave non-finite weights; nothing was committed"));
    }
    Ok(())
}

/// The optimizer settings of the run.
pub fn optim_config(ctx: &RunContext) -> OptimConfig {
    OptimConfig { lr: ctx.cfg.optimize.lr, muon_momentum: ctx.cfg.optimize.momentum, ..Default::default() }
}

/// The sampler settings of the run.
pub fn sampler_config(ctx: &RunContext) -> SamplerConfig {
    let r = &ctx.cfg.rollout;
    SamplerConfig { steps: r.sampler_steps as usize, shift: r.timestep_shift, guidance: r.guidance }
}

/// Values in one latent frame.
pub fn frame_len(cfg: &ModelConfig) -> usize {
    PixelCodec.geometry().channels * cfg.frame_size * cfg.frame_size
}

/// The latent shape of one clip: [F, C, H, W].
pub fn clip_shape(cfg: &ModelConfig) -> Vec<usize> {
    vec![cfg.frames_per_clip, PixelCodec.geometry().channels, cfg.frame_size, cfg.frame_size]
}

/// Encode a u8 HWC frame into a latent frame.
pub fn encode_frame(cfg: &ModelConfig, rgb: &[u8]) -> Result<Vec<f32>, StageError> {
    Ok(wc_model::codec::encode_frames(&PixelCodec, rgb, cfg.frame_size)?)
}

/// Decode latent frames into u8 HWC frames (concatenated).
pub fn decode_frames(cfg: &ModelConfig, latents: &[f32]) -> Result<Vec<u8>, StageError> {
    Ok(wc_model::codec::decode_frames(&PixelCodec, latents, cfg.frame_size)?)
}

/// Tokens (patches) of latent frames.
pub fn clip_tokens(cfg: &ModelConfig, latents: &[f32]) -> Vec<f32> {
    patchify(latents, PixelCodec.geometry().channels, cfg.frame_size, cfg.patch)
}

/// Latent frames of tokens: the inverse of [`clip_tokens`], for any number
/// of whole frames.
pub fn latents_of_tokens(cfg: &ModelConfig, tokens: &[f32]) -> Vec<f32> {
    unpatchify(tokens, PixelCodec.geometry().channels, cfg.frame_size, cfg.patch)
}

/// Context tokens of the clip that follows `prefix` (latent frames, any
/// number of whole frames): the first frame, then the `context_frames`
/// most recent frames of [first, prefix...] (the first frame where there
/// are fewer).
pub fn context_tokens(cfg: &ModelConfig, first: &[f32], prefix: &[f32]) -> Vec<f32> {
    let fl = frame_len(cfg);
    let frame = |i: usize| if i == 0 { first } else { &prefix[(i - 1) * fl..i * fl] };
    let lat: Vec<f32> = cfg.context_frame_indices(1 + prefix.len() / fl).into_iter().flat_map(|i| frame(i).to_vec()).collect();
    clip_tokens(cfg, &lat)
}

/// Per-frame action masks of a clip from its per-window masks.
pub fn frame_masks(cfg: &ModelConfig, windows: &[u8]) -> Vec<u8> {
    crate::backend::pixels::frame_masks(cfg.frames_per_clip, windows)
}

/// Seeded standard-normal latent noise of one clip.
pub fn clip_noise(cfg: &ModelConfig, seed: u64) -> Vec<f32> {
    crate::linear::gaussian_noise(seed, cfg.frames_per_clip * frame_len(cfg))
}

/// Generate B sequences clip after clip, each clip from its sequence's
/// first frame and most recent frames (the context of [`context_tokens`]).
/// The tokens stay on the model's device between clips: the host sends
/// each clip's noise and gets back only the finished sequences' latent
/// frames, one `Vec` per sequence. `firsts[b]` is sequence b's first latent
/// frame; `masks[c][b]` and `noises[c][b]` are clip c's per-frame action
/// masks and latent noise. `on_clip` is called after each clip.
pub fn sample_sequences(
    p: &WorldPolicy,
    sampler: &SamplerConfig,
    firsts: &[Vec<f32>],
    masks: &[Vec<Vec<u8>>],
    noises: &[Vec<Vec<f32>>],
    on_clip: &dyn Fn(),
) -> Result<Vec<Vec<f32>>, StageError> {
    let cfg = &p.model.cfg;
    let dev = p.params.device();
    let (b, tpf, tok) = (firsts.len(), cfg.tokens_per_frame(), cfg.token_dim());
    let first_tokens: Vec<f32> = firsts.iter().flat_map(|f| clip_tokens(cfg, f)).collect();
    // Every frame so far, as (B, tokens per frame, token dim) on the device.
    let mut frames = vec![Tensor::from_vec(first_tokens, (b, tpf, tok), dev)?];
    let mut clips = Vec::with_capacity(masks.len());
    for (clip_masks, clip_noises) in masks.iter().zip(noises) {
        let context: Vec<Tensor> = cfg.context_frame_indices(frames.len()).into_iter().map(|i| frames[i].clone()).collect();
        let cache = p.model.encode_context(&Tensor::cat(&context, 1)?)?;
        let noise_tokens: Vec<f32> = clip_noises.iter().flat_map(|n| clip_tokens(cfg, n)).collect();
        let noise = Tensor::from_vec(noise_tokens, (b, cfg.frames_per_clip * tpf, tok), dev)?;
        let x = sample(&p.model, &cache, &noise, clip_masks, sampler)?;
        for j in 0..cfg.frames_per_clip {
            frames.push(x.narrow(1, j * tpf, tpf)?);
        }
        clips.push(x);
        on_clip();
    }
    if clips.is_empty() {
        return Ok(vec![Vec::new(); b]);
    }
    let all = Tensor::cat(&clips, 1)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(all.chunks_exact(all.len() / b).map(|seq| latents_of_tokens(cfg, seq)).collect())
}

/// Sample G clips that share one encoded context (batch 1 or G).
pub fn candidates_from_cache(
    p: &WorldPolicy,
    sampler: &SamplerConfig,
    cache: &wc_model::ContextCache,
    masks: &[Vec<u8>],
    noises: &[Vec<f32>],
) -> Result<Vec<f32>, StageError> {
    let cfg = &p.model.cfg;
    let g = noises.len();
    let (tpf, tok) = (cfg.tokens_per_frame(), cfg.token_dim());
    let noise_tokens: Vec<f32> = noises.iter().flat_map(|n| clip_tokens(cfg, n)).collect();
    let noise = Tensor::from_vec(noise_tokens, (g, cfg.frames_per_clip * tpf, tok), p.params.device())?;
    sample_latents(&p.model, sampler, cache, masks, &noise)
}

/// The one sampler of the stages and the evaluation: G clips from noise
/// tokens `[G, N, P]` that share one encoded context (batch 1 or G), each
/// with its per-frame action masks; returns their latent frames,
/// concatenated.
pub fn sample_latents(
    model: &WorldModel,
    sampler: &SamplerConfig,
    cache: &wc_model::ContextCache,
    masks: &[Vec<u8>],
    noise: &Tensor,
) -> Result<Vec<f32>, StageError> {
    let x = sample(model, cache, noise, masks, sampler)?;
    Ok(latents_of_tokens(&model.cfg, &x.flatten_all()?.to_vec1::<f32>()?))
}

/// Encode one context for G candidates.
pub fn encode_context(p: &WorldPolicy, context: &[f32]) -> Result<wc_model::ContextCache, StageError> {
    let cfg = &p.model.cfg;
    let ctx = Tensor::from_vec(context.to_vec(), (1, cfg.context_slots() * cfg.tokens_per_frame(), cfg.token_dim()), p.params.device())?;
    p.model.encode_context(&ctx).map_err(StageError::from)
}

/// One NFT training sample: a selected candidate at one timestep.
#[derive(Debug, Clone)]
pub struct NftSample {
    /// Context tokens.
    pub context: Vec<f32>,
    /// Clean candidate tokens x.
    pub x: Vec<f32>,
    /// Noise tokens eps.
    pub eps: Vec<f32>,
    pub t: f32,
    pub masks: Vec<u8>,
    pub r: f32,
}

/// The samples of one minibatch as the model's tensors on `dev`.
pub fn nft_batch(cfg: &ModelConfig, batch: &[NftSample], dev: &Device) -> Result<NftBatch, StageError> {
    let b = batch.len();
    let (tpf, tok) = (cfg.tokens_per_frame(), cfg.token_dim());
    let cat = |f: &dyn Fn(&NftSample) -> &[f32]| batch.iter().flat_map(|s| f(s).to_vec()).collect::<Vec<f32>>();
    Ok(NftBatch {
        context: Tensor::from_vec(cat(&|s| &s.context), (b, cfg.context_slots() * tpf, tok), dev)?,
        x: Tensor::from_vec(cat(&|s| &s.x), (b, cfg.frames_per_clip * tpf, tok), dev)?,
        eps: Tensor::from_vec(cat(&|s| &s.eps), (b, cfg.frames_per_clip * tpf, tok), dev)?,
        t: batch.iter().map(|s| s.t).collect(),
        masks: batch.iter().map(|s| s.masks.clone()).collect(),
        r: batch.iter().map(|s| s.r).collect(),
    })
}

#[cfg(test)]
mod tests {
    use wc_model::model::action_input;

    use super::*;

    fn tiny_pair() -> (WorldPolicy, WorldPolicy) {
        let cfg = ModelConfig::tiny();
        (WorldPolicy::fresh(&cfg, 1, &Device::Cpu).unwrap(), WorldPolicy::fresh(&cfg, 1, &Device::Cpu).unwrap())
    }

    fn samples(cfg: &ModelConfig, n: usize) -> Vec<NftSample> {
        let fl = frame_len(cfg);
        (0..n)
            .map(|i| NftSample {
                context: context_tokens(cfg, &clip_noise(cfg, 10 + i as u64)[..fl], &[]),
                x: clip_tokens(cfg, &clip_noise(cfg, 20 + i as u64)),
                eps: clip_tokens(cfg, &clip_noise(cfg, 30 + i as u64)),
                t: 0.3 + 0.1 * i as f32,
                masks: vec![1 << (i % 8); cfg.frames_per_clip],
                r: if i % 2 == 0 { 0.9 } else { 0.1 },
            })
            .collect()
    }

    fn batch(cfg: &ModelConfig, n: usize) -> NftBatch {
        nft_batch(cfg, &samples(cfg, n), &Device::Cpu).unwrap()
    }

    /// The device-resident sequence sampler equals sampling clip after
    /// clip through the host: each clip's context built from the host
    /// latents of the clips before it.
    #[test]
    fn sequences_sampled_on_the_device_equal_clip_after_clip_through_the_host() {
        let (p, _) = tiny_pair();
        let cfg = p.model.cfg.clone();
        let sampler = SamplerConfig { steps: 3, shift: 3.0, guidance: 2.0 };
        let fl = frame_len(&cfg);
        let firsts: Vec<Vec<f32>> = (0..2).map(|b| clip_noise(&cfg, 100 + b)[..fl].to_vec()).collect();
        let clips = 3;
        let masks: Vec<Vec<Vec<u8>>> = (0..clips).map(|c| (0..2).map(|b| vec![1u8 << ((c + b) % 8); cfg.frames_per_clip]).collect()).collect();
        let noises: Vec<Vec<Vec<f32>>> = (0..clips).map(|c| (0..2).map(|b| clip_noise(&cfg, (10 * c + b) as u64)).collect()).collect();
        let calls = std::cell::Cell::new(0);
        let on_device = sample_sequences(&p, &sampler, &firsts, &masks, &noises, &|| calls.set(calls.get() + 1)).unwrap();
        assert_eq!(calls.get(), clips);
        for b in 0..2 {
            let mut host: Vec<f32> = Vec::new();
            for c in 0..clips {
                let cache = encode_context(&p, &context_tokens(&cfg, &firsts[b], &host)).unwrap();
                host.extend(candidates_from_cache(&p, &sampler, &cache, &[masks[c][b].clone()], &[noises[c][b].clone()]).unwrap());
            }
            assert_eq!(on_device[b].len(), clips * cfg.frames_per_clip * fl);
            assert_eq!(on_device[b], host, "sequence {b}");
        }
    }

    #[test]
    fn guided_velocities_are_the_guided_samplers_and_train_both_branches() {
        let (policy, old) = tiny_pair();
        let cfg = policy.model.cfg.clone();
        let samples = samples(&cfg, 3);
        let b = nft_batch(&cfg, &samples, &Device::Cpu).unwrap();
        let diff = |a: &Tensor, c: &Tensor| (a - c).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        // The conditional and unconditional predictions, computed here
        // directly from the model (not through nft_velocities).
        let n = samples.len();
        let dev = Device::Cpu;
        let cat = |f: &dyn Fn(&NftSample) -> Vec<f32>| samples.iter().flat_map(f).collect::<Vec<f32>>();
        let (tpf, tok) = (cfg.tokens_per_frame(), cfg.token_dim());
        let ctx = Tensor::from_vec(cat(&|s| s.context.clone()), (n, cfg.context_slots() * tpf, tok), &dev).unwrap();
        let z = Tensor::from_vec(cat(&|s| s.x.iter().zip(&s.eps).map(|(x, e)| x * (1.0 - s.t) + e * s.t).collect()), (n, cfg.frames_per_clip * tpf, tok), &dev).unwrap();
        let t = Tensor::from_vec(samples.iter().map(|s| s.t).collect::<Vec<f32>>(), n, &dev).unwrap();
        let masks: Vec<Vec<u8>> = samples.iter().map(|s| s.masks.clone()).collect();
        let direct = |dropped: bool| {
            let cache = policy.model.encode_context(&ctx).unwrap();
            policy.model.velocity(&cache, &z, &t, &action_input(&masks, &vec![dropped; n], &dev).unwrap()).unwrap()
        };
        let (vc, vu) = (direct(false), direct(true));
        assert!(diff(&vc, &vu) > 1e-4, "the action must change the prediction for this test to mean anything");
        let v1 = nft_velocities(&policy, &old, None, &b, 1.0).unwrap().v_theta;
        assert!(diff(&v1, &vc) < 1e-5, "guidance 1 is the conditional model");
        let v = nft_velocities(&policy, &old, None, &b, 2.5).unwrap();
        let (v25, o25) = (v.v_theta, v.v_old);
        let expected = (&vu + ((&vc - &vu).unwrap() * 2.5).unwrap()).unwrap();
        assert!(diff(&v25, &expected) < 1e-4, "v_u + 2.5 (v_c - v_u)");
        assert!(diff(&v25, &o25) < 1e-5, "identical weights: the old policy is guided the same way");
        // A guided step moves the unconditional prediction too.
        let mut opt = Optimizer::new(OptimConfig::default(), &policy.params).unwrap();
        assert!(nft_step(&policy, &old, None, &mut opt, &b, &NftSettings { beta: 1.0, lr: 1e-3, guidance: 2.5 }).unwrap().applied);
        assert!(diff(&direct(true), &vu) > 1e-6, "the unconditional branch got no gradient");
        let o_after = nft_velocities(&policy, &old, None, &b, 2.5).unwrap().v_old;
        assert_eq!(diff(&o_after, &o25), 0.0, "the old policy is not trained");
    }

    #[test]
    fn v_old_comes_from_the_old_policy_not_the_policy() {
        // Regression test for the reference code's bug (v_old overwritten
        // by a detached copy of v_theta, which turns NFT into regression).
        let (policy, old) = tiny_pair();
        let cfg = policy.model.cfg.clone();
        let b = batch(&cfg, 4);
        let v = nft_velocities(&policy, &old, None, &b, 1.0).unwrap();
        let (vt, vo) = (v.v_theta, v.v_old);
        let diff = |a: &Tensor, c: &Tensor| (a - c).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff(&vt, &vo), 0.0, "identical weights give identical velocities");
        // Diverge: a few NFT steps on the policy only.
        let mut opt = Optimizer::new(OptimConfig { lr: 1e-2, ..Default::default() }, &policy.params).unwrap();
        for _ in 0..3 {
            assert!(nft_step(&policy, &old, None, &mut opt, &b, &NftSettings { beta: 1.0, lr: 1e-2, guidance: 1.0 }).unwrap().applied);
        }
        let v = nft_velocities(&policy, &old, None, &b, 1.0).unwrap();
        let (vt, vo) = (v.v_theta, v.v_old);
        assert!(diff(&vt, &vo) > 1e-3, "after the policy moved, v_old must differ from v_theta");
        // And v_old is exactly what the old policy alone predicts.
        let vo_alone = nft_velocities(&old, &old, None, &b, 1.0).unwrap().v_theta;
        assert_eq!(diff(&vo, &vo_alone), 0.0);
    }

    #[test]
    fn nft_steps_reach_the_policy_but_never_the_old_policy() {
        let (policy, old) = tiny_pair();
        let before_old = old.params.to_tensor_set().unwrap();
        let before = policy.params.to_tensor_set().unwrap();
        let mut opt = Optimizer::new(OptimConfig::default(), &policy.params).unwrap();
        let s = nft_step(&policy, &old, None, &mut opt, &batch(&policy.model.cfg, 3), &NftSettings { beta: 1.0, lr: 1e-3, guidance: 1.0 }).unwrap();
        assert!(s.applied && s.loss.is_finite() && s.grad_norm > 0.0, "{s:?}");
        assert_eq!(old.params.to_tensor_set().unwrap(), before_old);
        assert_ne!(policy.params.to_tensor_set().unwrap(), before);
    }

    /// Gradient accumulation: a minibatch of 3 in parts of 2 and 1 makes
    /// the whole minibatch's step (the same loss, gradient and update up to
    /// the order of float sums).
    #[test]
    fn an_nft_step_in_parts_is_the_whole_minibatchs_step() {
        let settings = NftSettings { beta: 1.0, lr: 1e-3, guidance: 1.0 };
        let (p1, o1) = tiny_pair();
        let (p2, o2) = tiny_pair();
        let cfg = p1.model.cfg.clone();
        let s = samples(&cfg, 3);
        let mut opt1 = Optimizer::new(OptimConfig::default(), &p1.params).unwrap();
        let whole = nft_step(&p1, &o1, None, &mut opt1, &nft_batch(&cfg, &s, &Device::Cpu).unwrap(), &settings).unwrap();
        let parts = [nft_batch(&cfg, &s[..2], &Device::Cpu).unwrap(), nft_batch(&cfg, &s[2..], &Device::Cpu).unwrap()];
        let mut opt2 = Optimizer::new(OptimConfig::default(), &p2.params).unwrap();
        let split = wc_model::nft::nft_step_in_parts(&p2, &o2, None, &mut opt2, &parts, &settings).unwrap();
        assert!(whole.applied && split.applied);
        assert!((whole.loss - split.loss).abs() < 1e-5 * whole.loss.abs().max(1.0), "{whole:?} vs {split:?}");
        assert!((whole.grad_norm - split.grad_norm).abs() < 1e-4 * whole.grad_norm, "{whole:?} vs {split:?}");
        let (a, b) = (p1.params.to_tensor_set().unwrap(), p2.params.to_tensor_set().unwrap());
        let moved = |x: &wc_schemas::TensorSet, y: &wc_schemas::TensorSet| x.iter().map(|(k, t)| t.to_f32().iter().zip(y[k].to_f32()).map(|(u, v)| (u - v).abs()).fold(0f32, f32::max)).fold(0f32, f32::max);
        let before = tiny_pair().0.params.to_tensor_set().unwrap();
        assert!(moved(&a, &before) > 1e-5, "the step moved the weights");
        assert!(moved(&a, &b) < 1e-6, "parts against the whole: {}", moved(&a, &b));
        // Parts of 1 sample each: the same step again.
        let (p3, o3) = tiny_pair();
        let ones: Vec<_> = (0..3).map(|i| nft_batch(&cfg, &s[i..i + 1], &Device::Cpu).unwrap()).collect();
        let mut opt3 = Optimizer::new(OptimConfig::default(), &p3.params).unwrap();
        wc_model::nft::nft_step_in_parts(&p3, &o3, None, &mut opt3, &ones, &settings).unwrap();
        assert!(moved(&a, &p3.params.to_tensor_set().unwrap()) < 1e-6);
    }

    #[test]
    fn non_finite_samples_are_not_applied() {
        let (policy, old) = tiny_pair();
        let before = policy.params.to_tensor_set().unwrap();
        let mut s = samples(&policy.model.cfg, 2);
        s[0].x[0] = f32::NAN;
        let b = nft_batch(&policy.model.cfg, &s, &Device::Cpu).unwrap();
        let mut opt = Optimizer::new(OptimConfig::default(), &policy.params).unwrap();
        let s = nft_step(&policy, &old, None, &mut opt, &b, &NftSettings { beta: 1.0, lr: 1e-3, guidance: 1.0 }).unwrap();
        assert!(!s.applied && !s.loss.is_finite());
        assert_eq!(policy.params.to_tensor_set().unwrap(), before, "a skipped step changes nothing");
    }

    #[test]
    fn context_is_first_frame_then_recent_frames() {
        let cfg = ModelConfig::tiny(); // 2 recent frames
        let fl = frame_len(&cfg);
        let first = vec![0.0f32; fl];
        let prefix: Vec<f32> = (1..=8).flat_map(|i| vec![i as f32; fl]).collect(); // 2 clips of 4 frames
        let lat = unpatchify(&context_tokens(&cfg, &first, &prefix), 3, cfg.frame_size, cfg.patch);
        let vals: Vec<f32> = (0..3).map(|f| lat[f * fl]).collect();
        assert_eq!(vals, vec![0.0, 7.0, 8.0]);
        let lat = unpatchify(&context_tokens(&cfg, &first, &prefix[..fl]), 3, cfg.frame_size, cfg.patch);
        assert_eq!((0..3).map(|f| lat[f * fl]).collect::<Vec<_>>(), vec![0.0, 0.0, 1.0]);
        assert_eq!(frame_masks(&cfg, &[1, 2]), vec![1, 1, 2, 2]);
        assert_eq!(frame_masks(&cfg, &[4]), vec![4, 4, 4, 4]);
    }
}
