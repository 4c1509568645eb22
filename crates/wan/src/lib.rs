//! The Wan2.1 family of video models in candle, with the real weight
//! layouts: the video diffusion transformer that Wan2.1 and the world models
//! built on it (Matrix-Game 2.0 among them) share.
//!
//! - [`config`]: the transformer's configuration, read from Wan's or
//!   diffusers' `config.json`, with the released sizes as presets.
//! - [`weights`]: checkpoints in either key layout (Wan's original names
//!   or diffusers'), checked key by key: a missing, unexpected or mis-shaped
//!   key is an error that names it.
//! - [`transformer`]: the model (patch embedding, time and text embeddings,
//!   blocks of modulated self-attention with 3-axis rotary embeddings,
//!   cross-attention and GELU feed-forward, the modulated output head), in
//!   f32 or bf16 on any candle device. No I/O: it is built from a
//!   [`weights::Weights`].
//! - [`vae`]: the causal video VAE (8x in space, 4x in time, 16 latent
//!   channels), whole clips or chunk by chunk with a cache of frames.
//!
//! - [`clip_vision`]: the CLIP ViT-H/14 vision tower whose tokens of the
//!   first frame Matrix-Game 2.0 cross-attends to, and its preprocessing.
//! - [`matrix_game`]: Matrix-Game 2.0's keyboard and mouse inputs mapped to
//!   and from this project's actions (the causal, action-conditioned model
//!   built on the transformer is next).
//!
//! Checked against diffusers' `WanTransformer3DModel` by fixtures under
//! `tests/fixtures/wan/` (made by `tests/fixtures/wan/make_fixtures.py`).

pub mod action_module;
pub mod causal_sampler;
pub mod clip_vision;
pub mod config;
mod frame_cache;
pub mod matrix_game;
mod nn;
pub mod transformer;
pub mod vae;
pub mod weights;

pub use action_module::{ActionCache, ActionModule, ActionModuleConfig, Actions};
pub use clip_vision::{ClipVision, ClipVisionConfig};
pub use config::{ContextKind, WanTransformerConfig};
pub use transformer::{CausalSpec, KvCache, WanTransformer};
pub use vae::{WanVae, WanVaeConfig};
pub use weights::{KeyLayout, Weights};

/// What can go wrong loading or running a Wan model.
#[derive(Debug, thiserror::Error)]
pub enum WanError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("invalid Wan config: {0}")]
    Config(String),
    #[error(
        "the checkpoint has no tensor `{key}` (expected shape {expected:?}; names are read in the {layout} layout)"
    )]
    MissingKey {
        key: String,
        expected: Vec<usize>,
        layout: KeyLayout,
    },
    #[error("tensor `{key}` has shape {found:?}, the model expects {expected:?}")]
    Shape {
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("the checkpoint has {} tensor(s) the model does not use: {}", .keys.len(), .keys.join(", "))]
    Unexpected { keys: Vec<String> },
    #[error("{what}: {reason}")]
    Input { what: String, reason: String },
}

pub type Result<T> = std::result::Result<T, WanError>;
