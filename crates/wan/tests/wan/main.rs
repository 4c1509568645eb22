//! The tests of `wc-wan` against references and invariants, as one test
//! binary: diffusers' transformer and VAE (`diffusers_reference`,
//! `vae_reference`), the fixture script's own PyTorch version of the action
//! module (`action_module`), transformers' CLIP vision tower
//! (`clip_reference`), and block-causal attention, the caches and the
//! sampler (`causal`). The fixtures are in `tests/fixtures/wan/` of the
//! repository, made by its `make_fixtures.py`.

mod support;

mod action_module;
mod causal;
mod clip_reference;
mod diffusers_reference;
mod vae_reference;
