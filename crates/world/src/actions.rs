//! The action space: eight basic actions, combined actions as sets of them,
//! per-frame camera kinematics, and action-sequence generators.
//!
//! An action is held over a window of 4 frames; a clip is a whole number of
//! windows. A window's action is an [`ActionMask`]: one bit per basic action.

use wc_rl::seeds::SplitMix64;

use crate::camera::Pose;

/// A set of basic actions held together (bit a = basic action a).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ActionMask(pub u8);

/// Names of the basic actions, by bit.
pub const ACTION_NAMES: [&str; 8] = [
    "forward",
    "backward",
    "left",
    "right",
    "turn_up",
    "turn_down",
    "turn_left",
    "turn_right",
];

impl ActionMask {
    pub const FORWARD: ActionMask = ActionMask(1);
    pub const BACKWARD: ActionMask = ActionMask(2);
    pub const LEFT: ActionMask = ActionMask(4);
    pub const RIGHT: ActionMask = ActionMask(8);
    pub const TURN_UP: ActionMask = ActionMask(16);
    pub const TURN_DOWN: ActionMask = ActionMask(32);
    pub const TURN_LEFT: ActionMask = ActionMask(64);
    pub const TURN_RIGHT: ActionMask = ActionMask(128);

    /// The eight basic actions.
    pub fn basic() -> [ActionMask; 8] {
        std::array::from_fn(|a| ActionMask(1 << a))
    }

    pub fn has(&self, other: ActionMask) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    pub fn union(self, other: ActionMask) -> ActionMask {
        ActionMask(self.0 | other.0)
    }

    /// The pair of opposite actions it holds together (forward and
    /// backward, left and right, up and down, turn left and turn right),
    /// if any: such a mask names no motion of the 81-class action space.
    pub fn opposite_pair(&self) -> Option<(ActionMask, ActionMask)> {
        [(Self::FORWARD, Self::BACKWARD), (Self::LEFT, Self::RIGHT), (Self::TURN_UP, Self::TURN_DOWN), (Self::TURN_LEFT, Self::TURN_RIGHT)]
            .into_iter()
            .find(|(a, b)| self.has(*a) && self.has(*b))
    }

    /// Whether it is a combined action (two or more basic actions).
    pub fn is_combined(&self) -> bool {
        self.0.count_ones() >= 2
    }

    /// Parse `forward`, `forward+turn_left`, or `idle`.
    pub fn parse(s: &str) -> Result<ActionMask, String> {
        if s.trim() == "idle" {
            return Ok(ActionMask(0));
        }
        let mut m = 0u8;
        for part in s.split('+') {
            let part = part.trim();
            let a = ACTION_NAMES
                .iter()
                .position(|n| *n == part)
                .ok_or_else(|| format!("unknown action '{part}' (known: {}, and idle)", ACTION_NAMES.join(", ")))?;
            m |= 1 << a;
        }
        Ok(ActionMask(m))
    }

    /// Translation intent: (forward sign, right sign), each in {-1, 0, 1}.
    pub fn translation(&self) -> (i8, i8) {
        let s = |pos: ActionMask, neg: ActionMask| self.has(pos) as i8 - self.has(neg) as i8;
        (s(Self::FORWARD, Self::BACKWARD), s(Self::RIGHT, Self::LEFT))
    }

    /// Rotation intent: (yaw sign, pitch sign), positive = right / up.
    pub fn rotation(&self) -> (i8, i8) {
        let s = |pos: ActionMask, neg: ActionMask| self.has(pos) as i8 - self.has(neg) as i8;
        (s(Self::TURN_RIGHT, Self::TURN_LEFT), s(Self::TURN_UP, Self::TURN_DOWN))
    }

    /// The action with this translation intent (forward sign, right sign)
    /// and rotation intent (yaw sign, pitch sign): the inverse of
    /// [`ActionMask::translation`] and [`ActionMask::rotation`].
    pub fn from_intent(translation: (i8, i8), rotation: (i8, i8)) -> ActionMask {
        let axis = |sign: i8, pos: ActionMask, neg: ActionMask| match sign.signum() {
            1 => pos.0,
            -1 => neg.0,
            _ => 0,
        };
        ActionMask(
            axis(translation.0, Self::FORWARD, Self::BACKWARD)
                | axis(translation.1, Self::RIGHT, Self::LEFT)
                | axis(rotation.0, Self::TURN_RIGHT, Self::TURN_LEFT)
                | axis(rotation.1, Self::TURN_UP, Self::TURN_DOWN),
        )
    }
}

impl std::fmt::Display for ActionMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 == 0 {
            return f.write_str("idle");
        }
        let names: Vec<&str> = (0..8).filter(|a| self.0 & (1 << a) != 0).map(|a| ACTION_NAMES[a]).collect();
        f.write_str(&names.join("+"))
    }
}

