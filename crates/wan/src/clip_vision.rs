//! The CLIP ViT-H/14 vision tower that Matrix-Game 2.0 reads its image
//! tokens from, and the preprocessing of its conditioning frame.
//!
//! Matrix-Game 2.0 (like Wan2.1's image-to-video models) conditions every
//! block's cross-attention on the world prompt's first frame as seen by
//! open-clip's XLM-RoBERTa ViT-H/14: the frame is resized to 224x224
//! (bicubic, the aspect distorted), mapped from [-1, 1] to CLIP's
//! normalisation, and run through the patch embedding, the class token,
//! the position embedding, the pre-norm and the first 31 of the 32 blocks:
//! no post-norm, no head. The output, 257 tokens of width 1280, goes to the
//! transformer's `img_emb` (docs/design/matrix-game-2.md, section 1.2).
//!
//! Weights are read under the names of Wan's CLIP checkpoint
//! (`models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`): `visual.*`,
//! with q, k and v as one `to_qkv`. The rest of that file (the text tower,
//! the last block, the post-norm and head) is not used:
//! [`ClipVisionConfig::reads`] tells the tower's keys from the others.
//!
//! Checked against transformers' `CLIPVisionModel` and PyTorch's bicubic
//! interpolation by the fixtures (`tests/fixtures/wan/make_fixtures.py`).

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::nn::{LayerNorm, Linear, attention};
use crate::weights::Weights;
use crate::{Result, WanError};

/// CLIP's per-channel mean and standard deviation of [0, 1] pixels.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_1];

/// The tower's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipVisionConfig {
    /// Side of the square input image in pixels.
    pub image_size: usize,
    /// Side of a patch in pixels.
    pub patch_size: usize,
    /// Token width.
    pub dim: usize,
    /// Hidden width of each block's MLP.
    pub mlp_dim: usize,
    pub heads: usize,
    /// Blocks in the checkpoint.
    pub layers: usize,
    /// Blocks the tower runs, from the first (Matrix-Game: 31 of 32).
    pub layers_run: usize,
    /// Layer-norm epsilon.
    pub eps: f64,
}

impl ClipVisionConfig {
    /// open-clip's XLM-RoBERTa ViT-H/14 as Matrix-Game 2.0 runs it.
    pub fn vit_h_14() -> Self {
        ClipVisionConfig {
            image_size: 224,
            patch_size: 14,
            dim: 1280,
            mlp_dim: 5120,
            heads: 16,
            layers: 32,
            layers_run: 31,
            eps: 1e-5,
        }
    }

    /// The fixtures' tower: width 32, 3 blocks of which 2 run, 42x42 images.
    pub fn tiny() -> Self {
        ClipVisionConfig {
            image_size: 42,
            patch_size: 14,
            dim: 32,
            mlp_dim: 128,
            heads: 4,
            layers: 3,
            layers_run: 2,
            eps: 1e-5,
        }
    }

    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Output tokens: the class token and one per patch (257 for ViT-H/14).
    pub fn tokens(&self) -> usize {
        self.grid() * self.grid() + 1
    }

    /// Every size consistent with the others, or what is not.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(WanError::Config(format!("CLIP vision tower: {why}")));
        if self.patch_size == 0 || self.image_size % self.patch_size != 0 {
            return bad(format!("image size {} is not a multiple of the patch size {}", self.image_size, self.patch_size));
        }
        if self.heads == 0 || self.dim % self.heads != 0 {
            return bad(format!("width {} does not split into {} heads", self.dim, self.heads));
        }
        if self.layers_run == 0 || self.layers_run > self.layers {
            return bad(format!("runs {} of {} blocks", self.layers_run, self.layers));
        }
        Ok(())
    }

    /// Parameters the tower reads (the blocks it runs, not the rest).
    pub fn parameters(&self) -> usize {
        let (d, m, p) = (self.dim, self.mlp_dim, self.patch_size);
        let embed = d * 3 * p * p + d + self.tokens() * d + 2 * d;
        let block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (m * d + m) + (d * m + d);
        embed + self.layers_run * block
    }

    /// Whether the tower reads checkpoint key `key` (Wan's CLIP file also
    /// holds the text tower, the last block, the post-norm and the head).
    pub fn reads(&self, key: &str) -> bool {
        let Some(rest) = key.strip_prefix("visual.") else { return false };
        match rest.strip_prefix("transformer.") {
            Some(block) => block.split('.').next().and_then(|i| i.parse::<usize>().ok()).is_some_and(|i| i < self.layers_run),
            None => !rest.starts_with("post_norm.") && rest != "head" && !rest.starts_with("head."),
        }
    }
}

/// One pre-norm block: attention, then the GELU MLP, each residual.
struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// The tower (no I/O: built from [`Weights`]).
pub struct ClipVision {
    cfg: ClipVisionConfig,
    /// The patch embedding as a matrix [dim, 3 x patch x patch] (a
    /// convolution with stride = kernel and no bias).
    patch: Tensor,
    /// The class token and the position embedding, [1, 1, dim] and
    /// [1, tokens, dim].
    cls: Tensor,
    pos: Tensor,
    pre_norm: LayerNorm,
    blocks: Vec<Block>,
    dtype: DType,
}

