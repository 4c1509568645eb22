//! Matrix-Game 2.0's causal, action-conditioned transformer
//! (`wc-matrix-game`) as a [`Backend`]: the context of a clip is the
//! prompt's first frame and the clip before it, with the actions that made
//! it, encoded once into the network's key/value cache and shared by the G
//! candidates; the NFT loss trains every weight.
//!
//! Two codecs, one code path. The embedded configuration's clips are
//! latent frames of the pixel codec (the `world` backend's clips, first
//! frames and scorers). At full size they are Wan VAE latents: a clip of
//! `frames_per_clip` latent frames codes 4 frames each, decoded for the
//! scorers through the VAE's stream (the prefix once, each candidate from a
//! copy of the stream after it). Each prompt's conditioning (its first
//! latent, the image-to-video condition, the image tokens) is computed
//! once per stage from its first frame, with the frozen VAE and CLIP tower
//! init copied into the run (`wc_matrix_game::prompt`).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use candle_core::{DType, Device, Tensor};
use wc_config::{PipelineConfig, SamplingDtype, WorldModelConfig};
use wc_matrix_game::config::{ImageEncoderConfig, LatentCodecConfig};
use wc_matrix_game::model::{context_rows, fresh_policy, policy_from_tensors, policy_to_dtype};
use wc_matrix_game::{MatrixGameConfig, MatrixGameInput, MatrixGamePolicy, PromptConditioning, PromptEncoder};
use wc_model::codec::{PixelCodec, VideoCodec};
use wc_wan::{ClipVision, WanVae, Weights};
use wc_world::Frame;
use wc_model::flow::sample;
use wc_model::nft::{nft_step_in_parts, NftBatch, NftSettings};
use wc_model::optim::Optimizer;
use wc_model::velocity::VelocityModel;
use wc_rl::seeds::{derive_seed, SeedDomain};
use wc_store::{CommittedSet, PendingCommit, RunStore};

use super::pixels::PixelFrames;
use super::{Backend, Decoded, GroupFrames, Role, Sampled, SequenceRequest, Selected, StepReport};
use crate::error::StageError;
use crate::runner::RunContext;
use crate::{inputs, layout, world};

/// The Matrix-Game backend of a run: its model config, the prompts' first
/// frames and the frozen networks, from the init commit.
pub struct MatrixGameBackend<'a> {
    ctx: &'a RunContext,
    pub cfg: MatrixGameConfig,
    init: CommittedSet,
    /// The first frames (and, with the pixel codec, the decoding).
    pixels: PixelFrames,
    /// The prompt encoder with its frozen networks, read from the init
    /// commit when a stage first needs it (select never does).
    prompts: OnceLock<PromptEncoder>,
    /// Each prompt's conditioning, computed once per stage.
    conditioning: Mutex<HashMap<i64, PromptConditioning>>,
}

