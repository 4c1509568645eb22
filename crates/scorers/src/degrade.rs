//! Known image degradations, at graded strengths, to validate the
//! visual-quality scorer: blur, noise, washed-out colour, blocking and
//! smear (directional motion blur). Level 1 is mild, 3 is strong.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use wc_world::Frame;

/// A kind of degradation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Degradation {
    Blur,
    Noise,
    WashOut,
    Blocky,
    Smear,
}

impl Degradation {
    pub const ALL: [Degradation; 5] = [Degradation::Blur, Degradation::Noise, Degradation::WashOut, Degradation::Blocky, Degradation::Smear];

    pub fn name(&self) -> &'static str {
        match self {
            Degradation::Blur => "blur",
            Degradation::Noise => "noise",
            Degradation::WashOut => "washed-out",
            Degradation::Blocky => "blocky",
            Degradation::Smear => "smear",
        }
    }
}

/// Strongest level.
pub const LEVELS: usize = 3;

/// Apply `kind` at `level` (1..=LEVELS) to a frame; noise draws from `seed`.
pub fn degrade(f: &Frame, kind: Degradation, level: usize, seed: u64) -> Frame {
    assert!((1..=LEVELS).contains(&level), "level {level} outside 1..={LEVELS}");
    let l = level - 1;
    let rgb = match kind {
        Degradation::Blur => gaussian_blur(f, [0.6, 1.0, 1.6][l]),
        Degradation::Noise => {
            let sigma = [0.03f32, 0.06, 0.12][l];
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            f.rgb
                .iter()
                .map(|v| {
                    let z: f32 = StandardNormal.sample(&mut rng);
                    (v + sigma * z).clamp(0.0, 1.0)
                })
                .collect()
        }
        Degradation::WashOut => {
            let a = [0.25f32, 0.45, 0.65][l];
            f.rgb.iter().map(|v| (1.0 - a) * v + a * 0.85).collect()
        }
        Degradation::Blocky => block_average(f, [2, 4, 8][l]),
        Degradation::Smear => box_blur_x(f, [3, 5, 9][l]),
    };
    Frame { width: f.width, height: f.height, rgb }
}

fn at(f: &Frame, x: isize, y: isize, c: usize) -> f32 {
    let x = x.clamp(0, f.width as isize - 1) as usize;
    let y = y.clamp(0, f.height as isize - 1) as usize;
    f.rgb[(y * f.width + x) * 3 + c]
}

/// Separable Gaussian blur with clamped borders.
pub fn gaussian_blur(f: &Frame, sigma: f64) -> Vec<f32> {
    let r = (3.0 * sigma).ceil() as isize;
    let k: Vec<f32> = (-r..=r).map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp() as f32).collect();
    let norm: f32 = k.iter().sum();
    let k: Vec<f32> = k.iter().map(|v| v / norm).collect();
    let pass = |src: &Frame, horizontal: bool| -> Vec<f32> {
        let mut out = vec![0.0; src.rgb.len()];
        for y in 0..src.height {
            for x in 0..src.width {
                for c in 0..3 {
                    let mut s = 0.0;
                    for (j, w) in k.iter().enumerate() {
                        let d = j as isize - r;
                        let (xx, yy) = if horizontal { (x as isize + d, y as isize) } else { (x as isize, y as isize + d) };
                        s += w * at(src, xx, yy, c);
                    }
                    out[(y * src.width + x) * 3 + c] = s;
                }
            }
        }
        out
    };
    let h = Frame { width: f.width, height: f.height, rgb: pass(f, true) };
    pass(&h, false)
}

/// Each b x b block replaced by its mean (a crude codec at low bit-rate).
fn block_average(f: &Frame, b: usize) -> Vec<f32> {
    let mut out = f.rgb.clone();
    for by in (0..f.height).step_by(b) {
        for bx in (0..f.width).step_by(b) {
            for c in 0..3 {
                let (mut s, mut n) = (0.0, 0.0);
                for y in by..(by + b).min(f.height) {
                    for x in bx..(bx + b).min(f.width) {
                        s += f.rgb[(y * f.width + x) * 3 + c];
                        n += 1.0;
                    }
                }
                for y in by..(by + b).min(f.height) {
                    for x in bx..(bx + b).min(f.width) {
                        out[(y * f.width + x) * 3 + c] = s / n;
                    }
                }
            }
        }
    }
    out
}

/// Horizontal motion blur over `len` pixels.
fn box_blur_x(f: &Frame, len: usize) -> Vec<f32> {
    let r = (len / 2) as isize;
    let mut out = vec![0.0; f.rgb.len()];
    for y in 0..f.height {
        for x in 0..f.width {
            for c in 0..3 {
                let s: f32 = (-r..=r).map(|d| at(f, x as isize + d, y as isize, c)).sum();
                out[(y * f.width + x) * 3 + c] = s / (2 * r + 1) as f32;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checker() -> Frame {
        let rgb = (0..16 * 16).flat_map(|i| { let v = if (i % 16 / 2 + i / 16 / 2) % 2 == 0 { 0.9 } else { 0.1 }; [v, v, v] }).collect();
        Frame { width: 16, height: 16, rgb }
    }

    #[test]
    fn blur_keeps_the_mean_and_lowers_the_variance() {
        let f = checker();
        let var = |v: &[f32]| { let m = v.iter().sum::<f32>() / v.len() as f32; v.iter().map(|x| (x - m).powi(2)).sum::<f32>() / v.len() as f32 };
        let mut last = var(&f.rgb);
        for level in 1..=LEVELS {
            let g = degrade(&f, Degradation::Blur, level, 0);
            let (m0, m1) = (f.rgb.iter().sum::<f32>(), g.rgb.iter().sum::<f32>());
            assert!((m0 - m1).abs() / m0 < 0.01, "mean kept");
            let v = var(&g.rgb);
            assert!(v < last, "level {level}: variance {v} not below {last}");
            last = v;
        }
    }

    #[test]
    fn blocks_are_constant_and_noise_is_seeded() {
        let f = checker();
        let g = degrade(&f, Degradation::Blocky, 3, 0);
        assert!(g.rgb.chunks(3).take(8).all(|p| (p[0] - g.rgb[0]).abs() < 1e-6), "first 8 pixels of a row share a block");
        assert_eq!(degrade(&f, Degradation::Noise, 2, 7), degrade(&f, Degradation::Noise, 2, 7));
        assert_ne!(degrade(&f, Degradation::Noise, 2, 7), degrade(&f, Degradation::Noise, 2, 8));
    }
}
