//! What the network reads of a world prompt's first frame, computed once
//! per prompt: [`PromptEncoder`] makes a [`PromptConditioning`].
//!
//! - The first latent frame: the codec's encoding of the first frame
//!   (coded alone; with the Wan VAE, latent frame 0 of the condition below).
//! - The image-to-video condition of the latent frames a context and its
//!   target cover (`MatrixGameConfig::condition_frames`): per latent frame
//!   j, `t` mask channels (1 for j = 0) and latent frame j of the codec's
//!   encoding of [first frame, grey frames] (Matrix-Game 2.0's 4 + 16 input
//!   channels, `WanVae::image_condition`). With the pixel codec, the same
//!   rule gives the first frame on frame 0 and zeros after: grey is 0 in
//!   [-1, 1].
//! - The cross-attention's image tokens: the CLIP vision tower's tokens of
//!   the first frame (full size), or the first latent frame's patches (the
//!   embedded configuration's stand-in).
//!
//! The VAE and the CLIP tower are frozen: they are not part of the trained
//! parameters, and a run reads them from its init commit.

use candle_core::{DType, Tensor};
use wc_model::codec::{PixelCodec, VideoCodec};
use wc_model::{ModelError, Result};
use wc_wan::{ClipVision, WanVae};

use crate::config::{ImageEncoderConfig, LatentCodecConfig, MatrixGameConfig};
use crate::wan_error;

/// The frozen networks a configuration's conditioning needs.
pub struct PromptEncoder {
    cfg: MatrixGameConfig,
    vae: Option<WanVae>,
    clip: Option<ClipVision>,
}

/// Per prompt: its first latent frame `[P, C*h*w]`, its condition
/// `[P, condition_frames, (t + C)*h*w]` (each frame channels first) and its
/// image tokens `[P, N, D]`, all f32.
#[derive(Debug, Clone)]
pub struct PromptConditioning {
    pub first_latent: Tensor,
    pub condition: Tensor,
    pub image_tokens: Tensor,
}

impl PromptConditioning {
    /// The conditioning of prompt `i` (batch 1).
    pub fn prompt(&self, i: usize) -> Result<PromptConditioning> {
        Ok(PromptConditioning {
            first_latent: self.first_latent.narrow(0, i, 1)?,
            condition: self.condition.narrow(0, i, 1)?,
            image_tokens: self.image_tokens.narrow(0, i, 1)?,
        })
    }
}

impl PromptEncoder {
    /// The encoder of `cfg` given the frozen networks it names: the Wan
    /// VAE for `codec = wan_vae`, the CLIP tower for `image_encoder =
    /// clip_vision` (each checked against the config).
    pub fn new(cfg: &MatrixGameConfig, vae: Option<WanVae>, clip: Option<ClipVision>) -> Result<Self> {
        cfg.validate().map_err(ModelError::Config)?;
        match (&cfg.codec, &vae) {
            (LatentCodecConfig::Pixel, None) => {}
            (LatentCodecConfig::WanVae(c), Some(v)) if v.config() == c => {}
            (LatentCodecConfig::WanVae(_), Some(_)) => return Err(ModelError::Config("the Wan VAE given is not the one the Matrix-Game config names".into())),
            (LatentCodecConfig::WanVae(_), None) => return Err(ModelError::Config("the Matrix-Game config codes with the Wan VAE: its weights are needed".into())),
            (LatentCodecConfig::Pixel, Some(_)) => return Err(ModelError::Config("the Matrix-Game config codes with the pixel codec: no VAE is read".into())),
        }
        match (&cfg.image_encoder, &clip) {
            (ImageEncoderConfig::Patches, None) => {}
            (ImageEncoderConfig::ClipVision(c), Some(t)) if t.config() == c => {}
            (ImageEncoderConfig::ClipVision(_), Some(_)) => return Err(ModelError::Config("the CLIP tower given is not the one the Matrix-Game config names".into())),
            (ImageEncoderConfig::ClipVision(_), None) => return Err(ModelError::Config("the Matrix-Game config reads CLIP image tokens: the CLIP tower's weights are needed".into())),
            (ImageEncoderConfig::Patches, Some(_)) => return Err(ModelError::Config("the Matrix-Game config reads the first frame's patches: no CLIP tower is read".into())),
        }
        Ok(PromptEncoder { cfg: cfg.clone(), vae, clip })
    }

