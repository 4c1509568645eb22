//! [`MatrixGameModel`]: the causal Wan transformer as a
//! [`VelocityModel`], built from `wc-model`'s parameters.
//!
//! Layouts (all f32 on the host, rank 3 so the flow and NFT code that
//! broadcasts a time per row runs unchanged):
//!
//! - A clip (target, noise, velocity): `[B, F, C*H*W]`, latent frames of the
//!   pixel codec, channels first within a frame.
//! - A context: `[B, 1 + F, C*H*W + 6]`, one row per latent frame (the world
//!   prompt's first frame, then the clip before the target; the first frame
//!   repeated before clip 1), each row the frame's latent followed by the
//!   action that led into it ([`crate::config::ACTION_WIDTH`] values: the W,
//!   S, A, D keys and the mouse's pitch and yaw; zeros for the first frame
//!   and the repeats).
//! - An action input: `[B, F, 6]`, the action into each target frame.
//!
//! The action module reads, for latent frame j, the action steps
//! j-3..j-1 (`window_of`, one step per latent frame here); step i is the
//! action from frame i to frame i+1, so frame j reads the actions into
//! frames j-2..j, its own included, and a context frame never reads a
//! target's action. A dropped action row (the unconditional branch of
//! classifier-free guidance) is all zeros: Matrix-Game has no null action
//! token, so "dropped" reads as "no key, no mouse".

use candle_core::{DType, Device, Tensor};
use wc_model::model::MIN_T;
use wc_model::params::{Init, Params};
use wc_model::velocity::{EncodedContext, VelocityModel};
use wc_model::{ModelError, Result};
use wc_model::config::Prediction;
use wc_wan::matrix_game::MatrixGameAction;
use wc_wan::{Actions, KvCache, WanTransformer, Weights};
use wc_world::ActionMask;

use crate::config::{ACTION_WIDTH, KEYS, MatrixGameConfig};
use crate::wan_error;

/// A Matrix-Game world model with its parameters.
pub type MatrixGamePolicy = wc_model::Policy<MatrixGameModel>;

/// A policy of `cfg` with seeded initial weights on `device`.
pub fn fresh_policy(cfg: &MatrixGameConfig, seed: u64, device: &Device) -> Result<MatrixGamePolicy> {
    let mut params = Params::new(seed, device);
    let model = MatrixGameModel::new(cfg, &mut params)?;
    Ok(wc_model::Policy { model, params })
}

/// A policy of `cfg` with a checkpoint's weights (every name and shape
/// checked).
pub fn policy_from_tensors(cfg: &MatrixGameConfig, t: &wc_schemas::TensorSet, device: &Device) -> Result<MatrixGamePolicy> {
    let p = fresh_policy(cfg, 0, device)?;
    p.params.load(t)?;
    Ok(p)
}

/// A copy of `p` computing in `dtype` (bf16 sampling on a GPU); an f32
/// copy of an f32 policy computes the same bits.
pub fn policy_to_dtype(p: &MatrixGamePolicy, dtype: DType) -> Result<MatrixGamePolicy> {
    let mut params = Params::with_dtype(0, p.params.device(), dtype);
    let model = MatrixGameModel::new(&p.model.cfg, &mut params)?;
    params.copy_from(&p.params)?;
    Ok(wc_model::Policy { model, params })
}

/// The network and its configuration.
pub struct MatrixGameModel {
    pub cfg: MatrixGameConfig,
    net: WanTransformer,
}

/// The (Wan name, shape) of every parameter of `cfg`'s network, in the
/// order the network asks for them.
pub fn parameter_layout(cfg: &MatrixGameConfig) -> Result<Vec<(String, Vec<usize>)>> {
    cfg.validate().map_err(ModelError::Config)?;
    let w = Weights::random(&Device::Cpu);
    WanTransformer::new(&cfg.transformer, &w, DType::F32).map_err(wan_error)?;
    Ok(w.shapes_taken())
}

/// The Wan network of `cfg` computing in `dtype`, its weights created in
/// `params` as the network asks for them (seeded, in the network's order;
/// the parameters keep their own dtype and the network casts from them, so
/// f32 parameters train a bf16 network).
pub fn build_network(cfg: &wc_wan::WanTransformerConfig, params: &mut Params, dtype: DType) -> Result<WanTransformer> {
    // The weights' maker owns the parameters while the network is built.
    let shared = std::sync::Arc::new(std::sync::Mutex::new(std::mem::replace(params, Params::new(0, &Device::Cpu))));
    let maker = shared.clone();
    let w = Weights::from_fn(move |name, shape| {
        let mut p = maker.lock().expect("not poisoned");
        p.get(name, shape, init_of(name, shape)).map_err(|e| match e {
            ModelError::Candle(e) => wc_wan::WanError::Candle(e),
            other => wc_wan::WanError::Config(other.to_string()),
        })
    });
    let net = WanTransformer::new(cfg, &w, dtype);
    drop(w);
    *params = std::sync::Arc::try_unwrap(shared).ok().expect("the maker is dropped").into_inner().expect("not poisoned");
    net.map_err(wan_error)
}

