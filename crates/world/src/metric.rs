//! The action-accuracy metric of the paper (section 3.3 and 4.2).
//!
//! A trajectory's motion is matched against its actions every window (4
//! frames). Each window's relative motion is mapped to discrete labels:
//!
//! - rotation: yaw right/left/none and pitch up/down/none, against tau_rot
//!   (default 1 degree): 9 classes;
//! - translation: when the horizontal translation's norm exceeds the
//!   threshold, its direction decides forward/back (angle to the heading
//!   under 60 degrees: forward; over 120: back) and right/left (the same
//!   against the right axis): 9 classes. It is counted right if it matches
//!   the command under any threshold of the list (default 0.01 ... 0.05).
//!
//! Rotation accuracy and translation accuracy are the shares of windows
//! whose label matches the commanded action; IF is their mean. The rate of
//! windows with both right is reported beside them, and so is the score of a
//! static model (zero motion), the baseline any model must beat.

use crate::actions::ActionMask;
use crate::camera::WindowMotion;

/// Thresholds of the metric.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricConfig {
    /// Rotation threshold in degrees.
    pub tau_rot_deg: f64,
    /// Translation thresholds; a window is right if it matches under any.
    pub trans_thresholds: Vec<f64>,
    /// Half-angle of the forward/back and right/left cones, degrees.
    pub cone_deg: f64,
}

impl Default for MetricConfig {
    fn default() -> Self {
        MetricConfig {
            tau_rot_deg: 1.0,
            trans_thresholds: vec![0.01, 0.02, 0.03, 0.04, 0.05],
            cone_deg: 60.0,
        }
    }
}

/// Rotation label of a window: (yaw sign, pitch sign), positive = right / up.
pub fn rotation_label(m: &WindowMotion, tau_deg: f64) -> (i8, i8) {
    let sign = |x: f64| if x > tau_deg { 1 } else if x < -tau_deg { -1 } else { 0 };
    (sign(m.dyaw_deg), sign(m.dpitch_deg))
}

/// Translation label of a window under one threshold: (forward sign, right sign).
pub fn translation_label(m: &WindowMotion, threshold: f64, cone_deg: f64) -> (i8, i8) {
    let norm = m.forward.hypot(m.right);
    if norm <= threshold {
        return (0, 0);
    }
    let axis = |c: f64| {
        let angle = (c / norm).clamp(-1.0, 1.0).acos().to_degrees();
        if angle < cone_deg {
            1
        } else if angle > 180.0 - cone_deg {
            -1
        } else {
            0
        }
    };
    (axis(m.forward), axis(m.right))
}

/// The action a window's motion reads as: its rotation label and its
/// translation label under the lowest threshold (a window that matches its
/// command under no threshold reads as this under every one that sees
/// motion). What a misread window was taken for.
pub fn read_action(m: &WindowMotion, cfg: &MetricConfig) -> ActionMask {
    let lowest = cfg.trans_thresholds.iter().copied().fold(f64::INFINITY, f64::min);
    ActionMask::from_intent(translation_label(m, lowest, cfg.cone_deg), rotation_label(m, cfg.tau_rot_deg))
}

/// Per-window correctness: (rotation right, translation right).
pub fn window_correct(m: &WindowMotion, action: ActionMask, cfg: &MetricConfig) -> (bool, bool) {
    let rot = rotation_label(m, cfg.tau_rot_deg) == action.rotation();
    let trans = cfg
        .trans_thresholds
        .iter()
        .any(|t| translation_label(m, *t, cfg.cone_deg) == action.translation());
    (rot, trans)
}

/// Action accuracy over a set of windows.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Accuracy {
    pub windows: usize,
    pub rot_acc: f64,
    pub trans_acc: f64,
    /// Interaction following: mean of rotation and translation accuracy.
    pub if_score: f64,
    /// Share of windows with both rotation and translation right.
    pub both_rate: f64,
}

/// Accumulates window results (over clips, sequences, models): right or
/// wrong, or graded (the probability of right).
#[derive(Debug, Clone, Copy, Default)]
pub struct AccuracyTally {
    windows: usize,
    rot: f64,
    trans: f64,
    both: f64,
}

impl AccuracyTally {
    pub fn add(&mut self, rot: bool, trans: bool) {
        self.add_graded(rot as u8 as f64, trans as u8 as f64);
    }

    /// A window right with probability `rot` in rotation and `trans` in
    /// translation (independently): the accuracies become expectations.
    pub fn add_graded(&mut self, rot: f64, trans: f64) {
        debug_assert!((0.0..=1.0).contains(&rot) && (0.0..=1.0).contains(&trans), "probabilities: {rot} {trans}");
        self.windows += 1;
        self.rot += rot;
        self.trans += trans;
        self.both += rot * trans;
    }

