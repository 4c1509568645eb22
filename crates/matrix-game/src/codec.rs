//! The Wan VAE as a [`VideoCodec`]: the codec of Matrix-Game 2.0 at full
//! size (16 latent channels, 8x in space, 4x in time after the first frame,
//! which is coded alone).
//!
//! Latents are the posterior's mean, normalised by the VAE's per-channel
//! statistics: what the transformer reads and predicts. Pixels map to
//! [-1, 1] and back exactly as the pixel codec maps them, so the two codecs
//! differ only in the VAE between.

use candle_core::{Result, Tensor};
use wc_model::codec::{LatentGeometry, PixelCodec, VideoCodec};
use wc_wan::{WanError, WanVae};

/// [`WanVae`] behind the codec trait.
pub struct WanVaeCodec {
    vae: WanVae,
}

impl WanVaeCodec {
    pub fn new(vae: WanVae) -> Self {
        WanVaeCodec { vae }
    }

    /// The VAE (for the image-to-video condition, [`WanVae::image_condition`]).
    pub fn vae(&self) -> &WanVae {
        &self.vae
    }
}

fn candle_error(e: WanError) -> candle_core::Error {
    match e {
        WanError::Candle(e) => e,
        other => candle_core::Error::Msg(other.to_string()),
    }
}

impl VideoCodec for WanVaeCodec {
    fn geometry(&self) -> LatentGeometry {
        let cfg = self.vae.config();
        LatentGeometry { channels: cfg.z_dim, temporal: cfg.temporal_factor(), spatial: cfg.spatial_factor(), causal_first_frame: true }
    }

    /// (B, T, H, W, 3) u8 with T = 1 + k x temporal -> (B, z, 1 + k, H/s, W/s).
    fn encode(&self, video: &Tensor) -> Result<Tensor> {
        let t = video.dim(1)?;
        if self.geometry().latent_frames(t).is_none() {
            return Err(candle_core::Error::Msg(format!("the Wan VAE codes 1 + k x {} frames, not {t}", self.geometry().temporal)));
        }
        let pixels = PixelCodec.encode(video)?;
        let (mean, _) = self.vae.encode(&pixels).map_err(candle_error)?;
        self.vae.normalize(&mean).map_err(candle_error)
    }

    /// (B, z, T', h, w) normalised latents -> (B, T, H, W, 3) u8.
    fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let z = self.vae.denormalize(latents).map_err(candle_error)?;
        PixelCodec.decode(&self.vae.decode(&z).map_err(candle_error)?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use wc_wan::{WanVaeConfig, Weights};

    use super::*;

    /// The fixtures' tiny VAE (diffusers-checked in wc-wan): 4 channels, 4x
    /// in space, 2x in time.
    fn codec() -> WanVaeCodec {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/wan/vae_wan.safetensors");
        let cfg = WanVaeConfig::tiny();
        let w = Weights::vae_from_tensors(candle_core::safetensors::load(dir, &Device::Cpu).unwrap(), cfg.num_res_blocks);
        WanVaeCodec::new(WanVae::new(&cfg, &w).unwrap())
    }

    fn video(frames: usize, seed: u8) -> Tensor {
        let v: Vec<u8> = (0..frames * 16 * 16 * 3).map(|i| ((i * 37 + seed as usize * 101) % 256) as u8).collect();
        Tensor::from_vec(v, (1, frames, 16, 16, 3), &Device::Cpu).unwrap()
    }

    #[test]
    fn the_geometry_is_the_vaes_and_encoding_is_its_normalised_mean() {
        let c = codec();
        let g = c.geometry();
        assert_eq!(g, LatentGeometry { channels: 4, temporal: 2, spatial: 4, causal_first_frame: true });
        assert_eq!(g.latent_frames(5), Some(3));
        let v = video(5, 1);
        let z = c.encode(&v).unwrap();
        assert_eq!(z.dims(), &[1, 4, 3, 4, 4]);
        // The same as the VAE on the pixel codec's [-1, 1] frames, normalised.
        let direct = c.vae().normalize(&c.vae().encode(&PixelCodec.encode(&v).unwrap()).unwrap().0).unwrap();
        assert_eq!((&z - &direct).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap(), 0.0);
        let back = c.decode(&z).unwrap();
        assert_eq!((back.dims(), back.dtype()), (&[1, 5, 16, 16, 3][..], DType::U8));
        assert!(c.encode(&video(4, 1)).unwrap_err().to_string().contains("1 + k x 2 frames, not 4"));
    }

    /// The first latent frame is the first pixel frame alone: later frames
    /// never change it; they do change the latent frames that code them.
    #[test]
    fn the_first_frame_is_coded_alone() {
        let c = codec();
        let a = video(5, 1);
        let b = Tensor::cat(&[&a.narrow(1, 0, 1).unwrap(), &video(4, 9)], 1).unwrap();
        let (za, zb) = (c.encode(&a).unwrap(), c.encode(&b).unwrap());
        let diff = |f: usize| (za.narrow(2, f, 1).unwrap() - zb.narrow(2, f, 1).unwrap()).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff(0), 0.0);
        assert!(diff(1) > 1e-3 && diff(2) > 1e-3);
    }
}
