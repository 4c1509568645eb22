//! Camera pose and relative motion.
//!
//! World coordinates: y is up, the ground is y = 0. A camera at yaw 0 looks
//! along +z with +x to its right. Yaw grows when turning right; pitch grows
//! when looking up. Angles are in radians inside, degrees at the edges.

/// A pinhole camera's pose: position, yaw and pitch (no roll).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pose {
    pub x: f64,
    pub y: f64,
    pub z: f64,
    pub yaw: f64,
    pub pitch: f64,
}

impl Pose {
    /// The start pose of every sequence: at the origin, eye height 1, level.
    pub const START: Pose = Pose {
        x: 0.0,
        y: 1.0,
        z: 0.0,
        yaw: 0.0,
        pitch: 0.0,
    };

    /// Horizontal heading (unit vector in the ground plane).
    pub fn heading(&self) -> [f64; 3] {
        [self.yaw.sin(), 0.0, self.yaw.cos()]
    }

    /// Camera right (horizontal).
    pub fn right(&self) -> [f64; 3] {
        [self.yaw.cos(), 0.0, -self.yaw.sin()]
    }

    /// Viewing direction (with pitch).
    pub fn forward(&self) -> [f64; 3] {
        let c = self.pitch.cos();
        [self.yaw.sin() * c, self.pitch.sin(), self.yaw.cos() * c]
    }

    /// Camera up (perpendicular to forward and right).
    pub fn up(&self) -> [f64; 3] {
        let s = self.pitch.sin();
        [-self.yaw.sin() * s, self.pitch.cos(), -self.yaw.cos() * s]
    }
}

/// The relative motion between two poses, in the first pose's frame:
/// rotation in degrees and horizontal translation along its heading and its
/// right. This is what a pose estimator returns per window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WindowMotion {
    /// Yaw change in degrees (positive: turned right).
    pub dyaw_deg: f64,
    /// Pitch change in degrees (positive: looked up).
    pub dpitch_deg: f64,
    /// Translation along the first pose's heading (positive: forward).
    pub forward: f64,
    /// Translation along the first pose's right (positive: right).
    pub right: f64,
}

/// Wrap an angle in radians to (-pi, pi].
pub fn wrap_angle(a: f64) -> f64 {
    let two_pi = std::f64::consts::TAU;
    let mut w = a.rem_euclid(two_pi);
    if w > std::f64::consts::PI {
        w -= two_pi;
    }
    w
}

impl WindowMotion {
    /// The motion from `a` to `b`.
    pub fn between(a: &Pose, b: &Pose) -> Self {
        let t = [b.x - a.x, b.y - a.y, b.z - a.z];
        let dot = |u: [f64; 3]| u[0] * t[0] + u[1] * t[1] + u[2] * t[2];
        WindowMotion {
            dyaw_deg: wrap_angle(b.yaw - a.yaw).to_degrees(),
            dpitch_deg: (b.pitch - a.pitch).to_degrees(),
            forward: dot(a.heading()),
            right: dot(a.right()),
        }
    }
}

/// Motions of consecutive windows of a trajectory: `poses[0]` is the pose
/// before the first window, and window w spans poses[w*f] -> poses[(w+1)*f].
pub fn window_motions(poses: &[Pose], frames_per_window: usize) -> Vec<WindowMotion> {
    let windows = (poses.len().saturating_sub(1)) / frames_per_window;
    (0..windows)
        .map(|w| WindowMotion::between(&poses[w * frames_per_window], &poses[(w + 1) * frames_per_window]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: [f64; 3], b: [f64; 3]) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12)
    }

    #[test]
    fn basis_is_orthonormal_and_right_handed_as_documented() {
        for (yaw, pitch) in [(0.0, 0.0), (0.7, 0.3), (-2.0, -0.5)] {
            let p = Pose { yaw, pitch, ..Pose::START };
            let (f, r, u) = (p.forward(), p.right(), p.up());
            let dot = |a: [f64; 3], b: [f64; 3]| a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
            assert!(dot(f, r).abs() < 1e-12 && dot(f, u).abs() < 1e-12 && dot(r, u).abs() < 1e-12);
            assert!((dot(f, f) - 1.0).abs() < 1e-12 && (dot(u, u) - 1.0).abs() < 1e-12);
        }
        let p = Pose::START;
        assert!(close(p.forward(), [0.0, 0.0, 1.0]) && close(p.right(), [1.0, 0.0, 0.0]) && close(p.up(), [0.0, 1.0, 0.0]));
        // Turning right by 90 degrees faces +x.
        let p = Pose { yaw: std::f64::consts::FRAC_PI_2, ..Pose::START };
        assert!(close(p.heading(), [1.0, 0.0, 0.0]));
    }

    #[test]
    fn relative_motion_is_in_the_first_pose_frame() {
        let a = Pose { yaw: std::f64::consts::FRAC_PI_2, ..Pose::START }; // facing +x
        let b = Pose { x: 2.0, z: -1.0, yaw: a.yaw + 0.1, ..Pose::START };
        let m = WindowMotion::between(&a, &b);
        assert!((m.forward - 2.0).abs() < 1e-12, "{m:?}");
        assert!((m.right - 1.0).abs() < 1e-12, "{m:?}"); // right of +x is -z
        assert!((m.dyaw_deg - 0.1f64.to_degrees()).abs() < 1e-9);
        assert!((wrap_angle(3.0 * std::f64::consts::PI) - std::f64::consts::PI).abs() < 1e-12);
        assert!((wrap_angle(-0.25) + 0.25).abs() < 1e-12);
    }
}
