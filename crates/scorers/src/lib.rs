//! Built-in reward scorers: real measurements of generated frames, never a
//! peek at the simulator's state.
//!
//! - [`pose`]: a camera pose estimator learned on simulator renders with
//!   exact poses: from the pixels of a window's first and last frame it
//!   returns the window's relative motion (yaw, pitch, forward, right),
//!   which the action-accuracy metric maps to rotation and translation
//!   labels (the paper's WorldMirror / Depth Anything 3 role).
//! - [`labelled`]: generated windows labelled by the evaluation's probe,
//!   the estimator's second training source and a test set for it.
//! - [`vq`]: a no-reference visual-quality score (the paper's HPSv3 role).
//! - [`degrade`]: graded degradations that validate the VQ scorer.

pub mod degrade;
pub mod derotate;
pub mod labelled;
pub mod pose;
pub mod vq;

/// Errors of the scorers.
#[derive(Debug, thiserror::Error)]
pub enum ScorerError {
    #[error(transparent)]
    Model(#[from] wc_model::ModelError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("pose estimator checkpoint: {0}")]
    Checkpoint(String),
    #[error("pose estimator input: {0}")]
    Input(String),
}

pub type Result<T> = std::result::Result<T, ScorerError>;