impl ClipVision {
    /// The tower of `cfg` from Wan's CLIP key names, its matrices in
    /// `dtype` (norms run in f32).
    pub fn new(cfg: &ClipVisionConfig, w: &Weights, dtype: DType) -> Result<Self> {
        cfg.validate()?;
        let (d, p) = (cfg.dim, cfg.patch_size);
        let patch = w.take("visual.patch_embedding.weight", &[d, 3, p, p], dtype)?.reshape((d, 3 * p * p))?;
        let cls = w.take("visual.cls_embedding", &[1, 1, d], dtype)?;
        let pos = w.take("visual.pos_embedding", &[1, cfg.tokens(), d], dtype)?;
        let pre_norm = LayerNorm::new(w, "visual.pre_norm", d, cfg.eps)?;
        let blocks = (0..cfg.layers_run)
            .map(|i| {
                let b = format!("visual.transformer.{i}");
                Ok(Block {
                    norm1: LayerNorm::new(w, &format!("{b}.norm1"), d, cfg.eps)?,
                    qkv: Linear::new(w, &format!("{b}.attn.to_qkv"), d, 3 * d, dtype)?,
                    proj: Linear::new(w, &format!("{b}.attn.proj"), d, d, dtype)?,
                    norm2: LayerNorm::new(w, &format!("{b}.norm2"), d, cfg.eps)?,
                    fc1: Linear::new(w, &format!("{b}.mlp.0"), d, cfg.mlp_dim, dtype)?,
                    fc2: Linear::new(w, &format!("{b}.mlp.2"), cfg.mlp_dim, d, dtype)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(ClipVision { cfg: cfg.clone(), patch, cls, pos, pre_norm, blocks, dtype })
    }

    pub fn config(&self) -> &ClipVisionConfig {
        &self.cfg
    }

    /// Image tokens [B, tokens, dim] (f32) of normalised pixels
    /// [B, 3, image_size, image_size] (see [`preprocess`]).
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, c, h, w) = pixels.dims4()?;
        if c != 3 || h != cfg.image_size || w != cfg.image_size {
            return Err(WanError::Input {
                what: "CLIP pixels".into(),
                reason: format!("expected [B, 3, {s}, {s}], got {:?}", pixels.dims(), s = cfg.image_size),
            });
        }
        let (g, p, d) = (cfg.grid(), cfg.patch_size, cfg.dim);
        // [B, 3, g, p, g, p] -> [B, g, g, 3, p, p]: one row per patch,
        // patches row-major as the convolution's output is flattened.
        let patches = pixels
            .to_dtype(self.dtype)?
            .reshape((b, 3, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, g * g, 3 * p * p))?;
        let x = patches.broadcast_matmul(&self.patch.t()?)?;
        let x = Tensor::cat(&[&self.cls.broadcast_as((b, 1, d))?, &x], 1)?.broadcast_add(&self.pos)?;
        let mut x = self.pre_norm.forward(&x)?.to_dtype(self.dtype)?;
        let (heads, hd) = (cfg.heads, d / cfg.heads);
        let t = cfg.tokens();
        for blk in &self.blocks {
            let qkv = blk.qkv.forward(&blk.norm1.forward(&x)?.to_dtype(self.dtype)?)?.reshape((b, t, 3, heads, hd))?;
            let part = |i: usize| -> Result<Tensor> { Ok(qkv.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2)?.contiguous()?) };
            let a = attention(&part(0)?, &part(1)?, &part(2)?, None)?.transpose(1, 2)?.reshape((b, t, d))?;
            x = (x + blk.proj.forward(&a)?)?;
            let hidden = blk.fc1.forward(&blk.norm2.forward(&x)?.to_dtype(self.dtype)?)?.gelu_erf()?;
            x = (&x + blk.fc2.forward(&hidden)?)?;
        }
        Ok(x.to_dtype(DType::F32)?)
    }
}

/// Frames [B, 3, H, W] in [-1, 1] as the tower's input
/// [B, 3, size, size]: PyTorch's bicubic interpolation (`align_corners =
/// False`, A = -0.75, no antialiasing, the aspect distorted), to [0, 1],
/// then CLIP's mean and standard deviation.
pub fn preprocess(frames: &Tensor, size: usize) -> Result<Tensor> {
    let (b, c, h, w) = frames.dims4()?;
    if c != 3 {
        return Err(WanError::Input { what: "CLIP frames".into(), reason: format!("expected 3 channels, got {c}") });
    }
    let dev = frames.device();
    let rows = bicubic_matrix(h, size, dev)?;
    let cols = bicubic_matrix(w, size, dev)?;
    let x = frames.to_dtype(DType::F32)?.reshape((b * 3, h, w))?;
    // Along the width first, then the height, as PyTorch sums its taps.
    let x = x.broadcast_matmul(&cols.t()?)?;
    let x = rows.broadcast_matmul(&x)?.reshape((b, 3, size, size))?;
    let mean = Tensor::new(&CLIP_MEAN, dev)?.reshape((1, 3, 1, 1))?;
    let std = Tensor::new(&CLIP_STD, dev)?.reshape((1, 3, 1, 1))?;
    Ok(((x * 0.5)? + 0.5)?.broadcast_sub(&mean)?.broadcast_div(&std)?)
}

/// The [out, input] matrix of PyTorch's 1-D bicubic resampling from
/// `input` to `out` samples: source position (i + 0.5) input / out - 0.5,
/// four taps of Keys' cubic (A = -0.75), indices clamped to the edge.
pub fn bicubic_matrix(input: usize, out: usize, device: &Device) -> Result<Tensor> {
    if input == 0 || out == 0 {
        return Err(WanError::Input { what: "bicubic resize".into(), reason: format!("from {input} to {out} samples: both must be at least 1") });
    }
    const A: f32 = -0.75;
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = input as f32 / out as f32;
    let mut m = vec![0f32; out * input];
    for i in 0..out {
        let real = scale * (i as f32 + 0.5) - 0.5;
        let base = real.floor();
        let t = real - base;
        let weights = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
        for (k, wk) in weights.iter().enumerate() {
            let j = (base as i64 - 1 + k as i64).clamp(0, input as i64 - 1) as usize;
            m[i * input + j] += wk;
        }
    }
    Ok(Tensor::from_vec(m, (out, input), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tower_reads_the_visual_keys_of_the_blocks_it_runs() {
        let cfg = ClipVisionConfig::vit_h_14();
        for key in ["visual.patch_embedding.weight", "visual.cls_embedding", "visual.pre_norm.bias", "visual.transformer.0.attn.to_qkv.weight", "visual.transformer.30.mlp.2.bias"] {
            assert!(cfg.reads(key), "{key}");
        }
        for key in ["visual.transformer.31.norm1.weight", "visual.post_norm.weight", "visual.head", "textual.head.0.weight", "log_scale"] {
            assert!(!cfg.reads(key), "{key}");
        }
        assert_eq!(cfg.tokens(), 257);
    }

    /// Identity at the same size; an upsampling matrix's rows sum to 1
    /// (clamped taps are folded onto the edge) and follow the cubic's
    /// weights by hand at a position with t = 0.25.
    #[test]
    fn bicubic_weights_by_hand() {
        let dev = Device::Cpu;
        let id: Vec<Vec<f32>> = bicubic_matrix(5, 5, &dev).unwrap().to_vec2().unwrap();
        for (i, row) in id.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-6, "{i},{j}: {v}");
            }
        }
        // 4 -> 8: output 3 sits at 0.5 * 3.5 - 0.5 = 1.25, taps 0..3 at
        // distances 1.25, 0.25, 0.75, 1.75.
        let m: Vec<Vec<f32>> = bicubic_matrix(4, 8, &dev).unwrap().to_vec2().unwrap();
        let a = -0.75f32;
        let near = |x: f32| (a + 2.0) * x.powi(3) - (a + 3.0) * x.powi(2) + 1.0;
        let far = |x: f32| a * x.powi(3) - 5.0 * a * x.powi(2) + 8.0 * a * x - 4.0 * a;
        let want = [far(1.25), near(0.25), near(0.75), far(1.75)];
        for (j, w) in want.iter().enumerate() {
            assert!((m[3][j] - w).abs() < 1e-6, "tap {j}: {} vs {w}", m[3][j]);
        }
        for row in &m {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        // An empty side is refused, not a panic.
        assert!(bicubic_matrix(0, 8, &dev).unwrap_err().to_string().contains("from 0 to 8 samples"));
        let empty = Tensor::zeros((1, 3, 0, 5), DType::F32, &dev).unwrap();
        assert!(preprocess(&empty, 42).is_err());
    }

    #[test]
    fn a_bad_shape_is_refused_with_the_reason() {
        let mut cfg = ClipVisionConfig::tiny();
        cfg.layers_run = 4;
        let err = ClipVision::new(&cfg, &Weights::random(&Device::Cpu), DType::F32).err().unwrap().to_string();
        assert!(err.contains("runs 4 of 3 blocks"), "{err}");
        let tower = ClipVision::new(&ClipVisionConfig::tiny(), &Weights::random(&Device::Cpu), DType::F32).unwrap();
        let err = tower.forward(&Tensor::zeros((1, 3, 28, 28), DType::F32, &Device::Cpu).unwrap()).unwrap_err().to_string();
        assert!(err.contains("expected [B, 3, 42, 42]"), "{err}");
    }

    #[test]
    fn the_parameter_count_is_what_the_tower_takes() {
        let w = Weights::random(&Device::Cpu);
        let cfg = ClipVisionConfig::tiny();
        ClipVision::new(&cfg, &w, DType::F32).unwrap();
        assert_eq!(w.elements_taken(), cfg.parameters());
    }
}
