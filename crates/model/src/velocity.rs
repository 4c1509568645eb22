//! The model seam: what a flow-matching world model must offer for the
//! sampler, the NFT loss and the optimizer step to be written once.
//!
//! A [`VelocityModel`] encodes a context (the first frame and recent clips)
//! into a cache once, then predicts the velocity of a batch of noisy target
//! clips from that cache, the actions and the flow time. [`Policy`] is such a
//! model with the parameters it was built in (what the optimizer trains and
//! the EMA moves). `flow::sample`, `flow::flow_matching_loss` and
//! `nft::nft_velocities` / `nft::nft_step` are generic over it; the embedded
//! clip transformer ([`WorldModel`]) is one implementation.

use candle_core::{Device, Tensor};

use crate::model::{action_input, ContextCache, WorldModel};
use crate::params::Params;
use crate::{ModelConfig, Result};

/// What a model encodes a context from: a batch of rows that the generic
/// code joins (the guided NFT step's doubled batch, the recomputing
/// sampler's copies). For the project's models it is one tensor
/// `[B, ...]`; a model whose context does not fit one tensor (an image
/// encoder's tokens beside latent rows) brings its own type.
pub trait ContextInput: Clone {
    /// The rows of `parts`, in order, as one batch.
    fn concat(parts: &[&Self]) -> Result<Self>;
}

impl ContextInput for Tensor {
    fn concat(parts: &[&Self]) -> Result<Self> {
        Ok(Tensor::cat(parts, 0)?)
    }
}

/// A context encoded once and reused for every candidate and sampler step.
pub trait EncodedContext: Clone {
    /// The batch the context was encoded for (1: shared by every target).
    fn batch(&self) -> usize;
    /// The same context without the graph that computed it (sampling needs
    /// no gradient).
    fn detach(&self) -> Self;
    /// The context for a batch twice as large, the guided sampler's
    /// conditional then unconditional halves (a batch-1 context, shared by
    /// all, stays as it is).
    fn doubled(&self) -> Result<Self>;
    /// The context of rows `start..start + len` of the batch it was encoded
    /// for (a batch-1 context, shared by all, stays as it is).
    fn rows(&self, start: usize, len: usize) -> Result<Self>;
}

/// A flow-matching velocity model conditioned on a context and actions.
///
/// Convention (`flow`): z_t = (1 - t) x + t eps, t = 1 is noise, and the
/// model predicts v = eps - x.
pub trait VelocityModel {
    /// What a context is encoded from (a batch `[B, ...]` in the model's
    /// own layout).
    type Input: ContextInput;
    type Context: EncodedContext;

    /// Encode a batch of contexts.
    fn encode_context(&self, context: &Self::Input) -> Result<Self::Context>;

    /// Velocity of the noisy target clips `z` `[B, ...]` at times `t` `[B]`,
    /// from a context of batch 1 or B and the action input of
    /// [`VelocityModel::action_input`].
    fn velocity(&self, context: &Self::Context, z: &Tensor, t: &Tensor, actions: &Tensor) -> Result<Tensor>;

    /// The model's action input for per-frame action masks (the project's
    /// 8 basic actions as bits, one list per target); `dropped[i]` gives row
    /// i no action (the unconditional branch of classifier-free guidance).
    fn action_input(&self, masks: &[Vec<u8>], dropped: &[bool], device: &Device) -> Result<Tensor>;
}

impl EncodedContext for ContextCache {
    fn batch(&self) -> usize {
        ContextCache::batch(self)
    }

    fn detach(&self) -> Self {
        ContextCache::detach(self)
    }

    fn doubled(&self) -> Result<Self> {
        let qkv = self
            .qkv
            .iter()
            .map(|t| -> Result<Tensor> { if t.dim(0)? == 1 { Ok(t.clone()) } else { Ok(Tensor::cat(&[t, t], 0)?) } })
            .collect::<Result<_>>()?;
        Ok(ContextCache { qkv })
    }

    fn rows(&self, start: usize, len: usize) -> Result<Self> {
        let qkv = self.qkv.iter().map(|t| -> Result<Tensor> { if t.dim(0)? == 1 { Ok(t.clone()) } else { Ok(t.narrow(0, start, len)?) } }).collect::<Result<_>>()?;
        Ok(ContextCache { qkv })
    }
}

impl VelocityModel for WorldModel {
    type Input = Tensor;
    type Context = ContextCache;

    fn encode_context(&self, context: &Tensor) -> Result<ContextCache> {
        WorldModel::encode_context(self, context)
    }

    fn velocity(&self, context: &ContextCache, z: &Tensor, t: &Tensor, actions: &Tensor) -> Result<Tensor> {
        WorldModel::velocity(self, context, z, t, actions)
    }

    fn action_input(&self, masks: &[Vec<u8>], dropped: &[bool], device: &Device) -> Result<Tensor> {
        action_input(masks, dropped, device)
    }
}

/// A model and the parameters it was built in: a policy, an old (EMA)
/// policy or a reference model.
pub struct Policy<M> {
    pub model: M,
    pub params: Params,
}

impl Policy<WorldModel> {
    /// A world model of `cfg` with seeded initial weights on `device`.
    pub fn fresh(cfg: &ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        let mut params = Params::new(seed, device);
        let model = WorldModel::new(cfg, &mut params)?;
        Ok(Policy { model, params })
    }

    /// A copy of this policy whose network runs in `dtype` (for sampling in
    /// bf16 on a GPU); the weights are cast on the device. An f32 copy of
    /// an f32 policy computes the same bits.
    pub fn to_dtype(&self, dtype: candle_core::DType) -> Result<Self> {
        let mut params = Params::with_dtype(0, self.params.device(), dtype);
        let model = WorldModel::new(&self.model.cfg, &mut params)?;
        params.copy_from(&self.params)?;
        Ok(Policy { model, params })
    }

    /// A world model of `cfg` with the weights of a checkpoint (every name
    /// and shape checked).
    pub fn from_tensors(cfg: &ModelConfig, t: &wc_schemas::TensorSet, device: &Device) -> Result<Self> {
        let p = Self::fresh(cfg, 0, device)?;
        p.params.load(t)?;
        Ok(p)
    }
}
