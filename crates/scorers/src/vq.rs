//! The visual-quality scorer (the stand-in for HPSv3): a no-reference
//! measure of a frame computed from its pixels.
//!
//! Four measurements of the luminance Y and the colour of a frame:
//!
//! - contrast: the standard deviation of Y, plus half the colourfulness of
//!   Hasler and Suesstrunk (2003); washed-out frames lose both;
//! - sharpness: the geometric mean of the mean absolute second differences
//!   along x and along y of a 3 x 3 median-filtered Y, over contrast: blur
//!   and smear (directional blur) lower it, and the median keeps pixel noise
//!   from passing for detail;
//! - noise: the median of |Y - median3(Y)| over contrast: near zero on clean
//!   content (a 3 x 3 median keeps flat areas and straight edges), about a
//!   third of the noise's standard deviation under pixel noise;
//! - blocking: how much larger the luminance steps are on a block grid (2,
//!   4 or 8 px) than between grid lines, the signature of block coding.
//!
//! The weights were set on renders of scenes 900..960 and are validated on
//! held-out scenes by [`validate`] (`worldcompass scorers eval-vq`).
//!
//! VQ = ln(contrast) + 3 ln(sharpness) - 64 noise - 2 ln(blocking)
//! ([`VqWeights`]); higher is better. A clip's VQ is the mean over
//! frames sampled every `stride` frames, as the paper scores HPSv3. The
//! drift variant of the reference code, -|VQ(frame) - VQ(first frame)|,
//! rewards keeping the prompt image's quality instead.

use wc_world::Frame;

/// Measurements of one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VqFeatures {
    pub contrast: f64,
    pub sharpness: f64,
    pub noise: f64,
    pub blocking: f64,
}

/// Weights of the measurements in the score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VqWeights {
    pub contrast: f64,
    pub sharpness: f64,
    pub noise: f64,
    pub blocking: f64,
}

impl Default for VqWeights {
    fn default() -> Self {
        VqWeights { contrast: 1.0, sharpness: 3.0, noise: 64.0, blocking: 2.0 }
    }
}

fn luminance(f: &Frame) -> Vec<f64> {
    f.rgb.chunks_exact(3).map(|p| 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64).collect()
}

fn std_dev(v: &[f64]) -> f64 {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
}

fn colourfulness(f: &Frame) -> f64 {
    let rg: Vec<f64> = f.rgb.chunks_exact(3).map(|p| (p[0] - p[1]) as f64).collect();
    let yb: Vec<f64> = f.rgb.chunks_exact(3).map(|p| 0.5 * (p[0] + p[1]) as f64 - p[2] as f64).collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    (std_dev(&rg).hypot(std_dev(&yb))) + 0.3 * mean(&rg).hypot(mean(&yb))
}

fn median3(y: &[f64], w: usize, h: usize) -> Vec<f64> {
    let mut out = y.to_vec();
    for r in 1..h - 1 {
        for c in 1..w - 1 {
            let mut n = [0.0; 9];
            for (k, v) in n.iter_mut().enumerate() {
                *v = y[(r + k / 3 - 1) * w + c + k % 3 - 1];
            }
            n.sort_by(f64::total_cmp);
            out[r * w + c] = n[4];
        }
    }
    out
}

/// Mean step across block-grid lines over the mean step elsewhere, for the
/// grid (2, 4 or 8 px) where that ratio is largest.
fn blocking(y: &[f64], w: usize, h: usize) -> f64 {
    let mut best = 1.0f64;
    for b in [2usize, 4, 8] {
        let (mut on, mut n_on, mut off, mut n_off) = (0.0, 0.0, 0.0, 0.0);
        for r in 0..h {
            for c in 0..w - 1 {
                let hstep = (y[r * w + c + 1] - y[r * w + c]).abs();
                let vstep = if r + 1 < h { Some((y[(r + 1) * w + c] - y[r * w + c]).abs()) } else { None };
                if (c + 1) % b == 0 { on += hstep; n_on += 1.0 } else { off += hstep; n_off += 1.0 }
                if let Some(v) = vstep {
                    if (r + 1) % b == 0 { on += v; n_on += 1.0 } else { off += v; n_off += 1.0 }
                }
            }
        }
        let eps = 0.1 * (on + off) / (n_on + n_off) + 1e-6;
        let ratio = (on / n_on + eps) / (off / n_off + eps);
        best = best.max(ratio);
    }
    best
}

/// Mean absolute second difference along x and along y.
fn second_differences(m: &[f64], w: usize, h: usize) -> (f64, f64) {
    let (mut ex, mut ey) = (0.0, 0.0);
    for r in 1..h - 1 {
        for c in 1..w - 1 {
            let i = r * w + c;
            ex += (m[i + 1] - 2.0 * m[i] + m[i - 1]).abs();
            ey += (m[i + w] - 2.0 * m[i] + m[i - w]).abs();
        }
    }
    let n = ((w - 2) * (h - 2)) as f64;
    (ex / n, ey / n)
}

/// Measure one frame.
pub fn features(f: &Frame) -> VqFeatures {
    let (w, h) = (f.width, f.height);
    let y = luminance(f);
    let ystd = std_dev(&y) + 0.02;
    let m = median3(&y, w, h);
    let (ex, ey) = second_differences(&m, w, h);
    // The median residual: near zero on clean content (a 3 x 3 median keeps
    // flat areas and straight edges), about 0.3 sigma under pixel noise.
    let mut res: Vec<f64> = y.iter().zip(&m).map(|(a, b)| (a - b).abs()).collect();
    res.sort_by(f64::total_cmp);
    let residual = res[res.len() / 2];
    VqFeatures {
        contrast: std_dev(&y) + 0.5 * colourfulness(f),
        sharpness: ((ex / ystd + 1e-3) * (ey / ystd + 1e-3)).sqrt(),
        noise: residual / ystd,
        blocking: blocking(&y, w, h),
    }
}

