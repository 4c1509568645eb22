//! A ray caster over the scene's geometry: ground plane, pillars and balls,
//! with sun shading, shadows, fog and a sky gradient. Rows render in
//! parallel (rayon); each pixel is independent, so frames are identical on
//! any number of threads.

use rayon::prelude::*;

use crate::camera::Pose;
use crate::scene::{Rgb, Scene, Shape};

/// Frame size and optics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenderConfig {
    pub width: usize,
    pub height: usize,
    /// Horizontal field of view in degrees.
    pub fov_deg: f64,
    /// Supersampling per axis (2 = 4 rays per pixel).
    pub supersample: usize,
}

impl Default for RenderConfig {
    fn default() -> Self {
        RenderConfig {
            width: 32,
            height: 32,
            fov_deg: 70.0,
            supersample: 2,
        }
    }
}

/// An RGB frame, values in [0, 1], row-major, interleaved (HWC).
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<f32>,
}

impl Frame {
    /// A frame from 8-bit RGB bytes (HWC), the inverse of [`Frame::to_u8`].
    pub fn from_u8(width: usize, height: usize, rgb: &[u8]) -> Frame {
        Frame { width, height, rgb: rgb.iter().map(|v| *v as f32 / 255.0).collect() }
    }

    /// 8-bit RGB bytes (HWC).
    pub fn to_u8(&self) -> Vec<u8> {
        self.rgb.iter().map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8).collect()
    }

    /// Planar layout (CHW), as models take it.
    pub fn to_chw(&self) -> Vec<f32> {
        let n = self.width * self.height;
        let mut out = vec![0.0; 3 * n];
        for i in 0..n {
            for c in 0..3 {
                out[c * n + i] = self.rgb[i * 3 + c];
            }
        }
        out
    }
}

type V3 = [f64; 3];

fn add(a: V3, b: V3) -> V3 {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2]]
}
fn scale(a: V3, s: f64) -> V3 {
    [a[0] * s, a[1] * s, a[2] * s]
}
fn dot(a: V3, b: V3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}
fn normalize(a: V3) -> V3 {
    scale(a, 1.0 / dot(a, a).sqrt())
}

/// Nearest hit along a ray: distance, surface normal, albedo.
fn trace(scene: &Scene, o: V3, d: V3, max_t: f64) -> Option<(f64, V3, Rgb)> {
    let mut best: Option<(f64, V3, Rgb)> = None;
    let mut consider = |t: f64, n: V3, c: Rgb| {
        if t > 1e-6 && t < max_t && best.as_ref().is_none_or(|b| t < b.0) {
            best = Some((t, n, c));
        }
    };
    if d[1] < -1e-9 {
        let t = -o[1] / d[1];
        let p = add(o, scale(d, t));
        let cell = (p[0].floor() as i64 + p[2].floor() as i64).rem_euclid(2) as usize;
        consider(t, [0.0, 1.0, 0.0], scene.ground[cell]);
    }
    for obj in &scene.objects {
        match obj.shape {
            Shape::Ball { x, z, radius } => {
                let c = [x, radius, z];
                let oc = [o[0] - c[0], o[1] - c[1], o[2] - c[2]];
                let b = dot(oc, d);
                let disc = b * b - (dot(oc, oc) - radius * radius);
                if disc >= 0.0 {
                    let t = -b - disc.sqrt();
                    let p = add(o, scale(d, t));
                    consider(t, normalize([p[0] - c[0], p[1] - c[1], p[2] - c[2]]), obj.color);
                }
            }
            Shape::Pillar { x, z, half_x, half_z, height } => {
                let lo = [x - half_x, 0.0, z - half_z];
                let hi = [x + half_x, height, z + half_z];
                let (mut t0, mut t1, mut axis, mut sign) = (f64::NEG_INFINITY, f64::INFINITY, 0usize, 0.0);
                let mut miss = false;
                for a in 0..3 {
                    if d[a].abs() < 1e-12 {
                        if o[a] < lo[a] || o[a] > hi[a] {
                            miss = true;
                        }
                        continue;
                    }
                    let (mut ta, mut tb) = ((lo[a] - o[a]) / d[a], (hi[a] - o[a]) / d[a]);
                    let mut s = -1.0;
                    if ta > tb {
                        std::mem::swap(&mut ta, &mut tb);
                        s = 1.0;
                    }
                    if ta > t0 {
                        t0 = ta;
                        axis = a;
                        sign = s;
                    }
                    t1 = t1.min(tb);
                }
                if !miss && t0 <= t1 && t0 > 0.0 {
                    let mut n = [0.0; 3];
                    n[axis] = sign;
                    // Slightly darker top faces read as solid blocks.
                    let c = if axis == 1 { obj.color.map(|v| v * 0.9) } else { obj.color };
                    consider(t0, n, c);
                }
            }
        }
    }
    best
}

fn sky(scene: &Scene, d: V3) -> Rgb {
    let t = d[1].clamp(0.0, 1.0).powf(0.6) as f32;
    std::array::from_fn(|c| scene.sky_horizon[c] * (1.0 - t) + scene.sky_top[c] * t)
}

