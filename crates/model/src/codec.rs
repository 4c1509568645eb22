//! Pixel videos <-> latent videos, and latent frames <-> tokens.
//!
//! A [`VideoCodec`] turns a batch of 8-bit RGB videos into latent videos
//! and back, as tensors on the model's device, and states its
//! [`LatentGeometry`]: latent channels, and how many pixel frames and
//! pixels one latent frame and one latent pixel stand for (one latent frame
//! need not be one pixel frame: a causal video VAE codes the first frame
//! alone, then 4 frames per latent frame). [`PixelCodec`] is the identity
//! up to scaling (pixels in [-1, 1]). [`encode_frames`] and
//! [`decode_frames`] are the host-side view the embedded model's stage code
//! uses; [`patchify`] and [`unpatchify`] move between latent frames
//! (channels first) and tokens.

use candle_core::{DType, Device, Result, Tensor};

/// How a codec's latent video relates to its pixel video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatentGeometry {
    /// Channels of a latent pixel.
    pub channels: usize,
    /// Pixel frames per latent frame.
    pub temporal: usize,
    /// Pixels per latent pixel along each side.
    pub spatial: usize,
    /// The first pixel frame is coded alone as the first latent frame (a
    /// causal video VAE: 1 + k * temporal pixel frames -> 1 + k latent
    /// frames).
    pub causal_first_frame: bool,
}

impl LatentGeometry {
    /// Latent frames of a video of `pixel_frames` frames; `None` when that
    /// length cannot be coded.
    pub fn latent_frames(&self, pixel_frames: usize) -> Option<usize> {
        if self.causal_first_frame {
            let rest = pixel_frames.checked_sub(1)?;
            (rest % self.temporal == 0).then(|| 1 + rest / self.temporal)
        } else {
            (pixel_frames % self.temporal == 0).then(|| pixel_frames / self.temporal)
        }
    }

    /// Pixel frames a video of `latent_frames` latent frames decodes to.
    pub fn pixel_frames(&self, latent_frames: usize) -> usize {
        if self.causal_first_frame && latent_frames > 0 {
            1 + (latent_frames - 1) * self.temporal
        } else {
            latent_frames * self.temporal
        }
    }

    /// Latent pixels along a side of `pixels` pixels; `None` when it does
    /// not divide.
    pub fn latent_side(&self, pixels: usize) -> Option<usize> {
        (pixels % self.spatial == 0).then(|| pixels / self.spatial)
    }
}

/// Pixel videos <-> latent videos, as tensors on the caller's device.
pub trait VideoCodec {
    /// The latent geometry.
    fn geometry(&self) -> LatentGeometry;
    /// `video`: (B, T, H, W, 3) u8 RGB -> (B, C, T', H', W') f32 latents.
    fn encode(&self, video: &Tensor) -> Result<Tensor>;
    /// (B, C, T', H', W') f32 latents -> (B, T, H, W, 3) u8 RGB.
    fn decode(&self, latents: &Tensor) -> Result<Tensor>;
}

/// Pixels scaled to [-1, 1]: 3 channels, one latent frame per frame, one
/// latent pixel per pixel.
#[derive(Debug, Clone, Copy, Default)]
pub struct PixelCodec;

impl VideoCodec for PixelCodec {
    fn geometry(&self) -> LatentGeometry {
        LatentGeometry { channels: 3, temporal: 1, spatial: 1, causal_first_frame: false }
    }

    fn encode(&self, video: &Tensor) -> Result<Tensor> {
        let dev = video.device();
        // v / 127.5 - 1, each as its own exact f32 operation.
        let x = video.to_dtype(DType::F32)?.broadcast_div(&Tensor::new(127.5f32, dev)?)?.broadcast_sub(&Tensor::new(1f32, dev)?)?;
        x.permute((0, 4, 1, 2, 3))?.contiguous()
    }

    fn decode(&self, latents: &Tensor) -> Result<Tensor> {
        let dev = latents.device();
        // round((v + 1) * 127.5), clamped to [0, 255].
        let x = latents.broadcast_add(&Tensor::new(1f32, dev)?)?.broadcast_mul(&Tensor::new(127.5f32, dev)?)?.round()?.clamp(0f32, 255f32)?;
        x.permute((0, 2, 3, 4, 1))?.contiguous()?.to_dtype(DType::U8)
    }
}

/// Encode concatenated HWC u8 frames of `size` x `size` (one video whose
/// length the codec can code) into concatenated CHW latent frames.
pub fn encode_frames(codec: &dyn VideoCodec, rgb: &[u8], size: usize) -> Result<Vec<f32>> {
    let frames = rgb.len() / (3 * size * size);
    let video = Tensor::from_slice(rgb, (1, frames, size, size, 3), &Device::Cpu)?;
    codec.encode(&video)?.permute((0, 2, 1, 3, 4))?.flatten_all()?.to_vec1()
}

/// Decode concatenated CHW latent frames of the codec's geometry, for
/// pixel frames of `size` x `size`, into concatenated HWC u8 frames.
pub fn decode_frames(codec: &dyn VideoCodec, latents: &[f32], size: usize) -> Result<Vec<u8>> {
    let g = codec.geometry();
    let side = g.latent_side(size).ok_or_else(|| candle_core::Error::Msg(format!("{size} pixels are not a multiple of the codec's {}", g.spatial)))?;
    let frames = latents.len() / (g.channels * side * side);
    let lat = Tensor::from_slice(latents, (1, frames, g.channels, side, side), &Device::Cpu)?.permute((0, 2, 1, 3, 4))?;
    codec.decode(&lat)?.flatten_all()?.to_vec1()
}

