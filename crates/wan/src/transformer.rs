//! The Wan2.1 video diffusion transformer (diffusers'
//! `WanTransformer3DModel`, Wan's `WanModel` for text-to-video).
//!
//! A latent video [B, C, F, H, W] is cut into patches (1, 2, 2) and
//! embedded; each block modulates its self-attention and feed-forward by
//! six vectors from the timestep (its `modulation` table plus the projected
//! time embedding), rotates queries and keys by 3-axis rotary embeddings
//! (frame, row, column of each patch), RMS-normalises them across heads,
//! and cross-attends to the conditioning sequence (text embeddings, padded
//! by the caller as Wan's pipeline pads them to 512 tokens); the head
//! modulates a last layer norm by the time embedding and maps each token
//! back to its patch. Norms and modulation run in f32, the rest in the
//! model's dtype (f32 or bf16), as diffusers does.

use candle_core::{DType, Device, Tensor};

use crate::action_module::{ActionCache, ActionModule, Actions};
use crate::config::{ContextKind, WanTransformerConfig};
use crate::frame_cache::{FrameKv, FrameRange};
use crate::nn::{LayerNorm, Linear, RmsNorm, attention, layer_norm, rope_pairs};
use crate::weights::Weights;
use crate::{Result, WanError};

/// Self- or cross-attention with RMS-normalised queries and keys.
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    heads: usize,
}

impl Attention {
    fn new(cfg: &WanTransformerConfig, w: &Weights, prefix: &str, dtype: DType) -> Result<Self> {
        let d = cfg.dim();
        let lin = |n: &str| Linear::new(w, &format!("{prefix}.{n}"), d, d, dtype);
        Ok(Attention {
            q: lin("q")?,
            k: lin("k")?,
            v: lin("v")?,
            o: lin("o")?,
            norm_q: RmsNorm::new(w, &format!("{prefix}.norm_q"), d, cfg.eps)?,
            norm_k: RmsNorm::new(w, &format!("{prefix}.norm_k"), d, cfg.eps)?,
            heads: cfg.num_attention_heads,
        })
    }

    /// `x` [B, L, D] attends to `source` [B, S, D] (itself when `None`);
    /// `rope` rotates queries and keys (self-attention); `keys` says which
    /// keys each query sees (self-attention).
    fn forward(
        &self,
        x: &Tensor,
        source: Option<&Tensor>,
        rope: Option<&(Tensor, Tensor)>,
        keys: Keys,
    ) -> Result<Tensor> {
        let src = source.unwrap_or(x);
        let split = |t: Tensor| -> Result<Tensor> {
            let (b, l, d) = t.dims3()?;
            Ok(t.reshape((b, l, self.heads, d / self.heads))?
                .transpose(1, 2)?)
        };
        let mut q = split(self.norm_q.forward(&self.q.forward(x)?)?)?;
        let mut k = split(self.norm_k.forward(&self.k.forward(src)?)?)?;
        let mut v = split(self.v.forward(src)?)?;
        if let Some((cos, sin)) = rope {
            q = rope_pairs(&q, cos, sin)?;
            k = rope_pairs(&k, cos, sin)?;
        }
        let mut mask = None;
        match keys {
            Keys::All => {}
            Keys::Masked(m) => mask = Some(m),
            Keys::Cached {
                frames,
                visible,
                commit,
            } => (k, v) = frames.keys_with(visible, k, v, commit)?,
        }
        let (b, _, l, _) = q.dims4()?;
        let out = attention(&q, &k, &v, mask)?
            .transpose(1, 2)?
            .reshape((b, l, ()))?;
        self.o.forward(&out)
    }
}

/// Which keys the queries of a self-attention see.
enum Keys<'a> {
    /// Every token of the clip (the bidirectional model).
    All,
    /// An additive mask [L, L] (0 or -inf): the block-causal clip.
    Masked(&'a Tensor),
    /// This chunk's own tokens after the cached frames in `visible`; with
    /// `commit`, the chunk's keys and values join the cache.
    Cached {
        frames: &'a mut FrameKv,
        visible: &'a [usize],
        commit: Option<FrameRange>,
    },
}

