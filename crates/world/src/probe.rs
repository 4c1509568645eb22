//! A ground-truth instrument for generated frames: re-render the 81
//! candidate motions of a window (9 translations x 9 rotations) from the
//! true pose at the window's start, and take the one nearest (mean squared
//! error) to the generated frames.
//!
//! It reads the simulator's state (the scene and the true pose), so it is an
//! evaluation instrument where ground truth is known, never a reward.

use crate::actions::{ActionMask, Kinematics};
use crate::camera::{Pose, WindowMotion};
use crate::render::{render, Frame, RenderConfig};
use crate::scene::Scene;

/// The 9 translation classes (none, 4 axes, 4 diagonals) as masks.
pub fn translation_classes() -> [ActionMask; 9] {
    [0u8, 1, 2, 4, 8, 1 | 4, 1 | 8, 2 | 4, 2 | 8].map(ActionMask)
}

/// The 9 rotation classes (none, 4 axes, 4 diagonals) as masks.
pub fn rotation_classes() -> [ActionMask; 9] {
    [0u8, 16, 32, 64, 128, 16 | 64, 16 | 128, 32 | 64, 32 | 128].map(ActionMask)
}

/// The candidate whose rendered frames are nearest to `frames` (f32 RGB HWC
/// in [0, 1], `frames_per_window` frames after `start`).
///
/// A candidate stops rendering once its error so far reaches the best
/// one's: the errors are sums of squares added in the same order, so the
/// answer is the one a full comparison gives, at a fraction of the renders.
pub fn nearest_motion(scene: &Scene, start: &Pose, frames: &[f32], kin: &Kinematics, cfg: &RenderConfig) -> ActionMask {
    let mut best = (f64::INFINITY, ActionMask(0));
    for t in translation_classes() {
        for r in rotation_classes() {
            let a = t.union(r);
            let poses = kin.trajectory(*start, &[a]);
            let mut err = 0.0f64;
            for (i, p) in poses[1..].iter().enumerate() {
                let f = render(scene, p, cfg);
                let n = f.rgb.len();
                err += f.rgb.iter().zip(&frames[i * n..(i + 1) * n]).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>();
                if err >= best.0 {
                    break;
                }
            }
            if err < best.0 {
                best = (err, a);
            }
        }
    }
    best.1
}

/// One window read by the probe from the camera's `start`: the motion
/// found and the pose it ends at, from which the next window is read (the
/// camera is tracked through what the probe finds, so an earlier mistake is
/// not charged again to later windows).
pub fn track_window(scene: &Scene, start: &Pose, frames: &[f32], kin: &Kinematics, cfg: &RenderConfig) -> (ActionMask, Pose) {
    let found = nearest_motion(scene, start, frames, kin, cfg);
    let end = *kin.trajectory(*start, &[found]).last().expect("a trajectory holds its start");
    (found, end)
}

/// The probe's reading of consecutive windows (`frames_per_window` frames
/// each, after the camera's `start`), the camera tracked through what it
/// finds ([`track_window`]): each window's motion class and motion, and the
/// pose after the last window.
pub fn track_windows(scene: &Scene, start: Pose, frames: &[Frame], kin: &Kinematics) -> (Vec<(ActionMask, WindowMotion)>, Pose) {
    let Some(f0) = frames.first() else {
        return (Vec::new(), start);
    };
    let rcfg = RenderConfig { width: f0.width, height: f0.height, ..Default::default() };
    let mut pose = start;
    let mut motions = Vec::new();
    for window in frames.chunks_exact(kin.frames_per_window) {
        let flat: Vec<f32> = window.iter().flat_map(|f| f.rgb.iter().copied()).collect();
        let (found, end) = track_window(scene, &pose, &flat, kin, &rcfg);
        motions.push((found, WindowMotion::between(&pose, &end)));
        pose = end;
    }
    (motions, pose)
}