/// A parameter's initial values: biases 0, norm scales 1, the rest normal
/// with standard deviation 0.02.
fn init_of(name: &str, shape: &[usize]) -> Init {
    if name.ends_with(".bias") {
        Init::Zeros
    } else if shape.len() == 1 && name.contains("norm") {
        Init::Ones
    } else {
        Init::Normal(0.02)
    }
}

impl MatrixGameModel {
    /// The network of `cfg`, its weights created in `params` (seeded; a
    /// checkpoint is loaded into `params` afterwards). The network computes
    /// in the parameters' dtype; norms and modulation stay f32.
    pub fn new(cfg: &MatrixGameConfig, params: &mut Params) -> Result<Self> {
        cfg.validate().map_err(ModelError::Config)?;
        let net = build_network(&cfg.transformer, params, params.dtype())?;
        Ok(MatrixGameModel { cfg: cfg.clone(), net })
    }

    /// The network's input `[B, 2C + 1, F, H, W]` for latent frames
    /// `[B, F, C*H*W]`: the latents, the mask and the image latent; with
    /// `first` (a block that starts at frame 0) the mask is 1 and the image
    /// latent is `first` on frame 0.
    fn network_input(&self, latents: &Tensor, first: Option<&Tensor>) -> Result<Tensor> {
        let (c, s) = (self.cfg.channels, self.cfg.frame_size);
        let (b, f, _) = latents.dims3()?;
        let lat = latents.reshape((b, f, c, s, s))?.permute((0, 2, 1, 3, 4))?;
        let dtype = self.net.dtype();
        let (mask, image) = match first {
            Some(first) => {
                let mut m = vec![0f32; f];
                m[0] = 1.0;
                let mask = Tensor::from_vec(m, (1, 1, f, 1, 1), latents.device())?.broadcast_as((b, 1, f, s, s))?;
                let img = first.reshape((b, c, 1, s, s))?;
                let img = if f > 1 { Tensor::cat(&[&img, &Tensor::zeros((b, c, f - 1, s, s), img.dtype(), img.device())?], 2)? } else { img };
                (mask, img)
            }
            None => (Tensor::zeros((b, 1, f, s, s), latents.dtype(), latents.device())?, Tensor::zeros((b, c, f, s, s), latents.dtype(), latents.device())?),
        };
        Ok(Tensor::cat(&[&lat, &mask.to_dtype(lat.dtype())?, &image.to_dtype(lat.dtype())?], 1)?.contiguous()?.to_dtype(dtype)?)
    }

    /// The cross-attention's tokens: the first frame's patches
    /// `[B, (H/p)(W/p), C p p]` (the stand-in for CLIP's image tokens).
    fn image_tokens(&self, first: &Tensor) -> Result<Tensor> {
        let (c, s, p) = (self.cfg.channels, self.cfg.frame_size, self.cfg.patch());
        let b = first.dim(0)?;
        let g = s / p;
        let t = first.reshape((b * c, g, p, g, p))?.permute((0, 1, 3, 2, 4))?.reshape((b, c, g * g, p * p))?;
        Ok(t.permute((0, 2, 1, 3))?.reshape((b, g * g, c * p * p))?.contiguous()?.to_dtype(self.net.dtype())?)
    }

    fn actions<'a>(keyboard: &'a Tensor, mouse: &'a Tensor) -> Actions<'a> {
        Actions { keyboard, mouse }
    }

    /// Keyboard and mouse `[B, N, 4]`, `[B, N, 2]` of action steps `[B, N, 6]`.
    fn split_steps(&self, steps: &Tensor) -> Result<(Tensor, Tensor)> {
        let dtype = self.net.dtype();
        Ok((steps.narrow(2, 0, KEYS)?.contiguous()?.to_dtype(dtype)?, steps.narrow(2, KEYS, ACTION_WIDTH - KEYS)?.contiguous()?.to_dtype(dtype)?))
    }

    fn check_rows(&self, what: &str, t: &Tensor, frames: usize, width: usize) -> Result<()> {
        let d = t.dims();
        if d.len() != 3 || d[1] != frames || d[2] != width {
            return Err(ModelError::Config(format!("{what}: shape {d:?}, expected [B, {frames}, {width}]")));
        }
        Ok(())
    }
}