/// Block-causal attention over latent frames, as causal video models built
/// on Wan (Matrix-Game 2.0, Self-Forcing) use it: frames come in blocks of
/// `frames_per_block` (the first block may be shorter:
/// `first_block_frames`, 0 meaning a block like the others); a token sees
/// the tokens of its own block and of earlier blocks, back to
/// `local_window_frames` frames before its block's end (0: no limit), and
/// the first `sink_frames` frames always.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CausalSpec {
    pub frames_per_block: usize,
    pub local_window_frames: usize,
    pub sink_frames: usize,
    /// Frames of the first block (0: `frames_per_block`). A world prompt's
    /// first frame as a block of its own, before blocks of whole clips.
    pub first_block_frames: usize,
}

impl CausalSpec {
    /// Blocks of `frames_per_block` frames from the first, no window, no sink.
    pub fn blocks_of(frames_per_block: usize) -> Self {
        CausalSpec {
            frames_per_block,
            local_window_frames: 0,
            sink_frames: 0,
            first_block_frames: 0,
        }
    }

    fn first_block(&self) -> usize {
        if self.first_block_frames == 0 {
            self.frames_per_block
        } else {
            self.first_block_frames
        }
    }

    /// The end (exclusive) of the block that holds `frame`.
    pub fn block_end(&self, frame: usize) -> usize {
        let first = self.first_block();
        if frame < first {
            first
        } else {
            first + ((frame - first) / self.frames_per_block + 1) * self.frames_per_block
        }
    }

    /// Whether a block starts at `frame`, and its length.
    pub fn block_at(&self, frame: usize) -> Option<usize> {
        let first = self.first_block();
        if frame == 0 {
            Some(first)
        } else if frame >= first && (frame - first).is_multiple_of(self.frames_per_block) {
            Some(self.frames_per_block)
        } else {
            None
        }
    }

    /// Whether a token of frame `query` sees the tokens of frame `key`.
    pub fn sees(&self, query: usize, key: usize) -> bool {
        let end = self.block_end(query);
        key < end
            && (self.local_window_frames == 0
                || key + self.local_window_frames >= end
                || key < self.sink_frames)
    }

    fn validate(&self) -> Result<()> {
        if self.frames_per_block == 0
            || (self.local_window_frames != 0
                && self.local_window_frames < self.frames_per_block.max(self.first_block()))
        {
            return Err(WanError::Config(format!(
                "causal attention: {self:?}: blocks of at least one frame, a window of at least one block (or 0: none)"
            )));
        }
        Ok(())
    }
}

/// The self-attention keys and values of the frames generated so far, per
/// transformer block: chunk-by-chunk generation with
/// [`WanTransformer::forward_cached`]. Cloning is cheap (tensors are
/// shared): a clone continues independently.
#[derive(Clone)]
pub struct KvCache {
    layers: Vec<FrameKv>,
    /// The action modules' own caches (blocks without one keep an empty one).
    actions: Vec<ActionCache>,
    next_frame: usize,
}

impl KvCache {
    pub fn new() -> Self {
        KvCache {
            layers: Vec::new(),
            actions: Vec::new(),
            next_frame: 0,
        }
    }

    /// The index of the next latent frame (the frames committed so far).
    pub fn next_frame(&self) -> usize {
        self.next_frame
    }

    /// Frames whose keys and values are held (after eviction of those no
    /// later block sees).
    pub fn frames_held(&self) -> usize {
        self.layers.first().map_or(0, |l| l.len())
    }

    /// The batch of the sequences held (None: nothing held yet).
    pub fn batch(&self) -> Option<usize> {
        self.layers.first().and_then(|l| l.batch())
    }

