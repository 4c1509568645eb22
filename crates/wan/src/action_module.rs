//! Matrix-Game 2.0's action module (in its blocks 0-14, between
//! cross-attention and the feed-forward): the mouse and the keyboard steer
//! the video tokens. Written from `docs/design/matrix-game-2.md`, section 3.
//!
//! Actions come per pixel frame; latent frame j reads a window of
//! `windows_size * time_compression` pixel steps, j*r - P .. j*r - 1 (steps
//! before the first read the first). The mouse branch joins each spatial
//! token with its frame's mouse window, maps it through an MLP and attends
//! over latent frames at the same location; the keyboard branch embeds each
//! step's keys, and every video token cross-attends to the keyboard windows
//! of the frames it sees. Both attentions are block-causal over latent
//! frames ([`CausalSpec`]), normalise queries and keys per head (RMS, no
//! learned scale: the checkpoint's four `*_attn_*_norm` weights are never
//! used, and are read only to be accounted for), and rotate only the first
//! `rope_temporal_dims` dims of each head with the latent frame index.
//! Full-sequence path (training, teacher forcing); the cached path of
//! block-by-block generation comes with the causal model.

use candle_core::{D, DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::frame_cache::{FrameKv, FrameRange};
use crate::nn::{LayerNorm, Linear, attention};
use crate::transformer::CausalSpec;
use crate::weights::Weights;
use crate::{Result, WanError};

/// The action module's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionModuleConfig {
    /// The transformer's width.
    pub dim: usize,
    pub keyboard_dim_in: usize,
    pub mouse_dim_in: usize,
    /// Width of a pixel step's keyboard embedding.
    pub keyboard_embed_dim: usize,
    pub mouse_hidden_dim: usize,
    pub keyboard_hidden_dim: usize,
    pub heads: usize,
    /// Latent frames of actions a latent frame reads.
    pub windows_size: usize,
    /// Pixel frames per latent frame.
    pub time_compression: usize,
    /// Head dims that rotate with the latent frame index.
    pub rope_temporal_dims: usize,
    pub rope_theta: f64,
}

impl ActionModuleConfig {
    /// Matrix-Game 2.0's universal model.
    pub fn matrix_game_2() -> Self {
        ActionModuleConfig {
            dim: 1536,
            keyboard_dim_in: 4,
            mouse_dim_in: 2,
            keyboard_embed_dim: 128,
            mouse_hidden_dim: 1024,
            keyboard_hidden_dim: 1024,
            heads: 16,
            windows_size: 3,
            time_compression: 4,
            rope_temporal_dims: 8,
            rope_theta: 256.0,
        }
    }

    /// The tiny configuration of the fixtures (`make_fixtures.py`).
    pub fn tiny() -> Self {
        ActionModuleConfig {
            dim: 48,
            keyboard_embed_dim: 8,
            mouse_hidden_dim: 32,
            keyboard_hidden_dim: 32,
            heads: 4,
            rope_temporal_dims: 4,
            ..Self::matrix_game_2()
        }
    }

    /// Parameters of one module (the four unused norm scales included, as
    /// the checkpoint holds them).
    pub fn parameter_count(&self) -> usize {
        let p = self.window_steps();
        let (hm, hk, e) = (
            self.mouse_hidden_dim,
            self.keyboard_hidden_dim,
            self.keyboard_embed_dim,
        );
        let linear = |i: usize, o: usize| i * o + o;
        linear(self.dim + p * self.mouse_dim_in, hm)
            + linear(hm, hm)
            + 2 * hm
            + 3 * hm * hm
            + 2 * (hm / self.heads)
            + self.dim * hm
            + linear(self.keyboard_dim_in, e)
            + linear(e, e)
            + hk * self.dim
            + 2 * hk * p * e
            + 2 * (hk / self.heads)
            + self.dim * hk
    }

    /// Pixel steps a latent frame reads.
    pub fn window_steps(&self) -> usize {
        self.windows_size * self.time_compression
    }

    /// The pixel steps latent frame `j` reads (before the first step: the first).
    pub fn window_of(&self, j: usize) -> Vec<usize> {
        let p = self.window_steps();
        (0..p)
            .map(|k| (j * self.time_compression + k).saturating_sub(p))
            .collect()
    }