/// The context encoded once: the key/value cache of the first frame and
/// the clip before the target (computed at t = 0), the cross-attention's
/// image tokens and the context's actions. A batch-1 context serves any
/// batch of targets.
#[derive(Clone)]
pub struct MatrixGameContext {
    cache: KvCache,
    image_tokens: Tensor,
    /// Action steps 0..F: the actions into the context's frames 1..=F.
    steps: Tensor,
    batch: usize,
}

fn repeat_rows(t: &Tensor, rows: usize) -> Result<Tensor> {
    if t.dim(0)? == rows {
        return Ok(t.clone());
    }
    let mut dims = t.dims().to_vec();
    dims[0] = rows;
    Ok(t.broadcast_as(dims)?.contiguous()?)
}

impl EncodedContext for MatrixGameContext {
    fn batch(&self) -> usize {
        self.batch
    }

    fn detach(&self) -> Self {
        MatrixGameContext {
            cache: self.cache.map(&|t| Ok(t.detach())).expect("detaching cannot fail"),
            image_tokens: self.image_tokens.detach(),
            steps: self.steps.detach(),
            batch: self.batch,
        }
    }

    fn doubled(&self) -> Result<Self> {
        if self.batch == 1 {
            return Ok(self.clone());
        }
        let twice = |t: &Tensor| Tensor::cat(&[t, t], 0);
        Ok(MatrixGameContext {
            cache: self.cache.map(&|t| Ok(twice(t)?)).map_err(wan_error)?,
            image_tokens: twice(&self.image_tokens)?,
            steps: twice(&self.steps)?,
            batch: 2 * self.batch,
        })
    }

    fn rows(&self, start: usize, len: usize) -> Result<Self> {
        if self.batch == 1 {
            return Ok(self.clone());
        }
        // Every tensor's first dim is the batch times a count per row (the
        // mouse branch's cache holds one sequence per spatial location,
        // [B x locations, ...]), batch-major.
        let batch = self.batch;
        let part = |t: &Tensor| -> candle_core::Result<Tensor> {
            let per = t.dim(0)? / batch;
            t.narrow(0, start * per, len * per)
        };
        Ok(MatrixGameContext {
            cache: self.cache.map(&|t| Ok(part(t)?)).map_err(wan_error)?,
            image_tokens: part(&self.image_tokens)?,
            steps: part(&self.steps)?,
            batch: len,
        })
    }
}

impl VelocityModel for MatrixGameModel {
    type Input = Tensor;
    type Context = MatrixGameContext;

    /// Runs the first frame (block 0) and the clip before the target
    /// (block 1) through the network at t = 0, committing their keys and
    /// values.
    fn encode_context(&self, context: &Tensor) -> Result<MatrixGameContext> {
        let cfg = &self.cfg;
        let (d, f) = (cfg.frame_len(), cfg.frames_per_clip);
        self.check_rows("context", context, cfg.context_frames(), d + ACTION_WIDTH)?;
        let b = context.dim(0)?;
        let dev = context.device();
        let latents = context.narrow(2, 0, d)?;
        let into = context.narrow(2, d, ACTION_WIDTH)?.narrow(1, 1, f)?.contiguous()?;
        let first = latents.narrow(1, 0, 1)?;
        let image_tokens = self.image_tokens(&first.squeeze(1)?)?;
        let t0 = Tensor::zeros(b, DType::F32, dev)?;
        let spec = cfg.spec();
        let mut cache = KvCache::new();
        let (kb, ms) = self.split_steps(&into.narrow(1, 0, 1)?)?;
        self.net
            .forward_and_commit(&self.network_input(&first, Some(&first.squeeze(1)?))?, &t0, &image_tokens, Some(Self::actions(&kb, &ms)), &spec, &mut cache)
            .map_err(wan_error)?;
        // Step F (the action into the target's first frame) is not known
        // yet: no context frame reads it.
        let steps = Tensor::cat(&[&into, &Tensor::zeros((b, 1, ACTION_WIDTH), into.dtype(), dev)?], 1)?;
        let (kb, ms) = self.split_steps(&steps)?;
        self.net
            .forward_and_commit(&self.network_input(&latents.narrow(1, 1, f)?, None)?, &t0, &image_tokens, Some(Self::actions(&kb, &ms)), &spec, &mut cache)
            .map_err(wan_error)?;
        Ok(MatrixGameContext { cache, image_tokens, steps: into, batch: b })
    }

