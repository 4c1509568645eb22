//! [`MatrixGameModel`]: the causal Wan transformer as a
//! [`VelocityModel`], built from `wc-model`'s parameters.
//!
//! Layouts (all f32 on the host, rank 3 so the flow and NFT code that
//! broadcasts a time per row runs unchanged; `t` is the codec's frames per
//! latent frame, `MatrixGameConfig::temporal`, 1 for the pixel codec):
//!
//! - A clip (target, noise, velocity): `[B, F, C*h*w]`, latent frames of
//!   the codec, channels first within a frame.
//! - A context ([`MatrixGameInput`]):
//!   - rows `[B, 1 + F, C*h*w + 6t]`, one per latent frame (the world
//!     prompt's first frame, then the clip before the target; the first
//!     frame repeated before clip 1), each the frame's latent followed by
//!     the `t` action steps into the frames it codes
//!     ([`crate::config::ACTION_WIDTH`] values each: the W, S, A, D keys
//!     and the mouse's pitch and yaw; zeros for the first frame and the
//!     repeats);
//!   - the prompt's image-to-video condition of the context's and the
//!     target's latent frames `[B, 1 + 2F, (t + C)*h*w]`
//!     (`crate::prompt`);
//!   - the prompt's image tokens `[B, N, D]`.
//! - An action input: `[B, tF, 6]`, the action into each frame of the
//!   target.
//!
//! The action module reads, for latent frame j, the action steps
//! tj-3t..tj-1 (`window_of`); step i is the action from frame i to frame
//! i+1, so latent frame j reads the actions into its own frames and those
//! of the two latent frames before, and a context frame never reads a
//! target's action. A dropped action row (the unconditional branch of
//! classifier-free guidance) is all zeros: Matrix-Game has no null action
//! token, so "dropped" reads as "no key, no mouse".

use candle_core::{DType, Device, Tensor};
use wc_model::model::MIN_T;
use wc_model::params::{Init, Params};
use wc_model::velocity::{ContextInput, EncodedContext, VelocityModel};
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

    /// The network's input `[B, 2C + t, F, h, w]` for latent frames
    /// `[B, F, C*h*w]` and their condition `[B, F, (t + C)*h*w]`.
    fn network_input(&self, latents: &Tensor, condition: &Tensor) -> Result<Tensor> {
        let (c, s, tc) = (self.cfg.channels, self.cfg.latent_size(), self.cfg.condition_channels());
        let (b, f, _) = latents.dims3()?;
        let lat = latents.reshape((b, f, c, s, s))?.permute((0, 2, 1, 3, 4))?;
        let cond = condition.reshape((b, f, tc, s, s))?.permute((0, 2, 1, 3, 4))?;
        Ok(Tensor::cat(&[&lat, &cond.to_dtype(lat.dtype())?], 1)?.contiguous()?.to_dtype(self.net.dtype())?)
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
    /// Action steps 0..tF: the actions into the frames of the context's
    /// latent frames 1..=F.
    steps: Tensor,
    /// The condition of the target's latent frames `[B, F, (t + C)*h*w]`.
    target_condition: Tensor,
    batch: usize,
}

/// What a context is encoded from: its rows, the prompt's condition and
/// image tokens (see the module's layouts), batch-major.
#[derive(Debug, Clone)]
pub struct MatrixGameInput {
    pub rows: Tensor,
    pub condition: Tensor,
    pub image_tokens: Tensor,
}

impl ContextInput for MatrixGameInput {
    fn concat(parts: &[&Self]) -> Result<Self> {
        let cat = |f: &dyn Fn(&MatrixGameInput) -> &Tensor| Tensor::cat(&parts.iter().map(|p| f(p)).collect::<Vec<_>>(), 0);
        Ok(MatrixGameInput { rows: cat(&|p| &p.rows)?, condition: cat(&|p| &p.condition)?, image_tokens: cat(&|p| &p.image_tokens)? })
    }
}

impl MatrixGameInput {
    /// The input of host rows (`B` contexts' packed rows) on `device`, each
    /// row with its prompt's conditioning (`prompts[i]`, batch 1 each).
    pub fn from_rows(cfg: &MatrixGameConfig, rows: Vec<f32>, prompts: &[&crate::prompt::PromptConditioning], device: &Device) -> Result<Self> {
        let b = prompts.len();
        let rows = Tensor::from_vec(rows, (b, cfg.context_frames(), cfg.row_len()), device)?;
        let cat = |f: &dyn Fn(&crate::prompt::PromptConditioning) -> &Tensor| -> Result<Tensor> {
            Ok(Tensor::cat(&prompts.iter().map(|p| f(p)).collect::<Vec<_>>(), 0)?.to_device(device)?)
        };
        Ok(MatrixGameInput { rows, condition: cat(&|p| &p.condition)?, image_tokens: cat(&|p| &p.image_tokens)? })
    }
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
            target_condition: self.target_condition.detach(),
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
            target_condition: twice(&self.target_condition)?,
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
            target_condition: part(&self.target_condition)?,
            batch: len,
        })
    }
}

impl VelocityModel for MatrixGameModel {
    type Input = MatrixGameInput;
    type Context = MatrixGameContext;