    /// The same cache with `f` applied to every key and value (of the
    /// self-attentions and the action modules): detaching, repeating the
    /// batch, casting.
    pub fn map(&self, f: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<KvCache> {
        Ok(KvCache {
            layers: self
                .layers
                .iter()
                .map(|l| l.map(f))
                .collect::<Result<_>>()?,
            actions: self
                .actions
                .iter()
                .map(|a| a.map(f))
                .collect::<Result<_>>()?,
            next_frame: self.next_frame,
        })
    }
}

impl Default for KvCache {
    fn default() -> Self {
        Self::new()
    }
}

/// One transformer block (Wan's names: norm1, self_attn, norm3, cross_attn,
/// norm2, ffn, modulation).
struct Block {
    self_attn: Attention,
    cross_attn: Attention,
    norm3: Option<LayerNorm>,
    ffn_in: Linear,
    ffn_out: Linear,
    modulation: Tensor,
    eps: f64,
    action: Option<ActionModule>,
}

impl Block {
    fn new(cfg: &WanTransformerConfig, w: &Weights, index: usize, dtype: DType) -> Result<Self> {
        let d = cfg.dim();
        let prefix = &format!("blocks.{index}");
        Ok(Block {
            self_attn: Attention::new(cfg, w, &format!("{prefix}.self_attn"), dtype)?,
            cross_attn: Attention::new(cfg, w, &format!("{prefix}.cross_attn"), dtype)?,
            norm3: if cfg.cross_attn_norm {
                Some(LayerNorm::new(w, &format!("{prefix}.norm3"), d, cfg.eps)?)
            } else {
                None
            },
            ffn_in: Linear::new(w, &format!("{prefix}.ffn.0"), d, cfg.ffn_dim, dtype)?,
            ffn_out: Linear::new(w, &format!("{prefix}.ffn.2"), cfg.ffn_dim, d, dtype)?,
            modulation: w.take(&format!("{prefix}.modulation"), &[1, 6, d], DType::F32)?,
            eps: cfg.eps,
            action: match &cfg.action {
                Some(a) if index < cfg.action_blocks => {
                    Some(ActionModule::new(a, w, &format!("{prefix}.action_model"))?)
                }
                _ => None,
            },
        })
    }