/// Every combined action of two basic actions that do not cancel: a
/// translation with a rotation, forward/back with a strafe, yaw with pitch.
pub fn combined_actions() -> Vec<ActionMask> {
    let mut out = Vec::new();
    for t in 0..4 {
        for r in 4..8 {
            out.push(ActionMask((1 << t) | (1 << r)));
        }
    }
    for fb in 0..2 {
        for lr in 2..4 {
            out.push(ActionMask((1 << fb) | (1 << lr)));
        }
    }
    for pitch in 4..6 {
        for yaw in 6..8 {
            out.push(ActionMask((1 << pitch) | (1 << yaw)));
        }
    }
    out
}

/// Per-frame camera motion.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kinematics {
    /// Units moved per frame along each held translation.
    pub move_step: f64,
    /// Degrees turned per frame about each held rotation axis.
    pub turn_step_deg: f64,
    /// Frames per action window (the paper matches actions every 4 frames).
    pub frames_per_window: usize,
    /// Sequence generators keep |pitch| within this many degrees.
    pub max_pitch_deg: f64,
}

impl Default for Kinematics {
    fn default() -> Self {
        Kinematics {
            move_step: 0.12,
            turn_step_deg: 5.0,
            frames_per_window: 4,
            max_pitch_deg: 40.0,
        }
    }
}

impl Kinematics {
    /// The pose one frame later under `action`. Translation uses the heading
    /// before this frame's rotation.
    pub fn step(&self, p: &Pose, action: ActionMask) -> Pose {
        let (fw, rt) = action.translation();
        let (yaw, pitch) = action.rotation();
        let (h, r) = (p.heading(), p.right());
        let (fw, rt) = (fw as f64 * self.move_step, rt as f64 * self.move_step);
        let turn = self.turn_step_deg.to_radians();
        Pose {
            x: p.x + fw * h[0] + rt * r[0],
            y: p.y,
            z: p.z + fw * h[2] + rt * r[2],
            yaw: p.yaw + yaw as f64 * turn,
            pitch: p.pitch + pitch as f64 * turn,
        }
    }

    /// The poses of a trajectory: `start`, then one pose per frame, each
    /// window's action held for `frames_per_window` frames.
    pub fn trajectory(&self, start: Pose, windows: &[ActionMask]) -> Vec<Pose> {
        let mut poses = Vec::with_capacity(1 + windows.len() * self.frames_per_window);
        poses.push(start);
        for a in windows {
            for _ in 0..self.frames_per_window {
                let next = self.step(poses.last().expect("non-empty"), *a);
                poses.push(next);
            }
        }
        poses
    }
}

/// The kind of an action sequence (the two evaluation kinds of the paper).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceKind {
    /// One basic action at a time.
    Basic,
    /// Two basic actions at once.
    Combined,
}

impl SequenceKind {
    pub fn name(&self) -> &'static str {
        match self {
            SequenceKind::Basic => "basic",
            SequenceKind::Combined => "combined",
        }
    }
}

/// An action sequence of `windows` windows that switches to a new action
/// every `hold` windows (never repeating the previous one), and keeps the
/// pitch within the kinematics' bound. Deterministic in `seed`.
pub fn action_sequence(seed: u64, kind: SequenceKind, windows: usize, hold: usize, kin: &Kinematics) -> Vec<ActionMask> {
    let rate = match kind {
        SequenceKind::Basic => 0.0,
        SequenceKind::Combined => 1.0,
    };
    mixed_sequence(seed, windows, hold, rate, kin)
}

