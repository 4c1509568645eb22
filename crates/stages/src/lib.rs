//! The five training stages and the runner that commits them.
//!
//! Each stage is a thin shell: it opens the committed artifacts it depends on
//! ([`inputs`]), calls the model through the [`backend::Backend`] trait (the
//! registry in [`backend`] is the one place that names architectures) and
//! pure logic (the RL maths in `wc-rl`), and commits its outputs through the
//! store's commit protocol. [`runner`] decides whether a stage must run (skipping what is
//! already committed, refusing a different config), and [`train`] runs the
//! stages of each iteration in order, resuming whatever is committed.
//!
//! Where a run's files live is in one place, [`layout`]; how checkpoint
//! stores are read, in [`checkpoints`]. What is not a stage (pre-training,
//! evaluation, training the pose estimator, the scorer diagnostics) is in
//! the `wc-jobs` crate.

pub mod backend;
pub mod checkpoints;
mod error;
pub mod init;
pub mod inputs;
pub mod layout;
pub mod external;
pub mod linear;
pub mod runner;
pub mod stages;
pub mod status;
pub mod tables;
pub mod world;
pub mod world_stages;

pub use error::StageError;
pub use init::{init_run, InitOutcome};
pub use runner::{run_stage, train, RunContext, Stage, StageOutcome, StageRequest};
pub use status::{run_status, status_table, StatusRow};