    /// `x` [B, L, D]; `e` [B, 1 or L, 6, D] the projected time embedding
    /// (f32), per clip or per token.
    fn forward(
        &self,
        x: &Tensor,
        e: &Tensor,
        context: &Tensor,
        rope: &(Tensor, Tensor),
        keys: Keys,
        act: ActionStep,
    ) -> Result<Tensor> {
        let dtype = x.dtype();
        let e = self.modulation.unsqueeze(0)?.broadcast_add(e)?;
        let m = |i: usize| e.narrow(2, i, 1)?.squeeze(2);
        let modulate = |x: &Tensor, shift: usize, scale: usize| -> Result<Tensor> {
            Ok(layer_norm(x, self.eps)?
                .broadcast_mul(&(m(scale)? + 1.0)?)?
                .broadcast_add(&m(shift)?)?
                .to_dtype(dtype)?)
        };
        let gated = |x: &Tensor, y: &Tensor, gate: usize| -> Result<Tensor> {
            Ok(
                (x.to_dtype(DType::F32)? + y.to_dtype(DType::F32)?.broadcast_mul(&m(gate)?)?)?
                    .to_dtype(dtype)?,
            )
        };
        let y = self
            .self_attn
            .forward(&modulate(x, 0, 1)?, None, Some(rope), keys)?;
        let x = gated(x, &y, 2)?;
        let n = match &self.norm3 {
            Some(norm) => norm.forward(&x)?.to_dtype(dtype)?,
            None => x.clone(),
        };
        let mut x = (&x
            + self
                .cross_attn
                .forward(&n, Some(context), None, Keys::All)?)?;
        if let Some(module) = &self.action {
            x = match act {
                ActionStep::Full { grid, actions, spec } => module.forward(&x, grid, *actions, spec)?,
                ActionStep::Cached { grid, actions, spec, cache, commit: false } => module.forward_cached(&x, grid, *actions, spec, cache)?,
                ActionStep::Cached { grid, actions, spec, cache, commit: true } => module.forward_and_commit(&x, grid, *actions, spec, cache)?,
                ActionStep::None => return Err(WanError::Input { what: "actions".into(), reason: "this model has action modules: pass the keyboard and mouse inputs, block-causally".into() }),
            }
            .to_dtype(dtype)?;
        }
        let y = self
            .ffn_out
            .forward(&self.ffn_in.forward(&modulate(&x, 3, 4)?)?.gelu()?)?;
        gated(&x, &y, 5)
    }
}

/// The Wan2.1 video diffusion transformer.
pub struct WanTransformer {
    cfg: WanTransformerConfig,
    dtype: DType,
    patch_embedding: Linear,
    context_embedding: ContextEmbedding,
    time_embedding: (Linear, Linear),
    time_projection: Linear,
    blocks: Vec<Block>,
    head: Linear,
    head_modulation: Tensor,
}

impl WanTransformer {
    /// Build the model from `weights` (either layout), in `dtype` (F32 or
    /// BF16; norms, modulation and the time embedding stay f32). Every
    /// tensor of the checkpoint must be used, with the expected shape.
    pub fn new(cfg: &WanTransformerConfig, w: &Weights, dtype: DType) -> Result<Self> {
        cfg.validate()?;
        if !matches!(dtype, DType::F32 | DType::BF16) {
            return Err(WanError::Config(format!(
                "dtype {dtype:?}: the Wan transformer runs in f32 or bf16"
            )));
        }
        let d = cfg.dim();
        let [pt, ph, pw] = cfg.patch_size;
        let pv = cfg.patch_volume();
        let patch = w
            .take(
                "patch_embedding.weight",
                &[d, cfg.in_channels, pt, ph, pw],
                dtype,
            )?
            .reshape((d, cfg.in_channels * pv))?;
        let patch_embedding =
            Linear::from_parts(patch, w.take("patch_embedding.bias", &[d], dtype)?);
        let model = WanTransformer {
            patch_embedding,
            context_embedding: match cfg.context {
                ContextKind::Text => ContextEmbedding::Text(
                    Linear::new(w, "text_embedding.0", cfg.text_dim, d, dtype)?,
                    Linear::new(w, "text_embedding.2", d, d, dtype)?,
                ),
                ContextKind::ClipImage => ContextEmbedding::ClipImage(
                    LayerNorm::new(w, "img_emb.proj.0", cfg.text_dim, 1e-5)?,
                    Linear::new(w, "img_emb.proj.1", cfg.text_dim, cfg.text_dim, dtype)?,
                    Linear::new(w, "img_emb.proj.3", cfg.text_dim, d, dtype)?,
                    LayerNorm::new(w, "img_emb.proj.4", d, 1e-5)?,
                ),
            },
            time_embedding: (
                Linear::new(w, "time_embedding.0", cfg.freq_dim, d, DType::F32)?,
                Linear::new(w, "time_embedding.2", d, d, DType::F32)?,
            ),
            time_projection: Linear::new(w, "time_projection.1", d, 6 * d, DType::F32)?,
            blocks: (0..cfg.num_layers)
                .map(|i| Block::new(cfg, w, i, dtype))
                .collect::<Result<_>>()?,
            head: Linear::new(w, "head.head", d, cfg.out_channels * pv, dtype)?,
            head_modulation: w.take("head.modulation", &[1, 2, d], DType::F32)?,
            cfg: cfg.clone(),
            dtype,
        };
        w.finish()?;
        Ok(model)
    }

    pub fn config(&self) -> &WanTransformerConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The sinusoidal embedding of timesteps `t` [B] (f32, 0..1000):
    /// [cos, sin] of t times 10000^(-i / half), as diffusers' `Timesteps`
    /// (flip_sin_to_cos) and Wan's `sinusoidal_embedding_1d`.
    fn timestep_embedding(&self, t: &Tensor) -> Result<Tensor> {
        let half = self.cfg.freq_dim / 2;
        let freqs: Vec<f32> = (0..half)
            .map(|i| (-(10000f32.ln()) * i as f32 / half as f32).exp())
            .collect();
        let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
        let angles = t
            .to_dtype(DType::F32)?
            .unsqueeze(1)?
            .broadcast_mul(&freqs)?;
        Ok(Tensor::cat(&[angles.cos()?, angles.sin()?], 1)?)
    }

    /// Cosines and sines [L, Dh / 2] of the rotary angles of the L = F' H' W'
    /// patches in (frame, row, column) order: the first pairs turn with the
    /// frame index, the next with the row, the last with the column, each
    /// axis at frequencies theta^(-2i / axis width).
    pub fn rope_tables(
        cfg: &WanTransformerConfig,
        grid: [usize; 3],
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        Self::rope_tables_from(cfg, grid, 0, device)
    }