/// CHW latent frames (concatenated) -> tokens (frame-major, then patch rows,
/// then patch columns; each token is C x p x p values).
pub fn patchify(latents: &[f32], channels: usize, size: usize, patch: usize) -> Vec<f32> {
    let n = size * size;
    let frames = latents.len() / (channels * n);
    let g = size / patch;
    let mut out = Vec::with_capacity(latents.len());
    for f in 0..frames {
        for py in 0..g {
            for px in 0..g {
                for c in 0..channels {
                    for y in 0..patch {
                        for x in 0..patch {
                            out.push(latents[f * channels * n + c * n + (py * patch + y) * size + px * patch + x]);
                        }
                    }
                }
            }
        }
    }
    out
}

/// The inverse of [`patchify`].
pub fn unpatchify(tokens: &[f32], channels: usize, size: usize, patch: usize) -> Vec<f32> {
    let n = size * size;
    let frames = tokens.len() / (channels * n);
    let g = size / patch;
    let mut out = vec![0.0f32; tokens.len()];
    let mut i = 0;
    for f in 0..frames {
        for py in 0..g {
            for px in 0..g {
                for c in 0..channels {
                    for y in 0..patch {
                        for x in 0..patch {
                            out[f * channels * n + c * n + (py * patch + y) * size + px * patch + x] = tokens[i];
                            i += 1;
                        }
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_codec_roundtrips_exactly() {
        let rgb: Vec<u8> = (0..2 * 4 * 4 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let lat = encode_frames(&PixelCodec, &rgb, 4).unwrap();
        assert!(lat.iter().all(|v| (-1.0..=1.0).contains(v)));
        assert_eq!(decode_frames(&PixelCodec, &lat, 4).unwrap(), rgb);
        // channels first: latent 1 is the red channel of pixel 1 of frame 0,
        // and frame 1 starts after frame 0's 3 x 16 values.
        assert_eq!(lat[1], rgb[3] as f32 / 127.5 - 1.0);
        assert_eq!(lat[48 + 16], rgb[48 + 1] as f32 / 127.5 - 1.0);
    }

    /// The codec's tensor arithmetic is the scalar formula, bit for bit:
    /// the embedded model's checkpoints depend on it.
    #[test]
    fn pixel_codec_equals_its_scalar_formula_bit_for_bit() {
        let rgb: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).cycle().take(3 * 16 * 3).collect();
        let lat = encode_frames(&PixelCodec, &rgb, 4).unwrap();
        let n = 16;
        for f in 0..3 {
            for i in 0..n {
                for c in 0..3 {
                    let want = rgb[f * 3 * n + i * 3 + c] as f32 / 127.5 - 1.0;
                    assert_eq!(lat[f * 3 * n + c * n + i].to_bits(), want.to_bits());
                }
            }
        }
        // Decoding rounds and clamps as ((v + 1) * 127.5).round().clamp(0, 255).
        let odd: Vec<f32> = (0..3 * n).map(|i| -1.3 + 0.0517 * i as f32).collect();
        let out = decode_frames(&PixelCodec, &odd, 4).unwrap();
        for i in 0..n {
            for c in 0..3 {
                let want = ((odd[c * n + i] + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8;
                assert_eq!(out[i * 3 + c], want);
            }
        }
    }

    #[test]
    fn latent_geometry_counts_frames_and_pixels() {
        let pixel = PixelCodec.geometry();
        assert_eq!((pixel.latent_frames(5), pixel.pixel_frames(5), pixel.latent_side(32)), (Some(5), 5, Some(32)));
        // A causal video VAE (Wan: 4x in time, 8x in space): 1 + 4k frames.
        let wan = LatentGeometry { channels: 16, temporal: 4, spatial: 8, causal_first_frame: true };
        assert_eq!(wan.latent_frames(81), Some(21));
        assert_eq!(wan.latent_frames(1), Some(1));
        assert_eq!(wan.latent_frames(80), None);
        assert_eq!(wan.latent_frames(0), None);
        assert_eq!(wan.pixel_frames(21), 81);
        assert_eq!((wan.latent_side(480), wan.latent_side(100)), (Some(60), None));
        // Without a causal first frame every latent frame is `temporal` frames.
        let plain = LatentGeometry { causal_first_frame: false, ..wan };
        assert_eq!((plain.latent_frames(80), plain.latent_frames(81), plain.pixel_frames(20)), (Some(20), None, 80));
    }

    #[test]
    fn patchify_roundtrips_and_groups_patches() {
        let lat: Vec<f32> = (0..2 * 3 * 8 * 8).map(|i| i as f32).collect();
        let tok = patchify(&lat, 3, 8, 4);
        assert_eq!(unpatchify(&tok, 3, 8, 4), lat);
        // token 1 of frame 0 is the patch at row 0, column 1: first value = pixel (0, 4) of channel 0
        assert_eq!(tok[48], lat[4]);
    }
}
