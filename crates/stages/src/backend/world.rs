//! The candle world model as a [`Backend`] (`crate::world` holds its
//! tensor plumbing): clips are latent frames of the pixel codec, each clip
//! sampled from the prompt's first frame and the most recent frames, the
//! NFT loss trains it, Muon/AdamW step it.

use candle_core::Device;
use wc_config::{PipelineConfig, SamplingDtype, WorldModelConfig};
use wc_model::optim::Optimizer;
use wc_model::ModelConfig;
use wc_rl::seeds::{derive_seed, SeedDomain};
use wc_store::{CommittedSet, PendingCommit, RunStore};

use super::pixels::PixelFrames;
use super::{Backend, Decoded, Role, Sampled, SequenceRequest, Selected, StepReport};
use crate::error::StageError;
use crate::runner::RunContext;
use crate::world::{self, NftSample, WorldPolicy};
use crate::inputs;

/// The world backend of a run: its model config and the first frames of
/// its prompts, from the init commit.
pub struct WorldBackend<'a> {
    ctx: &'a RunContext,
    pub cfg: ModelConfig,
    init: CommittedSet,
    pixels: PixelFrames,
}

impl<'a> WorldBackend<'a> {
    pub fn open(ctx: &'a RunContext) -> Result<Self, StageError> {
        let init = inputs::init_set(ctx)?;
        let cfg = world::model_config(ctx, &init)?;
        let firsts = crate::world_stages::first_frames(ctx, &init, cfg.frame_size)?;
        let pixels = PixelFrames::new(cfg.frame_size, cfg.frames_per_clip, firsts);
        Ok(WorldBackend { ctx, cfg, init, pixels })
    }

    fn device(&self) -> Result<&Device, StageError> {
        self.ctx.device()
    }

    /// The latent frame of prompt `prompt`'s first frame.
    fn first_latent(&self, prompt: i64) -> Result<Vec<f32>, StageError> {
        self.pixels.first_latent(prompt)
    }

    fn clip_len(&self) -> usize {
        self.pixels.clip_len()
    }
}