    pub fn add_windows(&mut self, motions: &[WindowMotion], actions: &[ActionMask], cfg: &MetricConfig) {
        assert_eq!(motions.len(), actions.len(), "one motion per action window");
        for (m, a) in motions.iter().zip(actions) {
            let (r, t) = window_correct(m, *a, cfg);
            self.add(r, t);
        }
    }

    pub fn accuracy(&self) -> Accuracy {
        if self.windows == 0 {
            return Accuracy::default();
        }
        let n = self.windows as f64;
        let (rot_acc, trans_acc) = (self.rot / n, self.trans / n);
        Accuracy {
            windows: self.windows,
            rot_acc,
            trans_acc,
            if_score: 0.5 * (rot_acc + trans_acc),
            both_rate: self.both / n,
        }
    }
}

/// Accuracy of window motions against their actions.
pub fn action_accuracy(motions: &[WindowMotion], actions: &[ActionMask], cfg: &MetricConfig) -> Accuracy {
    let mut t = AccuracyTally::default();
    t.add_windows(motions, actions, cfg);
    t.accuracy()
}

/// The score of a static model (one that repeats the context frame) on the
/// same actions: zero motion in every window.
pub fn static_baseline(actions: &[ActionMask], cfg: &MetricConfig) -> Accuracy {
    action_accuracy(&vec![WindowMotion::default(); actions.len()], actions, cfg)
}

