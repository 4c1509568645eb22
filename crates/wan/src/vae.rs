//! The Wan2.1 video VAE (diffusers' `AutoencoderKLWan`, Wan's `WanVAE`):
//! causal 3-D convolutions, residual blocks with RMS norms, spatial and
//! temporal down/up-sampling, one attention block in the middle, 16 latent
//! channels at 8x fewer pixels and 4x fewer frames (1 + 4k frames make
//! 1 + k latent frames).
//!
//! Video goes through it chunk by chunk, as Wan's code does: the encoder
//! reads the first frame alone, then 4 frames at a time; the decoder one
//! latent frame at a time. Every causal convolution keeps the last two
//! frames it read (a [`Cache`] slot), so a chunk sees the frames before it:
//! [`WanVae::encode`] and [`WanVae::decode`] are one call over a whole clip,
//! [`WanVae::encode_chunk`] and [`WanVae::decode_chunk`] continue a stream
//! with the same result. candle has no 3-D convolution: [`CausalConv3d`]
//! sums 2-D convolutions over the kernel's time taps. Runs in f32.

use candle_core::{DType, IndexOp, Tensor};
use serde::{Deserialize, Serialize};

use crate::weights::Weights;
use crate::{Result, WanError};

/// Frames a causal convolution keeps between chunks.
const CACHE_FRAMES: usize = 2;

/// The VAE's shape (diffusers' field names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WanVaeConfig {
    pub base_dim: usize,
    pub z_dim: usize,
    pub dim_mult: Vec<usize>,
    pub num_res_blocks: usize,
    /// Levels (after each downsampling) with encoder attention; Wan2.1 has none.
    pub attn_scales: Vec<f64>,
    /// Per downsampling, whether it also halves time.
    pub temperal_downsample: Vec<bool>,
    /// Per-channel statistics of the latents: a model sees (z - mean) / std.
    pub latents_mean: Vec<f64>,
    pub latents_std: Vec<f64>,
}

impl WanVaeConfig {
    /// The released Wan2.1 VAE.
    pub fn wan2_1() -> Self {
        WanVaeConfig {
            base_dim: 96,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            attn_scales: vec![],
            temperal_downsample: vec![false, true, true],
            latents_mean: vec![
                -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134,
                -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
            ],
            latents_std: vec![
                2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526,
                2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
            ],
        }
    }

    /// The tiny random configuration of the test fixtures: 4x in space, 2x in time.
    pub fn tiny() -> Self {
        WanVaeConfig {
            base_dim: 8,
            z_dim: 4,
            dim_mult: vec![1, 2, 2],
            num_res_blocks: 2,
            attn_scales: vec![],
            temperal_downsample: vec![false, true],
            latents_mean: vec![0.1, -0.2, 0.3, -0.4],
            latents_std: vec![1.5, 0.5, 2.0, 1.0],
        }
    }

    /// Pixels per latent pixel along each spatial axis.
    pub fn spatial_factor(&self) -> usize {
        1 << (self.dim_mult.len() - 1)
    }

    /// Frames per latent frame after the first.
    pub fn temporal_factor(&self) -> usize {
        1 << self.temperal_downsample.iter().filter(|t| **t).count()
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(WanError::Config(m));
        if self.dim_mult.len() < 2 || self.temperal_downsample.len() + 1 != self.dim_mult.len() {
            return bad(format!(
                "dim_mult {:?} needs at least 2 levels and one temperal_downsample flag per level after the first ({:?})",
                self.dim_mult, self.temperal_downsample
            ));
        }
        if !self.attn_scales.is_empty() {
            return bad(format!(
                "attn_scales {:?}: encoder attention outside the middle block is not supported (Wan2.1 has none)",
                self.attn_scales
            ));
        }
        if self.base_dim == 0
            || self.z_dim == 0
            || self.num_res_blocks == 0
            || self.dim_mult.contains(&0)
        {
            return bad("base_dim, z_dim, num_res_blocks and dim_mult must be positive".into());
        }
        if self.latents_mean.len() != self.z_dim
            || self.latents_std.len() != self.z_dim
            || self.latents_std.iter().any(|s| s.is_nan() || *s <= 0.0)
        {
            return bad(format!(
                "latents_mean and latents_std need {} values each (std > 0)",
                self.z_dim
            ));
        }
        // Chunks of 4 frames must shrink to whole latent frames.
        if 4 % self.temporal_factor() != 0 {
            return bad(format!(
                "{} temporal downsamplings: at most 2 (chunks are 4 frames)",
                self.temporal_factor().trailing_zeros()
            ));
        }
        Ok(())
    }

