//! What the video backends (`world`, `matrix_game`) share: clips are latent
//! frames of the pixel codec, generated from the prompts' first frames
//! (committed by init at the model's size) and decoded to frames for the
//! scorers.

use wc_model::codec::{PixelCodec, VideoCodec};
use wc_world::Frame;

use super::{Decoded, GroupFrames};
use crate::error::StageError;
use crate::layout::FIRST_FRAMES;

/// The prompts' first frames and the frame geometry of a run.
pub struct PixelFrames {
    pub frame_size: usize,
    pub frames_per_clip: usize,
    firsts: Vec<Vec<u8>>,
}

impl PixelFrames {
    pub fn new(frame_size: usize, frames_per_clip: usize, firsts: Vec<Vec<u8>>) -> Self {
        PixelFrames { frame_size, frames_per_clip, firsts }
    }

    /// Values of one latent frame.
    pub fn frame_len(&self) -> usize {
        PixelCodec.geometry().channels * self.frame_size * self.frame_size
    }

    /// The latent shape of one clip: [F, C, H, W].
    pub fn clip_shape(&self) -> Vec<usize> {
        vec![self.frames_per_clip, PixelCodec.geometry().channels, self.frame_size, self.frame_size]
    }

    /// Values of one clip's latents.
    pub fn clip_len(&self) -> usize {
        self.frames_per_clip * self.frame_len()
    }

    /// Prompt `prompt`'s first frame (u8 HWC).
    pub fn first_frame(&self, prompt: i64) -> Result<&[u8], StageError> {
        Ok(self.firsts.get(prompt as usize).ok_or_else(|| StageError::invalid(FIRST_FRAMES, format!("no first frame for prompt {prompt}")))?)
    }

    /// The latent frame of prompt `prompt`'s first frame.
    pub fn first_latent(&self, prompt: i64) -> Result<Vec<f32>, StageError> {
        Ok(wc_model::codec::encode_frames(&PixelCodec, self.first_frame(prompt)?, self.frame_size)?)
    }

    /// Frames of latent frames.
    pub fn frames_of(&self, latents: &[f32]) -> Result<Vec<Frame>, StageError> {
        let s = self.frame_size;
        Ok(wc_model::codec::decode_frames(&PixelCodec, latents, s)?.chunks_exact(s * s * 3).map(|f| Frame::from_u8(s, s, f)).collect())
    }

    /// Per-frame action masks of a clip from its per-window masks.
    pub fn frame_masks(&self, windows: &[u8]) -> Vec<u8> {
        frame_masks(self.frames_per_clip, windows)
    }

    /// A group's candidates as the scorers read them (`Backend::decode`).
    pub fn decode(&self, prompt_id: i64, prefix: &[f32], candidates: &[f32], clips_per_candidate: usize) -> Result<Decoded, StageError> {
        let first = self.frames_of(&self.first_latent(prompt_id)?)?.remove(0);
        let prefix = self.frames_of(prefix)?;
        let before = prefix.last().unwrap_or(&first).clone();
        let clip_len = self.clip_len() * clips_per_candidate;
        let candidates = candidates
            .chunks_exact(clip_len)
            .map(|lat| Ok(std::iter::once(before.clone()).chain(self.frames_of(lat)?).collect()))
            .collect::<Result<_, StageError>>()?;
        Ok(Decoded::Frames(GroupFrames { first, prefix, candidates }))
    }
}

/// Per-frame action masks of a clip of `frames_per_clip` frames from its
/// per-window masks.
pub fn frame_masks(frames_per_clip: usize, windows: &[u8]) -> Vec<u8> {
    (0..frames_per_clip).map(|j| windows[(j * windows.len()) / frames_per_clip]).collect()
}

/// What init commits for a video backend besides its own choice of
/// weights: checkpoint 0 (`params` as policy and old policy, a fresh
/// optimizer state), the model config (`model_config`, JSON), the prompts'
/// first frames at the model's size, and the run's copy of the pose
/// estimator.
pub fn write_run_start(
    store: &wc_store::RunStore,
    cfg: &wc_config::PipelineConfig,
    params: &wc_model::params::Params,
    model_config: Vec<u8>,
    frame_size: usize,
    prompts: &[wc_data::rows::PromptRow],
    files: &mut crate::init::InitFiles,
) -> Result<(), StageError> {
    use crate::layout::{self, POSE_MODEL, POSE_SETTINGS};
    use bytes::Bytes;
    use wc_model::optim::Optimizer;
    use wc_schemas::{tensors, DimBindings, TensorSet};

    let device = candle_core::Device::Cpu;
    let uri = |p: &str| store.uri_of(p);
    let weights = params.to_tensor_set()?;
    for name in ["policy", "old_policy"] {
        let path = layout::checkpoint_file(0, name);
        files.write(&path, wc_schemas::write_any(&uri(&path), &weights)?)?;
    }
    let opt = Optimizer::new(wc_model::optim::OptimConfig::default(), params)?;
    let path = layout::checkpoint_file(0, "optimizer");
    files.write(&path, wc_schemas::write_any(&uri(&path), &opt.to_tensor_set()?)?)?;
    let path = layout::model_config_file();
    files.write(&path, Bytes::from(model_config))?;
    // First frames at the model's size.
    let spec = wc_data::DatasetSpec {
        render: wc_world::RenderConfig { width: frame_size, height: frame_size, ..Default::default() },
        ..Default::default()
    };
    let frames = wc_data::build::first_frames(&spec, prompts);
    let mut t = TensorSet::new();
    t.insert("frames".into(), wc_schemas::Tensor::from_u8(&[prompts.len(), frame_size, frame_size, 3], &frames));
    let b = DimBindings::new().dim("prompts", prompts.len()).dim("height", frame_size).dim("width", frame_size);
    files.write(FIRST_FRAMES, wc_schemas::write_tensors(&tensors::first_frames(), &b, &uri(FIRST_FRAMES), &t)?)?;
    // The pose estimator, copied so that the run is self-contained.
    if !cfg.reward.pose_model.is_empty() {
        let pose_store = crate::init::resolve_store(&cfg.reward.pose_model)?;
        let pose = crate::checkpoints::load_pose(&pose_store, &device)?;
        if pose.net.cfg.frame_size != frame_size {
            return Err(StageError::invalid(
                pose.path,
                format!("the pose estimator reads {0}x{0} frames, the model makes {1}x{1}", pose.net.cfg.frame_size, frame_size),
            ));
        }
        let settings = crate::checkpoints::read_settings(&pose_store, pose.step)?;
        files.write(POSE_MODEL, wc_schemas::write_any(&uri(POSE_MODEL), &pose.params.to_tensor_set()?)?)?;
        files.write(POSE_SETTINGS, Bytes::from(serde_json::to_vec_pretty(&settings).expect("serialises")))?;
    }
    Ok(())
}