    /// The encoder of a configuration that needs no weights (the pixel
    /// codec and the patches).
    pub fn without_weights(cfg: &MatrixGameConfig) -> Result<Self> {
        Self::new(cfg, None, None)
    }

    /// The Wan VAE, when the codec is one.
    pub fn vae(&self) -> Option<&WanVae> {
        self.vae.as_ref()
    }

    /// The conditioning of first frames `[P, H, W, 3]` (u8 RGB, the
    /// config's frame size).
    pub fn encode(&self, frames: &Tensor) -> Result<PromptConditioning> {
        let cfg = &self.cfg;
        let (p, h, w, c) = frames.dims4()?;
        if (h, w, c) != (cfg.frame_size, cfg.frame_size, 3) {
            return Err(ModelError::Config(format!("first frames {:?}: expected [P, {s}, {s}, 3]", frames.dims(), s = cfg.frame_size)));
        }
        // [P, 3, H, W] in [-1, 1].
        let image = PixelCodec.encode(&frames.unsqueeze(1)?)?.squeeze(2)?;
        let (frames_n, s) = (cfg.condition_frames(), cfg.latent_size());
        // [P, t + C, F', h, w]
        let condition = match &self.vae {
            Some(vae) => vae.image_condition(&image, frames_n).map_err(wan_error)?,
            None => {
                let dev = image.device();
                let mut m = vec![0f32; frames_n];
                m[0] = 1.0;
                let mask = Tensor::from_vec(m, (1, 1, frames_n, 1, 1), dev)?.broadcast_as((p, 1, frames_n, s, s))?;
                let first = image.unsqueeze(2)?;
                let lat = Tensor::cat(&[&first, &Tensor::zeros((p, 3, frames_n - 1, s, s), DType::F32, dev)?], 2)?;
                Tensor::cat(&[&mask.to_dtype(DType::F32)?, &lat], 1)?
            }
        };
        let t = cfg.temporal();
        let first_latent = condition.narrow(2, 0, 1)?.narrow(1, t, cfg.channels)?.flatten_from(1)?.contiguous()?;
        let image_tokens = match &self.clip {
            Some(clip) => clip.forward(&wc_wan::clip_vision::preprocess(&image, clip.config().image_size).map_err(wan_error)?).map_err(wan_error)?,
            None => patch_tokens(cfg, &first_latent)?,
        };
        let condition = condition.permute((0, 2, 1, 3, 4))?.flatten_from(2)?.contiguous()?;
        Ok(PromptConditioning { first_latent, condition, image_tokens })
    }
}

