//! Generated windows labelled by the evaluation's re-render probe: the pose
//! estimator's second source of training data, and a test set for it.
//!
//! The estimator learns on clean simulator renders, but the reward reads
//! generated frames, and there it and the evaluation's probe disagree
//! (`worldcompass scorers agreement`). A run's own candidate windows, each
//! labelled with the motion class the probe finds in it (`worldcompass
//! scorers label-windows`), show the estimator what the evaluation calls a
//! window's motion on the frames RL produces. The label reads the
//! simulator once, offline, like the exact poses of a render; the
//! estimator trained on it still sees only pixels when it scores.
//!
//! Stored as one safetensors file per labelled set (layout
//! [`wc_schemas::tensors::probe_labelled_windows`]).

use candle_core::Device;
use wc_schemas::{Tensor, TensorSet};
use wc_world::camera::WindowMotion;
use wc_world::{ActionMask, Frame, Kinematics, Pose};

use crate::pose::{PoseConfig, PoseExample, PoseNet, PoseWindow, WindowFrames};
use crate::{Result, ScorerError};

/// One generated window: its frames, the class the probe found in them and
/// the action the window was generated for.
#[derive(Debug, Clone)]
pub struct LabelledWindow {
    pub frames: WindowFrames,
    /// The probe's reading: the nearest of the 81 motion classes.
    pub found: ActionMask,
    /// The action the policy was asked for.
    pub commanded: ActionMask,
}

/// The nominal motion of a class from the start pose (what the metric reads
/// for it).
pub fn nominal_motion(class: ActionMask, kin: &Kinematics) -> WindowMotion {
    let poses = kin.trajectory(Pose::START, &[class]);
    WindowMotion::between(&poses[0], poses.last().expect("a trajectory holds its start"))
}

impl LabelledWindow {
    /// The window as a training example whose labels are the probe's class
    /// (the translation network's input is de-rotated by the probe's
    /// rotation, as a render's is by the true one).
    pub fn example(&self, cfg: &PoseConfig) -> PoseExample {
        let truth = nominal_motion(self.found, &Kinematics::default());
        PoseExample::of(cfg, &PoseWindow { frames: self.frames.clone(), action: self.found, truth })
    }
}

/// The tensors of a labelled set: `frames` u8 `[windows, 3, size, size, 3]`
/// (the frame before the window, its middle and its last frame), `found`
/// and `commanded` u8 `[windows]` (action masks).
pub fn to_tensors(windows: &[LabelledWindow]) -> TensorSet {
    let size = windows.first().map_or(0, |w| w.frames.first.width);
    let frames: Vec<u8> = windows.iter().flat_map(|w| [&w.frames.first, &w.frames.mid, &w.frames.last].into_iter().flat_map(Frame::to_u8)).collect();
    let n = windows.len();
    let mut set = TensorSet::new();
    set.insert("frames".into(), Tensor::from_u8(&[n, 3, size, size, 3], &frames));
    set.insert("found".into(), Tensor::from_u8(&[n], &windows.iter().map(|w| w.found.0).collect::<Vec<_>>()));
    set.insert("commanded".into(), Tensor::from_u8(&[n], &windows.iter().map(|w| w.commanded.0).collect::<Vec<_>>()));
    set
}

/// The windows of a labelled set's tensors (already checked against the
/// layout by the reader: names, dtypes and ranks).
pub fn from_tensors(set: &TensorSet) -> Result<Vec<LabelledWindow>> {
    let get = |name: &str| set.get(name).ok_or_else(|| ScorerError::Input(format!("labelled windows: no tensor '{name}'")));
    let (frames, found, commanded) = (get("frames")?, get("found")?, get("commanded")?);
    let (n, size) = (frames.shape[0], frames.shape[2]);
    if frames.shape[3] != size || found.numel() != n || commanded.numel() != n {
        return Err(ScorerError::Input(format!(
            "labelled windows: frames {:?}, found {:?}, commanded {:?} do not describe the same square windows",
            frames.shape, found.shape, commanded.shape
        )));
    }
    let per = size * size * 3;
    Ok((0..n)
        .map(|i| {
            let f = |k: usize| Frame::from_u8(size, size, &frames.data[(3 * i + k) * per..(3 * i + k + 1) * per]);
            LabelledWindow { frames: WindowFrames { first: f(0), mid: f(1), last: f(2) }, found: ActionMask(found.data[i]), commanded: ActionMask(commanded.data[i]) }
        })
        .collect())
}