    /// [`WanTransformer::rope_tables`] of frames `first_frame..`: the frame
    /// axis turns with the absolute latent frame index.
    pub fn rope_tables_from(
        cfg: &WanTransformerConfig,
        grid: [usize; 3],
        first_frame: usize,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let axes = cfg.rope_axes();
        let reach = [first_frame + grid[0], grid[1], grid[2]];
        if let Some(n) = reach.iter().find(|n| **n > cfg.rope_max_seq_len) {
            return Err(WanError::Input {
                what: "latent video".into(),
                reason: format!(
                    "{n} patches along one axis; the rotary tables cover {}",
                    cfg.rope_max_seq_len
                ),
            });
        }
        let freqs: Vec<Vec<f64>> = axes
            .iter()
            .map(|&a| {
                (0..a / 2)
                    .map(|i| cfg.rope_theta.powf(-((2 * i) as f64) / a as f64))
                    .collect()
            })
            .collect();
        let half = cfg.attention_head_dim / 2;
        let l = grid.iter().product::<usize>();
        let (mut cos, mut sin) = (Vec::with_capacity(l * half), Vec::with_capacity(l * half));
        for f in first_frame..first_frame + grid[0] {
            for h in 0..grid[1] {
                for w in 0..grid[2] {
                    for (axis, pos) in [f, h, w].into_iter().enumerate() {
                        for fr in &freqs[axis] {
                            let a = pos as f64 * fr;
                            cos.push(a.cos() as f32);
                            sin.push(a.sin() as f32);
                        }
                    }
                }
            }
        }
        Ok((
            Tensor::from_vec(cos, (l, half), device)?,
            Tensor::from_vec(sin, (l, half), device)?,
        ))
    }

    /// The predicted flow (velocity) [B, C_out, F, H, W] of the noisy
    /// latent video `x` [B, C_in, F, H, W] at timesteps `t` [B] (0..1000),
    /// conditioned on `context` [B, L, text_dim]; every token sees every
    /// other (the bidirectional Wan2.1).
    pub fn forward(&self, x: &Tensor, t: &Tensor, context: &Tensor) -> Result<Tensor> {
        self.run(x, t, context, None, Mode::Full)
    }

    /// The whole clip under block-causal attention (training, teacher
    /// forcing): `t` is [B] or per latent frame [B, F].
    /// `actions`: the keyboard and mouse per pixel frame, for a model with
    /// action modules (Matrix-Game 2.0).
    pub fn forward_block_causal(
        &self,
        x: &Tensor,
        t: &Tensor,
        context: &Tensor,
        actions: Option<Actions>,
        spec: &CausalSpec,
    ) -> Result<Tensor> {
        spec.validate()?;
        self.run(x, t, context, actions, Mode::BlockCausal(spec))
    }

    /// One block of `spec.frames_per_block` latent frames after the frames
    /// in `cache` (generation: a denoising step): its tokens see the cached
    /// frames the spec lets them see and each other; the cache is left as
    /// it was. A stream of blocks equals
    /// [`WanTransformer::forward_block_causal`] of the whole clip.
    /// `actions` run from the first pixel frame through this block's.
    pub fn forward_cached(
        &self,
        x: &Tensor,
        t: &Tensor,
        context: &Tensor,
        actions: Option<Actions>,
        spec: &CausalSpec,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        self.run_cached(
            x,
            t,
            context,
            actions,
            Mode::Cached {
                spec,
                cache,
                commit: false,
            },
        )
    }

    /// [`WanTransformer::forward_cached`], after which the block's keys and
    /// values join the cache and frames no later block sees leave it: call
    /// it once per block, on the clean latents at t = 0, after the
    /// denoising steps.
    pub fn forward_and_commit(
        &self,
        x: &Tensor,
        t: &Tensor,
        context: &Tensor,
        actions: Option<Actions>,
        spec: &CausalSpec,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        self.run_cached(
            x,
            t,
            context,
            actions,
            Mode::Cached {
                spec,
                cache,
                commit: true,
            },
        )
    }

