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
//! - [`velocity`]: the seam every model implements ([`VelocityModel`]:
//!   encode a context once, velocity of noisy clips from it) and
//!   [`Policy`], a model with its parameters.
//! - [`device`]: the device the user named, opened (or refused, clearly).
//! - [`flow`]: flow matching: the training loss (velocity prediction,
//!   weighted toward high noise), the Euler sampler with timestep shift and
//!   classifier-free guidance over the action.
//! - [`params`]: named parameters with seeded initialisation, safetensors
//!   round-trips, and the EMA update of the old policy.
//! - [`optim`]: Muon (momentum + Newton-Schulz orthogonalisation) for 2-D
//!   weights, AdamW for the rest.
//!
//! No I/O here: callers pass tensors in and get tensors out.

pub mod attention;
pub mod bench;
pub mod codec;
pub mod config;
pub mod device;
pub mod device_check;
pub mod flow;
pub mod fused;
pub mod model;
pub mod nft;
pub mod nn;
pub mod optim;
pub mod params;
pub mod train;
pub mod velocity;

pub use config::ModelConfig;
pub use model::{ContextCache, WorldModel};
pub use velocity::{ContextInput, EncodedContext, Policy, VelocityModel};

/// Errors of the model crate.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("non-finite value (NaN or infinity): {0}")]
    NonFinite(String),
    #[error("device {device}: {reason}")]
    Device { device: String, reason: String },
}

pub type Result<T> = std::result::Result<T, ModelError>;

/// The checkpoint layout of the model at `cfg` (parameter names, dtype,
/// shapes) as the JSON checked into `schemas/tensors/world_model.json` for
/// the default config.
pub fn checkpoint_layout_json(cfg: &ModelConfig) -> Result<String> {
    let mut p = params::Params::new(0, &candle_core::Device::Cpu);
    WorldModel::new(cfg, &mut p)?;
    let tensors: Vec<serde_json::Value> = p
        .specs()
        .into_iter()
        .map(|(name, shape)| serde_json::json!({"name": name, "dtype": "F32", "shape": shape}))
        .collect();
    let doc = serde_json::json!({
        "name": "world_model",
        "format": "safetensors",
        "doc": "Parameters of the world model at the default ModelConfig: <out>/pretrain/step-<s>/model.safetensors \
                and the policy / old-policy checkpoints. Other configs change the shapes; the model checks \
                every name and shape on load.",
        "config": cfg,
        "parameters": p.count(),
        "tensors": tensors,
    });
    let mut s = serde_json::to_string_pretty(&doc).expect("serialises");
    s.push('\n');
    Ok(s)
}

#[cfg(test)]
mod layout_drift {
    #[test]
    fn checked_in_world_model_layout_matches_the_code() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/tensors/world_model.json");
        let on_disk = std::fs::read_to_string(path).expect("schemas/tensors/world_model.json exists");
        let code = super::checkpoint_layout_json(&super::ModelConfig::default()).unwrap();
        assert!(on_disk == code, "schemas/tensors/world_model.json drifted from the code; regenerate with `worldcompass schemas --write schemas/`");
    }
}
