//! Matrix-Game 2.0's causal, action-conditioned transformer
//! (`wc-matrix-game`) as a [`Backend`]: the same clips of pixel-codec latent
//! frames, first frames and scorers as the `world` backend; the context of
//! a clip is the prompt's first frame and the clip before it, with the
//! actions that made it, encoded once into the network's key/value cache
//! and shared by the G candidates; the NFT loss trains every weight.

use candle_core::{DType, Device, Tensor};
use wc_config::{PipelineConfig, SamplingDtype, WorldModelConfig};
use wc_matrix_game::config::ACTION_WIDTH;
use wc_matrix_game::model::{context_rows, fresh_policy, policy_from_tensors, policy_to_dtype};
use wc_matrix_game::{MatrixGameConfig, MatrixGamePolicy};
use wc_model::flow::sample;
use wc_model::nft::{nft_step, NftBatch, NftSettings};
use wc_model::optim::Optimizer;
use wc_model::velocity::VelocityModel;
use wc_rl::seeds::{derive_seed, SeedDomain};
use wc_store::{CommittedSet, PendingCommit, RunStore};

use super::pixels::PixelFrames;
use super::{Backend, Decoded, Role, Sampled, SequenceRequest, Selected, StepReport};
use crate::error::StageError;
use crate::runner::RunContext;
use crate::{inputs, layout, world};

/// The Matrix-Game backend of a run: its model config and the prompts'
/// first frames, from the init commit.
pub struct MatrixGameBackend<'a> {
    ctx: &'a RunContext,
    pub cfg: MatrixGameConfig,
    init: CommittedSet,
    pixels: PixelFrames,
}

impl<'a> MatrixGameBackend<'a> {
    pub fn open(ctx: &'a RunContext) -> Result<Self, StageError> {
        let init = inputs::init_set(ctx)?;
        let path = layout::model_config_file();
        let cfg: MatrixGameConfig = serde_json::from_slice(&init.read(&path)?).map_err(|e| StageError::artifact(ctx.store.uri_of(&path), e))?;
        let firsts = crate::world_stages::first_frames(ctx, &init, cfg.frame_size)?;
        let pixels = PixelFrames::new(cfg.frame_size, cfg.frames_per_clip, firsts);
        Ok(MatrixGameBackend { ctx, cfg, init, pixels })
    }

    fn device(&self) -> Result<&Device, StageError> {
        self.ctx.device()
    }

    /// Weights `name` ("policy", "old_policy") of checkpoint `k`, in f32.
    pub fn load(&self, set: &CommittedSet, k: u64, name: &str) -> Result<MatrixGamePolicy, StageError> {
        let path = layout::checkpoint_file(k, name);
        let t = wc_schemas::read_any(&self.ctx.store.uri_of(&path), &set.read(&path)?)?;
        policy_from_tensors(&self.cfg, &t, self.device()?).map_err(|e| StageError::artifact(self.ctx.store.uri_of(&path), e))
    }

    /// Packed context rows of the clip after `history` (latent frames of
    /// whole clips, made under the per-window masks `history_windows`).
    fn context(&self, prompt_id: i64, history: &[f32], history_windows: &[u8]) -> Result<Vec<f32>, StageError> {
        let masks: Vec<u8> = history_windows.chunks(self.windows_per_clip()).flat_map(|w| self.pixels.frame_masks(w)).collect();
        Ok(context_rows(&self.cfg, &self.pixels.first_latent(prompt_id)?, history, &masks))
    }

    fn windows_per_clip(&self) -> usize {
        self.ctx.cfg.rollout.windows_per_clip as usize
    }

    fn context_tensor(&self, rows: Vec<f32>, b: usize) -> Result<Tensor, StageError> {
        Ok(Tensor::from_vec(rows, (b, self.cfg.context_frames(), self.cfg.frame_len() + ACTION_WIDTH), self.device()?)?)
    }

    fn clip_tensor(&self, values: Vec<f32>, b: usize) -> Result<Tensor, StageError> {
        Ok(Tensor::from_vec(values, (b, self.cfg.frames_per_clip, self.cfg.frame_len()), self.device()?)?)
    }

    fn noise(&self, seed: u64) -> Vec<f32> {
        crate::linear::gaussian_noise(seed, self.pixels.clip_len())
    }
}