    fn run_cached(
        &self,
        x: &Tensor,
        t: &Tensor,
        context: &Tensor,
        actions: Option<Actions>,
        mut mode: Mode,
    ) -> Result<Tensor> {
        let Mode::Cached { spec, cache, .. } = &mut mode else {
            unreachable!("called with a cache")
        };
        spec.validate()?;
        let Some(block) = spec.block_at(cache.next_frame) else {
            return Err(WanError::Input {
                what: "latent block".into(),
                reason: format!("no block starts at frame {} of {spec:?}", cache.next_frame),
            });
        };
        if x.dims().len() != 5 || x.dim(2)? != block * self.cfg.patch_size[0] {
            return Err(WanError::Input {
                what: "latent block".into(),
                reason: format!(
                    "shape {:?}: the block at frame {} is {block} latent frames",
                    x.dims(),
                    cache.next_frame
                ),
            });
        }
        if cache.layers.is_empty() {
            cache.layers = (0..self.blocks.len()).map(|_| FrameKv::default()).collect();
            cache.actions = (0..self.blocks.len()).map(|_| ActionCache::new()).collect();
        }
        self.run(x, t, context, actions, mode)
    }

    fn run(
        &self,
        x: &Tensor,
        t: &Tensor,
        context: &Tensor,
        actions: Option<Actions>,
        mut mode: Mode,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, c, f, h, w) = x.dims5()?;
        let [pt, ph, pw] = cfg.patch_size;
        if c != cfg.in_channels || f % pt != 0 || h % ph != 0 || w % pw != 0 {
            return Err(WanError::Input {
                what: "latent video".into(),
                reason: format!(
                    "shape [{b}, {c}, {f}, {h}, {w}]: needs {} channels and frames, height, width divisible by the patch {:?}",
                    cfg.in_channels, cfg.patch_size
                ),
            });
        }
        let grid = [f / pt, h / ph, w / pw];
        let per_frame = t.dims().len() == 2;
        if !(t.dims() == [b] || t.dims() == [b, grid[0]])
            || context.dims().len() != 3
            || context.dim(0)? != b
            || context.dim(2)? != cfg.text_dim
        {
            return Err(WanError::Input {
                what: "timestep or context".into(),
                reason: format!(
                    "timestep {:?} and context {:?}: need [{b}] (or [{b}, {}] per latent frame) and [{b}, L, {}]",
                    t.dims(),
                    context.dims(),
                    grid[0],
                    cfg.text_dim
                ),
            });
        }
        let l = grid.iter().product::<usize>();
        let lf = grid[1] * grid[2];
        let d = cfg.dim();
        // Patches [B, L, C pt ph pw], in the order of the Conv3d's weight.
        let patches = x
            .to_dtype(self.dtype)?
            .reshape(&[b, c, grid[0], pt, grid[1], ph, grid[2], pw][..])?
            .permute([0, 2, 4, 6, 1, 3, 5, 7])?
            .reshape((b, l, c * pt * ph * pw))?;
        let mut hidden = self.patch_embedding.forward(&patches)?;
        let first_frame = match &mode {
            Mode::Cached { cache, .. } => cache.next_frame,
            _ => 0,
        };
        let rope = Self::rope_tables_from(cfg, grid, first_frame, x.device())?;
        // The time embedding per clip [B, 1, D] or per token [B, L, D].
        let temb = self.time_embedding.1.forward(
            &self
                .time_embedding
                .0
                .forward(&self.timestep_embedding(&t.flatten_all()?)?)?
                .silu()?,
        )?;
        let temb = if per_frame {
            temb.reshape((b, grid[0], 1, d))?
                .broadcast_as((b, grid[0], lf, d))?
                .reshape((b, l, d))?
        } else {
            temb.reshape((b, 1, d))?
        };
        let e = self.time_projection.forward(&temb.silu()?)?;
        let e = e.reshape((b, e.dim(1)?, 6, d))?;
        let ctx = match &self.context_embedding {
            ContextEmbedding::Text(l0, l2) => {
                l2.forward(&l0.forward(&context.to_dtype(self.dtype)?)?.gelu()?)?
            }
            ContextEmbedding::ClipImage(n0, l1, l3, n4) => {
                let h = l1
                    .forward(&n0.forward(context)?.to_dtype(self.dtype)?)?
                    .gelu_erf()?;
                n4.forward(&l3.forward(&h)?)?.to_dtype(self.dtype)?
            }
        };
        let mask = match &mode {
            Mode::BlockCausal(spec) => {
                let m: Vec<f32> = (0..l)
                    .flat_map(|q| {
                        (0..l).map(move |k| {
                            if spec.sees(q / lf, k / lf) {
                                0.0
                            } else {
                                f32::NEG_INFINITY
                            }
                        })
                    })
                    .collect();
                Some(Tensor::from_vec(m, (l, l), x.device())?)
            }
            _ => None,
        };
        let visible: Vec<usize> = match &mode {
            Mode::Cached { spec, .. } => (0..first_frame)
                .filter(|k| spec.sees(first_frame, *k))
                .collect(),
            _ => Vec::new(),
        };
        for (i, block) in self.blocks.iter().enumerate() {
            let (keys, act) = match &mut mode {
                Mode::Full => (Keys::All, ActionStep::None),
                Mode::BlockCausal(spec) => (
                    Keys::Masked(mask.as_ref().expect("built above")),
                    actions
                        .as_ref()
                        .map_or(ActionStep::None, |a| ActionStep::Full {
                            grid,
                            actions: a,
                            spec,
                        }),
                ),
                Mode::Cached {
                    cache,
                    commit,
                    spec,
                } => {
                    let KvCache {
                        layers,
                        actions: action_caches,
                        ..
                    } = &mut **cache;
                    let keys = Keys::Cached {
                        frames: &mut layers[i],
                        visible: &visible,
                        commit: commit.then_some(FrameRange {
                            start: first_frame,
                            count: grid[0],
                        }),
                    };
                    let act = match &actions {
                        Some(a) => ActionStep::Cached {
                            grid,
                            actions: a,
                            spec,
                            cache: &mut action_caches[i],
                            commit: *commit,
                        },
                        None => ActionStep::None,
                    };
                    (keys, act)
                }
            };
            hidden = block.forward(&hidden, &e, &ctx, &rope, keys, act)?;
        }
        if let Mode::Cached {
            spec,
            cache,
            commit: true,
        } = &mut mode
        {
            cache.next_frame += grid[0];
            let next = cache.next_frame;
            for layer in &mut cache.layers {
                layer.evict_unseen(spec, next);
            }
        }
        let head_e = self
            .head_modulation
            .unsqueeze(0)?
            .broadcast_add(&temb.unsqueeze(2)?)?;
        let (shift, scale) = (
            head_e.narrow(2, 0, 1)?.squeeze(2)?,
            head_e.narrow(2, 1, 1)?.squeeze(2)?,
        );
        let normed = layer_norm(&hidden, cfg.eps)?
            .broadcast_mul(&(scale + 1.0)?)?
            .broadcast_add(&shift)?
            .to_dtype(self.dtype)?;
        let out = self.head.forward(&normed)?;
        // Tokens back to patches: the last axis is (pt, ph, pw, C_out).
        let co = cfg.out_channels;
        Ok(out
            .reshape(&[b, grid[0], grid[1], grid[2], pt, ph, pw, co][..])?
            .permute([0, 7, 1, 4, 2, 5, 3, 6])?
            .reshape((b, co, f, h, w))?)
    }
}

/// What a block's action module does in a forward pass.
enum ActionStep<'a> {
    None,
    Full {
        grid: [usize; 3],
        actions: &'a Actions<'a>,
        spec: &'a CausalSpec,
    },
    Cached {
        grid: [usize; 3],
        actions: &'a Actions<'a>,
        spec: &'a CausalSpec,
        cache: &'a mut ActionCache,
        commit: bool,
    },
}

/// The cross-attention's context embedding.
enum ContextEmbedding {
    /// Linear, GELU(tanh), Linear (`text_embedding.0/2`).
    Text(Linear, Linear),
    /// LayerNorm, Linear, GELU, Linear, LayerNorm (`img_emb.proj.0/1/3/4`).
    ClipImage(LayerNorm, Linear, Linear, LayerNorm),
}

/// How the tokens of a forward pass attend to each other.
enum Mode<'a> {
    Full,
    BlockCausal(&'a CausalSpec),
    Cached {
        spec: &'a CausalSpec,
        cache: &'a mut KvCache,
        commit: bool,
    },
}