    fn validate(&self) -> Result<()> {
        let even = |d: usize| d > 0 && d.is_multiple_of(2);
        if self.heads == 0
            || !self.mouse_hidden_dim.is_multiple_of(self.heads)
            || !self.keyboard_hidden_dim.is_multiple_of(self.heads)
            || !even(self.rope_temporal_dims)
            || self.rope_temporal_dims > self.mouse_hidden_dim / self.heads
            || self.rope_temporal_dims > self.keyboard_hidden_dim / self.heads
        {
            return Err(WanError::Config(format!(
                "action module {self:?}: hidden widths must split into the heads, the rotating dims be even and fit a head"
            )));
        }
        Ok(())
    }
}

/// The actions of a clip, per pixel frame: `keyboard` [B, N_pix, keys] and
/// `mouse` [B, N_pix, 2], N_pix = 1 + 4 (F - 1) for F latent frames.
#[derive(Clone, Copy)]
pub struct Actions<'a> {
    pub keyboard: &'a Tensor,
    pub mouse: &'a Tensor,
}

/// Matrix-Game 2.0's action module of one block.
pub struct ActionModule {
    cfg: ActionModuleConfig,
    mouse_mlp: (Linear, Linear, LayerNorm),
    t_qkv: Tensor,
    proj_mouse: Tensor,
    keyboard_embed: (Linear, Linear),
    mouse_attn_q: Tensor,
    keyboard_attn_kv: Tensor,
    proj_keyboard: Tensor,
}

impl ActionModule {
    /// Its weights under `prefix` (e.g. `blocks.0.action_model`), f32.
    pub fn new(cfg: &ActionModuleConfig, w: &Weights, prefix: &str) -> Result<Self> {
        cfg.validate()?;
        let p = cfg.window_steps();
        let name = |n: &str| format!("{prefix}.{n}");
        let bare = |n: &str, o: usize, i: usize| w.take(&name(n), &[o, i], DType::F32);
        let (hm, hk) = (cfg.mouse_hidden_dim, cfg.keyboard_hidden_dim);
        // Read to be accounted for; the forward never uses them (see the module doc).
        for n in ["img_attn_q_norm", "img_attn_k_norm"] {
            w.take(&name(&format!("{n}.weight")), &[hm / cfg.heads], DType::F32)?;
        }
        for n in ["key_attn_q_norm", "key_attn_k_norm"] {
            w.take(&name(&format!("{n}.weight")), &[hk / cfg.heads], DType::F32)?;
        }
        Ok(ActionModule {
            mouse_mlp: (
                Linear::new(
                    w,
                    &name("mouse_mlp.0"),
                    cfg.dim + p * cfg.mouse_dim_in,
                    hm,
                    DType::F32,
                )?,
                Linear::new(w, &name("mouse_mlp.2"), hm, hm, DType::F32)?,
                LayerNorm::new(w, &name("mouse_mlp.3"), hm, 1e-5)?,
            ),
            t_qkv: bare("t_qkv.weight", 3 * hm, hm)?,
            proj_mouse: bare("proj_mouse.weight", cfg.dim, hm)?,
            keyboard_embed: (
                Linear::new(
                    w,
                    &name("keyboard_embed.0"),
                    cfg.keyboard_dim_in,
                    cfg.keyboard_embed_dim,
                    DType::F32,
                )?,
                Linear::new(
                    w,
                    &name("keyboard_embed.2"),
                    cfg.keyboard_embed_dim,
                    cfg.keyboard_embed_dim,
                    DType::F32,
                )?,
            ),
            mouse_attn_q: bare("mouse_attn_q.weight", hk, cfg.dim)?,
            keyboard_attn_kv: bare(
                "keyboard_attn_kv.weight",
                2 * hk,
                p * cfg.keyboard_embed_dim,
            )?,
            proj_keyboard: bare("proj_keyboard.weight", cfg.dim, hk)?,
            cfg: cfg.clone(),
        })
    }

    /// For latent frames `first..first + t`, their windows of pixel steps:
    /// [B, N_pix, K] -> [B, t, P * K] (step-major).
    fn windows(&self, a: &Tensor, first: usize, t: usize) -> Result<Tensor> {
        let rows: Vec<u32> = (first..first + t)
            .flat_map(|j| self.cfg.window_of(j))
            .map(|i| i as u32)
            .collect();
        let (b, _, k) = a.dims3()?;
        let idx = Tensor::new(rows.as_slice(), a.device())?;
        Ok(a.index_select(&idx, 1)?
            .reshape((b, t, self.cfg.window_steps() * k))?)
    }