impl Backend for WorldBackend<'_> {
    type Policy = WorldPolicy;
    type Optimizer = Optimizer;

    fn clip_shape(&self) -> Vec<usize> {
        world::clip_shape(&self.cfg)
    }

    fn load_policy(&self, set: &CommittedSet, k: u64, role: Role) -> Result<WorldPolicy, StageError> {
        let bf16 = role == Role::Sampler && self.ctx.cfg.run.dtype == SamplingDtype::Bf16;
        if bf16 && !self.device()?.is_cuda() {
            return Err(StageError::invalid(
                "run.dtype",
                format!("\"bf16\" samples on CUDA devices; this stage runs on {} (pass --device cuda:N, or set [run] dtype = \"f32\")", self.ctx.device_spec),
            ));
        }
        let policy = world::load_policy(self.ctx, &self.cfg, set, k, role.file_stem())?;
        if bf16 { Ok(policy.to_dtype(candle_core::DType::BF16)?) } else { Ok(policy) }
    }

    fn load_optimizer(&self, set: &CommittedSet, k: u64, policy: &WorldPolicy) -> Result<Optimizer, StageError> {
        world::load_optimizer(self.ctx, set, k, &policy.params)
    }

    fn save_checkpoint(&self, pending: &mut PendingCommit, k: u64, policy: &WorldPolicy, old: &WorldPolicy, opt: &Optimizer) -> Result<(), StageError> {
        world::save_checkpoint(self.ctx, pending, k, &policy.params, &old.params, opt)
    }

    fn sequences(&self, old: &WorldPolicy, requests: &[SequenceRequest], on_clip: &dyn Fn()) -> Result<Vec<Sampled>, StageError> {
        let sampler = world::sampler_config(self.ctx);
        let firsts: Vec<Vec<f32>> = requests.iter().map(|r| self.first_latent(r.prompt_id)).collect::<Result<_, _>>()?;
        let clips = requests.iter().map(|r| r.clips.len()).max().unwrap_or(0);
        if requests.iter().any(|r| r.clips.len() != clips) {
            return Err(StageError::invalid("sequences", "every sequence of one call must have the same number of clips"));
        }
        let masks: Vec<Vec<Vec<u8>>> = (0..clips).map(|c| requests.iter().map(|r| world::frame_masks(&self.cfg, &r.clips[c].windows)).collect()).collect();
        let noises: Vec<Vec<Vec<f32>>> = (0..clips).map(|c| requests.iter().map(|r| world::clip_noise(&self.cfg, r.clips[c].noise_seed)).collect()).collect();
        let latents = world::sample_sequences(old, &sampler, &firsts, &masks, &noises, on_clip)?;
        Ok(latents.into_iter().enumerate().map(|(b, latents)| Sampled { latents, noise: noises.iter().flat_map(|clip| clip[b].iter().copied()).collect() }).collect())
    }

    fn candidates(&self, old: &WorldPolicy, prompt_id: i64, prefix: &[f32], _prefix_windows: &[u8], windows: &[u8], seeds: &[u64]) -> Result<Sampled, StageError> {
        let sampler = world::sampler_config(self.ctx);
        let cache = world::encode_context(old, &world::context_tokens(&self.cfg, &self.first_latent(prompt_id)?, prefix))?;
        let masks = vec![world::frame_masks(&self.cfg, windows); seeds.len()];
        let noises: Vec<Vec<f32>> = seeds.iter().map(|s| world::clip_noise(&self.cfg, *s)).collect();
        let latents = world::candidates_from_cache(old, &sampler, &cache, &masks, &noises)?;
        Ok(Sampled { latents, noise: noises.concat() })
    }

    fn decode(&self, prompt_id: i64, prefix: &[f32], candidates: &[f32], clips_per_candidate: usize) -> Result<Decoded, StageError> {
        self.pixels.decode(prompt_id, prefix, candidates, clips_per_candidate)
    }

    fn frame_size(&self) -> Option<usize> {
        Some(self.cfg.frame_size)
    }

    fn optimize(&self, policy: &mut WorldPolicy, old: &WorldPolicy, opt: &mut Optimizer, selected: &[Selected], iter: u64) -> Result<Vec<StepReport>, StageError> {
        let ctx = self.ctx;
        let o_cfg = &ctx.cfg.optimize;
        // The reference model of the optional KL term: the run's first policy.
        let reference = if o_cfg.kl_weight > 0.0 { Some(world::load_policy(ctx, &self.cfg, &self.init, 0, "policy")?) } else { None };
        let mut samples = Vec::new();
        for tc in super::nft_plan(ctx, iter, selected, self.clip_len()) {
            let s = tc.selected;
            let context = world::context_tokens(&self.cfg, &self.first_latent(s.row.prompt_id)?, tc.history);
            let masks = world::frame_masks(&self.cfg, &inputs::clip_windows(ctx, s.row, tc.clip_index));
            let x = world::clip_tokens(&self.cfg, tc.clip);
            for (seed, t) in tc.draws {
                let eps = world::clip_tokens(&self.cfg, &world::clip_noise(&self.cfg, seed));
                samples.push(NftSample { context: context.clone(), x: x.clone(), eps, t, masks: masks.clone(), r: s.r as f32 });
            }
        }
        let settings = world::NftSettings { beta: o_cfg.beta, lr: o_cfg.lr, guidance: o_cfg.guidance };
        super::nft_minibatches(&samples, o_cfg.minibatch as usize, |batch| {
            let r = reference.as_ref().map(|r| (r, o_cfg.kl_weight));
            let parts = super::microbatches(batch, o_cfg.microbatch).map(|p| world::nft_batch(&self.cfg, p, self.device()?)).collect::<Result<Vec<_>, _>>()?;
            let s = wc_model::nft::nft_step_in_parts(policy, old, r, opt, &parts, &settings)?;
            Ok(StepReport { loss: s.loss, grad_norm: s.grad_norm, samples: batch.len(), applied: s.applied })
        })
    }

    fn ema(&self, old: &mut WorldPolicy, policy: &WorldPolicy, eta: f64) -> Result<(), StageError> {
        world::ema(&old.params, &policy.params, eta)
    }
}

/// Checkpoint 0 of a world run: the base model's weights (or a seeded fresh
/// model), the model config, the prompts' first frames at the model's size,
/// and the run's copy of the pose estimator.
pub fn write_initial_checkpoint(
    store: &RunStore,
    cfg: &PipelineConfig,
    model: &WorldModelConfig,
    prompts: &[wc_data::rows::PromptRow],
    files: &mut crate::init::InitFiles,
) -> Result<(), StageError> {
    // Init only copies weights into the run (or seeds a fresh model): the
    // CPU does it, whatever device the stages run on later.
    let device = Device::Cpu;
    let policy = if model.base.is_empty() {
        let mc = if model.preset == "default" { ModelConfig::default() } else { ModelConfig::tiny() };
        WorldPolicy::fresh(&mc, derive_seed(cfg.run.seed, 0, SeedDomain::Init, 0, 0), &device)?
    } else {
        let base = crate::init::resolve_store(&model.base)?;
        let m = crate::checkpoints::load_checkpoint(&base, model.base_step, &device)?;
        tracing::info!(base = %m.path, step = m.step, "initialising the policy from the base model");
        WorldPolicy { model: m.model, params: m.params }
    };
    let mc = policy.model.cfg.clone();
    if cfg.rollout.windows_per_clip as usize * 4 != mc.frames_per_clip {
        return Err(StageError::invalid(
            "rollout.windows_per_clip",
            format!("{} windows of 4 frames per clip, but the model makes {}-frame clips", cfg.rollout.windows_per_clip, mc.frames_per_clip),
        ));
    }
    super::pixels::write_run_start(store, cfg, &policy.params, serde_json::to_vec_pretty(&mc).expect("serialises"), mc.frame_size, prompts, files)
}
