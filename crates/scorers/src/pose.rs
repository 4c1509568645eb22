//! The camera pose estimator: pixels in, relative camera motion out.
//!
//! It reads a window's first frame (the frame before the window) and its
//! last frame, and classifies each motion axis (yaw, pitch, forward, right)
//! as negative, none or positive; a second network reads the translation
//! after the turn is undone ([`crate::derotate`]). The class probabilities
//! ([`PoseNet::window_probs`], [`expected_correct`]) give the graded
//! interaction-following reward.
//!
//! See docs/scorers.md for the design and
//! docs/results/2026-11-27-pose-estimator-tuning.md for the tuning history.

use candle_core::{DType, Device, Tensor, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use wc_model::nn::Linear;
use wc_model::params::Params;
use wc_rl::seeds::SplitMix64;
use wc_world::actions::combined_actions;
use wc_world::camera::WindowMotion;
use wc_world::probe::{rotation_classes, translation_classes};
use wc_world::render::render;
use wc_world::{ActionMask, Frame, Kinematics, Pose, RenderConfig, Scene};

use crate::degrade::{degrade, Degradation};
use crate::derotate::{derotate, fit_start_pitch, Rotation};
use crate::labelled::LabelledWindow;
use crate::Result;

/// Architecture and data of the estimator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoseConfig {
    pub frame_size: usize,
    pub hidden: usize,
    /// Also read the pair after undoing the window's rotation (see
    /// [`crate::derotate`]): its cost volume and the rotation found. Off in
    /// estimators saved before it existed.
    #[serde(default)]
    pub derotate: bool,
    /// The translation network reads the de-rotated halves' cost volumes at
    /// every whole-pixel shift near zero ([`PoseConfig::fine_shifts`]) rather
    /// than on the coarse grid: a half window's parallax is a few pixels,
    /// finer than the coarse grid's step. Same input size, so an estimator
    /// without it can warm-start one with it. Off in estimators saved
    /// before it existed (and not serialised when off, so their settings
    /// keep their fingerprints).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fine_halves: bool,
}

impl Default for PoseConfig {
    fn default() -> Self {
        PoseConfig { frame_size: 32, hidden: 256, derotate: true, fine_halves: true }
    }
}

impl PoseConfig {
    /// Block size of the cost volume (pixels).
    pub fn block(&self) -> usize {
        (self.frame_size / 4).max(2)
    }
    /// Top-left corners of the blocks along one axis.
    pub fn block_starts(&self) -> Vec<usize> {
        let (b, s) = (self.block(), self.frame_size);
        let stride = (3 * b / 4).max(1);
        (0..).map(|i| i * stride).take_while(|x| x + b <= s).collect()
    }
    /// Largest shift searched along each axis (pixels).
    pub fn max_shift(&self) -> isize {
        (3 * self.frame_size / 8) as isize
    }
    /// Shifts of the coarse cost volume along one axis.
    pub fn coarse_shifts(&self) -> Vec<isize> {
        let max = self.max_shift();
        let step = (self.frame_size / 10).max(1) as isize;
        (-max / step..=max / step).map(|i| i * step).collect()
    }
    /// Shifts of the fine cost volume along one axis: every whole pixel
    /// within as many of them as the coarse grid has shifts (-4..=4 for 32
    /// pixels), so both volumes have the same size.
    pub fn fine_shifts(&self) -> Vec<isize> {
        let r = self.fine_radius();
        (-r..=r).collect()
    }
    /// Largest shift of the fine cost volume (pixels).
    pub fn fine_radius(&self) -> isize {
        (self.coarse_shifts().len() / 2) as isize
    }
    /// Whether `other`'s parameters have this estimator's shapes (a warm
    /// start may change what the translation network reads, not its size).
    pub fn same_parameters(&self, other: &PoseConfig) -> bool {
        (self.frame_size, self.hidden, self.derotate) == (other.frame_size, other.hidden, other.derotate)
    }
    /// Features per block: the coarse cost volume, then the best shift
    /// (dx, dy), the soft-argmin shift (dx, dy) and the match contrast.
    pub fn block_features(&self) -> usize {
        self.coarse_shifts().len().pow(2) + 5
    }
    /// Inputs of one cost volume (every block's features).
    pub fn volume_dim(&self) -> usize {
        self.block_starts().len().pow(2) * self.block_features()
    }
    /// Inputs of the rotation network (one cost volume).
    pub fn input_dim(&self) -> usize {
        self.volume_dim()
    }
    /// Inputs of the translation network: both cost volumes and the start
    /// pitch search's result.
    pub fn translation_dim(&self) -> usize {
        3 * self.volume_dim() + ROTATION_FEATURES
    }
}

/// Scene seeds of the training set: `TRAIN_SCENE_BASE + i`, i < TRAIN_SCENES.
pub const TRAIN_SCENE_BASE: u64 = 0x5EED_0000_0000;
pub const TRAIN_SCENES: u64 = 4096;
/// Scene seeds of held-out evaluation: never trained on.
pub const HELD_OUT_SCENE_BASE: u64 = 0xE7A1_0000_0000;

/// Inputs describing the de-rotation: the start pitch found, and how much
/// of the frame difference the rotation explains.
pub const ROTATION_FEATURES: usize = 2;

/// Motion axes the estimator classifies.
pub const AXES: usize = 4;

/// A residual MLP classifying `axes` motion axes as negative, none or
/// positive.
struct AxisClassifier {
    axes: usize,
    l1: Linear,
    l2: Linear,
    l3: Linear,
    head: Linear,
}

impl AxisClassifier {
    fn new(p: &mut Params, prefix: &str, input: usize, hidden: usize, axes: usize) -> Result<Self> {
        Ok(AxisClassifier {
            axes,
            l1: Linear::new(p, &format!("{prefix}.l1"), input, hidden, None, true)?,
            l2: Linear::new(p, &format!("{prefix}.l2"), hidden, hidden, None, true)?,
            l3: Linear::new(p, &format!("{prefix}.l3"), hidden, hidden, None, true)?,
            head: Linear::new(p, &format!("{prefix}.head"), hidden, axes * 3, None, true)?,
        })
    }

    /// Logits [B, axes, 3] (classes: negative, none, positive).
    fn logits(&self, input: &Tensor) -> Result<Tensor> {
        let x = self.l1.forward(input)?.gelu()?;
        let x = (&x + self.l2.forward(&x)?.gelu()?)?;
        let x = (&x + self.l3.forward(&x)?.gelu()?)?;
        let b = input.dim(0)?;
        Ok(self.head.forward(&x)?.reshape((b, self.axes, 3))?)
    }

