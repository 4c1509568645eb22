//! The linear-Gaussian test double as a [`Backend`]: clips are latent
//! vectors, clip n = clip n-1 + the policy's mean motion for the clip's
//! actions + noise (`crate::linear`). It runs every stage in milliseconds.

use wc_config::{LinearModelConfig, PipelineConfig};
use wc_rl::seeds::{derive_seed, SeedDomain};
use wc_schemas::{tensors, DimBindings, TensorSet};
use wc_store::{CommittedSet, PendingCommit, RunStore};

use super::{Backend, Decoded, Role, Sampled, SequenceRequest, Selected, StepReport};
use crate::error::StageError;
use crate::linear::{clip_action_weights, gaussian_noise, sgd_step, LinearPolicy, Sample};
use crate::runner::RunContext;
use crate::{inputs, layout};

/// The linear backend of a run.
pub struct LinearBackend<'a> {
    ctx: &'a RunContext,
    dim: usize,
}

impl<'a> LinearBackend<'a> {
    pub fn open(ctx: &'a RunContext, model: &LinearModelConfig) -> Result<Self, StageError> {
        Ok(LinearBackend { ctx, dim: model.latent_dim })
    }

    fn bindings(&self) -> DimBindings {
        DimBindings::new().splice("latent", &[self.dim])
    }

    fn write(&self, pending: &mut PendingCommit, path: &str, layout: &wc_schemas::TensorFileSchema, t: &TensorSet) -> Result<(), StageError> {
        let bytes = wc_schemas::write_tensors(layout, &self.bindings(), &self.ctx.store.uri_of(path), t)?;
        pending.write(path, bytes)?;
        Ok(())
    }

    /// The last clip of `prefix` (the zero vector when it is empty).
    fn last_clip(&self, prefix: &[f32]) -> Vec<f32> {
        if prefix.is_empty() { vec![0.0; self.dim] } else { prefix[prefix.len() - self.dim..].to_vec() }
    }
}

