//! Rotation search and de-rotation: undo a window's camera rotation so that
//! only its translation is left in the image.
//!
//! A camera rotation moves every pixel by a homography that does not depend
//! on depth; translation moves near pixels more than far ones. On a
//! combined window (turn and move at once) the turn's shift (about 8 pixels
//! of a 32-pixel frame for 20 degrees) swamps the translation's parallax.
//! Here the last frame is resampled through the rotation homography (the
//! turn found by the pose estimator's rotation network, the start pitch by
//! a photometric search): the de-rotated pair differs by translation alone,
//! like a basic translation window. (A photometric search over the turn
//! itself was tried first: on combined windows it read sideways motion as
//! part of the turn, half the time.)
//!
//! The camera model is the simulator's pinhole (horizontal field of view,
//! square pixels, no roll). A yaw turns about the world's vertical, which a
//! pitched camera sees tilted, so the homography of a yaw depends on the
//! start pitch as well: the search covers it too. Only pixels are read.

use wc_world::camera::Pose;
use wc_world::Frame;

/// A rotation hypothesis: start pitch and the window's yaw and pitch change,
/// degrees (positive: turned right, looked up).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Rotation {
    pub pitch0_deg: f64,
    pub dyaw_deg: f64,
    pub dpitch_deg: f64,
}

/// The best rotation found and how well it aligns the frames.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RotationFit {
    pub rotation: Rotation,
    /// Mean squared error of the de-rotated last frame against the first.
    pub error: f64,
    /// Mean squared error without any rotation (the identity).
    pub identity_error: f64,
}

/// The last frame resampled into the first frame's view under `rot`: pixel
/// (x, y) holds what the last frame sees along the ray of the first
/// frame's pixel (x, y). Pixels the last frame does not see are NaN.
pub fn derotate(last: &Frame, rot: &Rotation, fov_deg: f64) -> Frame {
    let (w, h) = (last.width, last.height);
    let mut rgb = vec![f32::NAN; w * h * 3];
    let m = relative_rotation(rot);
    let half = (fov_deg.to_radians() / 2.0).tan();
    let aspect = h as f64 / w as f64;
    for row in 0..h {
        for col in 0..w {
            // The ray of the first frame's pixel centre, in its camera axes
            // (right, up, forward).
            let px = (col as f64 + 0.5) / w as f64 * 2.0 - 1.0;
            let py = 1.0 - (row as f64 + 0.5) / h as f64 * 2.0;
            let c0 = [px * half, py * half * aspect, 1.0];
            let c1 = mat_vec(&m, c0);
            if c1[2] <= 1e-6 {
                continue;
            }
            let (qx, qy) = (c1[0] / c1[2] / half, c1[1] / c1[2] / (half * aspect));
            let (fx, fy) = ((qx + 1.0) / 2.0 * w as f64 - 0.5, (1.0 - qy) / 2.0 * h as f64 - 0.5);
            if let Some(v) = bilinear(last, fx, fy) {
                rgb[(row * w + col) * 3..(row * w + col) * 3 + 3].copy_from_slice(&v);
            }
        }
    }
    Frame { width: w, height: h, rgb }
}

/// Mean squared difference over the pixels both frames see (None when fewer
/// than a quarter of them do: a 20 degree turn and pitch together leave
/// under half of a 70 degree view in common).
pub fn masked_mse(first: &Frame, warped: &Frame) -> Option<f64> {
    let (mut sum, mut n) = (0.0f64, 0usize);
    for (a, b) in first.rgb.chunks_exact(3).zip(warped.rgb.chunks_exact(3)) {
        if b[0].is_nan() {
            continue;
        }
        sum += (0..3).map(|c| ((a[c] - b[c]) as f64).powi(2)).sum::<f64>();
        n += 1;
    }
    (4 * n >= first.rgb.len() / 3).then(|| sum / n as f64)
}

/// De-rotate by a known yaw and pitch change (degrees) and search the start
/// pitch (10 degree steps within 30) that best maps `last` back onto
/// `first`. Without a yaw the start pitch does not matter and stays 0.
pub fn fit_start_pitch(first: &Frame, last: &Frame, dyaw_deg: f64, dpitch_deg: f64, fov_deg: f64) -> RotationFit {
    let err = |r: &Rotation| masked_mse(first, &derotate(last, r, fov_deg)).unwrap_or(f64::INFINITY);
    // No rotation resamples every pixel at its own centre: the last frame itself.
    let identity_error = masked_mse(first, last).unwrap_or(f64::INFINITY);
    let starts: &[f64] = if dyaw_deg == 0.0 { &[0.0] } else { &[0.0, -10.0, 10.0, -20.0, 20.0, -30.0, 30.0] };
    let mut best = (f64::INFINITY, Rotation { pitch0_deg: 0.0, dyaw_deg, dpitch_deg });
    for &pitch0_deg in starts {
        let r = Rotation { pitch0_deg, dyaw_deg, dpitch_deg };
        let e = err(&r);
        if e < best.0 {
            best = (e, r);
        }
    }
    RotationFit { rotation: best.1, error: best.0, identity_error }
}