    /// Mean cross-entropy of the axis labels (class index 0, 1, 2 per axis).
    fn loss(&self, input: &Tensor, labels: &[u32]) -> Result<Tensor> {
        let logits = self.logits(input)?;
        let b = logits.dim(0)?;
        let flat = logits.reshape((b * self.axes, 3))?;
        let target = Tensor::from_vec(labels.to_vec(), b * self.axes, input.device())?;
        Ok(candle_nn::loss::cross_entropy(&flat, &target)?)
    }

    /// Class probabilities, [B][axes][3].
    fn probs(&self, input: &Tensor) -> Result<Vec<Vec<Vec<f64>>>> {
        Ok(candle_nn::ops::softmax(&self.logits(input)?, D::Minus1)?.to_dtype(DType::F64)?.to_vec3::<f64>()?)
    }
}

/// The estimator: a rotation network over the window's cost volume (all
/// four axes), and with `derotate` a translation network that reads the
/// window again after undoing the rotation the first one found.
pub struct PoseNet {
    pub cfg: PoseConfig,
    rotation: AxisClassifier,
    translation: Option<AxisClassifier>,
}

impl PoseNet {
    pub fn new(cfg: &PoseConfig, p: &mut Params) -> Result<Self> {
        let rotation = AxisClassifier::new(p, "pose", cfg.input_dim(), cfg.hidden, AXES)?;
        let translation = match cfg.derotate {
            true => Some(AxisClassifier::new(p, "pose.translation", cfg.translation_dim(), cfg.hidden, 2)?),
            false => None,
        };
        Ok(PoseNet { cfg: cfg.clone(), rotation, translation })
    }

    /// Mean cross-entropy of a batch: the rotation network's four axes, plus
    /// the translation network's two on the inputs de-rotated by the true
    /// rotation.
    pub fn loss(&self, batch: &PoseBatch) -> Result<Tensor> {
        let loss = self.rotation.loss(&batch.input, &batch.labels)?;
        match (&self.translation, &batch.translation_input) {
            (Some(t), Some(x)) => {
                let labels: Vec<u32> = batch.labels.chunks(AXES).flat_map(|l| [l[2], l[3]]).collect();
                Ok((loss + t.loss(x, &labels)?)?)
            }
            (None, _) => Ok(loss),
            (Some(_), None) => Err(crate::ScorerError::Input("the batch has no de-rotated inputs for the translation network".into())),
        }
    }

    /// Class probabilities of windows (first, middle, last frame). The
    /// rotation network reads every axis; with `derotate`, each window is
    /// then de-rotated by the rotation it read, and the translation axes
    /// become the mean of both networks' probabilities. (The pair reads
    /// better than either: on 1000 held-out windows, translation accuracy
    /// basic / combined was 0.942 / 0.800 from the translation network
    /// alone, 0.968 / 0.813 from the mean; weights 0.3 and 0.7 on the
    /// rotation network's reading, and a geometric mean, were no better.)
    pub fn window_probs(&self, windows: &[WindowFrames], kin: &Kinematics, device: &Device) -> Result<Vec<AxisProbs>> {
        if windows.is_empty() {
            return Ok(Vec::new());
        }
        let volumes: Vec<Vec<f32>> = windows.par_iter().map(|w| window_input(&self.cfg, &w.first, &w.last)).collect();
        let x = Tensor::from_vec(volumes.concat(), (windows.len(), self.cfg.input_dim()), device)?;
        let mut probs: Vec<AxisProbs> = self.rotation.probs(&x)?.iter().map(|a| std::array::from_fn(|i| [a[i][0], a[i][1], a[i][2]])).collect();
        if let Some(t) = &self.translation {
            let rotations: Vec<(i8, i8)> = probs.iter().map(|p| (class_of(&p[0]), class_of(&p[1]))).collect();
            let inputs: Vec<Vec<f32>> = windows
                .par_iter()
                .zip(volumes.par_iter())
                .zip(rotations.par_iter())
                .map(|((w, v), r)| translation_input(&self.cfg, w, v, *r, kin))
                .collect();
            let x = Tensor::from_vec(inputs.concat(), (windows.len(), self.cfg.translation_dim()), device)?;
            for (p, q) in probs.iter_mut().zip(t.probs(&x)?) {
                for (axis, q) in [(2, &q[0]), (3, &q[1])] {
                    p[axis] = std::array::from_fn(|c| 0.5 * (p[axis][c] + q[c]));
                }
            }
        }
        Ok(probs)
    }

    /// Window motions of windows (first, middle, last frame): each axis's
    /// most probable class times the nominal window motion, scaled by its
    /// probability (see [`motion_of`]).
    pub fn estimate_windows(&self, windows: &[WindowFrames], kin: &Kinematics, device: &Device) -> Result<Vec<WindowMotion>> {
        Ok(self.window_probs(windows, kin, device)?.iter().map(|p| motion_of(p, kin)).collect())
    }
}

/// Class probabilities of one window's axes (yaw, pitch, forward, right),
/// each over (negative, none, positive).
pub type AxisProbs = [[f64; 3]; AXES];

/// The most probable class of one axis: -1, 0 (none) or +1. Ties go to
/// "none", then to positive.
fn class_of(p: &[f64; 3]) -> i8 {
    if p[2] > p[1] && p[2] >= p[0] {
        1
    } else if p[0] > p[1] && p[0] > p[2] {
        -1
    } else {
        0
    }
}

/// The motion the estimator reads: per axis, its most probable class times
/// the nominal window motion (`turn` degrees, `step` units), scaled by that
/// class's probability; "none" is exactly zero. The scale lets the metric's
/// 60 degree cones weigh a doubtful second translation axis: forward 0.95
/// with a spurious right 0.5 points 62 degrees off the right axis and reads
/// as forward alone. Nominal magnitudes read it as a diagonal: on 2000
/// held-out windows, basic translation accuracy fell from 0.971 to 0.965,
/// and combined rose only from 0.818 to 0.819 (diagonal moves gain, the
/// rest lose).
pub fn motion_of(p: &AxisProbs, kin: &Kinematics) -> WindowMotion {
    let w = kin.frames_per_window as f64;
    let (turn, step) = (kin.turn_step_deg * w, kin.move_step * w);
    let c = |axis: usize| {
        let class = class_of(&p[axis]);
        class as f64 * p[axis][(class + 1) as usize]
    };
    WindowMotion { dyaw_deg: turn * c(0), dpitch_deg: turn * c(1), forward: step * c(2), right: step * c(3) }
}