/// Like [`action_sequence`], but each new action is combined with
/// probability `combined_rate` and basic otherwise: the mix of a
/// pre-training corpus, where combined actions are rare.
pub fn mixed_sequence(seed: u64, windows: usize, hold: usize, combined_rate: f64, kin: &Kinematics) -> Vec<ActionMask> {
    let mut rng = SplitMix64::new(seed);
    let (basic, combined) = (ActionMask::basic().to_vec(), combined_actions());
    let hold = hold.max(1);
    let mut out = Vec::with_capacity(windows);
    let mut pitch = 0.0f64;
    let mut current = ActionMask(0);
    for w in 0..windows {
        if w % hold == 0 {
            let draw = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            let pool = if draw < combined_rate { &combined } else { &basic };
            let run = hold.min(windows - w) * kin.frames_per_window;
            let allowed: Vec<ActionMask> = pool
                .iter()
                .copied()
                .filter(|a| *a != current)
                .filter(|a| (pitch + a.rotation().1 as f64 * kin.turn_step_deg * run as f64).abs() <= kin.max_pitch_deg)
                .collect();
            current = allowed[(rng.next_u64() % allowed.len() as u64) as usize];
        }
        pitch += current.rotation().1 as f64 * kin.turn_step_deg * kin.frames_per_window as f64;
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opposite_actions_held_together_are_found() {
        assert_eq!(ActionMask(0b0000_0011).opposite_pair(), Some((ActionMask::FORWARD, ActionMask::BACKWARD)));
        assert_eq!(ActionMask(0b1100_0001).opposite_pair(), Some((ActionMask::TURN_LEFT, ActionMask::TURN_RIGHT)));
        assert_eq!(ActionMask::FORWARD.union(ActionMask::LEFT).union(ActionMask::TURN_UP).opposite_pair(), None);
        assert_eq!(ActionMask(0).opposite_pair(), None);
        // Every mask an action sequence of the embedded world holds has none.
        let seq = action_sequence(3, SequenceKind::Combined, 64, 4, &Kinematics::default());
        assert!(seq.iter().all(|m| m.opposite_pair().is_none()));
    }

    #[test]
    fn from_intent_inverts_translation_and_rotation() {
        // Every action without opposite keys (3^4 of them) round-trips.
        let mut seen = std::collections::BTreeSet::new();
        for bits in 0..=255u8 {
            let a = ActionMask(bits);
            let back = ActionMask::from_intent(a.translation(), a.rotation());
            assert_eq!((back.translation(), back.rotation()), (a.translation(), a.rotation()), "{bits:#010b}");
            seen.insert(back.0);
        }
        assert_eq!(seen.len(), 81);
        assert_eq!(ActionMask::from_intent((1, -1), (0, 1)), ActionMask::FORWARD.union(ActionMask::LEFT).union(ActionMask::TURN_UP));
    }

    #[test]
    fn names_parse_and_print() {
        let m = ActionMask::parse("forward+turn_left").unwrap();
        assert_eq!(m, ActionMask::FORWARD.union(ActionMask::TURN_LEFT));
        assert_eq!(m.to_string(), "forward+turn_left");
        assert!(m.is_combined());
        assert!(ActionMask::parse("jump").unwrap_err().contains("unknown action 'jump'"));
        assert_eq!(ActionMask::parse("idle").unwrap().to_string(), "idle");
    }

    #[test]
    fn kinematics_of_each_basic_action() {
        let k = Kinematics::default();
        let p0 = Pose::START;
        let fwd = k.step(&p0, ActionMask::FORWARD);
        assert!((fwd.z - 0.12).abs() < 1e-12 && fwd.x.abs() < 1e-12);
        let back = k.step(&p0, ActionMask::BACKWARD);
        assert!((back.z + 0.12).abs() < 1e-12);
        let right = k.step(&p0, ActionMask::RIGHT);
        assert!((right.x - 0.12).abs() < 1e-12);
        let left = k.step(&p0, ActionMask::LEFT);
        assert!((left.x + 0.12).abs() < 1e-12);
        assert!((k.step(&p0, ActionMask::TURN_RIGHT).yaw - 5f64.to_radians()).abs() < 1e-12);
        assert!((k.step(&p0, ActionMask::TURN_LEFT).yaw + 5f64.to_radians()).abs() < 1e-12);
        assert!((k.step(&p0, ActionMask::TURN_UP).pitch - 5f64.to_radians()).abs() < 1e-12);
        assert!((k.step(&p0, ActionMask::TURN_DOWN).pitch + 5f64.to_radians()).abs() < 1e-12);
        let t = k.trajectory(p0, &[ActionMask::FORWARD, ActionMask::TURN_RIGHT]);
        assert_eq!(t.len(), 9);
        assert!((t[4].z - 0.48).abs() < 1e-12 && (t[8].yaw - 20f64.to_radians()).abs() < 1e-12);
    }

    #[test]
    fn combined_actions_are_pairs_that_do_not_cancel() {
        let c = combined_actions();
        assert_eq!(c.len(), 24);
        for m in &c {
            assert_eq!(m.0.count_ones(), 2);
            assert!(m.translation() != (0, 0) || m.rotation().0 != 0 && m.rotation().1 != 0 || m.rotation() != (0, 0));
            for (a, b) in [(0, 1), (2, 3), (4, 5), (6, 7)] {
                assert!(!(m.0 & (1 << a) != 0 && m.0 & (1 << b) != 0), "{m} holds opposite actions");
            }
        }
    }

    #[test]
    fn sequences_switch_keep_their_kind_and_bound_pitch() {
        let k = Kinematics::default();
        for seed in 0..50 {
            let s = action_sequence(seed, SequenceKind::Basic, 16, 2, &k);
            assert_eq!(s, action_sequence(seed, SequenceKind::Basic, 16, 2, &k));
            assert!(s.iter().all(|m| m.0.count_ones() == 1));
            for pair in s.chunks(2) {
                assert_eq!(pair[0], pair[1]);
            }
            for w in s.chunks(2).collect::<Vec<_>>().windows(2) {
                assert_ne!(w[0][0], w[1][0], "switches to a new action");
            }
            let c = action_sequence(seed, SequenceKind::Combined, 16, 1, &k);
            assert!(c.iter().all(|m| m.is_combined()));
            let poses = k.trajectory(Pose::START, &c);
            assert!(poses.iter().all(|p| p.pitch.to_degrees().abs() <= k.max_pitch_deg + 1e-9));
        }
    }

    #[test]
    fn mixed_sequences_hold_the_combined_rate() {
        let k = Kinematics::default();
        let all: Vec<ActionMask> = (0..200).flat_map(|s| mixed_sequence(s, 16, 1, 0.08, &k)).collect();
        let rate = all.iter().filter(|a| a.is_combined()).count() as f64 / all.len() as f64;
        assert!((0.05..0.11).contains(&rate), "combined rate {rate}");
    }
}
