//! Run storage for WorldCompass.
//!
//! A training run lives under one URI prefix (`file://`, `memory://`, `s3://`,
//! `gs://`, `az://`). [`RunStore`] opens such a URI through `object_store`,
//! gives the stages a small synchronous API over paths relative to the run
//! root, and retries transient errors with exponential backoff (the HTTP
//! backends' own retry layer).
//!
//! On top of it, [`commit`] implements the commit protocol every stage uses:
//! data files first, then a manifest written last with a create-only put.
//! Readers trust only files a manifest lists, with their size and checksum.
//!
//! Errors name the path and the operation, and never carry credentials:
//! every message from a backend passes through [`redact`].

pub mod commit;
mod error;
mod redact;
mod store;

pub use commit::{
    CommitOutcome, CommittedSet, FileEntry, InputRef, Manifest, ManifestState, PendingCommit,
    ShardSpec, MANIFEST_FILE,
};
pub use error::StoreError;
pub use redact::redact;
pub use store::{sha256_hex, IoStats, RunStore, RunUri};
