//! The maths of WorldCompass RL, as plain functions with unit tests.
//!
//! Nothing here does I/O or knows about tensors: the stages read artifacts,
//! call these functions, and commit what they return.
//!
//! - [`advantages`]: per-reward group normalisation, the combined advantage,
//!   the optimality probability r, best-of-N selection.
//! - [`nft`]: the DiffusionNFT loss of the paper's eq. 6 on plain slices (the
//!   reference the model crate's tensor version is tested against).
//! - [`schedule`]: the progressive target clip n, the eta annealing, the
//!   sampler timesteps with shift, and the random timestep subset.
//! - [`seeds`]: how every random draw derives from (run seed, iteration,
//!   stage, group, candidate).

pub mod advantages;
pub mod nft;
pub mod schedule;
pub mod seeds;