    /// Cosines and sines [T, d / 2] of the rotary angles of latent frames
    /// `first..first + t`: frame index times theta^(-2i / d), d =
    /// `rope_temporal_dims`.
    fn rope_table(
        &self,
        first: usize,
        t: usize,
        device: &candle_core::Device,
    ) -> Result<(Tensor, Tensor)> {
        let d = self.cfg.rope_temporal_dims;
        let mut cos = Vec::with_capacity(t * d / 2);
        let mut sin = Vec::with_capacity(t * d / 2);
        for pos in first..first + t {
            for i in 0..d / 2 {
                let a = pos as f64 * self.cfg.rope_theta.powf(-((2 * i) as f64) / d as f64);
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Ok((
            Tensor::from_vec(cos, (t, d / 2), device)?,
            Tensor::from_vec(sin, (t, d / 2), device)?,
        ))
    }

    /// Rotate the first `rope_temporal_dims` dims of `x` [N, H, T, Dh] (as
    /// consecutive pairs) by the angles of `table` ([`Self::rope_table`]).
    fn rope(&self, x: &Tensor, table: &(Tensor, Tensor)) -> Result<Tensor> {
        let (n, h, t, dh) = x.dims4()?;
        let d = self.cfg.rope_temporal_dims;
        let rot = crate::nn::rope_pairs(&x.narrow(3, 0, d)?.contiguous()?, &table.0, &table.1)?;
        if d == dh {
            Ok(rot)
        } else {
            Ok(Tensor::cat(&[&rot, &x.narrow(3, d, dh - d)?], 3)?.reshape((n, h, t, dh))?)
        }
    }

    /// RMS normalisation over the last axis, no learned scale.
    fn rms(x: &Tensor) -> Result<Tensor> {
        Ok(x.broadcast_div(&(x.sqr()?.mean_keepdim(D::Minus1)? + 1e-6)?.sqrt()?)?)
    }

    /// `x` [B, T*S, D] (frame-major tokens of a latent grid [T, H', W']),
    /// `keyboard` [B, 1 + r(T-1), keys] and `mouse` [B, 1 + r(T-1), 2] per
    /// pixel frame: x plus the mouse's and the keyboard's contributions,
    /// block-causal over the T latent frames.
    pub fn forward(
        &self,
        x: &Tensor,
        grid: [usize; 3],
        actions: Actions,
        spec: &CausalSpec,
    ) -> Result<Tensor> {
        let (keyboard, mouse) = (actions.keyboard, actions.mouse);
        self.check(x, grid, keyboard, mouse, grid[0])?;
        let t = grid[0];
        let m: Vec<f32> = (0..t)
            .flat_map(|q| {
                (0..t).map(move |k| {
                    if spec.sees(q, k) {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(m, (t, t), x.device())?;
        self.run(x, grid, keyboard, mouse, 0, Seen::Masked(&mask))
    }

    /// One block of latent frames after those in `cache` (generation: a
    /// denoising step): `x` [B, T_block * S, D]; the actions from the first
    /// pixel frame through this block's (at least 1 + r(F - 1) for F frames
    /// so far). The cache is left as it was. A stream of blocks equals
    /// [`ActionModule::forward`] of the whole clip.
    pub fn forward_cached(
        &self,
        x: &Tensor,
        grid: [usize; 3],
        actions: Actions,
        spec: &CausalSpec,
        cache: &mut ActionCache,
    ) -> Result<Tensor> {
        self.cached(
            x,
            grid,
            actions,
            CachedStep {
                spec,
                cache,
                commit: false,
            },
        )
    }

    /// [`ActionModule::forward_cached`], after which the block's keys and
    /// values join the cache and frames no later block sees leave it.
    pub fn forward_and_commit(
        &self,
        x: &Tensor,
        grid: [usize; 3],
        actions: Actions,
        spec: &CausalSpec,
        cache: &mut ActionCache,
    ) -> Result<Tensor> {
        self.cached(
            x,
            grid,
            actions,
            CachedStep {
                spec,
                cache,
                commit: true,
            },
        )
    }

    fn cached(
        &self,
        x: &Tensor,
        grid: [usize; 3],
        actions: Actions,
        step: CachedStep,
    ) -> Result<Tensor> {
        let CachedStep {
            spec,
            cache,
            commit,
        } = step;
        let (keyboard, mouse) = (actions.keyboard, actions.mouse);
        let first = cache.next_frame;
        self.check(x, grid, keyboard, mouse, first + grid[0])?;
        if spec.block_at(first) != Some(grid[0]) {
            return Err(WanError::Input {
                what: "action block".into(),
                reason: format!(
                    "{} latent frames at frame {first}: the block there is {:?} frames",
                    grid[0],
                    spec.block_at(first)
                ),
            });
        }
        let visible: Vec<usize> = (0..first).filter(|k| spec.sees(first, *k)).collect();
        let y = self.run(
            x,
            grid,
            keyboard,
            mouse,
            first,
            Seen::Cached {
                cache: &mut *cache,
                visible: &visible,
                commit,
            },
        )?;
        if commit {
            cache.next_frame += grid[0];
            let next = cache.next_frame;
            cache.mouse.evict_unseen(spec, next);
            cache.keyboard.evict_unseen(spec, next);
        }
        Ok(y)
    }

    fn check(
        &self,
        x: &Tensor,
        grid: [usize; 3],
        keyboard: &Tensor,
        mouse: &Tensor,
        frames: usize,
    ) -> Result<()> {
        let cfg = &self.cfg;
        let (b, l, c) = x.dims3()?;
        let [t, hh, ww] = grid;
        let n_pix = 1 + cfg.time_compression * (frames.max(1) - 1);
        let enough = |a: &Tensor, k: usize| {
            a.dims().len() == 3
                && a.dim(0).ok() == Some(b)
                && a.dim(1).is_ok_and(|n| n >= n_pix)
                && a.dim(2).ok() == Some(k)
        };
        if l != t * hh * ww
            || c != cfg.dim
            || !enough(keyboard, cfg.keyboard_dim_in)
            || !enough(mouse, cfg.mouse_dim_in)
        {
            return Err(WanError::Input {
                what: "action module inputs".into(),
                reason: format!(
                    "tokens {:?} of grid {grid:?}, keyboard {:?}, mouse {:?}: need [{b}, {}, {}], and at least 1 + {} ({frames} - 1) = {n_pix} pixel frames of {} keys and {} mouse axes",
                    x.dims(),
                    keyboard.dims(),
                    mouse.dims(),
                    t * hh * ww,
                    cfg.dim,
                    cfg.time_compression,
                    cfg.keyboard_dim_in,
                    cfg.mouse_dim_in
                ),
            });
        }
        Ok(())
    }

    fn run(
        &self,
        x: &Tensor,
        grid: [usize; 3],
        keyboard: &Tensor,
        mouse: &Tensor,
        first: usize,
        mut seen: Seen,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, l, c) = x.dims3()?;
        let [t, hh, ww] = grid;
        let s = hh * ww;
        let heads = cfg.heads;
        let x = x.to_dtype(DType::F32)?;
        // Both attentions rotate queries and keys by the same frames' angles.
        let table = self.rope_table(first, t, x.device())?;
        // Mouse: each location's tokens over the latent frames.
        let hm = cfg.mouse_hidden_dim;
        let at_location = x
            .reshape((b, t, s, c))?
            .permute([0, 2, 1, 3])?
            .reshape((b * s, t, c))?;
        let mw = self.windows(&mouse.to_dtype(DType::F32)?, first, t)?;
        let mw = mw
            .unsqueeze(1)?
            .broadcast_as((b, s, t, mw.dim(2)?))?
            .reshape((b * s, t, ()))?;
        let (l0, l2, ln) = &self.mouse_mlp;
        let h =
            ln.forward(&l2.forward(&l0.forward(&Tensor::cat(&[&at_location, &mw], 2)?)?.gelu()?)?)?;
        let qkv = h.broadcast_matmul(&self.t_qkv.t()?)?;
        let split = |z: Tensor| -> Result<Tensor> {
            Ok(z.reshape((b * s, t, heads, ()))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = self.rope(&Self::rms(&split(qkv.narrow(2, 0, hm)?)?)?, &table)?;
        let k = self.rope(&Self::rms(&split(qkv.narrow(2, hm, hm)?)?)?, &table)?;
        let v = split(qkv.narrow(2, 2 * hm, hm)?)?;
        let (k, v, mask) = seen.keys(Branch::Mouse, first, k, v)?;
        let o = attention(&q, &k, &v, mask.as_ref())?
            .transpose(1, 2)?
            .reshape((b, s, t, hm))?
            .permute([0, 2, 1, 3])?
            .reshape((b, l, hm))?;
        let x = (&x + o.broadcast_matmul(&self.proj_mouse.t()?)?)?;
        // Keyboard: every video token attends to the keyboard windows of the frames it sees.
        let hk = cfg.keyboard_hidden_dim;
        let steps = self.keyboard_embed.1.forward(
            &self
                .keyboard_embed
                .0
                .forward(&keyboard.to_dtype(DType::F32)?)?
                .silu()?,
        )?;
        let kv = self
            .windows(&steps, first, t)?
            .broadcast_matmul(&self.keyboard_attn_kv.t()?)?;
        let per_location = |z: Tensor| -> Result<Tensor> {
            let z = z.reshape((b, t, heads, ()))?.transpose(1, 2)?;
            let dh = z.dim(3)?;
            Ok(z.unsqueeze(1)?
                .broadcast_as((b, s, heads, t, dh))?
                .reshape((b * s, heads, t, dh))?
                .contiguous()?)
        };
        let k = self.rope(&Self::rms(&per_location(kv.narrow(2, 0, hk)?)?)?, &table)?;
        let v = per_location(kv.narrow(2, hk, hk)?)?;
        let (k, v, mask) = seen.keys(Branch::Keyboard, first, k, v)?;
        let q = x
            .broadcast_matmul(&self.mouse_attn_q.t()?)?
            .reshape((b, t, s, heads, ()))?
            .permute([0, 2, 3, 1, 4])?
            .reshape((b * s, heads, t, ()))?;
        let q = self.rope(&Self::rms(&q)?, &table)?;
        let o = attention(&q, &k, &v, mask.as_ref())?
            .reshape((b, s, heads, t, ()))?
            .permute([0, 3, 1, 2, 4])?
            .reshape((b, l, hk))?;
        Ok((&x + o.broadcast_matmul(&self.proj_keyboard.t()?)?)?)
    }
}

/// A step of block-by-block generation.
struct CachedStep<'a> {
    spec: &'a CausalSpec,
    cache: &'a mut ActionCache,
    commit: bool,
}

/// Which attention of the module.
#[derive(Clone, Copy)]
enum Branch {
    Mouse,
    Keyboard,
}

/// What the queries of a chunk see: the whole clip under a mask, or the
/// cached frames and the chunk's own.
enum Seen<'a> {
    Masked(&'a Tensor),
    Cached {
        cache: &'a mut ActionCache,
        visible: &'a [usize],
        commit: bool,
    },
}

impl Seen<'_> {
    /// The keys and values [N, H, T, Dh] the queries see, and their mask.
    fn keys(
        &mut self,
        branch: Branch,
        first: usize,
        k: Tensor,
        v: Tensor,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        match self {
            Seen::Masked(m) => Ok((k, v, Some((*m).clone()))),
            Seen::Cached {
                cache,
                visible,
                commit,
            } => {
                let frames = match branch {
                    Branch::Mouse => &mut cache.mouse,
                    Branch::Keyboard => &mut cache.keyboard,
                };
                let commit = commit.then_some(FrameRange {
                    start: first,
                    count: k.dim(2)?,
                });
                let (k, v) = frames.keys_with(visible, k, v, commit)?;
                Ok((k, v, None))
            }
        }
    }
}

/// The mouse and keyboard keys and values of the latent frames generated
/// so far, per frame, for one action module.
#[derive(Default, Clone)]
pub struct ActionCache {
    mouse: FrameKv,
    keyboard: FrameKv,
    next_frame: usize,
}

impl ActionCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// The index of the next latent frame.
    pub fn next_frame(&self) -> usize {
        self.next_frame
    }

    /// Frames held (after eviction).
    pub fn frames_held(&self) -> usize {
        self.mouse.len()
    }

    /// The same cache with `f` applied to every key and value.
    pub(crate) fn map(&self, f: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<ActionCache> {
        Ok(ActionCache {
            mouse: self.mouse.map(f)?,
            keyboard: self.keyboard.map(f)?,
            next_frame: self.next_frame,
        })
    }
}