/// The matrix taking a direction in the first camera's axes (right, up,
/// forward) to the last camera's axes.
fn relative_rotation(rot: &Rotation) -> [[f64; 3]; 3] {
    let a = Pose { pitch: rot.pitch0_deg.to_radians(), ..Pose::START };
    let b = Pose { yaw: rot.dyaw_deg.to_radians(), pitch: (rot.pitch0_deg + rot.dpitch_deg).to_radians(), ..Pose::START };
    let axes = |p: &Pose| [p.right(), p.up(), p.forward()];
    let (ea, eb) = (axes(&a), axes(&b));
    // m[i][j] = eb_i . ea_j: camera-a coordinates -> world -> camera-b.
    std::array::from_fn(|i| std::array::from_fn(|j| (0..3).map(|k| eb[i][k] * ea[j][k]).sum()))
}

fn mat_vec(m: &[[f64; 3]; 3], v: [f64; 3]) -> [f64; 3] {
    std::array::from_fn(|i| m[i][0] * v[0] + m[i][1] * v[1] + m[i][2] * v[2])
}

/// Bilinear sample at a fractional pixel position (pixel centres at whole
/// numbers); None outside the frame.
fn bilinear(f: &Frame, x: f64, y: f64) -> Option<[f32; 3]> {
    if x < 0.0 || y < 0.0 || x > (f.width - 1) as f64 || y > (f.height - 1) as f64 {
        return None;
    }
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(f.width - 1), (y0 + 1).min(f.height - 1));
    let (tx, ty) = ((x - x0 as f64) as f32, (y - y0 as f64) as f32);
    let px = |x: usize, y: usize, c: usize| f.rgb[(y * f.width + x) * 3 + c];
    Some(std::array::from_fn(|c| {
        let top = px(x0, y0, c) * (1.0 - tx) + px(x1, y0, c) * tx;
        let bottom = px(x0, y1, c) * (1.0 - tx) + px(x1, y1, c) * tx;
        top * (1.0 - ty) + bottom * ty
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use wc_world::render::{render, RenderConfig};
    use wc_world::Scene;

    fn cfg() -> RenderConfig {
        RenderConfig { width: 32, height: 32, ..Default::default() }
    }

    #[test]
    fn identity_derotation_returns_the_frame() {
        let f = render(&Scene::generate(3), &Pose::START, &cfg());
        let d = derotate(&f, &Rotation::default(), cfg().fov_deg);
        for (a, b) in f.rgb.iter().zip(&d.rgb) {
            assert!((a - b).abs() < 1e-5, "{a} {b}");
        }
    }

    #[test]
    fn the_true_rotation_undoes_a_pure_turn_from_a_pitched_start() {
        // A pure rotation is a homography: de-rotating the rendered end view
        // with the true (start pitch, yaw, pitch change) reproduces the start
        // view where both see, up to resampling; a start pitch of zero (the
        // wrong tilt of the yaw axis) does markedly worse.
        let scene = Scene::generate(11);
        let start = Pose { yaw: 0.7, pitch: 25f64.to_radians(), ..Pose::START };
        let end = Pose { yaw: 0.7 + 20f64.to_radians(), pitch: 15f64.to_radians(), ..start };
        let c = RenderConfig { width: 64, height: 64, ..cfg() };
        let (a, b) = (render(&scene, &start, &c), render(&scene, &end, &c));
        let truth = Rotation { pitch0_deg: 25.0, dyaw_deg: 20.0, dpitch_deg: -10.0 };
        let right = masked_mse(&a, &derotate(&b, &truth, c.fov_deg)).unwrap();
        let level = masked_mse(&a, &derotate(&b, &Rotation { pitch0_deg: 0.0, ..truth }, c.fov_deg)).unwrap();
        let none = masked_mse(&a, &b).unwrap();
        assert!(right < 0.1 * none, "true rotation {right} vs none {none}");
        assert!(right < 0.5 * level, "true start pitch {right} vs level {level}");
    }

    #[test]
    fn the_start_pitch_search_finds_a_pitched_start() {
        // Yaw turns about the world's vertical: from a camera pitched up or
        // down that tilts the image motion, and the search recovers the tilt
        // from the pixels (10 degree grid).
        let scene = Scene::generate(5);
        for pitch0 in [-20.0, 0.0, 20.0] {
            for (dyaw, dpitch) in [(20.0, 0.0), (-20.0, -20.0)] {
                let start = Pose { yaw: 1.3, pitch: f64::to_radians(pitch0), ..Pose::START };
                let end = Pose { yaw: 1.3 + f64::to_radians(dyaw), pitch: f64::to_radians(pitch0 + dpitch), ..start };
                let fit = fit_start_pitch(&render(&scene, &start, &cfg()), &render(&scene, &end, &cfg()), dyaw, dpitch, cfg().fov_deg);
                assert!((fit.rotation.pitch0_deg - pitch0).abs() <= 10.0, "{pitch0} ({dyaw}, {dpitch}): {:?}", fit.rotation);
                assert!(fit.error < 0.5 * fit.identity_error, "{fit:?}");
            }
        }
    }
}