impl Backend for LinearBackend<'_> {
    type Policy = LinearPolicy;
    /// The momentum, shaped as the policy.
    type Optimizer = LinearPolicy;

    fn clip_shape(&self) -> Vec<usize> {
        vec![self.dim]
    }

    fn load_policy(&self, set: &CommittedSet, k: u64, role: Role) -> Result<LinearPolicy, StageError> {
        inputs::load_policy(self.ctx, self.dim, set, k, role.file_stem())
    }

    fn load_optimizer(&self, set: &CommittedSet, k: u64, _policy: &LinearPolicy) -> Result<LinearPolicy, StageError> {
        inputs::load_policy(self.ctx, self.dim, set, k, "optimizer")
    }

    fn save_checkpoint(&self, pending: &mut PendingCommit, k: u64, policy: &LinearPolicy, old: &LinearPolicy, opt: &LinearPolicy) -> Result<(), StageError> {
        self.write(pending, &layout::checkpoint_file(k, "policy"), &tensors::linear_policy(), &policy.to_tensors())?;
        self.write(pending, &layout::checkpoint_file(k, "old_policy"), &tensors::linear_policy(), &old.to_tensors())?;
        self.write(pending, &layout::checkpoint_file(k, "optimizer"), &tensors::linear_optimizer(), &momentum_tensors(opt))
    }

    fn sequences(&self, old: &LinearPolicy, requests: &[SequenceRequest], on_clip: &dyn Fn()) -> Result<Vec<Sampled>, StageError> {
        let mut out = vec![Sampled::default(); requests.len()];
        for (req, s) in requests.iter().zip(&mut out) {
            let mut prev = vec![0.0f32; self.dim];
            for clip in &req.clips {
                let noise = gaussian_noise(clip.noise_seed, self.dim);
                prev = old.next_clip(&prev, &clip_action_weights(&clip.windows), &noise);
                s.latents.extend_from_slice(&prev);
                s.noise.extend(noise);
            }
        }
        let clips = requests.iter().map(|r| r.clips.len()).max().unwrap_or(0);
        (0..clips).for_each(|_| on_clip());
        Ok(out)
    }

    fn candidates(&self, old: &LinearPolicy, _prompt_id: i64, prefix: &[f32], _prefix_windows: &[u8], windows: &[u8], seeds: &[u64]) -> Result<Sampled, StageError> {
        let prev = self.last_clip(prefix);
        let w = clip_action_weights(windows);
        let mut out = Sampled::default();
        for seed in seeds {
            let noise = gaussian_noise(*seed, self.dim);
            out.latents.extend(old.next_clip(&prev, &w, &noise));
            out.noise.extend(noise);
        }
        Ok(out)
    }

    fn decode(&self, _prompt_id: i64, prefix: &[f32], candidates: &[f32], _clips_per_candidate: usize) -> Result<Decoded, StageError> {
        Ok(Decoded::Latents { before: self.last_clip(prefix), candidates: candidates.chunks_exact(self.dim).map(<[f32]>::to_vec).collect() })
    }

    fn frame_size(&self) -> Option<usize> {
        None
    }

    fn optimize(&self, policy: &mut LinearPolicy, _old: &LinearPolicy, opt: &mut LinearPolicy, selected: &[Selected], iter: u64) -> Result<Vec<StepReport>, StageError> {
        let n = wc_rl::schedule::target_clip(iter, self.ctx.cfg.rollout.clips);
        let samples: Vec<Sample> = selected
            .iter()
            .map(|s| {
                let prev = self.last_clip(s.prefix);
                Sample {
                    weights: clip_action_weights(&inputs::clip_windows(self.ctx, s.row, n)),
                    motion: s.latents.iter().zip(&prev).map(|(a, b)| a - b).collect(),
                    r: s.r,
                }
            })
            .collect();
        let o = &self.ctx.cfg.optimize;
        let (loss, grad_norm, applied) = sgd_step(policy, opt, &samples, o.lr as f32, o.momentum as f32);
        Ok(vec![StepReport { loss, grad_norm, samples: samples.len(), applied }])
    }

    fn ema(&self, old: &mut LinearPolicy, policy: &LinearPolicy, eta: f64) -> Result<(), StageError> {
        old.ema_toward(policy, eta as f32);
        if !old.is_finite() {
            return Err(StageError::invalid("old policy", "the EMA update gave non-finite weights; nothing was committed"));
        }
        Ok(())
    }
}

/// The momentum as the checkpoint stores it (`momentum.*` names).
fn momentum_tensors(momentum: &LinearPolicy) -> TensorSet {
    let mt = momentum.to_tensors();
    let mut out = TensorSet::new();
    out.insert("momentum.theta".into(), mt["theta"].clone());
    out.insert("momentum.bias".into(), mt["bias"].clone());
    out
}

/// Checkpoint 0 of a linear run: a seeded policy, the same old policy, zero
/// momentum.
pub fn write_initial_checkpoint(store: &RunStore, cfg: &PipelineConfig, model: &LinearModelConfig, files: &mut crate::init::InitFiles) -> Result<(), StageError> {
    let uri = |p: &str| store.uri_of(p);
    let d = model.latent_dim;
    let policy = LinearPolicy::init(d, derive_seed(cfg.run.seed, 0, SeedDomain::Init, 0, 0));
    let zeros = LinearPolicy { dim: d, theta: vec![0.0; policy.theta.len()], bias: vec![0.0; d] };
    let b = DimBindings::new().splice("latent", &[d]);
    for name in ["policy", "old_policy"] {
        let path = layout::checkpoint_file(0, name);
        files.write(&path, wc_schemas::write_tensors(&tensors::linear_policy(), &b, &uri(&path), &policy.to_tensors())?)?;
    }
    let path = layout::checkpoint_file(0, "optimizer");
    files.write(&path, wc_schemas::write_tensors(&tensors::linear_optimizer(), &b, &uri(&path), &momentum_tensors(&zeros))?)
}