/// The probability that the estimator reads a window's commanded rotation
/// and its commanded translation: the product of the commanded class's
/// probability over the two axes of each (the heads are read as
/// independent). With one-hot probabilities these are exactly the metric's
/// rotation and translation correctness of [`motion_of`]'s motion; with
/// doubt they grade how clearly the frames show the command, where the
/// metric gives only right or wrong.
pub fn expected_correct(p: &AxisProbs, action: ActionMask) -> (f64, f64) {
    let (yaw, pitch) = action.rotation();
    let (fw, rt) = action.translation();
    let at = |axis: usize, class: i8| p[axis][(class + 1) as usize];
    (at(0, yaw) * at(1, pitch), at(2, fw) * at(3, rt))
}

/// Mean squared difference of a block of `first` at (bx, by) against
/// `last` shifted by (dx, dy), over the pixels that stay in the frame
/// and that `last` sees (None when fewer than a quarter do).
fn block_cost(first: &Frame, last: &Frame, bx: usize, by: usize, b: usize, dx: isize, dy: isize) -> Option<f32> {
    let (w, h) = (first.width as isize, first.height as isize);
    let (mut sum, mut n) = (0.0f32, 0usize);
    for y in by..by + b {
        let yy = y as isize + dy;
        if yy < 0 || yy >= h {
            continue;
        }
        for x in bx..bx + b {
            let xx = x as isize + dx;
            if xx < 0 || xx >= w {
                continue;
            }
            let (i, j) = ((y * first.width + x) * 3, (yy as usize * first.width + xx as usize) * 3);
            if last.rgb[j].is_nan() {
                continue; // not seen by a de-rotated last frame
            }
            for c in 0..3 {
                let d = first.rgb[i + c] - last.rgb[j + c];
                sum += d * d;
            }
            n += 1;
        }
    }
    (n * 4 >= b * b).then(|| sum / n as f32)
}

/// The rotation network's input for one window (see the module doc): per
/// block of the first frame, its cost volume against the last frame on a
/// coarse grid of shifts (normalised by its mean), the best whole-pixel
/// shift, the soft-argmin shift over all whole-pixel shifts, and how much
/// better the best match is than the average one.
pub fn window_input(cfg: &PoseConfig, first: &Frame, last: &Frame) -> Vec<f32> {
    assert_eq!((first.width, first.height), (cfg.frame_size, cfg.frame_size), "frames must be {0}x{0}", cfg.frame_size);
    let mut out = Vec::with_capacity(cfg.input_dim());
    cost_volume(cfg, first, last, &mut out);
    out
}

/// The translation network's input for one window whose rotation signs
/// (yaw, pitch) are `rotation`: the window's own volume, the volumes of
/// both halves de-rotated by half the nominal rotation each (the start
/// pitch searched, see [`crate::derotate`]; fine shifts with
/// [`PoseConfig::fine_halves`]), the start pitch found and the share of the
/// frame difference the rotation explains.
pub fn translation_input(cfg: &PoseConfig, w: &WindowFrames, volume: &[f32], rotation: (i8, i8), kin: &Kinematics) -> Vec<f32> {
    let turn = kin.turn_step_deg * kin.frames_per_window as f64;
    let fov = wc_world::RenderConfig::default().fov_deg;
    let fit = fit_start_pitch(&w.first, &w.last, rotation.0 as f64 * turn, rotation.1 as f64 * turn, fov);
    let mut out = Vec::with_capacity(cfg.translation_dim());
    out.extend_from_slice(volume);
    // Each half of the window, de-rotated by half the turn: the ground a
    // turn up takes out of the last frame's view is still in the middle one.
    let r = fit.rotation;
    let half = Rotation { pitch0_deg: r.pitch0_deg, dyaw_deg: r.dyaw_deg / 2.0, dpitch_deg: r.dpitch_deg / 2.0 };
    let second = Rotation { pitch0_deg: r.pitch0_deg + half.dpitch_deg, ..half };
    let (grid, search) = if cfg.fine_halves { (cfg.fine_shifts(), cfg.fine_radius()) } else { (cfg.coarse_shifts(), cfg.max_shift()) };
    shift_volume(cfg, &w.first, &derotate(&w.mid, &half, fov), &grid, search, &mut out);
    shift_volume(cfg, &w.mid, &derotate(&w.last, &second, fov), &grid, search, &mut out);
    let explained = if fit.identity_error > 0.0 { 1.0 - fit.error / fit.identity_error } else { 0.0 };
    out.extend([fit.rotation.pitch0_deg / 30.0, explained.max(-1.0)].map(|v| v as f32));
    out
}

/// Append one cost volume's block features (see [`window_input`]): the
/// coarse grid, searched within the largest shift.
fn cost_volume(cfg: &PoseConfig, first: &Frame, last: &Frame, out: &mut Vec<f32>) {
    shift_volume(cfg, first, last, &cfg.coarse_shifts(), cfg.max_shift(), out);
}

/// Append, per block of `first`, its matching cost against `last` at every
/// shift of `grid` along both axes (normalised by the mean cost over all
/// whole-pixel shifts within `search`), then the best of those shifts, their
/// soft-argmin (both divided by `search`) and how much better the best match
/// is than the average one.
fn shift_volume(cfg: &PoseConfig, first: &Frame, last: &Frame, grid: &[isize], search: isize, out: &mut Vec<f32>) {
    let (b, starts) = (cfg.block(), cfg.block_starts());
    let scale = search as f32;
    for &by in &starts {
        for &bx in &starts {
            // Every whole-pixel shift, each cost computed once (the grid's
            // shifts are among them).
            let side = 2 * search + 1;
            let costs: Vec<Option<f32>> = (0..side * side).map(|i| block_cost(first, last, bx, by, b, i % side - search, i / side - search)).collect();
            let fine: Vec<(isize, isize, f32)> = costs.iter().enumerate().filter_map(|(i, c)| c.map(|c| (i as isize % side - search, i as isize / side - search, c))).collect();
            let mean = fine.iter().map(|f| f.2).sum::<f32>() / fine.len().max(1) as f32 + 1e-4;
            for &dy in grid {
                for &dx in grid {
                    let c = costs[((dy + search) * side + dx + search) as usize];
                    out.push(c.map_or(0.0, |c| 1.0 - c / mean));
                }
            }
            let best = fine.iter().copied().fold((0isize, 0isize, f32::INFINITY), |a, f| if f.2 < a.2 { f } else { a });
            // Soft-argmin with a temperature of a tenth of the mean cost.
            let tau = 0.1 * mean;
            let (mut sw, mut sx, mut sy) = (0.0f32, 0.0f32, 0.0f32);
            for &(dx, dy, c) in &fine {
                let wgt = (-(c - best.2) / tau).exp();
                sw += wgt;
                sx += wgt * dx as f32;
                sy += wgt * dy as f32;
            }
            out.extend([best.0 as f32 / scale, best.1 as f32 / scale, sx / sw / scale, sy / sw / scale, 1.0 - best.2 / mean]);
        }
    }
}