    /// Read diffusers' `AutoencoderKLWan` config.json (Wan's own VAE has no
    /// config file: it is [`WanVaeConfig::wan2_1`]).
    pub fn from_json(text: &str) -> Result<Self> {
        let obj = &crate::config::json_object(text)?;
        for (k, unsupported) in [
            ("is_residual", serde_json::json!(true)),
            ("decoder_base_dim", serde_json::Value::Null),
        ] {
            if let Some(x) = obj.get(k)
                && (k == "is_residual" && *x == unsupported
                    || k == "decoder_base_dim" && !x.is_null())
            {
                return Err(WanError::Config(format!(
                    "{k} = {x}: the Wan2.2 VAE is not supported so far"
                )));
            }
        }
        let cfg: Self = crate::config::known_fields(obj, &Self::wan2_1(), "diffusers VAE config")?;
        cfg.validate()?;
        Ok(cfg)
    }
}

/// What a causal convolution remembers between chunks.
#[derive(Clone)]
enum Slot {
    /// Nothing yet (the first chunk).
    Empty,
    /// The temporal upsampler has seen the first chunk (which it does not
    /// upsample in time).
    FirstSeen,
    /// The last frames it read.
    Frames(Tensor),
}

/// The memory of every causal convolution of an encoder or a decoder, in
/// the order they run; one per stream of chunks.
#[derive(Clone)]
pub struct Cache {
    slots: Vec<Slot>,
    next: usize,
}

impl Cache {
    fn new() -> Self {
        Cache {
            slots: Vec::new(),
            next: 0,
        }
    }

    fn start_chunk(&mut self) {
        self.next = 0;
    }

    fn slot(&mut self) -> &mut Slot {
        if self.next == self.slots.len() {
            self.slots.push(Slot::Empty);
        }
        self.next += 1;
        &mut self.slots[self.next - 1]
    }
}

/// The last `n` frames of `x` [B, C, T, H, W] (all when fewer).
fn last_frames(x: &Tensor, n: usize) -> Result<Tensor> {
    let t = x.dim(2)?;
    Ok(x.narrow(2, t.saturating_sub(n), t.min(n))?)
}

/// A 3-D convolution, causal in time: the time axis is padded with
/// 2 * pad_t frames in front (or the cached frames of the previous chunk)
/// and none behind; height and width symmetrically. Computed as the sum
/// over time taps of 2-D convolutions.
pub(crate) struct CausalConv3d {
    /// The kernel as one 2-D convolution over the time taps' frames stacked
    /// along the channels: [O, kt * C, kh, kw], tap-major.
    kernel: Tensor,
    taps: usize,
    bias: Tensor,
    pad: [usize; 3],
    stride_t: usize,
}

impl CausalConv3d {
    fn new(
        w: &Weights,
        prefix: &str,
        cin: usize,
        cout: usize,
        k: [usize; 3],
        pad: [usize; 3],
        stride_t: usize,
    ) -> Result<Self> {
        let weight = w.take(
            &format!("{prefix}.weight"),
            &[cout, cin, k[0], k[1], k[2]],
            DType::F32,
        )?;
        let kernel = weight
            .permute([0, 2, 1, 3, 4])?
            .reshape((cout, k[0] * cin, k[1], k[2]))?
            .contiguous()?;
        Ok(CausalConv3d {
            kernel,
            taps: k[0],
            bias: w.take(&format!("{prefix}.bias"), &[cout], DType::F32)?,
            pad,
            stride_t,
        })
    }

