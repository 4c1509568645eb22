//! Matrix-Game 2.0 as a world model of this project.
//!
//! `wc-wan` holds the network (the Wan transformer with block-causal
//! attention, a key/value cache and the keyboard-and-mouse action module).
//! This crate makes it a [`wc_model::VelocityModel`], so that the sampler,
//! the flow-matching loss, the NFT loss and the optimizer, written once in
//! `wc-model`, run it unchanged:
//!
//! - [`config`]: [`MatrixGameConfig`], the network and the frames around
//!   it, with the embedded configuration (the same architecture at the
//!   embedded world's size) as a preset.
//! - [`model`]: [`MatrixGameModel`], built from `wc-model`'s
//!   [`wc_model::params::Params`] (so the optimizer trains every weight and
//!   checkpoints are the project's safetensors), the packed context layout,
//!   and the encoded context (the key/value cache of the clean context
//!   blocks, shared by all candidates).
//! - [`prompt`]: what the network reads of a world prompt's first frame
//!   (its first latent, the image-to-video condition, the image tokens),
//!   computed once per prompt with the frozen VAE and CLIP tower.
//! - [`codec`]: the Wan VAE as a `wc_model` video codec (Matrix-Game 2.0's
//!   codec at full size).
//! - [`train`]: pre-training examples from ground-truth videos and one
//!   pre-training step.
//!
//! How a clip sequence maps onto Matrix-Game's causal blocks, and why: the
//! world prompt's first frame is a block of its own (an attention sink in
//! the embedded configuration, not at full size), then one block per clip (`frames_per_clip` latent frames of the codec);
//! a clip's context is the first frame and the clip before it,
//! encoded at t = 0 into the cache. See docs/design/matrix-game-2.md.
//!
//! No I/O here: callers pass tensors in and get tensors out.

pub mod at_scale;
pub mod codec;
pub mod config;
pub mod model;
pub mod prompt;
pub mod train;

pub use config::MatrixGameConfig;
pub use model::{MatrixGameContext, MatrixGameInput, MatrixGameModel, MatrixGamePolicy};
pub use prompt::{PromptConditioning, PromptEncoder};

/// A Wan error as the model seam's error.
pub fn wan_error(e: wc_wan::WanError) -> wc_model::ModelError {
    match e {
        wc_wan::WanError::Candle(e) => wc_model::ModelError::Candle(e),
        other => wc_model::ModelError::Config(other.to_string()),
    }
}
