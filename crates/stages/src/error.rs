//! Errors of the stages. Errors of the crates below (store, schemas,
//! config, model, scorers, data, I/O) are kept as the cause, so the
//! binary's error chain prints them.

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
    /// An artifact that exists but cannot be used; its cause says why.
    #[error("cannot use {artifact}")]
    Artifact {
        artifact: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Scorer(#[from] wc_scorers::ScorerError),
    #[error(transparent)]
    Data(#[from] wc_data::DataError),
    #[error("model computation failed: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error(transparent)]
    Model(#[from] wc_model::ModelError),
}

impl StageError {
    /// `artifact` cannot be used because of `source` (kept as the cause).
    pub fn artifact(artifact: impl Into<String>, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StageError::Artifact { artifact: artifact.into(), source: source.into() }
    }

    /// An I/O failure while doing `what`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| StageError::Io { what, source }
    }

    pub fn invalid(artifact: impl Into<String>, reason: impl Into<String>) -> Self {
        StageError::InvalidInput {
            artifact: artifact.into(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    /// Regression test for "stage errors flatten their cause to a string":
    /// the cause stays a source, so the binary's error chain prints it on
    /// its own line and callers can downcast it.
    #[test]
    fn an_unusable_artifact_keeps_its_cause() {
        let cause = serde_json::from_slice::<serde_json::Value>(b"{not json").unwrap_err();
        let err = StageError::artifact("file:///run/init/settings.json", cause);
        assert_eq!(err.to_string(), "cannot use file:///run/init/settings.json");
        let source = err.source().expect("the cause is kept");
        assert!(source.downcast_ref::<serde_json::Error>().is_some(), "{source}");
        assert!(source.to_string().contains("key must be a string"), "{source}");
        let io = StageError::io("writing job.json")(std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied"));
        assert_eq!((io.to_string().as_str(), io.source().map(|s| s.to_string())), ("writing job.json", Some("denied".to_string())));
    }

    #[test]
    fn scorer_and_data_errors_convert_and_keep_their_message() {
        let err: StageError = wc_scorers::ScorerError::Input("3 frames, need 5".into()).into();
        assert!(err.to_string().contains("3 frames, need 5"), "{err}");
        let err: StageError = wc_data::DataError::Spec("prompts = 0".into()).into();
        assert!(err.to_string().contains("prompts = 0"), "{err}");
    }
}
