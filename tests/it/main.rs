//! The end-to-end tests of the `worldcompass` binary, as one test binary:
//! each module drives the real binary (and, where it needs them, a real S3
//! server, a real Slurm cluster, real Python readers) on temporary runs.
//! One binary instead of one per file compiles `support` once.

mod support;

mod batch_engines;
mod cli_e2e;
mod matrix_game_e2e;
mod model_e2e;
mod s3_store;
mod scale_study;
mod slurm_chain;
mod world_e2e;