/// Whether a classified motion matches the command: (rotation right, translation right).
pub fn judge(found: ActionMask, commanded: ActionMask) -> (bool, bool) {
    (found.rotation() == commanded.rotation(), found.translation() == commanded.translation())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::combined_actions;
    use crate::camera::window_motions;

    #[test]
    fn ground_truth_windows_are_classified_exactly() {
        let kin = Kinematics::default();
        let cfg = RenderConfig::default();
        let mut actions: Vec<ActionMask> = ActionMask::basic().to_vec();
        actions.extend(combined_actions().into_iter().step_by(3));
        for (i, a) in actions.iter().enumerate() {
            let scene = Scene::generate(100 + i as u64);
            let start = Pose { yaw: 0.3 * i as f64, ..Pose::START };
            let poses = kin.trajectory(start, &[*a]);
            let frames: Vec<f32> = poses[1..].iter().flat_map(|p| render(&scene, p, &cfg).rgb).collect();
            assert_eq!(nearest_motion(&scene, &start, &frames, &kin, &cfg), *a, "scene {i}");
        }
    }

    #[test]
    fn stopping_early_finds_what_the_full_comparison_finds() {
        // Reference: every candidate's full error, no early stop. The
        // frames are blends of two motions' renders, so the nearest one is
        // not an exact match and the early stop has work to do.
        let kin = Kinematics::default();
        let cfg = RenderConfig { width: 32, height: 32, ..Default::default() };
        let full = |scene: &Scene, start: &Pose, frames: &[f32]| -> ActionMask {
            let mut all: Vec<(f64, ActionMask)> = Vec::new();
            for t in translation_classes() {
                for r in rotation_classes() {
                    let a = t.union(r);
                    let rendered: Vec<f32> = kin.trajectory(*start, &[a])[1..].iter().flat_map(|p| render(scene, p, &cfg).rgb).collect();
                    all.push((rendered.iter().zip(frames).map(|(x, y)| ((x - y) as f64).powi(2)).sum(), a));
                }
            }
            all.iter().copied().fold((f64::INFINITY, ActionMask(0)), |b, c| if c.0 < b.0 { c } else { b }).1
        };
        let combined = combined_actions();
        for i in 0..12 {
            let scene = Scene::generate(40 + i as u64);
            let start = Pose { yaw: 0.5 * i as f64, ..Pose::START };
            let (a, b) = (combined[i % combined.len()], ActionMask::basic()[i % 8]);
            let render_all = |m: ActionMask| -> Vec<f32> { kin.trajectory(start, &[m])[1..].iter().flat_map(|p| render(&scene, p, &cfg).rgb).collect() };
            let w = 0.3 + 0.04 * i as f32;
            let frames: Vec<f32> = render_all(a).iter().zip(render_all(b)).map(|(x, y)| w * x + (1.0 - w) * y).collect();
            assert_eq!(nearest_motion(&scene, &start, &frames, &kin, &cfg), full(&scene, &start, &frames), "window {i}");
        }
    }

    #[test]
    fn a_still_video_is_classified_as_no_motion() {
        let kin = Kinematics::default();
        let cfg = RenderConfig::default();
        let scene = Scene::generate(7);
        let f0 = render(&scene, &Pose::START, &cfg).rgb;
        let still: Vec<f32> = (0..4).flat_map(|_| f0.clone()).collect();
        let found = nearest_motion(&scene, &Pose::START, &still, &kin, &cfg);
        assert_eq!(found, ActionMask(0));
        assert_eq!(judge(found, ActionMask::FORWARD), (true, false));
    }

    #[test]
    fn the_probe_reads_true_windows_and_tracks_the_camera_through_them() {
        let kin = Kinematics::default();
        let scene = Scene::generate(7);
        let rcfg = RenderConfig { width: 32, height: 32, ..Default::default() };
        let actions: Vec<ActionMask> = [combined_actions()[0], ActionMask::basic()[2], combined_actions()[5], ActionMask(0)].to_vec();
        let poses = kin.trajectory(Pose::START, &actions);
        let frames: Vec<Frame> = poses[1..].iter().map(|p| render(&scene, p, &rcfg)).collect();
        // A prefix of two windows, then the scored windows from where it ends.
        let (prefix, end) = track_windows(&scene, Pose::START, &frames[..8], &kin);
        assert_eq!(end, poses[8], "tracked to the end of the prefix");
        let (rest, last) = track_windows(&scene, end, &frames[8..], &kin);
        assert_eq!(last, poses[16]);
        let truth: Vec<(ActionMask, WindowMotion)> = actions.iter().copied().zip(window_motions(&poses, kin.frames_per_window)).collect();
        assert_eq!([prefix, rest].concat(), truth);
        // A camera that never moves reads as no motion at all.
        let still = vec![render(&scene, &Pose::START, &rcfg); 8];
        let (m, p) = track_windows(&scene, Pose::START, &still, &kin);
        assert_eq!((m, p), (vec![(ActionMask(0), WindowMotion::between(&Pose::START, &Pose::START)); 2], Pose::START));
        assert_eq!(track_windows(&scene, Pose::START, &[], &kin), (Vec::new(), Pose::START));
    }
}