impl Backend for MatrixGameBackend<'_> {
    type Policy = MatrixGamePolicy;
    type Optimizer = Optimizer;

    fn clip_shape(&self) -> Vec<usize> {
        self.pixels.clip_shape()
    }

    fn load_policy(&self, set: &CommittedSet, k: u64, role: Role) -> Result<MatrixGamePolicy, StageError> {
        let bf16 = role == Role::Sampler && self.ctx.cfg.run.dtype == SamplingDtype::Bf16;
        if bf16 && !self.device()?.is_cuda() {
            return Err(StageError::invalid(
                "run.dtype",
                format!("\"bf16\" samples on CUDA devices; this stage runs on {} (pass --device cuda:N, or set [run] dtype = \"f32\")", self.ctx.device_spec),
            ));
        }
        let policy = self.load(set, k, role.file_stem())?;
        if bf16 { Ok(policy_to_dtype(&policy, DType::BF16)?) } else { Ok(policy) }
    }

    fn load_optimizer(&self, set: &CommittedSet, k: u64, policy: &MatrixGamePolicy) -> Result<Optimizer, StageError> {
        world::load_optimizer(self.ctx, set, k, &policy.params)
    }

    fn save_checkpoint(&self, pending: &mut PendingCommit, k: u64, policy: &MatrixGamePolicy, old: &MatrixGamePolicy, opt: &Optimizer) -> Result<(), StageError> {
        world::save_checkpoint(self.ctx, pending, k, &policy.params, &old.params, opt)
    }

    fn sequences(&self, old: &MatrixGamePolicy, requests: &[SequenceRequest], on_clip: &dyn Fn()) -> Result<Vec<Sampled>, StageError> {
        let sampler = world::sampler_config(self.ctx);
        let clips = requests.iter().map(|r| r.clips.len()).max().unwrap_or(0);
        if requests.iter().any(|r| r.clips.len() != clips) {
            return Err(StageError::invalid("sequences", "every sequence of one call must have the same number of clips"));
        }
        let b = requests.len();
        let mut out: Vec<Sampled> = vec![Sampled::default(); b];
        let mut windows: Vec<Vec<u8>> = vec![Vec::new(); b];
        for c in 0..clips {
            let mut rows = Vec::new();
            for (r, (seq, w)) in requests.iter().zip(out.iter().zip(&windows)) {
                rows.extend(self.context(r.prompt_id, &seq.latents, w)?);
            }
            let noise: Vec<f32> = requests.iter().flat_map(|r| self.noise(r.clips[c].noise_seed)).collect();
            let masks: Vec<Vec<u8>> = requests.iter().map(|r| self.pixels.frame_masks(&r.clips[c].windows)).collect();
            let cache = old.model.encode_context(&self.context_tensor(rows, b)?)?;
            let x = sample(&old.model, &cache, &self.clip_tensor(noise.clone(), b)?, &masks, &sampler)?;
            let x = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let len = self.pixels.clip_len();
            for (i, seq) in out.iter_mut().enumerate() {
                seq.latents.extend_from_slice(&x[i * len..(i + 1) * len]);
                seq.noise.extend_from_slice(&noise[i * len..(i + 1) * len]);
                windows[i].extend_from_slice(&requests[i].clips[c].windows);
            }
            on_clip();
        }
        Ok(out)
    }

    fn candidates(&self, old: &MatrixGamePolicy, prompt_id: i64, prefix: &[f32], prefix_windows: &[u8], windows: &[u8], seeds: &[u64]) -> Result<Sampled, StageError> {
        let sampler = world::sampler_config(self.ctx);
        let cache = old.model.encode_context(&self.context_tensor(self.context(prompt_id, prefix, prefix_windows)?, 1)?)?;
        let masks = vec![self.pixels.frame_masks(windows); seeds.len()];
        let noise: Vec<f32> = seeds.iter().flat_map(|s| self.noise(*s)).collect();
        let x = sample(&old.model, &cache, &self.clip_tensor(noise.clone(), seeds.len())?, &masks, &sampler)?;
        Ok(Sampled { latents: x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?, noise })
    }

    fn decode(&self, prompt_id: i64, prefix: &[f32], candidates: &[f32], clips_per_candidate: usize) -> Result<Decoded, StageError> {
        self.pixels.decode(prompt_id, prefix, candidates, clips_per_candidate)
    }

    fn frame_size(&self) -> Option<usize> {
        Some(self.cfg.frame_size)
    }

    fn optimize(&self, policy: &mut MatrixGamePolicy, old: &MatrixGamePolicy, opt: &mut Optimizer, selected: &[Selected], iter: u64) -> Result<Vec<StepReport>, StageError> {
        let ctx = self.ctx;
        let o_cfg = &ctx.cfg.optimize;
        let reference = if o_cfg.kl_weight > 0.0 { Some(self.load(&self.init, 0, "policy")?) } else { None };
        // (context rows, clean clip, noise, t, masks, r) of every sample.
        let mut samples: Vec<(Vec<f32>, &[f32], Vec<f32>, f32, Vec<u8>, f32)> = Vec::new();
        for tc in super::nft_plan(ctx, iter, selected, self.pixels.clip_len()) {
            let s = tc.selected;
            let history_windows: Vec<u8> = (1..tc.clip_index).flat_map(|h| inputs::clip_windows(ctx, s.row, h)).collect();
            let context = self.context(s.row.prompt_id, tc.history, &history_windows)?;
            let masks = self.pixels.frame_masks(&inputs::clip_windows(ctx, s.row, tc.clip_index));
            for (seed, t) in tc.draws {
                samples.push((context.clone(), tc.clip, self.noise(seed), t, masks.clone(), s.r as f32));
            }
        }
        let settings = NftSettings { beta: o_cfg.beta, lr: o_cfg.lr, guidance: o_cfg.guidance };
        super::nft_minibatches(&samples, o_cfg.minibatch as usize, |batch| {
            let b = batch.len();
            let nft = NftBatch {
                context: self.context_tensor(batch.iter().flat_map(|s| s.0.iter().copied()).collect(), b)?,
                x: self.clip_tensor(batch.iter().flat_map(|s| s.1.iter().copied()).collect(), b)?,
                eps: self.clip_tensor(batch.iter().flat_map(|s| s.2.iter().copied()).collect(), b)?,
                t: batch.iter().map(|s| s.3).collect(),
                masks: batch.iter().map(|s| s.4.clone()).collect(),
                r: batch.iter().map(|s| s.5).collect(),
            };
            let r = reference.as_ref().map(|r| (r, o_cfg.kl_weight));
            let s = nft_step(policy, old, r, opt, &nft, &settings)?;
            Ok(StepReport { loss: s.loss, grad_norm: s.grad_norm, samples: b, applied: s.applied })
        })
    }

    fn ema(&self, old: &mut MatrixGamePolicy, policy: &MatrixGamePolicy, eta: f64) -> Result<(), StageError> {
        world::ema(&old.params, &policy.params, eta)
    }
}