    /// Runs the first frame (block 0) and the clip before the target
    /// (block 1) through the network at t = 0, committing their keys and
    /// values.
    fn encode_context(&self, input: &MatrixGameInput) -> Result<MatrixGameContext> {
        let cfg = &self.cfg;
        let (d, f, r) = (cfg.frame_len(), cfg.frames_per_clip, cfg.steps_per_row());
        let context = &input.rows;
        self.check_rows("context", context, cfg.context_frames(), cfg.row_len())?;
        let b = context.dim(0)?;
        self.check_rows("condition", &input.condition, cfg.condition_frames(), cfg.condition_len())?;
        let (ib, _, id) = input.image_tokens.dims3()?;
        if input.condition.dim(0)? != b || ib != b || id != cfg.image_token_dim() {
            return Err(ModelError::Config(format!(
                "a context of {b} rows needs {b} conditions and image tokens [{b}, N, {}]: got {:?} and {:?}",
                cfg.image_token_dim(),
                input.condition.dims(),
                input.image_tokens.dims()
            )));
        }
        let dev = context.device();
        let latents = context.narrow(2, 0, d)?;
        // The t steps of rows 1..=F, in order: [B, tF, 6].
        let into = context.narrow(2, d, r * ACTION_WIDTH)?.narrow(1, 1, f)?.contiguous()?.reshape((b, r * f, ACTION_WIDTH))?;
        let condition = &input.condition;
        let image_tokens = input.image_tokens.to_dtype(self.net.dtype())?;
        let t0 = Tensor::zeros(b, DType::F32, dev)?;
        let spec = cfg.spec();
        let mut cache = KvCache::new();
        let (kb, ms) = self.split_steps(&into.narrow(1, 0, 1)?)?;
        self.net
            .forward_and_commit(&self.network_input(&latents.narrow(1, 0, 1)?, &condition.narrow(1, 0, 1)?)?, &t0, &image_tokens, Some(Self::actions(&kb, &ms)), &spec, &mut cache)
            .map_err(wan_error)?;
        // The step after (the action into the target's first frame) is not
        // known yet: no context frame reads it.
        let steps = Tensor::cat(&[&into, &Tensor::zeros((b, 1, ACTION_WIDTH), into.dtype(), dev)?], 1)?;
        let (kb, ms) = self.split_steps(&steps)?;
        self.net
            .forward_and_commit(&self.network_input(&latents.narrow(1, 1, f)?, &condition.narrow(1, 1, f)?)?, &t0, &image_tokens, Some(Self::actions(&kb, &ms)), &spec, &mut cache)
            .map_err(wan_error)?;
        Ok(MatrixGameContext { cache, image_tokens, steps: into, target_condition: condition.narrow(1, 1 + f, f)?, batch: b })
    }

    fn velocity(&self, context: &MatrixGameContext, z: &Tensor, t: &Tensor, actions: &Tensor) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (d, f) = (cfg.frame_len(), cfg.frames_per_clip);
        self.check_rows("noisy clip", z, f, d)?;
        self.check_rows("actions", actions, cfg.pixel_frames_per_clip(), ACTION_WIDTH)?;
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
            .forward_cached(
                &self.network_input(z, &repeat_rows(&context.target_condition, b)?)?,
                &(t.to_dtype(DType::F32)? * 1000.0)?,
                &repeat_rows(&context.image_tokens, b)?,
                Some(Self::actions(&kb, &ms)),
                &cfg.spec(),
                &mut cache,
            )
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
/// frame's latent (`first`, one latent frame) with no action, then the
/// last clip of `history` (latent frames, any number of whole clips) with
/// the actions into the frames each latent frame codes (`history_masks`,
/// one per frame: `temporal` per latent frame), or the first frame
/// `frames_per_clip` times with no action when `history` is empty.
pub fn context_rows(cfg: &MatrixGameConfig, first: &[f32], history: &[f32], history_masks: &[u8]) -> Vec<f32> {
    let (d, f, r) = (cfg.frame_len(), cfg.frames_per_clip, cfg.steps_per_row());
    let frames = history.len() / d;
    let mut latents = first.to_vec();
    let mut masks = vec![0u8; r];
    for i in 0..f {
        if frames >= f {
            let j = frames - f + i;
            latents.extend_from_slice(&history[j * d..(j + 1) * d]);
            masks.extend_from_slice(&history_masks[j * r..(j + 1) * r]);
        } else {
            latents.extend_from_slice(first);
            masks.extend(std::iter::repeat_n(0, r));
        }
    }
    pack_context(cfg, &latents, &masks)
}

/// Context rows of the context's latent frames (`cfg.context_frames()` of
/// them) and the action masks into their frames (`temporal` per latent
/// frame; 0: none).
pub fn pack_context(cfg: &MatrixGameConfig, latents: &[f32], masks_into: &[u8]) -> Vec<f32> {
    let d = cfg.frame_len();
    latents
        .chunks_exact(d)
        .zip(masks_into.chunks_exact(cfg.steps_per_row()))
        .flat_map(|(frame, ms)| frame.iter().copied().chain(ms.iter().flat_map(|m| step_of(*m, false))))
        .collect()
}

#[cfg(test)]
mod tests;
