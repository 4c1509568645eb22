//! The DiffusionNFT loss (the paper's eq. 6), and the velocities and the
//! optimizer step it needs, written once over [`VelocityModel`].
//!
//! For each sample b (a selected candidate clip x at a time t, with noise
//! eps, optimality probability r_b and weight w_b):
//!
//! ```text
//! v     = eps - x                                  flow-matching target
//! v+    = (1 - beta) v_old + beta v_theta          implicit positive policy
//! v-    = (1 + beta) v_old - beta v_theta          implicit negative policy
//! L     = mean_b w_b [ r_b |v+ - v|^2 + (1 - r_b) |v- - v|^2 ]
//! ```
//!
//! |.|^2 is the mean over the sample's elements. `v_old` is the old (EMA)
//! policy's prediction and carries no gradient (it is detached here, so a
//! caller cannot forget). The per-sample weight is the pre-training
//! convention (`flow::loss_weight`), so the loss lives on the scale the
//! model was trained on. The plain-slice reference is `wc_rl::nft`.

use candle_core::Tensor;

use crate::flow::{guide_halves, is_guided, loss_weight};
use crate::optim::Optimizer;
use crate::velocity::{ContextInput, Policy, VelocityModel};
use crate::Result;

/// The NFT loss of a batch: `v_theta`, `v_old`, `v_target` [B, ...];
/// `r` and `weight` one value per sample.
pub fn nft_loss(v_theta: &Tensor, v_old: &Tensor, v_target: &Tensor, r: &[f32], weight: &[f32], beta: f64) -> Result<Tensor> {
    let b = v_theta.dim(0)?;
    let dev = v_theta.device();
    let v_old = v_old.detach();
    let pos = ((&v_old * (1.0 - beta))? + (v_theta * beta)?)?;
    let neg = ((&v_old * (1.0 + beta))? - (v_theta * beta)?)?;
    let per = |t: &Tensor| -> Result<Tensor> { Ok((t - v_target)?.sqr()?.reshape((b, ()))?.mean(1)?) };
    let (lp, ln) = (per(&pos)?, per(&neg)?);
    let r = Tensor::from_vec(r.to_vec(), b, dev)?;
    let w = Tensor::from_vec(weight.to_vec(), b, dev)?;
    let one_minus_r = r.affine(-1.0, 1.0)?;
    let per_sample = ((lp * &r)? + (ln * one_minus_r)?)?;
    Ok((per_sample * w)?.mean_all()?)
}

/// The optional KL regulariser to a reference model: mean_b w_b |v_theta - v_ref|^2.
pub fn kl_term(v_theta: &Tensor, v_ref: &Tensor, weight: &[f32]) -> Result<Tensor> {
    let b = v_theta.dim(0)?;
    let w = Tensor::from_vec(weight.to_vec(), b, v_theta.device())?;
    let per = (v_theta - v_ref.detach())?.sqr()?.reshape((b, ()))?.mean(1)?;
    Ok((per * w)?.mean_all()?)
}

/// One minibatch of the NFT loss: selected candidates, each at one time t,
/// in the model's own token layout.
#[derive(Debug, Clone)]
pub struct NftBatch<C = Tensor> {
    /// The samples' contexts `[B, ...]`, as the model encodes them.
    pub context: C,
    /// Clean candidate tokens x `[B, ...]`.
    pub x: Tensor,
    /// Noise eps, shaped as x.
    pub eps: Tensor,
    /// Flow time of each sample.
    pub t: Vec<f32>,
    /// Per-frame action masks of each sample.
    pub masks: Vec<Vec<u8>>,
    /// Optimality probability r of each sample.
    pub r: Vec<f32>,
}

/// The settings of one NFT optimizer step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NftSettings {
    /// NFT beta (eq. 6).
    pub beta: f64,
    pub lr: f64,
    /// Guidance of the policy the loss trains ([`nft_velocities`]); 1 = the
    /// conditional model.
    pub guidance: f64,
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NftStep {
    pub loss: f64,
    pub grad_norm: f64,
    pub applied: bool,
}

/// The velocities the NFT loss compares, on one batch.
pub struct NftVelocities {
    /// The policy's (with gradient).
    pub v_theta: Tensor,
    /// The old (EMA) policy's, detached.
    pub v_old: Tensor,
    /// The reference model's, detached, when one is given.
    pub v_ref: Option<Tensor>,
    /// The flow-matching target eps - x.
    pub target: Tensor,
    /// Per-sample loss weights ([`loss_weight`]).
    pub weights: Vec<f32>,
}