impl<'a> MatrixGameBackend<'a> {
    pub fn open(ctx: &'a RunContext) -> Result<Self, StageError> {
        let init = inputs::init_set(ctx)?;
        let path = layout::model_config_file();
        let cfg: MatrixGameConfig = serde_json::from_slice(&init.read(&path)?).map_err(|e| StageError::artifact(ctx.store.uri_of(&path), e))?;
        cfg.validate().map_err(|e| StageError::invalid(ctx.store.uri_of(&path), e))?;
        let firsts = crate::world_stages::first_frames(ctx, &init, cfg.frame_size)?;
        let pixels = PixelFrames::new(cfg.frame_size, cfg.pixel_frames_per_clip(), firsts);
        Ok(MatrixGameBackend { ctx, cfg, init, pixels, prompts: OnceLock::new(), conditioning: Mutex::new(HashMap::new()) })
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

    /// The prompt encoder, its frozen networks read on first use.
    fn encoder(&self) -> Result<&PromptEncoder, StageError> {
        if let Some(e) = self.prompts.get() {
            return Ok(e);
        }
        let e = frozen_networks(self.ctx, &self.init, &self.cfg)?;
        Ok(self.prompts.get_or_init(|| e))
    }

    /// Prompt `prompt_id`'s conditioning (batch 1), computed on first use.
    fn prompt(&self, prompt_id: i64) -> Result<PromptConditioning, StageError> {
        let mut known = self.conditioning.lock().expect("not poisoned");
        if let Some(c) = known.get(&prompt_id) {
            return Ok(c.clone());
        }
        let s = self.cfg.frame_size;
        let frame = Tensor::from_slice(self.pixels.first_frame(prompt_id)?, (1, s, s, 3), self.device()?)?;
        let c = self.encoder()?.encode(&frame)?;
        known.insert(prompt_id, c.clone());
        Ok(c)
    }

    /// The latent frame of prompt `prompt_id`'s first frame.
    fn first_latent(&self, prompt_id: i64) -> Result<Vec<f32>, StageError> {
        Ok(self.prompt(prompt_id)?.first_latent.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Packed context rows of the clip after `history` (latent frames of
    /// whole clips, made under the per-window masks `history_windows`).
    fn context(&self, prompt_id: i64, history: &[f32], history_windows: &[u8]) -> Result<Vec<f32>, StageError> {
        let masks: Vec<u8> = history_windows.chunks(self.windows_per_clip()).flat_map(|w| self.pixels.frame_masks(w)).collect();
        Ok(context_rows(&self.cfg, &self.first_latent(prompt_id)?, history, &masks))
    }

    fn windows_per_clip(&self) -> usize {
        self.ctx.cfg.rollout.windows_per_clip as usize
    }

    /// The model's input of packed rows, row i of prompt `prompt_ids[i]`.
    fn context_input(&self, rows: Vec<f32>, prompt_ids: &[i64]) -> Result<MatrixGameInput, StageError> {
        let prompts = prompt_ids.iter().map(|p| self.prompt(*p)).collect::<Result<Vec<_>, _>>()?;
        Ok(MatrixGameInput::from_rows(&self.cfg, rows, &prompts.iter().collect::<Vec<_>>(), self.device()?)?)
    }

    fn clip_tensor(&self, values: Vec<f32>, b: usize) -> Result<Tensor, StageError> {
        Ok(Tensor::from_vec(values, (b, self.cfg.frames_per_clip, self.cfg.frame_len()), self.device()?)?)
    }

    /// Values of one clip's latents.
    fn clip_len(&self) -> usize {
        self.cfg.frames_per_clip * self.cfg.frame_len()
    }

    fn noise(&self, seed: u64) -> Vec<f32> {
        crate::linear::gaussian_noise(seed, self.clip_len())
    }

    /// A group's candidates decoded by the Wan VAE: the first latent, then
    /// the prefix through one stream, then each candidate from a copy of
    /// the stream after the prefix.
    fn decode_vae(&self, vae: &WanVae, prompt_id: i64, prefix: &[f32], candidates: &[f32], clips_per_candidate: usize) -> Result<Decoded, StageError> {
        let (s, d, lat) = (self.cfg.frame_size, self.cfg.frame_len(), self.cfg.latent_size());
        let dev = self.device()?;
        let frames_of = |stream: &mut wc_wan::vae::DecodeStream, latents: &[f32]| -> Result<Vec<Frame>, StageError> {
            if latents.is_empty() {
                return Ok(Vec::new());
            }
            let f = latents.len() / d;
            let z = Tensor::from_slice(latents, (1, f, self.cfg.channels, lat, lat), dev)?.permute((0, 2, 1, 3, 4))?;
            let video = vae.decode_chunk(stream, &vae.denormalize(&z).map_err(wc_matrix_game::wan_error)?).map_err(wc_matrix_game::wan_error)?;
            let rgb = PixelCodec.decode(&video)?.flatten_all()?.to_vec1::<u8>()?;
            Ok(rgb.chunks_exact(s * s * 3).map(|f| Frame::from_u8(s, s, f)).collect())
        };
        let mut stream = vae.decode_stream();
        let first = frames_of(&mut stream, &self.first_latent(prompt_id)?)?.remove(0);
        let prefix = frames_of(&mut stream, prefix)?;
        let before = prefix.last().unwrap_or(&first).clone();
        let candidates = candidates
            .chunks_exact(self.clip_len() * clips_per_candidate)
            .map(|c| Ok(std::iter::once(before.clone()).chain(frames_of(&mut stream.clone(), c)?).collect()))
            .collect::<Result<_, StageError>>()?;
        Ok(Decoded::Frames(GroupFrames { first, prefix, candidates }))
    }
}

/// One NFT sample: (context rows, clean clip, noise, t, masks into the
/// clip's frames, r, prompt id).
type NftSample<'s> = (Vec<f32>, &'s [f32], Vec<f32>, f32, Vec<u8>, f32, i64);

/// The prompt encoder of `cfg`, with the frozen networks its config names
/// read from the run's init commit.
fn frozen_networks(ctx: &RunContext, init: &CommittedSet, cfg: &MatrixGameConfig) -> Result<PromptEncoder, StageError> {
    let device = ctx.device()?;
    let tensors = |path: &str| -> Result<HashMap<String, Tensor>, StageError> {
        let bytes = init.read(path)?;
        candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| StageError::artifact(ctx.store.uri_of(path), e))
    };
    let vae = match &cfg.codec {
        LatentCodecConfig::Pixel => None,
        LatentCodecConfig::WanVae(c) => Some(
            WanVae::new(c, &Weights::vae_from_tensors(tensors(layout::MATRIX_GAME_VAE)?, c.num_res_blocks)).map_err(|e| StageError::artifact(ctx.store.uri_of(layout::MATRIX_GAME_VAE), e))?,
        ),
    };
    let clip = match &cfg.image_encoder {
        ImageEncoderConfig::Patches => None,
        ImageEncoderConfig::ClipVision(c) => Some(
            ClipVision::new(c, &Weights::from_tensors(tensors(layout::MATRIX_GAME_CLIP)?), DType::F32).map_err(|e| StageError::artifact(ctx.store.uri_of(layout::MATRIX_GAME_CLIP), e))?,
        ),
    };
    Ok(PromptEncoder::new(cfg, vae, clip)?)
}

impl Backend for MatrixGameBackend<'_> {
    type Policy = MatrixGamePolicy;
    type Optimizer = Optimizer;

    fn clip_shape(&self) -> Vec<usize> {
        let c = &self.cfg;
        vec![c.frames_per_clip, c.channels, c.latent_size(), c.latent_size()]
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
            let ids: Vec<i64> = requests.iter().map(|r| r.prompt_id).collect();
            let cache = old.model.encode_context(&self.context_input(rows, &ids)?)?;
            let x = sample(&old.model, &cache, &self.clip_tensor(noise.clone(), b)?, &masks, &sampler)?;
            let x = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let len = self.clip_len();
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
        let cache = old.model.encode_context(&self.context_input(self.context(prompt_id, prefix, prefix_windows)?, &[prompt_id])?)?;
        let masks = vec![self.pixels.frame_masks(windows); seeds.len()];
        let noise: Vec<f32> = seeds.iter().flat_map(|s| self.noise(*s)).collect();
        let x = sample(&old.model, &cache, &self.clip_tensor(noise.clone(), seeds.len())?, &masks, &sampler)?;
        Ok(Sampled { latents: x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?, noise })
    }

    fn decode(&self, prompt_id: i64, prefix: &[f32], candidates: &[f32], clips_per_candidate: usize) -> Result<Decoded, StageError> {
        match &self.cfg.codec {
            LatentCodecConfig::Pixel => self.pixels.decode(prompt_id, prefix, candidates, clips_per_candidate),
            LatentCodecConfig::WanVae(_) => {
                let vae = self.encoder()?.vae().ok_or_else(|| StageError::invalid(layout::MATRIX_GAME_VAE, "the prompt encoder has no VAE"))?;
                self.decode_vae(vae, prompt_id, prefix, candidates, clips_per_candidate)
            }
        }
    }

    fn frame_size(&self) -> Option<usize> {
        Some(self.cfg.frame_size)
    }

    fn optimize(&self, policy: &mut MatrixGamePolicy, old: &MatrixGamePolicy, opt: &mut Optimizer, selected: &[Selected], iter: u64) -> Result<Vec<StepReport>, StageError> {
        let ctx = self.ctx;
        let o_cfg = &ctx.cfg.optimize;
        let reference = if o_cfg.kl_weight > 0.0 { Some(self.load(&self.init, 0, "policy")?) } else { None };
        // (context rows, clean clip, noise, t, masks, r, prompt) of every sample.
        let mut samples: Vec<NftSample> = Vec::new();
        for tc in super::nft_plan(ctx, iter, selected, self.clip_len()) {
            let s = tc.selected;
            let history_windows: Vec<u8> = (1..tc.clip_index).flat_map(|h| inputs::clip_windows(ctx, s.row, h)).collect();
            let context = self.context(s.row.prompt_id, tc.history, &history_windows)?;
            let masks = self.pixels.frame_masks(&inputs::clip_windows(ctx, s.row, tc.clip_index));
            for (seed, t) in tc.draws {
                samples.push((context.clone(), tc.clip, self.noise(seed), t, masks.clone(), s.r as f32, s.row.prompt_id));
            }
        }
        let settings = NftSettings { beta: o_cfg.beta, lr: o_cfg.lr, guidance: o_cfg.guidance };
        super::nft_minibatches(&samples, o_cfg.minibatch as usize, |batch| {
            let part = |p: &[NftSample]| -> Result<NftBatch<MatrixGameInput>, StageError> {
                let b = p.len();
                Ok(NftBatch {
                    context: self.context_input(p.iter().flat_map(|s| s.0.iter().copied()).collect(), &p.iter().map(|s| s.6).collect::<Vec<_>>())?,
                    x: self.clip_tensor(p.iter().flat_map(|s| s.1.iter().copied()).collect(), b)?,
                    eps: self.clip_tensor(p.iter().flat_map(|s| s.2.iter().copied()).collect(), b)?,
                    t: p.iter().map(|s| s.3).collect(),
                    masks: p.iter().map(|s| s.4.clone()).collect(),
                    r: p.iter().map(|s| s.5).collect(),
                })
            };
            let parts = super::microbatches(batch, o_cfg.microbatch).map(part).collect::<Result<Vec<_>, _>>()?;
            let r = reference.as_ref().map(|r| (r, o_cfg.kl_weight));
            let s = nft_step_in_parts(policy, old, r, opt, &parts, &settings)?;
            Ok(StepReport { loss: s.loss, grad_norm: s.grad_norm, samples: batch.len(), applied: s.applied })
        })
    }

    fn ema(&self, old: &mut MatrixGamePolicy, policy: &MatrixGamePolicy, eta: f64) -> Result<(), StageError> {
        world::ema(&old.params, &policy.params, eta)
    }
}

/// Checkpoint 0 of a Matrix-Game run: the base's weights (a
/// `pretrain --arch matrix-game` or `model import` store, with the frozen
/// networks its config names) or a seeded fresh model of the preset, and
/// what every video run starts with.
pub fn write_initial_checkpoint(
    store: &RunStore,
    cfg: &PipelineConfig,
    model: &WorldModelConfig,
    prompts: &[wc_data::rows::PromptRow],
    files: &mut crate::init::InitFiles,
) -> Result<(), StageError> {
    let device = Device::Cpu;
    let (policy, frozen) = if model.base.is_empty() {
        let mc = MatrixGameConfig::preset(&model.preset).map_err(|e| StageError::invalid("model.preset", e))?;
        if mc.reads_frozen_networks() {
            return Err(StageError::invalid(
                "model.preset",
                format!("preset `{}` reads the Wan VAE and the CLIP tower, which a fresh model does not have: set [model] base to a store made by `worldcompass model import`", model.preset),
            ));
        }
        (fresh_policy(&mc, derive_seed(cfg.run.seed, 0, SeedDomain::Init, 0, 0), &device)?, Vec::new())
    } else {
        let base = crate::init::resolve_store(&model.base)?;
        let (p, step, path) = crate::checkpoints::load_matrix_game_checkpoint(&base, model.base_step, &device)?;
        tracing::info!(base = %path, step, "initialising the policy from the Matrix-Game base model");
        (p, crate::checkpoints::matrix_game_frozen_files(&base, Some(step))?)
    };
    let mc = policy.model.cfg.clone();
    let pixel_frames = cfg.rollout.windows_per_clip as usize * wc_model::train::FRAMES_PER_WINDOW;
    if pixel_frames != mc.pixel_frames_per_clip() {
        return Err(StageError::invalid(
            "rollout.windows_per_clip",
            format!("{} windows of 4 frames per clip, but the model makes {}-frame clips", cfg.rollout.windows_per_clip, mc.pixel_frames_per_clip()),
        ));
    }
    for (path, bytes) in frozen {
        files.write(path, bytes)?;
    }
    super::pixels::write_run_start(store, cfg, &policy.params, serde_json::to_vec_pretty(&mc).expect("serialises"), mc.frame_size, prompts, files)
}
