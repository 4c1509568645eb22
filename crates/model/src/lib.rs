//! The base world model pi(x_n | x_1..n-1, a_n, c) in candle.
//!
//! A causal, action-conditioned flow-matching clip transformer:
//!
//! - [`codec`]: frames <-> latents behind a small trait (here pixels in
//!   [-1, 1], patchified into tokens; a learned VAE can replace it).
//! - [`model`]: the transformer. The context (the world prompt's first frame
//!   and the most recent frames, a bounded memory) is encoded once into
//!   per-layer keys and values ([`model::ContextCache`]); the noisy target
//!   clip attends to that cache and to itself. G candidates after one prefix
//!   share one cache, for all sampler steps.
//! - [`flow`]: flow matching: the training loss (velocity prediction,
//!   weighted toward high noise), the Euler sampler with timestep shift and
//!   classifier-free guidance over the action.
//! - [`params`]: named parameters with seeded initialisation, safetensors
//!   round-trips, and the EMA update of the old policy.
//! - [`optim`]: Muon (momentum + Newton-Schulz orthogonalisation) for 2-D
//!   weights, AdamW for the rest.
//!
//! No I/O here: callers pass tensors in and get tensors out.

pub mod bench;
pub mod codec;
pub mod config;
pub mod flow;
pub mod model;
pub mod nn;
pub mod optim;
pub mod params;
pub mod train;

pub use config::ModelConfig;
pub use model::{ContextCache, WorldModel};

/// Errors of the model crate.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
}

pub type Result<T> = std::result::Result<T, ModelError>;
