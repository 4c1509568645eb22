//! Frames <-> latent tokens.
//!
//! The model works on tokens: one token per patch of one frame. A [`Codec`]
//! turns 8-bit RGB frames into latent frames and back; [`PixelCodec`] is the
//! identity up to scaling (pixels in [-1, 1]). A learned VAE implements the
//! same trait. [`patchify`] and [`unpatchify`] move between latent frames
//! (channels first) and tokens.

/// Frames (u8 RGB, channels last) <-> latent frames (f32, channels first).
pub trait Codec {
    /// Latent channels per frame.
    fn channels(&self) -> usize;
    /// Encode `frames` HWC u8 frames of `size` x `size` into CHW latents.
    fn encode(&self, rgb: &[u8], size: usize) -> Vec<f32>;
    /// Decode CHW latents into HWC u8 frames.
    fn decode(&self, latents: &[f32], size: usize) -> Vec<u8>;
}

/// Pixels scaled to [-1, 1].
#[derive(Debug, Clone, Copy, Default)]
pub struct PixelCodec;

impl Codec for PixelCodec {
    fn channels(&self) -> usize {
        3
    }

    fn encode(&self, rgb: &[u8], size: usize) -> Vec<f32> {
        let n = size * size;
        let frames = rgb.len() / (3 * n);
        let mut out = vec![0.0f32; rgb.len()];
        for f in 0..frames {
            for i in 0..n {
                for c in 0..3 {
                    out[f * 3 * n + c * n + i] = rgb[f * 3 * n + i * 3 + c] as f32 / 127.5 - 1.0;
                }
            }
        }
        out
    }

    fn decode(&self, latents: &[f32], size: usize) -> Vec<u8> {
        let n = size * size;
        let frames = latents.len() / (3 * n);
        let mut out = vec![0u8; latents.len()];
        for f in 0..frames {
            for i in 0..n {
                for c in 0..3 {
                    let v = (latents[f * 3 * n + c * n + i] + 1.0) * 127.5;
                    out[f * 3 * n + i * 3 + c] = v.round().clamp(0.0, 255.0) as u8;
                }
            }
        }
        out
    }
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
        let lat = PixelCodec.encode(&rgb, 4);
        assert!(lat.iter().all(|v| (-1.0..=1.0).contains(v)));
        assert_eq!(PixelCodec.decode(&lat, 4), rgb);
        // channels first: the first 16 latents are the red channel of frame 0
        assert_eq!(lat[1], rgb[3] as f32 / 127.5 - 1.0);
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