/// Class labels of a true window motion: per axis 0 (negative), 1 (none),
/// 2 (positive), by the signs of the commanded action.
pub fn labels_of(action: ActionMask) -> [u32; AXES] {
    let (fw, rt) = action.translation();
    let (yaw, pitch) = action.rotation();
    [yaw, pitch, fw, rt].map(|s| (s + 1) as u32)
}

/// The windows of a frame sequence: `frames[0]` is the frame before the
/// first window, then `frames_per_window` frames per window.
pub fn sequence_windows(frames: &[Frame], kin: &Kinematics) -> Vec<WindowFrames> {
    let f = kin.frames_per_window;
    let windows = frames.len().saturating_sub(1) / f;
    (0..windows)
        .map(|w| WindowFrames { first: frames[w * f].clone(), mid: frames[w * f + f / 2].clone(), last: frames[(w + 1) * f].clone() })
        .collect()
}

/// The class probabilities of a frame sequence's windows (`frames[0]` is
/// the frame before the first window); [`motion_of`] maps them to motions.
pub fn estimate_probs(net: &PoseNet, frames: &[Frame], kin: &Kinematics, device: &Device) -> Result<Vec<AxisProbs>> {
    net.window_probs(&sequence_windows(frames, kin), kin, device)
}

/// The frames of one window the estimator reads: the frame before it, the
/// middle one and the last.
#[derive(Debug, Clone)]
pub struct WindowFrames {
    pub first: Frame,
    pub mid: Frame,
    pub last: Frame,
}

/// One window of the estimator's data: its frames, the commanded action and
/// the true motion.
#[derive(Debug, Clone)]
pub struct PoseWindow {
    pub frames: WindowFrames,
    pub action: ActionMask,
    pub truth: WindowMotion,
}

/// One training example: a window's inputs and labels.
#[derive(Debug, Clone)]
pub struct PoseExample {
    pub input: Vec<f32>,
    /// The translation network's input, de-rotated by the true rotation
    /// (None without `derotate`).
    pub translation_input: Option<Vec<f32>>,
    pub labels: [u32; AXES],
    pub action: ActionMask,
    pub truth: WindowMotion,
}

impl PoseExample {
    pub fn of(cfg: &PoseConfig, w: &PoseWindow) -> PoseExample {
        let kin = Kinematics::default();
        let input = window_input(cfg, &w.frames.first, &w.frames.last);
        let translation_input = cfg.derotate.then(|| translation_input(cfg, &w.frames, &input, w.action.rotation(), &kin));
        PoseExample { input, translation_input, labels: labels_of(w.action), action: w.action, truth: w.truth }
    }
}

/// Which actions an example draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionDraw {
    /// Training mix: all 81 classes, the basic and the combined actions.
    Training,
    Basic,
    Combined,
}