/// The estimator's reading of each window beside the probe's class, in the
/// shape [`crate::pose::prediction_accuracy`] judges (the probe's class in
/// the place of the command).
pub fn predictions(net: &PoseNet, windows: &[LabelledWindow], device: &Device) -> Result<Vec<(ActionMask, WindowMotion)>> {
    let frames: Vec<WindowFrames> = windows.iter().map(|w| w.frames.clone()).collect();
    let motions = net.estimate_windows(&frames, &Kinematics::default(), device)?;
    Ok(windows.iter().map(|w| w.found).zip(motions).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wc_world::render::render;
    use wc_world::{RenderConfig, Scene};

    fn window(scene: &Scene, class: ActionMask, commanded: ActionMask) -> LabelledWindow {
        let kin = Kinematics::default();
        let rcfg = RenderConfig { width: 16, height: 16, ..Default::default() };
        let poses = kin.trajectory(Pose::START, &[class]);
        let f = |i: usize| render(scene, &poses[i], &rcfg);
        LabelledWindow { frames: WindowFrames { first: f(0), mid: f(2), last: f(4) }, found: class, commanded }
    }

    #[test]
    fn labelled_windows_round_trip_through_their_tensors() {
        let scene = Scene::generate(3);
        let windows = vec![window(&scene, ActionMask(1 | 64), ActionMask(1)), window(&scene, ActionMask(0), ActionMask(8 | 16))];
        let set = to_tensors(&windows);
        assert_eq!(set["frames"].shape, vec![2, 3, 16, 16, 3]);
        let back = from_tensors(&set).unwrap();
        assert_eq!(back.iter().map(|w| (w.found, w.commanded)).collect::<Vec<_>>(), vec![(ActionMask(65), ActionMask(1)), (ActionMask(0), ActionMask(24))]);
        // 8-bit frames: the round trip is exact after the first quantisation.
        assert_eq!(back[1].frames.last.to_u8(), windows[1].frames.last.to_u8());
        let mut bad = set.clone();
        bad.insert("found".into(), Tensor::from_u8(&[3], &[0, 0, 0]));
        assert!(from_tensors(&bad).unwrap_err().to_string().contains("same square windows"));
    }

    #[test]
    fn a_labelled_example_takes_the_probes_class_not_the_command() {
        let cfg = PoseConfig { frame_size: 16, hidden: 8, derotate: true, fine_halves: true };
        let w = window(&Scene::generate(5), ActionMask::FORWARD.union(ActionMask::TURN_RIGHT), ActionMask::LEFT);
        let e = w.example(&cfg);
        // Classes per axis (yaw, pitch, forward, right): 0 negative, 1 none, 2 positive.
        assert_eq!(e.labels, [2, 1, 2, 1]);
        assert_eq!(e.action, w.found);
        let kin = Kinematics::default();
        // Four steps forward while turning 5 degrees a frame: 1 + cos 5 +
        // cos 10 + cos 15 = 3.947 steps ahead, the rest to the right.
        assert!((e.truth.forward / kin.move_step - 3.947).abs() < 1e-3, "{:?}", e.truth);
        assert!(e.truth.right > 0.0 && (e.truth.dyaw_deg - 20.0).abs() < 1e-9 && e.truth.dpitch_deg == 0.0, "{:?}", e.truth);
        assert_eq!(e.translation_input.map(|t| t.len()), Some(cfg.translation_dim()));
    }
}