/// The metric's reference points on generated sequences of one kind:
/// ground-truth trajectories (must score 1), a static model (zero motion),
/// and the trajectory of a different sequence (a model that ignores the
/// actions but moves). Returns (name, accuracy) rows.
pub fn reference_scores(
    kind: crate::actions::SequenceKind,
    sequences: usize,
    windows: usize,
    hold: usize,
    seed: u64,
    cfg: &MetricConfig,
    kin: &crate::actions::Kinematics,
) -> Vec<(&'static str, Accuracy)> {
    use crate::actions::action_sequence;
    use crate::camera::{window_motions, Pose};
    let (mut truth, mut still, mut other) = (AccuracyTally::default(), AccuracyTally::default(), AccuracyTally::default());
    for i in 0..sequences as u64 {
        let acts = action_sequence(seed.wrapping_add(i), kind, windows, hold, kin);
        let motions = window_motions(&kin.trajectory(Pose::START, &acts), kin.frames_per_window);
        truth.add_windows(&motions, &acts, cfg);
        still.add_windows(&vec![WindowMotion::default(); acts.len()], &acts, cfg);
        let shuffled = action_sequence(seed.wrapping_add(i).wrapping_add(0x5EED_0000), kind, windows, hold, kin);
        other.add_windows(&motions, &shuffled, cfg);
    }
    vec![
        ("ground truth", truth.accuracy()),
        ("static model", still.accuracy()),
        ("other sequence", other.accuracy()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::{action_sequence, combined_actions, Kinematics, SequenceKind};
    use crate::camera::{window_motions, Pose};

    #[test]
    fn a_window_reads_as_its_labels_under_the_lowest_threshold() {
        let cfg = MetricConfig::default();
        // Forward 0.3 and left 0.1: 18 degrees off the heading, so forward
        // alone; a 3 degree turn left.
        let m = WindowMotion { dyaw_deg: -3.0, dpitch_deg: 0.5, forward: 0.3, right: -0.1 };
        assert_eq!(read_action(&m, &cfg), ActionMask::FORWARD.union(ActionMask::TURN_LEFT));
        // 0.015 units of sideways motion: above the lowest threshold (0.01),
        // not the others; the read is the lowest's.
        let m = WindowMotion { dyaw_deg: 0.0, dpitch_deg: 2.0, forward: 0.0, right: 0.015 };
        assert_eq!(read_action(&m, &cfg), ActionMask::RIGHT.union(ActionMask::TURN_UP));
        let still = WindowMotion { dyaw_deg: 0.0, dpitch_deg: 0.0, forward: 0.0, right: 0.0 };
        assert_eq!(read_action(&still, &cfg), ActionMask(0));
    }

    fn motion(dyaw: f64, dpitch: f64, fw: f64, rt: f64) -> WindowMotion {
        WindowMotion { dyaw_deg: dyaw, dpitch_deg: dpitch, forward: fw, right: rt }
    }

    #[test]
    fn hand_built_windows() {
        let cfg = MetricConfig::default();
        // No motion expected, none made: right on both axes.
        assert_eq!(window_correct(&motion(0.0, 0.0, 0.0, 0.0), ActionMask(0), &cfg), (true, true));
        // Forward + turn right, made exactly.
        let a = ActionMask::FORWARD.union(ActionMask::TURN_RIGHT);
        assert_eq!(window_correct(&motion(20.0, 0.0, 0.48, 0.02), a, &cfg), (true, true));
        // Turned the wrong way.
        assert_eq!(window_correct(&motion(-20.0, 0.0, 0.48, 0.0), a, &cfg), (false, true));
        // Diagonal forward+left at 45 degrees: both axes in their cones.
        let fl = ActionMask::FORWARD.union(ActionMask::LEFT);
        assert_eq!(window_correct(&motion(0.0, 0.0, 0.3, -0.3), fl, &cfg), (true, true));
        // ... but it is not plain forward.
        assert_eq!(window_correct(&motion(0.0, 0.0, 0.3, -0.3), ActionMask::FORWARD, &cfg).1, false);
        // Pitch and yaw at once.
        let uy = ActionMask::TURN_UP.union(ActionMask::TURN_LEFT);
        assert_eq!(window_correct(&motion(-5.0, 5.0, 0.0, 0.0), uy, &cfg), (true, true));
    }

    #[test]
    fn thresholds_are_strict_and_any_threshold_counts() {
        let cfg = MetricConfig::default();
        // Rotation exactly at tau is not motion.
        assert_eq!(rotation_label(&motion(1.0, -1.0, 0.0, 0.0), 1.0), (0, 0));
        assert_eq!(rotation_label(&motion(1.0001, -1.0001, 0.0, 0.0), 1.0), (1, -1));
        // Translation exactly at the largest threshold: motion under the
        // smaller ones, none under 0.05: right both when idle and when forward.
        let m = motion(0.0, 0.0, 0.05, 0.0);
        assert_eq!(translation_label(&m, 0.05, 60.0), (0, 0));
        assert_eq!(translation_label(&m, 0.04, 60.0), (1, 0));
        assert!(window_correct(&m, ActionMask(0), &cfg).1);
        assert!(window_correct(&m, ActionMask::FORWARD, &cfg).1);
        // A small drift under every threshold is "no motion": wrong for forward.
        assert!(!window_correct(&motion(0.0, 0.0, 0.009, 0.0), ActionMask::FORWARD, &cfg).1);
    }

    #[test]
    fn ground_truth_trajectories_score_one_and_other_sequences_score_low() {
        let cfg = MetricConfig::default();
        let k = Kinematics::default();
        for kind in [SequenceKind::Basic, SequenceKind::Combined] {
            let mut own = AccuracyTally::default();
            let mut other = AccuracyTally::default();
            for seed in 0..40 {
                let acts = action_sequence(seed, kind, 16, 2, &k);
                let motions = window_motions(&k.trajectory(Pose::START, &acts), 4);
                own.add_windows(&motions, &acts, &cfg);
                let others = action_sequence(seed + 1000, kind, 16, 2, &k);
                other.add_windows(&motions, &others, &cfg);
            }
            let (own, other) = (own.accuracy(), other.accuracy());
            assert_eq!((own.rot_acc, own.trans_acc, own.both_rate), (1.0, 1.0, 1.0), "{kind:?}");
            assert!(other.both_rate < 0.3 && other.if_score < 0.7, "{kind:?}: {other:?}");
        }
    }

    #[test]
    fn static_model_baseline() {
        let cfg = MetricConfig::default();
        // Basic: each window is a translation (rotation right) or a rotation
        // (translation right): IF 0.5 exactly, both-right 0.
        let basic: Vec<ActionMask> = ActionMask::basic().to_vec();
        let b = static_baseline(&basic, &cfg);
        assert_eq!((b.if_score, b.both_rate), (0.5, 0.0));
        // Combined: 16 translation+rotation (0), 4 two translations and 4 two
        // rotations (0.5 each): IF 4/24 = 0.1667.
        let c = static_baseline(&combined_actions(), &cfg);
        assert!((c.if_score - 4.0 / 24.0).abs() < 1e-12, "{c:?}");
        assert_eq!(c.both_rate, 0.0);
    }

    #[test]
    fn graded_windows_give_expected_accuracies() {
        // Certain windows: the same as right/wrong.
        let (mut a, mut b) = (AccuracyTally::default(), AccuracyTally::default());
        for (r, t) in [(true, false), (true, true), (false, false)] {
            a.add(r, t);
            b.add_graded(r as u8 as f64, t as u8 as f64);
        }
        assert_eq!(a.accuracy(), b.accuracy());
        // Two windows: rotation 0.9 and 0.5, translation 0.6 and 0.2.
        let mut g = AccuracyTally::default();
        g.add_graded(0.9, 0.6);
        g.add_graded(0.5, 0.2);
        let acc = g.accuracy();
        let close = |x: f64, y: f64| (x - y).abs() < 1e-12;
        assert!(close(acc.rot_acc, 0.7) && close(acc.trans_acc, 0.4) && close(acc.if_score, 0.55), "{acc:?}");
        assert!(close(acc.both_rate, (0.9 * 0.6 + 0.5 * 0.2) / 2.0), "{acc:?}");
    }
}