/// Render window `index` from scene seeds `scene_base + (0..scenes)`.
/// `augment` blurs or noises half the examples mildly.
pub fn render_window(cfg: &PoseConfig, seed: u64, index: u64, scene_base: u64, scenes: u64, draw: ActionDraw, augment: bool) -> PoseWindow {
    let size = cfg.frame_size;
    let kin = Kinematics::default();
    let mut rng = ChaCha8Rng::seed_from_u64(SplitMix64::new(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64());
    let scene = Scene::generate(scene_base + rng.random_range(0..scenes));
    let basic = ActionMask::basic();
    let combined = combined_actions();
    let pick = |rng: &mut ChaCha8Rng, draw: ActionDraw| -> ActionMask {
        match draw {
            ActionDraw::Basic => basic[rng.random_range(0..basic.len())],
            ActionDraw::Combined => combined[rng.random_range(0..combined.len())],
            ActionDraw::Training => match rng.random_range(0..3) {
                0 => translation_classes()[rng.random_range(0..9)].union(rotation_classes()[rng.random_range(0..9)]),
                1 => basic[rng.random_range(0..basic.len())],
                _ => combined[rng.random_range(0..combined.len())],
            },
        }
    };
    // A start pose reached by a short random walk from the scene's start,
    // with the pitch kept within the kinematics' bound.
    let mut start = Pose { yaw: rng.random_range(-std::f64::consts::PI..std::f64::consts::PI), ..Pose::START };
    for _ in 0..rng.random_range(0..4) {
        let a = pick(&mut rng, ActionDraw::Training);
        let end = *kin.trajectory(start, &[a]).last().expect("non-empty");
        if end.pitch.to_degrees().abs() <= kin.max_pitch_deg - 20.0 {
            start = end;
        }
    }
    let mut action = pick(&mut rng, draw);
    let room = kin.max_pitch_deg;
    let pitch_after = start.pitch.to_degrees() + action.rotation().1 as f64 * kin.turn_step_deg * kin.frames_per_window as f64;
    if pitch_after.abs() > room {
        // Flip the pitch so that the window stays within the bound.
        let flipped = action.0 ^ (ActionMask::TURN_UP.0 | ActionMask::TURN_DOWN.0);
        action = ActionMask(if action.rotation().1 != 0 { flipped } else { action.0 });
    }
    let poses = kin.trajectory(start, &[action]);
    let rcfg = RenderConfig { width: size, height: size, ..Default::default() };
    let last = poses.len() - 1;
    let mut frames = [0, last / 2, last].map(|i| render(&scene, &poses[i], &rcfg));
    if augment && rng.random_bool(0.5) {
        let kind = [Degradation::Blur, Degradation::Noise][rng.random_range(0..2)];
        let s = rng.random::<u64>();
        for (i, f) in frames.iter_mut().enumerate() {
            *f = degrade(f, kind, 1, s ^ i as u64);
        }
    }
    let [first, mid, last_frame] = frames;
    PoseWindow { frames: WindowFrames { first, mid, last: last_frame }, action, truth: WindowMotion::between(&poses[0], &poses[last]) }
}

/// A training batch of `batch` examples for step `step` (parallel, and the
/// same bytes on any number of threads).
pub fn training_batch(cfg: &PoseConfig, seed: u64, step: u64, batch: usize) -> Vec<PoseExample> {
    (0..batch as u64)
        .into_par_iter()
        .map(|i| PoseExample::of(cfg, &render_window(cfg, seed ^ step.wrapping_mul(0xA24B_AED4_963E_E407), i, TRAIN_SCENE_BASE, TRAIN_SCENES, ActionDraw::Training, true)))
        .collect()
}

/// The batch of `step` with generated windows mixed in: `round(batch *
/// share)` examples drawn (with replacement, from seed and step) from
/// `generated`, the rest rendered as in [`training_batch`]. With no
/// generated windows it is [`training_batch`] itself.
pub fn mixed_batch(cfg: &PoseConfig, seed: u64, step: u64, batch: usize, generated: &[LabelledWindow], share: f64) -> Vec<PoseExample> {
    let drawn = if generated.is_empty() { 0 } else { ((batch as f64 * share.clamp(0.0, 1.0)).round() as usize).min(batch) };
    let mut examples = training_batch(cfg, seed, step, batch - drawn);
    let mut rng = ChaCha8Rng::seed_from_u64(SplitMix64::new(seed ^ step.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ 0x6E6E).next_u64());
    let picks: Vec<usize> = (0..drawn).map(|_| rng.random_range(0..generated.len())).collect();
    examples.par_extend(picks.into_par_iter().map(|i| generated[i].example(cfg)));
    examples
}

/// A batch as tensors: the rotation network's inputs, the translation
/// network's (with `derotate`), and the flat axis labels.
pub struct PoseBatch {
    pub input: Tensor,
    pub translation_input: Option<Tensor>,
    pub labels: Vec<u32>,
}

/// Stack examples into a batch.
pub fn stack(cfg: &PoseConfig, examples: &[PoseExample], device: &Device) -> Result<PoseBatch> {
    let input: Vec<f32> = examples.iter().flat_map(|e| e.input.iter().copied()).collect();
    let labels = examples.iter().flat_map(|e| e.labels).collect();
    let translation_input = match examples.iter().map(|e| e.translation_input.as_deref()).collect::<Option<Vec<&[f32]>>>() {
        Some(t) if cfg.derotate => Some(Tensor::from_vec(t.concat(), (examples.len(), cfg.translation_dim()), device)?),
        _ => None,
    };
    Ok(PoseBatch { input: Tensor::from_vec(input, (examples.len(), cfg.input_dim()), device)?, translation_input, labels })
}

/// Training state of the estimator (AdamW on every parameter).
pub struct PoseTrainer {
    pub params: Params,
    pub net: PoseNet,
    pub opt: wc_model::optim::Optimizer,
    pub seed: u64,
    pub batch: usize,
    pub lr: f64,
    /// Generated windows labelled by the probe, mixed into every batch
    /// (see [`mixed_batch`]); empty: renders only.
    pub generated: Vec<LabelledWindow>,
    /// Share of each batch drawn from `generated`.
    pub generated_share: f64,
}

impl PoseTrainer {
    pub fn new(cfg: &PoseConfig, seed: u64, batch: usize, lr: f64, device: &Device) -> Result<Self> {
        let mut params = Params::new(seed, device);
        let net = PoseNet::new(cfg, &mut params)?;
        let opt = wc_model::optim::Optimizer::new(wc_model::optim::OptimConfig { lr, weight_decay: 0.0, ..Default::default() }, &params)?;
        Ok(PoseTrainer { params, net, opt, seed, batch, lr, generated: Vec::new(), generated_share: 0.0 })
    }

    /// The learning rate at `step` of `total`: cosine decay to 5%.
    pub fn lr_at(&self, step: u64, total: u64) -> f64 {
        let x = (step as f64 / total.max(1) as f64).min(1.0);
        self.lr * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * x).cos()))
    }

    /// One step on the batch of `step`; returns the loss.
    pub fn step(&mut self, step: u64, total: u64) -> Result<f64> {
        let ex = mixed_batch(&self.net.cfg, self.seed, step, self.batch, &self.generated, self.generated_share);
        let batch = stack(&self.net.cfg, &ex, self.params.device())?;
        let loss = self.net.loss(&batch)?;
        let grads = loss.backward()?;
        self.opt.apply(&self.params, &grads, self.lr_at(step, total))?;
        Ok(loss.to_dtype(DType::F64)?.to_scalar::<f64>()?)
    }
}

/// The estimator's motion for `count` held-out windows of one kind (clean
/// ground-truth renders of scenes never trained on), with each window's
/// commanded action.
pub fn held_out_predictions(net: &PoseNet, draw: ActionDraw, count: usize, seed: u64, device: &Device) -> Result<Vec<(ActionMask, WindowMotion)>> {
    let kin = Kinematics::default();
    let mut out = Vec::with_capacity(count);
    for chunk in (0..count as u64).collect::<Vec<_>>().chunks(256) {
        let windows: Vec<PoseWindow> = chunk.par_iter().map(|i| render_window(&net.cfg, seed, *i, HELD_OUT_SCENE_BASE, 1 << 20, draw, false)).collect();
        let (actions, frames): (Vec<ActionMask>, Vec<WindowFrames>) = windows.into_iter().map(|w| (w.action, w.frames)).unzip();
        out.extend(actions.into_iter().zip(net.estimate_windows(&frames, &kin, device)?));
    }
    Ok(out)
}

/// Action accuracy of predictions under the metric's thresholds.
pub fn prediction_accuracy(pred: &[(ActionMask, WindowMotion)], metric: &wc_world::metric::MetricConfig) -> wc_world::metric::Accuracy {
    let mut tally = wc_world::metric::AccuracyTally::default();
    for (a, m) in pred {
        let (r, t) = wc_world::metric::window_correct(m, *a, metric);
        tally.add(r, t);
    }
    tally.accuracy()
}

/// Per commanded action: how often rotation and translation were right.
pub fn per_action_accuracy(pred: &[(ActionMask, WindowMotion)], metric: &wc_world::metric::MetricConfig) -> Vec<(ActionMask, wc_world::metric::Accuracy)> {
    let mut by: std::collections::BTreeMap<u8, Vec<(ActionMask, WindowMotion)>> = Default::default();
    for p in pred {
        by.entry(p.0 .0).or_default().push(*p);
    }
    by.into_iter().map(|(a, v)| (ActionMask(a), prediction_accuracy(&v, metric))).collect()
}