/// The score of measurements under weights (higher is better).
pub fn score_features(x: &VqFeatures, wt: &VqWeights) -> f64 {
    wt.contrast * (x.contrast + 0.01).ln() + wt.sharpness * x.sharpness.ln() - wt.noise * x.noise - wt.blocking * x.blocking.ln().max(0.0)
}

/// VQ of one frame with the default weights.
pub fn frame_vq(f: &Frame) -> f64 {
    score_features(&features(f), &VqWeights::default())
}

/// How a clip's frame scores become its VQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VqMode {
    /// Mean VQ of the sampled frames (the paper).
    Absolute,
    /// Mean of -|VQ(frame) - VQ(reference)| (the reference code's drift).
    Drift,
}

/// VQ of a clip: frames sampled every `stride` frames (from the first, or
/// from frame `stride - 1` so that a 4-frame clip scores its last frame),
/// scored and averaged. Returns (clip VQ, per-frame VQ of the sampled frames).
pub fn clip_vq(frames: &[Frame], stride: usize, mode: VqMode, reference: Option<&Frame>) -> (f64, Vec<f64>) {
    let stride = stride.max(1);
    let per: Vec<f64> = frames.iter().skip(stride - 1).step_by(stride).map(frame_vq).collect();
    let r = reference.map(frame_vq);
    let vals: Vec<f64> = match (mode, r) {
        (VqMode::Drift, Some(r)) => per.iter().map(|v| -(v - r).abs()).collect(),
        _ => per.clone(),
    };
    (vals.iter().sum::<f64>() / vals.len().max(1) as f64, per)
}

/// How the scorer ranks clean frames against one degradation.
#[derive(Debug, Clone, PartialEq)]
pub struct VqValidation {
    pub degradation: crate::degrade::Degradation,
    /// Per level: share of frames whose clean version scores higher.
    pub clean_wins: Vec<f64>,
    /// Mean score of the clean frames, then of each level.
    pub mean_scores: Vec<f64>,
}

/// Score `frames` clean renders of scenes `scene_base + i` (one random
/// view each) against every degradation at every level.
pub fn validate(scene_base: u64, frames: usize, size: usize) -> Vec<VqValidation> {
    use crate::degrade::{degrade, Degradation, LEVELS};
    use rayon::prelude::*;
    use wc_world::render::render;
    let cfg = wc_world::RenderConfig { width: size, height: size, ..Default::default() };
    let rows: Vec<(f64, Vec<f64>)> = (0..frames as u64)
        .into_par_iter()
        .map(|i| {
            let mut rng = wc_rl::seeds::SplitMix64::new(scene_base ^ (i * 0x9E37));
            let yaw = (rng.next_u64() % 6283) as f64 / 1000.0;
            let pose = wc_world::Pose { yaw, ..wc_world::Pose::START };
            let f = render(&wc_world::Scene::generate(scene_base + i), &pose, &cfg);
            let degraded = Degradation::ALL.iter().flat_map(|k| (1..=LEVELS).map(move |l| (*k, l))).map(|(k, l)| frame_vq(&degrade(&f, k, l, i))).collect();
            (frame_vq(&f), degraded)
        })
        .collect();
    let n = rows.len().max(1) as f64;
    Degradation::ALL
        .iter()
        .enumerate()
        .map(|(k, d)| {
            let idx = |l: usize| k * LEVELS + l;
            VqValidation {
                degradation: *d,
                clean_wins: (0..LEVELS).map(|l| rows.iter().filter(|(c, v)| *c > v[idx(l)]).count() as f64 / n).collect(),
                mean_scores: std::iter::once(rows.iter().map(|r| r.0).sum::<f64>() / n)
                    .chain((0..LEVELS).map(|l| rows.iter().map(|r| r.1[idx(l)]).sum::<f64>() / n))
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_out_clean_frames_beat_every_degradation_and_scores_fall_with_strength() {
        // Scenes never used to set the weights (those were 900..960).
        for v in validate(crate::pose::HELD_OUT_SCENE_BASE, 48, 32) {
            for (l, w) in v.clean_wins.iter().enumerate() {
                assert!(*w >= 0.95, "{}: clean beats level {} in only {w}", v.degradation.name(), l + 1);
            }
            assert!(v.mean_scores.windows(2).all(|p| p[1] < p[0]), "{}: {:?}", v.degradation.name(), v.mean_scores);
        }
    }

    #[test]
    fn clip_vq_samples_every_stride_and_drift_rewards_keeping_the_reference() {
        use wc_world::render::render;
        let cfg = wc_world::RenderConfig::default();
        let scene = wc_world::Scene::generate(5);
        let f = render(&scene, &wc_world::Pose::START, &cfg);
        let blurred = crate::degrade::degrade(&f, crate::degrade::Degradation::Blur, 3, 0);
        let clip = vec![blurred.clone(), blurred.clone(), blurred.clone(), f.clone()];
        let (vq, per) = clip_vq(&clip, 4, VqMode::Absolute, None);
        assert_eq!(per.len(), 1, "one frame sampled of 4");
        assert!((vq - frame_vq(&f)).abs() < 1e-12, "the sampled frame is the 4th");
        let (d_same, _) = clip_vq(&clip, 4, VqMode::Drift, Some(&f));
        assert_eq!(d_same, 0.0);
        let (d_blur, _) = clip_vq(&clip, 2, VqMode::Drift, Some(&f));
        assert!(d_blur < 0.0, "a blurred sampled frame drifts from the reference");
    }
}
