//! Matrix-Game 2.0's action inputs and this project's actions, in one
//! place (the architecture is described in `docs/design/matrix-game-2.md`).
//!
//! Matrix-Game 2.0 (the universal model) reads, per pixel frame, a keyboard
//! vector of 4 keys [W, S, A, D] = [forward, back, left, right] (multi-hot)
//! and a mouse vector [pitch, yaw] (positive = look up, turn right), held at
//! [`MOUSE_PER_TURN`] while a turn key is pressed in its demos. This
//! project's action is a set of up to four intents (forward/backward,
//! strafe, yaw, pitch; `wc_world::ActionMask`) with turns of 5 degrees per
//! frame. So: forward/backward/left/right are W/S/A/D, a turn is the mouse
//! at [`MOUSE_PER_TURN`] on its axis with its sign, and a combined action is
//! several keys, or keys and the mouse. Back from Matrix-Game's inputs: a
//! key counts as pressed above 0.5, opposite keys pressed together cancel,
//! and the mouse turns when it moves more than half of [`MOUSE_PER_TURN`].

use wc_world::ActionMask;

/// Mouse value of a turn per pixel frame: the value every Matrix-Game 2.0
/// demo holds while a camera key is pressed (`CAM_VALUE`), mapped to this
/// project's turn of 5 degrees per frame.
pub const MOUSE_PER_TURN: f32 = 0.1;

/// One pixel frame of Matrix-Game 2.0's action input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MatrixGameAction {
    /// [W, S, A, D]: forward, back, left, right; 1 pressed, 0 not.
    pub keyboard: [f32; 4],
    /// [pitch, yaw]: positive looks up, turns right.
    pub mouse: [f32; 2],
}

impl MatrixGameAction {
    /// The keys and mouse of one of this project's actions.
    pub fn from_action(a: ActionMask) -> Self {
        let (forward, right) = a.translation();
        let (yaw, pitch) = a.rotation();
        let key = |on: bool| if on { 1.0 } else { 0.0 };
        MatrixGameAction {
            keyboard: [
                key(forward > 0),
                key(forward < 0),
                key(right < 0),
                key(right > 0),
            ],
            mouse: [pitch as f32 * MOUSE_PER_TURN, yaw as f32 * MOUSE_PER_TURN],
        }
    }

    /// The project's action these inputs ask for.
    pub fn to_action(&self) -> ActionMask {
        let pressed = |v: f32| v > 0.5;
        let axis = |pos: f32, neg: f32| pressed(pos) as i8 - pressed(neg) as i8;
        let turn = |m: f32| {
            if m.abs() > MOUSE_PER_TURN / 2.0 {
                m.signum() as i8
            } else {
                0
            }
        };
        let [w, s, a, d] = self.keyboard;
        ActionMask::from_intent(
            (axis(w, s), axis(d, a)),
            (turn(self.mouse[1]), turn(self.mouse[0])),
        )
    }
}

/// The per-pixel-frame keyboard [N, 4] and mouse [N, 2] inputs of a
/// sequence of actions held `frames_each` pixel frames each, row-major.
pub fn action_inputs(actions: &[ActionMask], frames_each: usize) -> (Vec<f32>, Vec<f32>) {
    let mut keyboard = Vec::with_capacity(actions.len() * frames_each * 4);
    let mut mouse = Vec::with_capacity(actions.len() * frames_each * 2);
    for a in actions {
        let m = MatrixGameAction::from_action(*a);
        for _ in 0..frames_each {
            keyboard.extend(m.keyboard);
            mouse.extend(m.mouse);
        }
    }
    (keyboard, mouse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_actions_are_one_key_or_one_mouse_axis() {
        let cases = [
            (ActionMask::FORWARD, [1., 0., 0., 0.], [0., 0.]),
            (ActionMask::BACKWARD, [0., 1., 0., 0.], [0., 0.]),
            (ActionMask::LEFT, [0., 0., 1., 0.], [0., 0.]),
            (ActionMask::RIGHT, [0., 0., 0., 1.], [0., 0.]),
            (ActionMask::TURN_UP, [0.; 4], [0.1, 0.]),
            (ActionMask::TURN_DOWN, [0.; 4], [-0.1, 0.]),
            (ActionMask::TURN_LEFT, [0.; 4], [0., -0.1]),
            (ActionMask::TURN_RIGHT, [0.; 4], [0., 0.1]),
            (ActionMask(0), [0.; 4], [0., 0.]),
        ];
        for (a, keyboard, mouse) in cases {
            assert_eq!(
                MatrixGameAction::from_action(a),
                MatrixGameAction { keyboard, mouse },
                "{a}"
            );
        }
        // A combined action: several keys and the mouse.
        let m = MatrixGameAction::from_action(
            ActionMask::FORWARD
                .union(ActionMask::LEFT)
                .union(ActionMask::TURN_RIGHT),
        );
        assert_eq!(
            m,
            MatrixGameAction {
                keyboard: [1., 0., 1., 0.],
                mouse: [0., 0.1]
            }
        );
    }

    #[test]
    fn every_action_of_the_81_class_space_maps_there_and_back() {
        let mut seen = std::collections::HashSet::new();
        for code in 0..=255u8 {
            let a = ActionMask(code);
            if a.opposite_pair().is_some() {
                continue;
            }
            let m = MatrixGameAction::from_action(a);
            assert_eq!(m.to_action(), a, "{a}");
            assert!(seen.insert(format!("{m:?}")), "two actions map to {m:?}");
        }
        assert_eq!(seen.len(), 81);
    }

    #[test]
    fn matrix_game_inputs_read_back_with_thresholds_and_cancelling_keys() {
        let read =
            |keyboard: [f32; 4], mouse: [f32; 2]| MatrixGameAction { keyboard, mouse }.to_action();
        // W and S together cancel; A alone strafes left.
        assert_eq!(read([1., 1., 1., 0.], [0., 0.]), ActionMask::LEFT);
        // A small mouse motion is no turn; a large one is one turn step's direction.
        assert_eq!(read([0.; 4], [0.04, -0.04]), ActionMask(0));
        assert_eq!(
            read([0.; 4], [0.3, -0.3]),
            ActionMask::TURN_UP.union(ActionMask::TURN_LEFT)
        );
        // A half-pressed key is not pressed.
        assert_eq!(read([0.4, 0., 0., 0.6], [0., 0.]), ActionMask::RIGHT);
    }

    #[test]
    fn a_sequence_holds_each_action_for_its_frames() {
        let (k, m) = action_inputs(&[ActionMask::FORWARD, ActionMask::TURN_LEFT], 4);
        assert_eq!(k.len(), 8 * 4);
        assert_eq!(m.len(), 8 * 2);
        assert_eq!(&k[12..16], &[1., 0., 0., 0.]);
        assert_eq!(&k[16..20], &[0.; 4]);
        assert_eq!(&m[14..16], &[0., -0.1]);
    }
}