/// Windows of one command read as one wrong action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Misread {
    pub commanded: ActionMask,
    /// What the metric reads from the estimated motion
    /// ([`wc_world::metric::read_action`]).
    pub read: ActionMask,
    pub windows: usize,
}

/// What the misread windows were read as: per (command, read) pair with
/// the rotation or the translation wrong, how many windows, the most
/// frequent first (then by command and read). It says which axis fails:
/// `forward+left` read as `left` is a forward motion not seen.
pub fn misreads(pred: &[(ActionMask, WindowMotion)], metric: &wc_world::metric::MetricConfig) -> Vec<Misread> {
    let mut by: std::collections::BTreeMap<(u8, u8), usize> = Default::default();
    for (a, m) in pred {
        if wc_world::metric::window_correct(m, *a, metric) != (true, true) {
            *by.entry((a.0, wc_world::metric::read_action(m, metric).0)).or_default() += 1;
        }
    }
    let mut out: Vec<Misread> = by.into_iter().map(|((c, r), windows)| Misread { commanded: ActionMask(c), read: ActionMask(r), windows }).collect();
    out.sort_by_key(|m| (std::cmp::Reverse(m.windows), m.commanded.0, m.read.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use wc_world::metric::{window_correct, MetricConfig};

    #[test]
    fn misreads_count_the_wrong_reads_of_each_command_most_frequent_first() {
        let metric = MetricConfig::default();
        let kin = Kinematics::default();
        // The nominal motion of an action: the estimator's reading when it
        // is certain of the action's classes.
        let motion = |a: ActionMask| motion_of(&labels_of(a).map(|l| std::array::from_fn(|c| (c == l as usize) as u8 as f64)), &kin);
        let (fl, left, fw, tl) = (ActionMask::FORWARD.union(ActionMask::LEFT), ActionMask::LEFT, ActionMask::FORWARD, ActionMask::TURN_LEFT);
        let pred = vec![
            (fl, motion(left)),
            (fl, motion(fl)),
            (fw.union(tl), motion(tl)),
            (fl, motion(left)),
            (fl, motion(fw)),
            (left, motion(left)),
            (tl, motion(fw.union(tl))),
        ];
        let got = misreads(&pred, &metric);
        let want = [(fl, left, 2), (fl, fw, 1), (tl, fw.union(tl), 1), (fw.union(tl), tl, 1)];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for (g, (c, r, n)) in got.iter().zip(want) {
            assert_eq!((g.commanded, g.read, g.windows), (c, r, n), "{got:?}");
        }
    }

    #[test]
    fn labels_agree_with_the_metric_on_true_motion() {
        // The classes the estimator learns are the ones the metric reads
        // from the true motion of the rendered window.
        let metric = MetricConfig::default();
        for i in 0..200 {
            let e = render_window(&PoseConfig { frame_size: 16, hidden: 8, derotate: true, fine_halves: true }, 3, i, TRAIN_SCENE_BASE, 16, ActionDraw::Training, false);
            assert_eq!(window_correct(&e.truth, e.action, &metric), (true, true), "{:?} {:?}", e.action, e.truth);
            let (fw, rt) = e.action.translation();
            let (yaw, pitch) = e.action.rotation();
            assert_eq!(labels_of(e.action), [yaw, pitch, fw, rt].map(|s| (s + 1) as u32));
        }
    }

    /// A network with every weight zero and the named head biases set so
    /// that each listed (axis, class) has probability ~1.
    fn confident_net(cfg: &PoseConfig, biases: &[(&str, &[(usize, usize)])]) -> (PoseNet, Params, wc_schemas::TensorSet) {
        let mut p = Params::new(0, &Device::Cpu);
        let net = PoseNet::new(cfg, &mut p).unwrap();
        let mut set = p.to_tensor_set().unwrap();
        for (name, t) in set.iter_mut() {
            let mut v = vec![0.0f32; t.to_f32().len()];
            for (axis, class) in biases.iter().filter(|(n, _)| n == name).flat_map(|(_, c)| c.iter()) {
                v[axis * 3 + class] = 40.0;
            }
            *t = wc_schemas::Tensor::from_f32(&t.shape.clone(), &v);
        }
        p.load(&set).unwrap();
        (net, p, set)
    }

    #[test]
    fn confident_logits_give_the_nominal_motion() {
        let dev = Device::Cpu;
        let cfg = PoseConfig { frame_size: 8, hidden: 8, derotate: false, fine_halves: false };
        // Yaw +, pitch none, forward -, right none, each with probability ~1.
        let (net, p, mut set) = confident_net(&cfg, &[("pose.head.bias", &[(0, 2), (1, 1), (2, 0), (3, 1)])]);
        let kin = Kinematics::default();
        let blank = Frame { width: 8, height: 8, rgb: vec![0.5; 8 * 8 * 3] };
        let pair = [WindowFrames { first: blank.clone(), mid: blank.clone(), last: blank }];
        let m = net.estimate_windows(&pair, &kin, &dev).unwrap()[0];
        assert!((m.dyaw_deg - 20.0).abs() < 1e-9 && m.dpitch_deg.abs() < 1e-9, "{m:?}");
        assert!((m.forward + 0.48).abs() < 1e-9 && m.right.abs() < 1e-9, "{m:?}");
        // Doubt: yaw p = (-, 0, +) = (0.25, 0.40, 0.35). The most probable
        // class is "none": zero motion, not the expectation's 0.1 * 20 = 2
        // degrees (which the metric would read as a right turn).
        for (class, logit) in [(0usize, 0.25f32.ln()), (1, 0.40f32.ln()), (2, 0.35f32.ln())] {
            let mut v = set["pose.head.bias"].to_f32();
            v[class] = logit;
            set.insert("pose.head.bias".into(), wc_schemas::Tensor::from_f32(&[12], &v));
        }
        p.load(&set).unwrap();
        let m = net.estimate_windows(&pair, &kin, &dev).unwrap()[0];
        assert_eq!(m.dyaw_deg, 0.0, "{m:?}");
    }

    #[test]
    fn the_translation_axes_pool_both_networks() {
        // With derotate, the translation axes are the mean of both
        // networks' probabilities. The rotation network: yaw +, pitch none,
        // forward +, right undecided (uniform); the translation network:
        // forward undecided, right - (left).
        let dev = Device::Cpu;
        let cfg = PoseConfig { frame_size: 8, hidden: 8, derotate: true, fine_halves: true };
        let (net, _p, _set) = confident_net(&cfg, &[("pose.head.bias", &[(0, 2), (1, 1), (2, 2)]), ("pose.translation.head.bias", &[(1, 0)])]);
        let blank = Frame { width: 8, height: 8, rgb: vec![0.5; 8 * 8 * 3] };
        let w = WindowFrames { first: blank.clone(), mid: blank.clone(), last: blank };
        let kin = Kinematics::default();
        let p = net.window_probs(std::slice::from_ref(&w), &kin, &dev).unwrap()[0];
        let third = 1.0 / 3.0;
        let close = |a: [f64; 3], b: [f64; 3]| a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6);
        assert!(close(p[0], [0.0, 0.0, 1.0]) && close(p[1], [0.0, 1.0, 0.0]), "{p:?}");
        assert!(close(p[2], [third / 2.0, third / 2.0, 0.5 + third / 2.0]), "forward: {p:?}");
        assert!(close(p[3], [0.5 + third / 2.0, third / 2.0, third / 2.0]), "right: {p:?}");
        let m = net.estimate_windows(&[w], &kin, &dev).unwrap()[0];
        assert!((m.dyaw_deg - 20.0).abs() < 1e-6 && m.dpitch_deg.abs() < 1e-9, "{m:?}");
        assert!((m.forward - 0.48 * (0.5 + third / 2.0)).abs() < 1e-6 && (m.right + 0.48 * (0.5 + third / 2.0)).abs() < 1e-6, "{m:?}");
    }

    #[test]
    fn class_of_none_is_zero() {
        // The de-rotation reads the turn's sign from these classes: a doubtful
        // "none" once de-rotated by a right turn (f64::signum(0.0) is +1).
        assert_eq!([class_of(&[0.2, 0.5, 0.3]), class_of(&[0.1, 0.2, 0.7]), class_of(&[0.6, 0.3, 0.1])], [0, 1, -1]);
        assert_eq!(class_of(&[0.4, 0.2, 0.4]), 1, "a tie between the signs goes to positive");
    }

    #[test]
    fn a_doubtful_second_translation_axis_is_weighed_by_the_cone() {
        // Forward 0.95 and a spurious right 0.5: the reading points 62
        // degrees off the right axis, so the metric reads forward alone.
        let kin = Kinematics::default();
        let p: AxisProbs = [[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.05, 0.95], [0.2, 0.3, 0.5]];
        let m = motion_of(&p, &kin);
        assert!((m.forward - 0.95 * 0.48).abs() < 1e-12 && (m.right - 0.5 * 0.48).abs() < 1e-12, "{m:?}");
        let metric = wc_world::metric::MetricConfig::default();
        assert_eq!(wc_world::metric::window_correct(&m, ActionMask::FORWARD, &metric), (true, true));
    }

    #[test]
    fn expected_correctness_is_the_commanded_classes_probability() {
        let p: AxisProbs = [[0.1, 0.2, 0.7], [0.3, 0.6, 0.1], [0.5, 0.25, 0.25], [0.0, 0.9, 0.1]];
        // Turn right, move backward: yaw +, pitch none, forward -, right none.
        let action = ActionMask(ActionMask::TURN_RIGHT.0 | ActionMask::BACKWARD.0);
        let (rot, trans) = expected_correct(&p, action);
        assert!((rot - 0.7 * 0.6).abs() < 1e-12 && (trans - 0.5 * 0.9).abs() < 1e-12, "{rot} {trans}");
        // One-hot probabilities (any of the 81 readings): exactly the metric's
        // right/wrong of the motion they map to, for every commanded action.
        let kin = Kinematics::default();
        let metric = wc_world::metric::MetricConfig::default();
        let commands: Vec<ActionMask> = ActionMask::basic().into_iter().chain(combined_actions()).collect();
        for t in translation_classes() {
            for r in rotation_classes() {
                let labels = labels_of(ActionMask(t.0 | r.0));
                let hot: AxisProbs = labels.map(|l| std::array::from_fn(|c| (c as u32 == l) as u8 as f64));
                for &action in &commands {
                    let (er, et) = expected_correct(&hot, action);
                    let right = wc_world::metric::window_correct(&motion_of(&hot, &kin), action, &metric);
                    assert_eq!((er == 1.0, et == 1.0), right, "read {t} {r}, commanded {action}");
                    assert!(er == 0.0 || er == 1.0, "{er}");
                }
            }
        }
    }

    /// A 32x32 frame of smooth, non-repeating texture, and the same texture
    /// shifted by (dx, dy) whole pixels (what the first frame shows at (x, y),
    /// the second shows at (x + dx, y + dy)).
    fn shifted_pair(dx: isize, dy: isize) -> (Frame, Frame) {
        let tex = |x: isize, y: isize| {
            let (x, y) = (x as f32, y as f32);
            [(0.37 * x + 0.11 * y).sin() * (0.23 * y).cos(), (0.19 * x * 0.7 - 0.31 * y).cos(), (0.05 * x * y).sin()].map(|v| 0.5 + 0.4 * v)
        };
        let frame = |sx: isize, sy: isize| Frame { width: 32, height: 32, rgb: (0..32 * 32).flat_map(|i| tex(i % 32 - sx, i / 32 - sy)).collect() };
        (frame(0, 0), frame(dx, dy))
    }

    #[test]
    fn the_fine_volume_finds_a_shift_the_coarse_grid_steps_over() {
        // A 2-pixel shift right and 1 up: the fine volume (every shift within
        // 4) holds it exactly, best shift and soft-argmin; the coarse grid's
        // 3-pixel step has no cell at (2, -1). Both volumes have one size.
        let cfg = PoseConfig::default();
        assert_eq!(cfg.fine_shifts(), (-4..=4).collect::<Vec<_>>());
        assert_eq!(cfg.fine_shifts().len(), cfg.coarse_shifts().len());
        let (a, b) = shifted_pair(2, -1);
        let (mut fine, mut coarse) = (Vec::new(), Vec::new());
        shift_volume(&cfg, &a, &b, &cfg.fine_shifts(), cfg.fine_radius(), &mut fine);
        cost_volume(&cfg, &a, &b, &mut coarse);
        assert_eq!((fine.len(), coarse.len()), (cfg.volume_dim(), cfg.volume_dim()));
        let per = cfg.block_features();
        let cells = per - 5;
        // The centre block: its costs are 1 - cost/mean, so the best shift has
        // the largest value (a perfect match: exactly 1).
        let centre = (cfg.block_starts().len().pow(2) / 2) * per;
        let argmax = |v: &[f32]| (0..cells).max_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap();
        let f = &fine[centre..centre + per];
        assert_eq!(argmax(f), 3 * 9 + 6, "fine cell of (dx 2, dy -1)");
        assert!((f[argmax(f)] - 1.0).abs() < 1e-6);
        assert_eq!((f[cells] * 4.0, f[cells + 1] * 4.0), (2.0, -1.0), "best shift");
        assert!((f[cells + 2] * 4.0 - 2.0).abs() < 0.1 && (f[cells + 3] * 4.0 + 1.0).abs() < 0.1, "soft-argmin {:?}", &f[cells..]);
        let c = &coarse[centre..centre + per];
        assert!(c[argmax(c)] < 0.99, "no coarse cell matches exactly: {}", c[argmax(c)]);
    }

    #[test]
    fn fine_halves_change_only_the_halves_of_the_translation_input() {
        let coarse_cfg = PoseConfig { fine_halves: false, ..PoseConfig::default() };
        let cfg = PoseConfig::default();
        let w = render_window(&cfg, 3, 1, TRAIN_SCENE_BASE, 16, ActionDraw::Combined, false);
        let volume = window_input(&cfg, &w.frames.first, &w.frames.last);
        let kin = Kinematics::default();
        let fine = translation_input(&cfg, &w.frames, &volume, w.action.rotation(), &kin);
        let coarse = translation_input(&coarse_cfg, &w.frames, &volume, w.action.rotation(), &kin);
        let v = cfg.volume_dim();
        assert_eq!((fine.len(), coarse.len()), (cfg.translation_dim(), cfg.translation_dim()));
        assert_eq!(fine[..v], coarse[..v], "the whole window's volume");
        assert_eq!(fine[3 * v..], coarse[3 * v..], "the start pitch and the explained share");
        assert_ne!(fine[v..3 * v], coarse[v..3 * v], "the halves");
        assert!(cfg.same_parameters(&coarse_cfg) && !cfg.same_parameters(&PoseConfig { hidden: 128, ..cfg.clone() }));
    }

    #[test]
    fn settings_saved_before_fine_halves_read_as_coarse_and_serialise_unchanged() {
        // Regression: adding the field changed every old estimator's settings
        // fingerprint, so a warm start from the shipped estimator found no
        // checkpoint. Off, it is not written at all.
        let old = r#"{"frame_size":32,"hidden":256,"derotate":true}"#;
        let cfg: PoseConfig = serde_json::from_str(old).unwrap();
        assert!(!cfg.fine_halves);
        assert_eq!(serde_json::to_string(&cfg).unwrap(), old);
        assert!(serde_json::to_string(&PoseConfig::default()).unwrap().contains(r#""fine_halves":true"#));
    }

    #[test]
    fn batches_are_deterministic_across_thread_counts() {
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let cfg = PoseConfig { frame_size: 16, hidden: 8, derotate: true, fine_halves: true };
        let a = one.install(|| training_batch(&cfg, 9, 4, 6));
        let b = training_batch(&cfg, 9, 4, 6);
        assert!(a.iter().zip(&b).all(|(x, y)| x.input == y.input && x.translation_input == y.translation_input && x.labels == y.labels));
    }

    #[test]
    fn a_mixed_batch_holds_its_share_of_generated_windows_with_the_probes_labels() {
        let cfg = PoseConfig { frame_size: 16, hidden: 8, derotate: true, fine_halves: true };
        // Two "generated" windows: a still camera the probe read as idle,
        // and one read as a left turn (whatever was commanded).
        let w = |i: u64| render_window(&cfg, 5, i, TRAIN_SCENE_BASE, 16, ActionDraw::Basic, false).frames;
        let generated = [(ActionMask(0), ActionMask::FORWARD), (ActionMask::TURN_LEFT, ActionMask::RIGHT)]
            .map(|(found, commanded)| LabelledWindow { frames: w(found.0 as u64), found, commanded })
            .to_vec();
        let renders = training_batch(&cfg, 9, 4, 10);
        let mixed = mixed_batch(&cfg, 9, 4, 10, &generated, 0.3);
        assert_eq!(mixed.len(), 10);
        // The first 7 are the renders of a 7-example batch, the last 3 drawn
        // from the generated windows, labelled with the probe's class.
        assert!(mixed[..7].iter().zip(&renders).all(|(a, b)| a.input == b.input && a.labels == b.labels));
        for e in &mixed[7..] {
            assert!(generated.iter().any(|g| g.found == e.action && e.input == window_input(&cfg, &g.frames.first, &g.frames.last)));
            assert_eq!(e.labels, labels_of(e.action));
        }
        // Deterministic in (seed, step); with nothing generated, the
        // renders-only batch of old.
        let again = mixed_batch(&cfg, 9, 4, 10, &generated, 0.3);
        assert!(mixed.iter().zip(&again).all(|(a, b)| a.input == b.input && a.labels == b.labels));
        let plain = mixed_batch(&cfg, 9, 4, 10, &[], 0.3);
        assert!(plain.len() == 10 && plain.iter().zip(&renders).all(|(a, b)| a.input == b.input));
    }

    #[test]
    fn training_lowers_the_loss_and_reaches_every_parameter() {
        let dev = Device::Cpu;
        let cfg = PoseConfig { frame_size: 16, hidden: 64, derotate: true, fine_halves: true };
        let mut t = PoseTrainer::new(&cfg, 1, 32, 3e-3, &dev).unwrap();
        let ex = training_batch(&cfg, 1, 0, 32);
        let batch = stack(&cfg, &ex, &dev).unwrap();
        assert!(batch.translation_input.is_some());
        let first = t.net.loss(&batch).unwrap();
        let grads = first.backward().unwrap();
        for (name, var) in t.params.vars() {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
            let n = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(n.is_finite() && n > 0.0, "{name}: {n}");
        }
        let first = first.to_scalar::<f32>().unwrap();
        // Fit one fixed batch: the loss must fall well below its start.
        for _ in 0..60 {
            let loss = t.net.loss(&batch).unwrap();
            let g = loss.backward().unwrap();
            t.opt.apply(&t.params, &g, 3e-3).unwrap();
        }
        let last = t.net.loss(&batch).unwrap().to_scalar::<f32>().unwrap();
        assert!(last < 0.3 * first, "loss {first} -> {last}");
    }
}