fn shade(scene: &Scene, o: V3, d: V3) -> Rgb {
    let Some((t, n, albedo)) = trace(scene, o, d, 200.0) else {
        return sky(scene, d);
    };
    let p = add(o, scale(d, t));
    let lambert = dot(n, scene.sun).max(0.0) as f32;
    let lit = trace(scene, add(p, scale(n, 1e-4)), scene.sun, 50.0).is_none();
    let light = scene.ambient + if lit { scene.sun_strength * lambert } else { 0.0 };
    let fog = (1.0 - (-scene.fog_density * t).exp()) as f32;
    let horizon = scene.sky_horizon;
    std::array::from_fn(|c| (albedo[c] * light) * (1.0 - fog) + horizon[c] * fog)
}

/// Render the scene from a pose.
pub fn render(scene: &Scene, pose: &Pose, cfg: &RenderConfig) -> Frame {
    let (w, h, ss) = (cfg.width, cfg.height, cfg.supersample.max(1));
    let half = (cfg.fov_deg.to_radians() / 2.0).tan();
    let aspect = h as f64 / w as f64;
    let (f, r, u) = (pose.forward(), pose.right(), pose.up());
    let o = [pose.x, pose.y, pose.z];
    let mut rgb = vec![0.0f32; w * h * 3];
    rgb.par_chunks_mut(w * 3).enumerate().for_each(|(row, out)| {
        for col in 0..w {
            let mut acc = [0.0f32; 3];
            for sy in 0..ss {
                for sx in 0..ss {
                    let px = (col as f64 + (sx as f64 + 0.5) / ss as f64) / w as f64 * 2.0 - 1.0;
                    let py = 1.0 - (row as f64 + (sy as f64 + 0.5) / ss as f64) / h as f64 * 2.0;
                    let d = normalize(add(f, add(scale(r, px * half), scale(u, py * half * aspect))));
                    let c = shade(scene, o, d);
                    for k in 0..3 {
                        acc[k] += c[k];
                    }
                }
            }
            for k in 0..3 {
                out[col * 3 + k] = (acc[k] / (ss * ss) as f32).clamp(0.0, 1.0);
            }
        }
    });
    Frame { width: w, height: h, rgb }
}

/// The ground truth of scene `scene_seed` under `actions` (one per
/// window) from the start pose, as u8 RGB HWC frames of `size` x `size`:
/// the first frame, then 4 per window. Returns the scene too (its caption).
pub fn ground_truth_u8(scene_seed: u64, actions: &[crate::ActionMask], size: usize) -> (Scene, Vec<Vec<u8>>) {
    let cfg = RenderConfig { width: size, height: size, ..Default::default() };
    let scene = Scene::generate(scene_seed);
    let poses = crate::Kinematics::default().trajectory(Pose::START, actions);
    let frames = poses.iter().map(|p| render(&scene, p, &cfg).to_u8()).collect();
    (scene, frames)
}

/// Render every pose of a trajectory.
pub fn render_trajectory(scene: &Scene, poses: &[Pose], cfg: &RenderConfig) -> Vec<Frame> {
    poses.iter().map(|p| render(scene, p, cfg)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::{ActionMask, Kinematics};

    fn mse(a: &Frame, b: &Frame) -> f64 {
        a.rgb.iter().zip(&b.rgb).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>() / a.rgb.len() as f64
    }

    #[test]
    fn u8_bytes_roundtrip_through_a_frame() {
        let bytes: Vec<u8> = (0..2 * 3 * 3).map(|i| (i * 29 % 256) as u8).collect();
        let f = Frame::from_u8(3, 2, &bytes);
        assert_eq!((f.width, f.height), (3, 2));
        assert_eq!(f.rgb[1], 29.0 / 255.0);
        assert_eq!(f.to_u8(), bytes);
    }

    #[test]
    fn frames_are_deterministic_and_in_range() {
        let s = Scene::generate(1);
        let a = render(&s, &Pose::START, &RenderConfig::default());
        assert_eq!(a, render(&s, &Pose::START, &RenderConfig::default()));
        assert_eq!(a.rgb.len(), 32 * 32 * 3);
        assert!(a.rgb.iter().all(|v| (0.0..=1.0).contains(v)));
        let other = render(&Scene::generate(2), &Pose::START, &RenderConfig::default());
        assert!(mse(&a, &other) > 1e-3, "different scenes look different");
    }

    /// The image motion of each basic action differs from every other's by a
    /// clear margin: after one window from the same pose, the frames of any
    /// two actions differ by at least a third of the smaller action's own
    /// image change, on every scene tried. Forward and backward, strafe and
    /// turn (parallax vs rotation) included.
    #[test]
    fn the_eight_basic_actions_move_the_image_differently() {
        let k = Kinematics::default();
        let cfg = RenderConfig::default();
        for seed in 0..6 {
            let s = Scene::generate(seed);
            let start = Pose::START;
            let f0 = render(&s, &start, &cfg);
            let ends: Vec<Frame> = ActionMask::basic()
                .iter()
                .map(|a| render(&s, k.trajectory(start, &[*a]).last().unwrap(), &cfg))
                .collect();
            let change: Vec<f64> = ends.iter().map(|e| mse(e, &f0)).collect();
            for (a, c) in change.iter().enumerate() {
                assert!(*c > 1e-4, "scene {seed}: action {a} barely changes the image ({c})");
            }
            for a in 0..8 {
                for b in a + 1..8 {
                    let d = mse(&ends[a], &ends[b]);
                    let margin = change[a].min(change[b]) / 3.0;
                    assert!(d > margin, "scene {seed}: actions {a} and {b} look alike ({d} <= {margin})");
                }
            }
        }
    }
}
