//! Errors of the stages.

use wc_config::ConfigError;
use wc_schemas::SchemaError;
use wc_store::StoreError;

/// Everything a stage can fail with. Every message says what to do next
/// where there is something to do.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("run {uri} is not initialised (no run.toml): create it with `worldcompass init --run {uri} --pipeline pipelines/embedded.toml`")]
    NotInitialised { uri: String },
    #[error("run {uri} is already initialised with a different pipeline config; use a new run URI, or --force to replace it")]
    AlreadyInitialised { uri: String },
    #[error("{uri} was changed after the run was initialised (config {now}, the run's is {initialised}): a run trains under one config. Restore it, or start a new run with the new config")]
    ConfigChanged { uri: String, initialised: String, now: String },
    #[error("{stage} of iteration {iter} is not complete: {detail}")]
    Incomplete {
        stage: &'static str,
        iter: u64,
        detail: String,
    },
    #[error("stage {stage} is not sharded: run it without --shard (or with --shard 0/1)")]
    NotSharded { stage: &'static str },
    #[error("optimize of iteration {iter}: none of its {steps} optimizer step(s) gave finite weights (loss {loss}, gradient norm {grad_norm}); nothing was committed. Check the learning rate and the policy and optimizer state of checkpoint {iter}")]
    NoFiniteStep { iter: u64, steps: usize, loss: f64, grad_norm: f64 },
    #[error("{artifact}: {reason}")]
    InvalidInput { artifact: String, reason: String },
    #[error("model computation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error(transparent)]
    Model(#[from] wc_model::ModelError),
}

impl StageError {
    pub(crate) fn invalid(artifact: impl Into<String>, reason: impl Into<String>) -> Self {
        StageError::InvalidInput {
            artifact: artifact.into(),
            reason: reason.into(),
        }
    }
}
