//! Datasets of the embedded world, written to the store by `worldcompass data`.
//!
//! A dataset lives under `<URI>/dataset/` and is one commit:
//!
//! ```text
//! dataset/prompts.parquet              prompt_id, scene_seed, caption
//! dataset/first_frames.safetensors     frames [prompts, H, W, 3] u8
//! dataset/sequences.parquet            basic and combined action sequences
//! dataset/pretrain/clips.parquet       ground-truth clips: scene, actions
//! dataset/pretrain/poses.parquet       exact per-frame camera poses
//! dataset/pretrain/frames-<s>.safetensors  frames [clips, F, H, W, 3] u8
//! dataset/_manifest.json
//! ```
//!
//! Everything is deterministic from the spec's seed. Building (pure, in
//! [`build`]) is separate from writing ([`write_dataset`]).

pub mod build;
pub mod read;
pub mod rows;

use indicatif::{ProgressBar, ProgressStyle};
use wc_schemas::{tables, tensors, DimBindings, Tensor, TensorSet};
use wc_store::{ManifestState, PendingCommit, RunStore};

pub use build::DatasetSpec;

/// Where a dataset lives inside its URI.
pub const DATASET_DIR: &str = "dataset";

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Store(#[from] wc_store::StoreError),
    #[error(transparent)]
    Schema(#[from] wc_schemas::SchemaError),
    #[error("invalid dataset spec: {0}")]
    Spec(String),
}

/// How `write_dataset` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataOutcome {
    Written { files: usize },
    AlreadyWritten,
    LostRace,
}

/// Build and commit the dataset of `spec` under `<store>/dataset/`.
pub fn write_dataset(store: &RunStore, spec: &DatasetSpec, force: bool) -> Result<DataOutcome, DataError> {
    spec.validate().map_err(DataError::Spec)?;
    let mut pending = PendingCommit::begin(store, DATASET_DIR, "data", None, None, &spec.fingerprint());
    if let ManifestState::Committed(_) = pending.check(force)? {
        return Ok(DataOutcome::AlreadyWritten);
    }
    let path = |rel: &str| format!("{DATASET_DIR}/{rel}");
    let uri = |rel: &str| store.uri_of(&path(rel));
    let (h, w) = (spec.render.height, spec.render.width);

    let prompts = build::prompts(spec);
    let frames = build::first_frames(spec, &prompts);
    let batch = rows::prompts_to_batch(&prompts);
    pending.write(&path("prompts.parquet"), wc_schemas::write_table(&tables::prompts(), &uri("prompts.parquet"), &batch)?)?;
    let mut t = TensorSet::new();
    t.insert("frames".into(), Tensor::from_u8(&[prompts.len(), h, w, 3], &frames));
    let b = DimBindings::new().dim("prompts", prompts.len()).dim("height", h).dim("width", w);
    let bytes = wc_schemas::write_tensors(&tensors::first_frames(), &b, &uri("first_frames.safetensors"), &t)?;
    pending.write(&path("first_frames.safetensors"), bytes)?;

    let seqs = build::sequences(spec);
    let batch = rows::sequences_to_batch(&seqs);
    pending.write(&path("sequences.parquet"), wc_schemas::write_table(&tables::sequences(), &uri("sequences.parquet"), &batch)?)?;

    let clips = build::pretrain_clips(spec);
    let pb = ProgressBar::new(clips.len() as u64);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} clips ({elapsed}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_prefix("render");
    let mut clip_rows = Vec::with_capacity(clips.len());
    let mut pose_rows = Vec::new();
    let frames_per_clip = 1 + spec.pretrain_windows * spec.kinematics.frames_per_window;
    for (s, shard) in clips.chunks(spec.shard_clips).enumerate() {
        let file = format!("pretrain/frames-{s:05}.safetensors");
        let rendered = build::render_clips(spec, shard, &|| pb.inc(1));
        let mut data = Vec::with_capacity(shard.len() * frames_per_clip * h * w * 3);
        for (i, (clip, (frames, poses))) in shard.iter().zip(rendered).enumerate() {
            data.extend(frames);
            clip_rows.push(rows::PretrainClipRow {
                clip_id: clip.clip_id,
                scene_seed: clip.scene_seed,
                file: file.clone(),
                index: i as i64,
                combined_windows: clip.actions.iter().filter(|a| a.is_combined()).count() as i64,
                actions: clip.actions.iter().map(|a| a.0).collect(),
            });
            for (f, p) in poses.iter().enumerate() {
                pose_rows.push(rows::PoseRow { clip_id: clip.clip_id, frame: f as i64, pose: *p });
            }
        }
        let mut t = TensorSet::new();
        t.insert("frames".into(), Tensor::from_u8(&[shard.len(), frames_per_clip, h, w, 3], &data));
        let b = DimBindings::new().dim("clips", shard.len()).dim("frames", frames_per_clip).dim("height", h).dim("width", w);
        pending.write(&path(&file), wc_schemas::write_tensors(&tensors::pretrain_frames(), &b, &uri(&file), &t)?)?;
    }
    pb.finish_and_clear();
    let batch = rows::pretrain_clips_to_batch(&clip_rows);
    let p = "pretrain/clips.parquet";
    pending.write(&path(p), wc_schemas::write_table(&tables::pretrain_clips(), &uri(p), &batch)?)?;
    let batch = rows::poses_to_batch(&pose_rows);
    let p = "pretrain/poses.parquet";
    pending.write(&path(p), wc_schemas::write_table(&tables::pretrain_poses(), &uri(p), &batch)?)?;
    let files = 5 + clips.len().div_ceil(spec.shard_clips);
    Ok(match pending.commit()? {
        wc_store::CommitOutcome::Committed { .. } => DataOutcome::Written { files },
        wc_store::CommitOutcome::LostRace { .. } => DataOutcome::LostRace,
    })
}