/// Velocities of `policy` and `old` (and of `reference`, when given) on a
/// batch.
///
/// With `guidance` g != 1 each model's velocity is its classifier-free
/// guided one, v_u + g (v_c - v_u) (`flow::guide`): the velocity of the
/// sampler the guided rollouts were drawn with, so the loss trains that
/// sampler (both the conditional and the unconditional prediction get
/// gradient) instead of the conditional model alone.
pub fn nft_velocities<M: VelocityModel>(
    policy: &Policy<M>,
    old: &Policy<M>,
    reference: Option<&Policy<M>>,
    batch: &NftBatch<M::Input>,
    guidance: f64,
) -> Result<NftVelocities> {
    let dev = batch.x.device();
    let b = batch.t.len();
    let (x, eps, t) = (&batch.x, &batch.eps, &batch.t);
    let tt = Tensor::from_vec(t.clone(), (b, 1, 1), dev)?;
    let z = (x.broadcast_mul(&tt.affine(-1.0, 1.0)?)? + eps.broadcast_mul(&tt)?)?;
    let target = (eps - x)?;
    let guided = is_guided(guidance);
    // Guided: one forward of 2B, the conditional half then the unconditional.
    let (ctx, z, t1, dropped, masks) = if guided {
        let twice = |x: &Tensor| Tensor::cat(&[x, x], 0);
        let t2: Vec<f32> = t.iter().chain(t).copied().collect();
        let dropped: Vec<bool> = (0..2 * b).map(|i| i >= b).collect();
        (ContextInput::concat(&[&batch.context, &batch.context])?, twice(&z)?, Tensor::from_vec(t2, 2 * b, dev)?, dropped, [batch.masks.clone(), batch.masks.clone()].concat())
    } else {
        (batch.context.clone(), z, Tensor::from_vec(t.clone(), b, dev)?, vec![false; b], batch.masks.clone())
    };
    let v = |p: &Policy<M>| -> Result<Tensor> {
        let acts = p.model.action_input(&masks, &dropped, dev)?;
        let cache = p.model.encode_context(&ctx)?;
        let out = p.model.velocity(&cache, &z, &t1, &acts)?;
        if guided { guide_halves(&out, guidance) } else { Ok(out) }
    };
    let v_theta = v(policy)?;
    let v_old = v(old)?.detach();
    let v_ref = reference.map(|r| v(r).map(|t| t.detach())).transpose()?;
    let weights = t.iter().map(|t| loss_weight(*t as f64) as f32).collect();
    Ok(NftVelocities { v_theta, v_old, v_ref, target, weights })
}

/// One optimizer step of the NFT loss (plus `kl` times [`kl_term`] to the
/// reference, when given) on `batch`. A non-finite loss or gradient is not
/// applied: the policy and the optimizer state stay as they were.
pub fn nft_step<M: VelocityModel>(
    policy: &Policy<M>,
    old: &Policy<M>,
    reference: Option<(&Policy<M>, f64)>,
    opt: &mut Optimizer,
    batch: &NftBatch<M::Input>,
    settings: &NftSettings,
) -> Result<NftStep> {
    nft_step_in_parts(policy, old, reference, opt, std::slice::from_ref(batch), settings)
}