/// The first latent frames' patches `[P, (h/p)(w/p), C p p]`: the embedded
/// configuration's image tokens.
fn patch_tokens(cfg: &MatrixGameConfig, first: &Tensor) -> Result<Tensor> {
    let (c, s, p) = (cfg.channels, cfg.latent_size(), cfg.patch());
    let b = first.dim(0)?;
    let g = s / p;
    let t = first.reshape((b * c, g, p, g, p))?.permute((0, 1, 3, 2, 4))?.reshape((b, c, g * g, p * p))?;
    Ok(t.permute((0, 2, 1, 3))?.reshape((b, g * g, c * p * p))?.contiguous()?)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use wc_wan::{ClipVisionConfig, WanVaeConfig, Weights};

    use super::*;

    fn frames(p: usize, size: usize, seed: usize) -> Tensor {
        let v: Vec<u8> = (0..p * size * size * 3).map(|i| ((i * 31 + seed * 7) % 256) as u8).collect();
        Tensor::from_vec(v, (p, size, size, 3), &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// The fixtures' tiny VAE and CLIP tower (checked against diffusers and
    /// transformers in wc-wan).
    pub(crate) fn tiny_wan_encoder() -> PromptEncoder {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/wan");
        let vc = WanVaeConfig::tiny();
        let vae = WanVae::new(&vc, &Weights::vae_from_tensors(candle_core::safetensors::load(dir.join("vae_wan.safetensors"), &Device::Cpu).unwrap(), vc.num_res_blocks)).unwrap();
        let w = Weights::from_tensors(candle_core::safetensors::load(dir.join("clip_vision_wan.safetensors"), &Device::Cpu).unwrap());
        let clip = ClipVision::new(&ClipVisionConfig::tiny(), &w, DType::F32).unwrap();
        PromptEncoder::new(&MatrixGameConfig::tiny_wan(), Some(vae), Some(clip)).unwrap()
    }

    #[test]
    fn the_pixel_codecs_condition_is_the_first_frame_then_zeros() {
        let cfg = MatrixGameConfig::tiny();
        let e = PromptEncoder::without_weights(&cfg).unwrap();
        let f = frames(2, cfg.frame_size, 1);
        let c = e.encode(&f).unwrap();
        let first = PixelCodec.encode(&f.unsqueeze(1).unwrap()).unwrap().flatten_from(1).unwrap();
        assert_eq!(max_diff(&c.first_latent, &first), 0.0);
        assert_eq!(c.condition.dims(), &[2, 9, 4 * 16 * 16]);
        let frame0 = c.condition.narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
        // Mask 1, then the first frame.
        assert_eq!(frame0.narrow(1, 0, 256).unwrap().min_keepdim(1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![1.0, 1.0]);
        assert_eq!(max_diff(&frame0.narrow(1, 256, 768).unwrap(), &first), 0.0);
        assert_eq!(c.condition.narrow(1, 1, 8).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap(), 0.0);
        // Patches of 4x4: 16 tokens of 3 x 16 values; token 1's first value
        // is channel 0 at row 0, column 4.
        assert_eq!(c.image_tokens.dims(), &[2, 16, 48]);
        let v = c.image_tokens.get(0).unwrap().get(1).unwrap().get(0).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(v, first.get(0).unwrap().get(4).unwrap().to_scalar::<f32>().unwrap());
    }

    #[test]
    fn the_wan_condition_is_the_vaes_and_the_tokens_are_clips() {
        let e = tiny_wan_encoder();
        let cfg = MatrixGameConfig::tiny_wan();
        let f = frames(2, cfg.frame_size, 3);
        let c = e.encode(&f).unwrap();
        let image = PixelCodec.encode(&f.unsqueeze(1).unwrap()).unwrap().squeeze(2).unwrap();
        // The VAE's own condition, frame-major.
        let direct = e.vae().unwrap().image_condition(&image, cfg.condition_frames()).unwrap();
        assert_eq!(c.condition.dims(), &[2, 5, 6 * 4 * 4]);
        assert_eq!(max_diff(&c.condition, &direct.permute((0, 2, 1, 3, 4)).unwrap().flatten_from(2).unwrap()), 0.0);
        // The first latent is the codec's encoding of the first frame alone.
        let codec = crate::codec::WanVaeCodec::new(tiny_wan_encoder().vae.unwrap());
        let alone = codec.encode(&f.unsqueeze(1).unwrap()).unwrap().flatten_from(1).unwrap();
        assert!(max_diff(&c.first_latent, &alone) < 1e-6, "{}", max_diff(&c.first_latent, &alone));
        // Grey frames after the image do not encode to zeros.
        assert!(c.condition.narrow(1, 1, 4).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap() > 1e-3);
        assert_eq!(c.image_tokens.dims(), &[2, ClipVisionConfig::tiny().tokens(), 32]);
        // One prompt's conditioning is its row of the batch's.
        let one = e.encode(&f.narrow(0, 1, 1).unwrap()).unwrap();
        assert!(max_diff(&one.image_tokens, &c.prompt(1).unwrap().image_tokens) < 1e-5);
    }

    #[test]
    fn missing_or_unneeded_frozen_networks_are_refused() {
        let e = PromptEncoder::without_weights(&MatrixGameConfig::tiny_wan());
        assert!(e.err().unwrap().to_string().contains("codes with the Wan VAE"));
        let e = PromptEncoder::without_weights(&MatrixGameConfig::tiny()).unwrap();
        let err = e.encode(&frames(1, 8, 0)).unwrap_err().to_string();
        assert!(err.contains("expected [P, 16, 16, 3]"), "{err}");
    }
}
