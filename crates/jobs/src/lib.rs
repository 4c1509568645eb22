//! The batch jobs that are not training stages. Like the stages they read
//! committed artifacts and commit their own, resumably; unlike them they
//! are not part of an iteration:
//!
//! - [`pretrain`]: pre-train the base world model on a dataset's
//!   ground-truth clips;
//! - [`evaluate`]: evaluate checkpoints on held-out prompts (the paper's
//!   Table 1);
//! - [`pose_training`]: train the pose estimator, and commit or load the
//!   generated windows labelled for it;
//! - [`import`]: import released Matrix-Game weights (the transformer,
//!   the Wan VAE, the CLIP tower) into a base store;
//! - [`diagnostics`]: read a run's committed candidates with both
//!   instruments (agreement, labelling).
//!
//! Their errors are the stages' ([`wc_stages::StageError`]); the checkpoint
//! stores they write are read through [`wc_stages::checkpoints`].

pub mod diagnostics;
pub mod evaluate;
pub mod import;
pub mod pose_training;
pub mod pretrain;