/// [`nft_step`] on the minibatch made of `parts`, one forward and backward
/// per part (gradient accumulation: a large model's activations are held
/// for one part at a time). Part k's loss counts `b_k / B` of the step, so
/// the gradient is the whole minibatch's, up to the order of float sums;
/// one part is [`nft_step`] to the bit. The reported loss is the
/// minibatch's.
pub fn nft_step_in_parts<M: VelocityModel>(
    policy: &Policy<M>,
    old: &Policy<M>,
    reference: Option<(&Policy<M>, f64)>,
    opt: &mut Optimizer,
    parts: &[NftBatch<M::Input>],
    settings: &NftSettings,
) -> Result<NftStep> {
    let total: usize = parts.iter().map(|p| p.t.len()).sum();
    if total == 0 {
        return Err(crate::ModelError::Config("an NFT step needs at least one sample".into()));
    }
    let mut value = 0.0f64;
    let mut grads: Option<candle_core::backprop::GradStore> = None;
    for part in parts {
        let v = nft_velocities(policy, old, reference.map(|r| r.0), part, settings.guidance)?;
        let mut loss = nft_loss(&v.v_theta, &v.v_old, &v.target, &part.r, &v.weights, settings.beta)?;
        if let (Some(v_ref), Some((_, kl))) = (&v.v_ref, reference) {
            loss = (loss + (kl_term(&v.v_theta, v_ref, &v.weights)? * kl)?)?;
        }
        if parts.len() > 1 {
            loss = (loss * (part.t.len() as f64 / total as f64))?;
        }
        value += loss.to_scalar::<f32>()? as f64;
        let g = loss.backward()?;
        grads = Some(match grads {
            None => g,
            Some(mut acc) => {
                for var in policy.params.vars().values() {
                    let w = var.as_tensor();
                    if let Some(gk) = g.get(w) {
                        let sum = match acc.get(w) {
                            Some(a) => (a + gk)?,
                            None => gk.clone(),
                        };
                        acc.insert(w, sum);
                    }
                }
                acc
            }
        });
    }
    let grads = grads.expect("at least one part");
    let grad_norm = Optimizer::grad_norm(&policy.params, &grads)?;
    if !value.is_finite() || !grad_norm.is_finite() {
        return Ok(NftStep { loss: value, grad_norm, applied: false });
    }
    let applied = opt.apply(&policy.params, &grads, settings.lr)?;
    Ok(NftStep { loss: value, grad_norm, applied })
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn host(v: &[f64]) -> Vec<f32> {
        v.iter().map(|x| *x as f32).collect()
    }

    #[test]
    fn matches_the_float64_reference_and_its_gradient() {
        // Two samples of 6 values; compare loss and d loss / d v_theta with
        // wc_rl::nft (float64, hand-derived gradient).
        let vt: Vec<f64> = (0..12).map(|i| (i as f64 * 0.37).sin()).collect();
        let vo: Vec<f64> = (0..12).map(|i| (i as f64 * 0.91).cos()).collect();
        let v: Vec<f64> = (0..12).map(|i| 0.1 * i as f64 - 0.5).collect();
        let (r, w, beta) = ([0.8f64, 0.25], [1.0f64, 0.5], 0.7);
        let dev = Device::Cpu;
        let theta = Var::from_tensor(&Tensor::from_vec(host(&vt), (2, 2, 3), &dev).unwrap()).unwrap();
        let old = Tensor::from_vec(host(&vo), (2, 2, 3), &dev).unwrap();
        let target = Tensor::from_vec(host(&v), (2, 2, 3), &dev).unwrap();
        let loss = nft_loss(theta.as_tensor(), &old, &target, &host(&r), &host(&w), beta).unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(theta.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut want_loss = 0.0;
        for b in 0..2 {
            let sl = b * 6..(b + 1) * 6;
            let (l, grad) = wc_rl::nft::nft_loss(&v[sl.clone()], &vo[sl.clone()], &vt[sl.clone()], r[b], beta);
            want_loss += w[b] * l / 2.0;
            for (i, gi) in grad.iter().enumerate() {
                let want = w[b] * gi / 2.0;
                assert!((g[b * 6 + i] as f64 - want).abs() < 1e-5, "grad {b},{i}: {} vs {want}", g[b * 6 + i]);
            }
        }
        let got = loss.to_scalar::<f32>().unwrap() as f64;
        assert!((got - want_loss).abs() < 1e-5, "{got} vs {want_loss}");
    }

    #[test]
    fn beta_one_expands_by_hand_and_old_policy_gets_no_gradient() {
        // beta = 1: v+ = v_theta, v- = 2 v_old - v_theta. One element:
        // v_theta = 1, v_old = 0.5, v = 0, r = 0.75:
        // L = 0.75 * 1 + 0.25 * (1 - 1)^2 = 0.75; dL/dv_theta = 2*0.75*1 - 2*0.25*(0)*1 = 1.5.
        let dev = Device::Cpu;
        let theta = Var::from_tensor(&Tensor::new(&[[1.0f32]], &dev).unwrap()).unwrap();
        let old = Var::from_tensor(&Tensor::new(&[[0.5f32]], &dev).unwrap()).unwrap();
        let target = Tensor::new(&[[0.0f32]], &dev).unwrap();
        let loss = nft_loss(theta.as_tensor(), old.as_tensor(), &target, &[0.75], &[1.0], 1.0).unwrap();
        assert!((loss.to_scalar::<f32>().unwrap() - 0.75).abs() < 1e-6);
        let grads = loss.backward().unwrap();
        let g = grads.get(theta.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        assert!((g - 1.5).abs() < 1e-6, "{g}");
        assert!(grads.get(old.as_tensor()).is_none(), "v_old must carry no gradient");
    }
}