    /// `x` [B, C, T, H, W] after `cached` frames (the previous chunk's).
    fn forward(&self, x: &Tensor, cached: Option<&Tensor>) -> Result<Tensor> {
        let mut front = 2 * self.pad[0];
        let mut x = x.clone();
        if let Some(c) = cached
            && front > 0
        {
            front -= c.dim(2)?.min(front);
            x = Tensor::cat(&[c, &x], 2)?;
        }
        let x = x
            .pad_with_zeros(2, front, 0)?
            .pad_with_zeros(3, self.pad[1], self.pad[1])?
            .pad_with_zeros(4, self.pad[2], self.pad[2])?;
        let (b, c, tp, h, w) = x.dims5()?;
        let kt = self.taps;
        if tp < kt {
            return Err(WanError::Input {
                what: "video".into(),
                reason: format!("{tp} frames reach a causal convolution of {kt} time taps"),
            });
        }
        let t_out = (tp - kt) / self.stride_t + 1;
        let frames = x.permute([0, 2, 1, 3, 4])?.contiguous()?;
        // Output frame i reads frames i*s .. i*s + kt: stack them along the
        // channels (tap-major) and run one 2-D convolution.
        let idx: Vec<u32> = (0..t_out)
            .flat_map(|i| (0..kt).map(move |j| (i * self.stride_t + j) as u32))
            .collect();
        let stacked = frames
            .index_select(&Tensor::new(idx.as_slice(), x.device())?, 1)?
            .reshape((b * t_out, kt * c, h, w))?;
        let y = stacked.conv2d(&self.kernel, 0, 1, 1, 1)?;
        let (_, o, ho, wo) = y.dims4()?;
        Ok(y.broadcast_add(&self.bias.reshape((1, o, 1, 1))?)?
            .reshape((b, t_out, o, ho, wo))?
            .permute([0, 2, 1, 3, 4])?
            .contiguous()?)
    }

    /// Run with the stream's memory: read the slot's frames, then keep the
    /// last two frames of `x` (with the slot's last frame in front when `x`
    /// has only one).
    fn forward_cached(&self, x: &Tensor, cache: &mut Cache) -> Result<Tensor> {
        let slot = cache.slot();
        let prev = match slot {
            Slot::Frames(t) => Some(t.clone()),
            _ => None,
        };
        let mut keep = last_frames(x, CACHE_FRAMES)?;
        if keep.dim(2)? < CACHE_FRAMES
            && let Some(p) = &prev
        {
            keep = Tensor::cat(&[&last_frames(p, 1)?, &keep], 2)?;
        }
        let y = self.forward(x, prev.as_ref())?;
        *slot = Slot::Frames(keep);
        Ok(y)
    }
}

/// RMS norm over the channel axis (1): x / |x| * sqrt(C) * gamma.
struct RmsNorm {
    gamma: Tensor,
    scale: f64,
}

