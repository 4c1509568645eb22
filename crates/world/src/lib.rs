//! The embedded world: what lets the whole system run and be tested on one
//! CPU with no downloads.
//!
//! - [`actions`]: the paper's action space (8 basic actions, combined actions
//!   as sets of them), per-frame camera kinematics, and the generators of
//!   basic and combined action sequences.
//! - [`camera`]: the pinhole camera pose and the relative motion of a window.
//! - [`scene`]: procedural scenes from a seed (ground, objects, palette,
//!   lighting, caption).
//! - [`render`]: a ray caster over the scene's real geometry (so translation
//!   shows parallax and differs from rotation), parallel over rows.
//! - [`metric`]: the action-accuracy metric of the paper (rotation and
//!   translation accuracy every 4 frames, IF) and the static-model baseline.
//! - [`media`]: animated GIF and PNG strip writers.

pub mod actions;
pub mod camera;
pub mod media;
pub mod metric;
pub mod probe;
pub mod render;
pub mod scene;

pub use actions::{ActionMask, Kinematics};
pub use camera::{Pose, WindowMotion};
pub use render::{Frame, RenderConfig};
pub use scene::Scene;
