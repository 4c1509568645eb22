//! Building a dataset in memory (pure: no I/O).

use rayon::prelude::*;
use sha2::{Digest, Sha256};
use wc_rl::seeds::{derive_seed, SeedDomain};
use wc_world::actions::{action_sequence, mixed_sequence, SequenceKind};
use wc_world::render::render;
use wc_world::{ActionMask, Kinematics, Pose, RenderConfig, Scene};

use crate::rows::{PromptRow, SequenceRow};

/// What a dataset holds. Deterministic in `seed`.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetSpec {
    pub seed: u64,
    /// World prompts (scenes with a first frame and a caption).
    pub prompts: usize,
    /// Action sequences of each kind (basic, combined).
    pub sequences_per_kind: usize,
    /// Clips per sequence, and 4-frame windows per clip.
    pub clips: usize,
    pub windows_per_clip: usize,
    /// Ground-truth pre-training clips, their windows, and the share of
    /// windows with a combined action (rare, as in real corpora).
    pub pretrain_clips: usize,
    pub pretrain_windows: usize,
    pub pretrain_combined_rate: f64,
    /// Pre-training clips per frames file.
    pub shard_clips: usize,
    pub render: RenderConfig,
    pub kinematics: Kinematics,
}

impl Default for DatasetSpec {
    fn default() -> Self {
        DatasetSpec {
            seed: 0,
            prompts: 64,
            sequences_per_kind: 64,
            clips: 4,
            windows_per_clip: 1,
            pretrain_clips: 256,
            pretrain_windows: 2,
            pretrain_combined_rate: 0.08,
            shard_clips: 256,
            render: RenderConfig::default(),
            kinematics: Kinematics::default(),
        }
    }
}

impl DatasetSpec {
    pub fn validate(&self) -> Result<(), String> {
        if self.prompts == 0 {
            return Err("prompts must be at least 1".into());
        }
        if self.clips == 0 || self.windows_per_clip == 0 {
            return Err("clips and windows_per_clip must be at least 1".into());
        }
        if self.pretrain_clips > 0 && self.pretrain_windows == 0 {
            return Err("pretrain_windows must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.pretrain_combined_rate) {
            return Err(format!("pretrain_combined_rate {} is not in [0, 1]", self.pretrain_combined_rate));
        }
        if self.shard_clips == 0 {
            return Err("shard_clips must be at least 1".into());
        }
        if !(8..=512).contains(&self.render.width) || !(8..=512).contains(&self.render.height) {
            return Err("frame size must be 8 to 512 pixels".into());
        }
        Ok(())
    }

    /// Fingerprint of the spec (the dataset commit records it).
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(format!("{self:?}").as_bytes()))
    }
}

/// The scene seed of prompt `p`.
pub fn scene_seed(seed: u64, p: usize) -> u64 {
    derive_seed(seed, 0, SeedDomain::Data, p as u64, 0) >> 1
}

pub fn prompts(spec: &DatasetSpec) -> Vec<PromptRow> {
    (0..spec.prompts)
        .map(|p| {
            let s = scene_seed(spec.seed, p);
            PromptRow { prompt_id: p as i64, scene_seed: s as i64, caption: Scene::generate(s).caption }
        })
        .collect()
}

/// First frames of the prompts, u8 HWC, concatenated.
pub fn first_frames(spec: &DatasetSpec, prompts: &[PromptRow]) -> Vec<u8> {
    prompts
        .par_iter()
        .map(|p| render(&Scene::generate(p.scene_seed as u64), &Pose::START, &spec.render).to_u8())
        .collect::<Vec<_>>()
        .concat()
}

/// `sequences_per_kind` basic then as many combined sequences, prompts
/// assigned round-robin.
pub fn sequences(spec: &DatasetSpec) -> Vec<SequenceRow> {
    let windows = spec.clips * spec.windows_per_clip;
    [SequenceKind::Basic, SequenceKind::Combined]
        .iter()
        .flat_map(|kind| (0..spec.sequences_per_kind).map(move |i| (*kind, i)))
        .enumerate()
        .map(|(id, (kind, _))| SequenceRow {
            sequence_id: id as i64,
            prompt_id: (id % spec.prompts) as i64,
            kind: kind.name().to_string(),
            num_clips: spec.clips as i64,
            windows_per_clip: spec.windows_per_clip as i64,
            actions: action_sequence(derive_seed(spec.seed, 0, SeedDomain::Data, id as u64, 2), kind, windows, 1, &spec.kinematics)
                .iter()
                .map(|a| a.0)
                .collect::<Vec<_>>(),
        })
        .collect()
}

/// One ground-truth pre-training clip to render.
#[derive(Debug, Clone, PartialEq)]
pub struct PretrainClip {
    pub clip_id: i64,
    pub scene_seed: i64,
    pub actions: Vec<ActionMask>,
}

/// The pre-training clips: scenes drawn from a pool disjoint from the prompt
/// set's seeds (held-out prompts stay held out), mixed action sequences.
pub fn pretrain_clips(spec: &DatasetSpec) -> Vec<PretrainClip> {
    (0..spec.pretrain_clips)
        .map(|c| {
            let s = derive_seed(spec.seed, 1, SeedDomain::Data, c as u64, 3) >> 1;
            PretrainClip {
                clip_id: c as i64,
                scene_seed: s as i64,
                actions: mixed_sequence(
                    derive_seed(spec.seed, 1, SeedDomain::Data, c as u64, 4),
                    spec.pretrain_windows,
                    1,
                    spec.pretrain_combined_rate,
                    &spec.kinematics,
                ),
            }
        })
        .collect()
}

/// Render clips in parallel: per clip, its frames (u8 HWC, concatenated)
/// and its exact poses. `tick` is called once per clip.
pub fn render_clips(spec: &DatasetSpec, clips: &[PretrainClip], tick: &(dyn Fn() + Sync)) -> Vec<(Vec<u8>, Vec<Pose>)> {
    clips
        .par_iter()
        .map(|c| {
            let scene = Scene::generate(c.scene_seed as u64);
            let poses = spec.kinematics.trajectory(Pose::START, &c.actions);
            let frames: Vec<u8> = poses.iter().flat_map(|p| render(&scene, p, &spec.render).to_u8()).collect();
            tick();
            (frames, poses)
        })
        .collect()
}