impl RmsNorm {
    fn new(w: &Weights, prefix: &str, dim: usize, images: bool) -> Result<Self> {
        let shape: Vec<usize> = if images {
            vec![dim, 1, 1]
        } else {
            vec![dim, 1, 1, 1]
        };
        Ok(RmsNorm {
            gamma: w.take(&format!("{prefix}.gamma"), &shape, DType::F32)?,
            scale: (dim as f64).sqrt(),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(1e-12)?;
        Ok((x.broadcast_div(&norm)? * self.scale)?.broadcast_mul(&self.gamma)?)
    }
}

struct ResidualBlock {
    norm1: RmsNorm,
    conv1: CausalConv3d,
    norm2: RmsNorm,
    conv2: CausalConv3d,
    shortcut: Option<CausalConv3d>,
}

impl ResidualBlock {
    fn new(w: &Weights, prefix: &str, cin: usize, cout: usize) -> Result<Self> {
        Ok(ResidualBlock {
            norm1: RmsNorm::new(w, &format!("{prefix}.residual.0"), cin, false)?,
            conv1: CausalConv3d::new(
                w,
                &format!("{prefix}.residual.2"),
                cin,
                cout,
                [3, 3, 3],
                [1, 1, 1],
                1,
            )?,
            norm2: RmsNorm::new(w, &format!("{prefix}.residual.3"), cout, false)?,
            conv2: CausalConv3d::new(
                w,
                &format!("{prefix}.residual.6"),
                cout,
                cout,
                [3, 3, 3],
                [1, 1, 1],
                1,
            )?,
            shortcut: if cin != cout {
                Some(CausalConv3d::new(
                    w,
                    &format!("{prefix}.shortcut"),
                    cin,
                    cout,
                    [1, 1, 1],
                    [0, 0, 0],
                    1,
                )?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: &Tensor, cache: &mut Cache) -> Result<Tensor> {
        let h = match &self.shortcut {
            Some(s) => s.forward(x, None)?,
            None => x.clone(),
        };
        let y = self
            .conv1
            .forward_cached(&self.norm1.forward(x)?.silu()?, cache)?;
        let y = self
            .conv2
            .forward_cached(&self.norm2.forward(&y)?.silu()?, cache)?;
        Ok((y + h)?)
    }
}

/// Single-head self-attention over the pixels of each frame.
struct AttentionBlock {
    norm: RmsNorm,
    to_qkv: (Tensor, Tensor),
    proj: (Tensor, Tensor),
}

impl AttentionBlock {
    fn new(w: &Weights, prefix: &str, dim: usize) -> Result<Self> {
        let conv1x1 = |n: &str, o: usize| -> Result<(Tensor, Tensor)> {
            Ok((
                w.take(&format!("{prefix}.{n}.weight"), &[o, dim, 1, 1], DType::F32)?
                    .reshape((o, dim))?,
                w.take(&format!("{prefix}.{n}.bias"), &[o], DType::F32)?,
            ))
        };
        Ok(AttentionBlock {
            norm: RmsNorm::new(w, &format!("{prefix}.norm"), dim, true)?,
            to_qkv: conv1x1("to_qkv", 3 * dim)?,
            proj: conv1x1("proj", dim)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, t, h, w) = x.dims5()?;
        let frames = x.permute([0, 2, 1, 3, 4])?.reshape((b * t, c, h, w))?;
        // Pixels as tokens: [BT, HW, C].
        let tokens = self
            .norm
            .forward(&frames)?
            .reshape((b * t, c, h * w))?
            .transpose(1, 2)?;
        let qkv = tokens
            .broadcast_matmul(&self.to_qkv.0.t()?)?
            .broadcast_add(&self.to_qkv.1)?;
        let (q, k, v) = (
            qkv.narrow(2, 0, c)?,
            qkv.narrow(2, c, c)?,
            qkv.narrow(2, 2 * c, c)?,
        );
        let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? / (c as f64).sqrt())?;
        let p = crate::nn::softmax_last(&scores)?;
        let out = p
            .matmul(&v.contiguous()?)?
            .broadcast_matmul(&self.proj.0.t()?)?
            .broadcast_add(&self.proj.1)?;
        let out = out
            .transpose(1, 2)?
            .reshape((b, t, c, h, w))?
            .permute([0, 2, 1, 3, 4])?;
        Ok((out + x)?)
    }
}

/// The middle: residual block, attention, residual block.
struct Middle {
    res0: ResidualBlock,
    attn: AttentionBlock,
    res1: ResidualBlock,
}

impl Middle {
    fn new(w: &Weights, prefix: &str, dim: usize) -> Result<Self> {
        Ok(Middle {
            res0: ResidualBlock::new(w, &format!("{prefix}.0"), dim, dim)?,
            attn: AttentionBlock::new(w, &format!("{prefix}.1"), dim)?,
            res1: ResidualBlock::new(w, &format!("{prefix}.2"), dim, dim)?,
        })
    }

    fn forward(&self, x: &Tensor, cache: &mut Cache) -> Result<Tensor> {
        let x = self.res0.forward(x, cache)?;
        let x = self.attn.forward(&x)?;
        self.res1.forward(&x, cache)
    }
}

/// Apply a per-frame 2-D function to [B, C, T, H, W].
fn per_frame(x: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let (b, c, t, h, w) = x.dims5()?;
    let y = f(&x.permute([0, 2, 1, 3, 4])?.reshape((b * t, c, h, w))?)?;
    let (_, co, ho, wo) = y.dims4()?;
    Ok(y.reshape((b, t, co, ho, wo))?
        .permute([0, 2, 1, 3, 4])?
        .contiguous()?)
}

/// Spatial (and optionally temporal) down- or upsampling.
enum Resample {
    /// Zero-pad right and bottom, 3x3 convolution with stride 2; with
    /// `time`, then a causal time convolution of stride 2.
    Down {
        conv: (Tensor, Tensor),
        time: Option<CausalConv3d>,
    },
    /// With `time`, a causal time convolution doubling the frames (not on
    /// the first chunk); then nearest 2x and a 3x3 convolution.
    Up {
        conv: (Tensor, Tensor),
        time: Option<CausalConv3d>,
    },
}

impl Resample {
    fn down(w: &Weights, prefix: &str, dim: usize, time: bool) -> Result<Self> {
        let conv = (
            w.take(
                &format!("{prefix}.resample.1.weight"),
                &[dim, dim, 3, 3],
                DType::F32,
            )?,
            w.take(&format!("{prefix}.resample.1.bias"), &[dim], DType::F32)?,
        );
        let time = if time {
            Some(CausalConv3d::new(
                w,
                &format!("{prefix}.time_conv"),
                dim,
                dim,
                [3, 1, 1],
                [0, 0, 0],
                2,
            )?)
        } else {
            None
        };
        Ok(Resample::Down { conv, time })
    }

    fn up(w: &Weights, prefix: &str, dim: usize, time: bool) -> Result<Self> {
        let conv = (
            w.take(
                &format!("{prefix}.resample.1.weight"),
                &[dim / 2, dim, 3, 3],
                DType::F32,
            )?,
            w.take(&format!("{prefix}.resample.1.bias"), &[dim / 2], DType::F32)?,
        );
        let time = if time {
            Some(CausalConv3d::new(
                w,
                &format!("{prefix}.time_conv"),
                dim,
                2 * dim,
                [3, 1, 1],
                [1, 0, 0],
                1,
            )?)
        } else {
            None
        };
        Ok(Resample::Up { conv, time })
    }

    fn forward(&self, x: &Tensor, cache: &mut Cache) -> Result<Tensor> {
        match self {
            Resample::Down { conv, time } => {
                let x = per_frame(x, |f| {
                    Ok(f.pad_with_zeros(3, 0, 1)?
                        .pad_with_zeros(2, 0, 1)?
                        .conv2d(&conv.0, 0, 2, 1, 1)?
                        .broadcast_add(&conv.1.reshape((1, (), 1, 1))?)?)
                })?;
                let Some(time) = time else { return Ok(x) };
                let slot = cache.slot();
                match slot.clone() {
                    Slot::Frames(prev) => {
                        let keep = last_frames(&x, 1)?;
                        let y =
                            time.forward(&Tensor::cat(&[&last_frames(&prev, 1)?, &x], 2)?, None)?;
                        *slot = Slot::Frames(keep);
                        Ok(y)
                    }
                    _ => {
                        // The first chunk passes unchanged in time.
                        *slot = Slot::Frames(x.clone());
                        Ok(x)
                    }
                }
            }
            Resample::Up { conv, time } => {
                let mut x = x.clone();
                if let Some(time) = time {
                    let slot = cache.slot();
                    match slot.clone() {
                        Slot::Empty => *slot = Slot::FirstSeen,
                        seen => {
                            let mut keep = last_frames(&x, CACHE_FRAMES)?;
                            if keep.dim(2)? < CACHE_FRAMES {
                                let before = match &seen {
                                    Slot::Frames(p) => last_frames(p, 1)?,
                                    _ => keep.zeros_like()?,
                                };
                                keep = Tensor::cat(&[&before, &keep], 2)?;
                            }
                            let prev = match &seen {
                                Slot::Frames(p) => Some(p),
                                _ => None,
                            };
                            let y = time.forward(&x, prev)?;
                            *slot = Slot::Frames(keep);
                            // [B, 2C, T, H, W] -> frames interleaved: [B, C, 2T, H, W].
                            let (b, c2, t, h, w) = y.dims5()?;
                            let c = c2 / 2;
                            let halves = y.reshape((b, 2, c, t, h, w))?;
                            x = Tensor::stack(&[halves.i((.., 0))?, halves.i((.., 1))?], 3)?
                                .reshape((b, c, 2 * t, h, w))?;
                        }
                    }
                }
                per_frame(&x, |f| {
                    let (_, _, h, w) = f.dims4()?;
                    Ok(f.upsample_nearest2d(2 * h, 2 * w)?
                        .conv2d(&conv.0, 1, 1, 1, 1)?
                        .broadcast_add(&conv.1.reshape((1, (), 1, 1))?)?)
                })
            }
        }
    }
}

/// A layer of the encoder's or decoder's flat list.
enum Layer {
    Residual(ResidualBlock),
    Resample(Resample),
}

impl Layer {
    fn forward(&self, x: &Tensor, cache: &mut Cache) -> Result<Tensor> {
        match self {
            Layer::Residual(r) => r.forward(x, cache),
            Layer::Resample(r) => r.forward(x, cache),
        }
    }
}

/// Encoder or decoder: a causal convolution in, the flat list of layers
/// (Wan's `downsamples` / `upsamples`), the middle, and a head (RMS norm,
/// SiLU, causal convolution).
struct Coder {
    conv_in: CausalConv3d,
    layers: Vec<Layer>,
    middle: Middle,
    middle_first: bool,
    head_norm: RmsNorm,
    head_conv: CausalConv3d,
}

impl Coder {
    fn forward(&self, x: &Tensor, cache: &mut Cache) -> Result<Tensor> {
        cache.start_chunk();
        let mut x = self.conv_in.forward_cached(x, cache)?;
        if self.middle_first {
            x = self.middle.forward(&x, cache)?;
        }
        for layer in &self.layers {
            x = layer.forward(&x, cache)?;
        }
        if !self.middle_first {
            x = self.middle.forward(&x, cache)?;
        }
        self.head_conv
            .forward_cached(&self.head_norm.forward(&x)?.silu()?, cache)
    }
}

/// The state of a stream of chunks through the encoder.
pub struct EncodeStream {
    cache: Cache,
    frames_seen: usize,
}

/// The state of a stream of latent frames through the decoder (a clone
/// continues the stream on its own: candidates after a shared prefix).
#[derive(Clone)]
pub struct DecodeStream {
    cache: Cache,
}

/// The Wan2.1 video VAE.
pub struct WanVae {
    cfg: WanVaeConfig,
    encoder: Coder,
    decoder: Coder,
    quant: CausalConv3d,
    post_quant: CausalConv3d,
}

impl WanVae {
    /// Build it from `weights` (Wan's layout or diffusers', read through
    /// [`crate::weights::vae_diffusers_to_wan`]); every tensor must be used.
    pub fn new(cfg: &WanVaeConfig, w: &Weights) -> Result<Self> {
        cfg.validate()?;
        let z = cfg.z_dim;
        let dims: Vec<usize> = std::iter::once(1)
            .chain(cfg.dim_mult.iter().copied())
            .map(|m| cfg.base_dim * m)
            .collect();
        let last = cfg.dim_mult.len() - 1;
        let mut layers = Vec::new();
        for (i, pair) in dims.windows(2).enumerate() {
            let (mut cin, cout) = (pair[0], pair[1]);
            for _ in 0..cfg.num_res_blocks {
                layers.push(Layer::Residual(ResidualBlock::new(
                    w,
                    &format!("encoder.downsamples.{}", layers.len()),
                    cin,
                    cout,
                )?));
                cin = cout;
            }
            if i != last {
                layers.push(Layer::Resample(Resample::down(
                    w,
                    &format!("encoder.downsamples.{}", layers.len()),
                    cout,
                    cfg.temperal_downsample[i],
                )?));
            }
        }
        let top = *dims.last().expect("levels");
        let encoder = Coder {
            conv_in: CausalConv3d::new(w, "encoder.conv1", 3, dims[0], [3, 3, 3], [1, 1, 1], 1)?,
            layers,
            middle: Middle::new(w, "encoder.middle", top)?,
            middle_first: false,
            head_norm: RmsNorm::new(w, "encoder.head.0", top, false)?,
            head_conv: CausalConv3d::new(w, "encoder.head.2", top, 2 * z, [3, 3, 3], [1, 1, 1], 1)?,
        };
        // The decoder mirrors it: widths from the top down, each upsampling
        // halving the width it hands to the next level.
        let ddims: Vec<usize> = std::iter::once(cfg.dim_mult[last])
            .chain(cfg.dim_mult.iter().rev().copied())
            .map(|m| cfg.base_dim * m)
            .collect();
        let up_time: Vec<bool> = cfg.temperal_downsample.iter().rev().copied().collect();
        let mut layers = Vec::new();
        for (i, pair) in ddims.windows(2).enumerate() {
            let (mut cin, cout) = (if i > 0 { pair[0] / 2 } else { pair[0] }, pair[1]);
            for _ in 0..=cfg.num_res_blocks {
                layers.push(Layer::Residual(ResidualBlock::new(
                    w,
                    &format!("decoder.upsamples.{}", layers.len()),
                    cin,
                    cout,
                )?));
                cin = cout;
            }
            if i != last {
                layers.push(Layer::Resample(Resample::up(
                    w,
                    &format!("decoder.upsamples.{}", layers.len()),
                    cout,
                    up_time[i],
                )?));
            }
        }
        let out = *ddims.last().expect("levels");
        let decoder = Coder {
            conv_in: CausalConv3d::new(w, "decoder.conv1", z, ddims[0], [3, 3, 3], [1, 1, 1], 1)?,
            layers,
            middle: Middle::new(w, "decoder.middle", ddims[0])?,
            middle_first: true,
            head_norm: RmsNorm::new(w, "decoder.head.0", out, false)?,
            head_conv: CausalConv3d::new(w, "decoder.head.2", out, 3, [3, 3, 3], [1, 1, 1], 1)?,
        };
        let vae = WanVae {
            encoder,
            decoder,
            quant: CausalConv3d::new(w, "conv1", 2 * z, 2 * z, [1, 1, 1], [0, 0, 0], 1)?,
            post_quant: CausalConv3d::new(w, "conv2", z, z, [1, 1, 1], [0, 0, 0], 1)?,
            cfg: cfg.clone(),
        };
        w.finish()?;
        Ok(vae)
    }

    pub fn config(&self) -> &WanVaeConfig {
        &self.cfg
    }

    pub fn encode_stream(&self) -> EncodeStream {
        EncodeStream {
            cache: Cache::new(),
            frames_seen: 0,
        }
    }

    pub fn decode_stream(&self) -> DecodeStream {
        DecodeStream {
            cache: Cache::new(),
        }
    }

    /// Encode the next frames of a stream: the first call takes 1 + 4k
    /// frames (the first frame, then chunks of 4), later calls 4k. Returns
    /// the posterior's mean and log-variance [B, z, frames / 4 (+1), h, w].
    pub fn encode_chunk(&self, s: &mut EncodeStream, video: &Tensor) -> Result<(Tensor, Tensor)> {
        let (_, c, t, h, w) = video.dims5()?;
        let f = self.cfg.spatial_factor();
        let lead = usize::from(s.frames_seen == 0);
        if c != 3 || h % f != 0 || w % f != 0 || t < lead || (t - lead) % 4 != 0 {
            return Err(WanError::Input {
                what: "video".into(),
                reason: format!(
                    "{c} channels, {t} frames of {h}x{w}: needs 3 channels, {} frames and sides divisible by {f}",
                    if lead == 1 {
                        "1 + 4k"
                    } else {
                        "4k (after the first call)"
                    }
                ),
            });
        }
        let video = video.to_dtype(DType::F32)?;
        let mut outs = Vec::new();
        let mut start = 0;
        while start < t {
            let len = if s.frames_seen == 0 { 1 } else { 4 };
            outs.push(
                self.encoder
                    .forward(&video.narrow(2, start, len)?, &mut s.cache)?,
            );
            start += len;
            s.frames_seen += len;
        }
        let moments = self.quant.forward(&Tensor::cat(&outs, 2)?, None)?;
        let z = self.cfg.z_dim;
        Ok((
            moments.narrow(1, 0, z)?,
            moments.narrow(1, z, z)?.clamp(-30f32, 20f32)?,
        ))
    }

    /// Encode a whole clip of 1 + 4k frames [B, 3, T, H, W] in [-1, 1]:
    /// the posterior's mean and log-variance.
    pub fn encode(&self, video: &Tensor) -> Result<(Tensor, Tensor)> {
        self.encode_chunk(&mut self.encode_stream(), video)
    }

    /// Decode the next latent frames [B, z, T', h, w] of a stream: the
    /// first latent frame makes one frame, each later one 4 (the temporal
    /// factor). Values clamped to [-1, 1].
    pub fn decode_chunk(&self, s: &mut DecodeStream, z: &Tensor) -> Result<Tensor> {
        let (_, c, t, _, _) = z.dims5()?;
        if c != self.cfg.z_dim || t == 0 {
            return Err(WanError::Input {
                what: "latents".into(),
                reason: format!(
                    "{c} channels and {t} frames: needs {} channels and at least one frame",
                    self.cfg.z_dim
                ),
            });
        }
        let x = self.post_quant.forward(&z.to_dtype(DType::F32)?, None)?;
        let frames = (0..t)
            .map(|i| self.decoder.forward(&x.narrow(2, i, 1)?, &mut s.cache))
            .collect::<Result<Vec<_>>>()?;
        Ok(Tensor::cat(&frames, 2)?.clamp(-1f32, 1f32)?)
    }

    /// Decode a whole latent clip [B, z, T', h, w].
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.decode_chunk(&mut self.decode_stream(), z)
    }

    /// The image-to-video condition of a clip of `latent_frames` latent
    /// frames starting at `image` [B, 3, H, W] in [-1, 1], as Wan2.1's
    /// image-to-video models and Matrix-Game 2.0 read it in their input
    /// channels after the noisy latent: [B, t + z, latent_frames, h, w],
    /// first `t` mask channels (t the temporal factor: 1 on latent frame 0,
    /// whose first pixel frame is the image, 0 after), then the normalised
    /// latent of the image followed by `t (latent_frames - 1)` zero (mid-grey)
    /// frames. Latent frames after the first are encodings of grey frames
    /// after the image, not zeros.
    pub fn image_condition(&self, image: &Tensor, latent_frames: usize) -> Result<Tensor> {
        let (b, c, h, w) = image.dims4()?;
        if c != 3 || latent_frames == 0 {
            return Err(WanError::Input {
                what: "image condition".into(),
                reason: format!("needs an image [B, 3, H, W] and at least one latent frame, got {:?} and {latent_frames}", image.dims()),
            });
        }
        let t = self.cfg.temporal_factor();
        let image = image.to_dtype(DType::F32)?.unsqueeze(2)?;
        let video = if latent_frames > 1 {
            Tensor::cat(&[&image, &Tensor::zeros((b, 3, t * (latent_frames - 1), h, w), DType::F32, image.device())?], 2)?
        } else {
            image
        };
        let latent = self.normalize(&self.encode(&video)?.0)?;
        let (_, _, f, lh, lw) = latent.dims5()?;
        let mut m = vec![0f32; f];
        m[0] = 1.0;
        let mask = Tensor::from_vec(m, (1, 1, f, 1, 1), latent.device())?.broadcast_as((b, t, f, lh, lw))?;
        Ok(Tensor::cat(&[&mask, &latent], 1)?)
    }

    /// Latents as the transformer sees them: (z - mean) / std per channel.
    pub fn normalize(&self, z: &Tensor) -> Result<Tensor> {
        let (mean, std) = self.stats(z)?;
        Ok(z.broadcast_sub(&mean)?.broadcast_div(&std)?)
    }

    /// The inverse of [`WanVae::normalize`].
    pub fn denormalize(&self, z: &Tensor) -> Result<Tensor> {
        let (mean, std) = self.stats(z)?;
        Ok(z.broadcast_mul(&std)?.broadcast_add(&mean)?)
    }

    fn stats(&self, z: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = self.cfg.z_dim;
        let col = |v: &[f64]| {
            Tensor::from_vec(
                v.iter().map(|x| *x as f32).collect::<Vec<f32>>(),
                (1, n, 1, 1, 1),
                z.device(),
            )?
            .to_dtype(z.dtype())
        };
        Ok((col(&self.cfg.latents_mean)?, col(&self.cfg.latents_std)?))
    }
}
