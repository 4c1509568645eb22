//! Errors of the run store and the commit protocol.

use crate::redact::redact;

/// Everything that can go wrong reading, writing or committing run artifacts.
///
/// Each variant names the path (relative to the run root, or the run URI)
/// it concerns; backend messages are passed through [`redact`] so that no
/// credential reaches a log or a terminal.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid run URI '{uri}': {reason}")]
    InvalidUri { uri: String, reason: String },

    #[error("nothing at {uri}: the folder does not exist (a typo? commands that read a store do not create it)")]
    NoSuchStore { uri: String },

    #[error("invalid artifact path '{path}': {reason}")]
    InvalidPath { path: String, reason: String },

    #[error("'{path}' not found in run {run}")]
    NotFound { run: String, path: String },

    #[error("{op} '{path}' in run {run} failed")]
    Backend {
        op: &'static str,
        run: String,
        path: String,
        #[source]
        source: RedactedSource,
    },

    #[error("could not start the storage runtime: {0}")]
    Runtime(String),

    #[error(
        "manifest '{path}' is corrupt or unreadable: {reason}. \
         Remove it (and rerun the stage) only if you know no reader depends on it"
    )]
    CorruptManifest { path: String, reason: String },

    #[error(
        "'{path}' is already committed with a different config fingerprint \
         (committed {committed}, this run {expected}); rerun with --force to replace it"
    )]
    FingerprintMismatch {
        path: String,
        committed: String,
        expected: String,
    },

    #[error("'{path}' is not listed in the manifest of {manifest}; readers trust only listed files")]
    NotInManifest { path: String, manifest: String },

    #[error("'{path}' has {found} bytes but its manifest lists {expected}: the file was changed or truncated after commit")]
    SizeMismatch {
        path: String,
        expected: u64,
        found: u64,
    },

    #[error("'{path}' has checksum sha256:{found} but its manifest lists sha256:{expected}: the file was changed or corrupted after commit")]
    ChecksumMismatch {
        path: String,
        expected: String,
        found: String,
    },

    #[error("input manifest '{path}' is missing: has the stage that writes it run (and committed) yet?")]
    MissingManifest { path: String },
}

/// A backend error whose message is redacted when displayed.
///
/// `object_store` errors can echo request details (an S3 error body names the
/// access key id, for example); this wrapper keeps the original for `source()`
/// chains but only ever displays the redacted text.
#[derive(Debug)]
pub struct RedactedSource(pub object_store::Error);

impl std::fmt::Display for RedactedSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact(&self.0.to_string()))
    }
}

impl std::error::Error for RedactedSource {}

impl StoreError {
    /// True when the error is a missing object (as opposed to a failure).
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. } | StoreError::MissingManifest { .. })
    }
}