    fn velocity(&self, context: &MatrixGameContext, z: &Tensor, t: &Tensor, actions: &Tensor) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (d, f) = (cfg.frame_len(), cfg.frames_per_clip);
        self.check_rows("noisy clip", z, f, d)?;
        self.check_rows("actions", actions, f, ACTION_WIDTH)?;
        let b = z.dim(0)?;
        if context.batch != 1 && context.batch != b {
            return Err(ModelError::Config(format!("a context of batch {} serves batch 1 or {} targets, not {b}", context.batch, context.batch)));
        }
        let dev = z.device();
        let steps = Tensor::cat(&[&repeat_rows(&context.steps, b)?, &actions.to_dtype(DType::F32)?, &Tensor::zeros((b, 1, ACTION_WIDTH), DType::F32, dev)?], 1)?;
        let (kb, ms) = self.split_steps(&steps)?;
        let mut cache = context.cache.clone();
        let out = self
            .net
            .forward_cached(&self.network_input(z, None)?, &(t.to_dtype(DType::F32)? * 1000.0)?, &repeat_rows(&context.image_tokens, b)?, Some(Self::actions(&kb, &ms)), &cfg.spec(), &mut cache)
            .map_err(wan_error)?;
        let out = out.to_dtype(DType::F32)?.permute((0, 2, 1, 3, 4))?.reshape((b, f, d))?;
        match cfg.prediction {
            Prediction::Velocity => Ok(out),
            // v = (z - x_hat) / t, with t kept away from 0.
            Prediction::Clean => {
                let t = t.to_dtype(DType::F32)?.clamp(MIN_T, 1.0)?.reshape((b, 1, 1))?;
                Ok((z.to_dtype(DType::F32)? - out)?.broadcast_div(&t)?)
            }
        }
    }

    fn action_input(&self, masks: &[Vec<u8>], dropped: &[bool], device: &Device) -> Result<Tensor> {
        action_input(masks, dropped, device)
    }
}

/// Per-frame action masks `[B][F]` -> Matrix-Game's inputs `[B, F, 6]`
/// (keys, then mouse); a dropped row is all zeros.
pub fn action_input(masks: &[Vec<u8>], dropped: &[bool], device: &Device) -> Result<Tensor> {
    let f = masks.first().map_or(0, |m| m.len());
    let mut v = Vec::with_capacity(masks.len() * f * ACTION_WIDTH);
    for (row, &drop) in masks.iter().zip(dropped) {
        for &m in row {
            v.extend(step_of(m, drop));
        }
    }
    Ok(Tensor::from_vec(v, (masks.len(), f, ACTION_WIDTH), device)?)
}

/// One action step: the keys and mouse of action mask `m` (zeros when
/// dropped).
fn step_of(m: u8, dropped: bool) -> [f32; ACTION_WIDTH] {
    if dropped {
        return [0.0; ACTION_WIDTH];
    }
    let a = MatrixGameAction::from_action(ActionMask(m));
    let mut s = [0.0; ACTION_WIDTH];
    s[..KEYS].copy_from_slice(&a.keyboard);
    s[KEYS..].copy_from_slice(&a.mouse);
    s
}

/// The packed context rows (host) of the clip after `history`: the first
/// frame's latent (`first`, one frame) with no action, then the last clip
/// of `history` (latent frames, any number of whole clips) with the action
/// into each of its frames (`history_masks`, one per frame), or the first
/// frame four times with no action when `history` is empty.
pub fn context_rows(cfg: &MatrixGameConfig, first: &[f32], history: &[f32], history_masks: &[u8]) -> Vec<f32> {
    let (d, f) = (cfg.frame_len(), cfg.frames_per_clip);
    let frames = history.len() / d;
    let mut latents = first.to_vec();
    let mut masks = vec![0u8];
    for i in 0..f {
        if frames >= f {
            let j = frames - f + i;
            latents.extend_from_slice(&history[j * d..(j + 1) * d]);
            masks.push(history_masks[j]);
        } else {
            latents.extend_from_slice(first);
            masks.push(0);
        }
    }
    pack_context(cfg, &latents, &masks)
}

/// Context rows of the context's latent frames (`cfg.context_frames()` of
/// them) and the action mask into each (0: none).
pub fn pack_context(cfg: &MatrixGameConfig, latents: &[f32], masks_into: &[u8]) -> Vec<f32> {
    let d = cfg.frame_len();
    latents.chunks_exact(d).zip(masks_into).flat_map(|(frame, m)| frame.iter().copied().chain(step_of(*m, false))).collect()
}

#[cfg(test)]
mod tests;