/// Checkpoint 0 of a Matrix-Game run: the base's weights (a
/// `pretrain --arch matrix-game` store) or a seeded fresh model of the
/// preset, and what every video run starts with.
pub fn write_initial_checkpoint(
    store: &RunStore,
    cfg: &PipelineConfig,
    model: &WorldModelConfig,
    prompts: &[wc_data::rows::PromptRow],
    files: &mut crate::init::InitFiles,
) -> Result<(), StageError> {
    let device = Device::Cpu;
    let policy = if model.base.is_empty() {
        let mc = MatrixGameConfig::preset(&model.preset).map_err(|e| StageError::invalid("model.preset", e))?;
        fresh_policy(&mc, derive_seed(cfg.run.seed, 0, SeedDomain::Init, 0, 0), &device)?
    } else {
        let base = crate::init::resolve_store(&model.base)?;
        let (p, step, path) = crate::checkpoints::load_matrix_game_checkpoint(&base, model.base_step, &device)?;
        tracing::info!(base = %path, step, "initialising the policy from the Matrix-Game base model");
        p
    };
    let mc = policy.model.cfg.clone();
    if cfg.rollout.windows_per_clip as usize * wc_model::train::FRAMES_PER_WINDOW != mc.frames_per_clip {
        return Err(StageError::invalid(
            "rollout.windows_per_clip",
            format!("{} windows of 4 frames per clip, but the model makes {}-frame clips", cfg.rollout.windows_per_clip, mc.frames_per_clip),
        ));
    }
    super::pixels::write_run_start(store, cfg, &policy.params, serde_json::to_vec_pretty(&mc).expect("serialises"), mc.frame_size, prompts, files)
}
