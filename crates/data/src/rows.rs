//! Typed rows of the dataset tables, to Arrow record batches.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, ListArray, RecordBatch, StringArray};
use arrow::datatypes::UInt8Type;
use wc_schemas::TableSchema;
use wc_world::Pose;

fn batch(schema: &TableSchema, cols: Vec<ArrayRef>) -> RecordBatch {
    RecordBatch::try_new(schema.arrow(), cols).expect("columns follow the schema")
}

/// An Int64 column.
pub fn i64s(v: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(v))
}

/// A Float64 column.
pub fn f64s(v: impl Iterator<Item = f64>) -> ArrayRef {
    Arc::new(Float64Array::from_iter_values(v))
}

/// A Utf8 column.
pub fn strings<'a>(v: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(v))
}

/// A List<UInt8> column (action masks).
pub fn u8_lists<'a>(v: impl Iterator<Item = &'a [u8]>) -> ArrayRef {
    Arc::new(ListArray::from_iter_primitive::<UInt8Type, _, _>(
        v.map(|l| Some(l.iter().map(|a| Some(*a)).collect::<Vec<_>>())),
    ))
}

/// One prompt (scene).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptRow {
    pub prompt_id: i64,
    pub scene_seed: i64,
    pub caption: String,
}

pub fn prompts_to_batch(rows: &[PromptRow]) -> RecordBatch {
    batch(
        &wc_schemas::tables::prompts(),
        vec![
            i64s(rows.iter().map(|r| r.prompt_id)),
            i64s(rows.iter().map(|r| r.scene_seed)),
            strings(rows.iter().map(|r| r.caption.as_str())),
        ],
    )
}

/// One action sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceRow {
    pub sequence_id: i64,
    pub prompt_id: i64,
    pub kind: String,
    pub num_clips: i64,
    pub windows_per_clip: i64,
    pub actions: Vec<u8>,
}

pub fn sequences_to_batch(rows: &[SequenceRow]) -> RecordBatch {
    batch(
        &wc_schemas::tables::sequences(),
        vec![
            i64s(rows.iter().map(|r| r.sequence_id)),
            i64s(rows.iter().map(|r| r.prompt_id)),
            strings(rows.iter().map(|r| r.kind.as_str())),
            i64s(rows.iter().map(|r| r.num_clips)),
            i64s(rows.iter().map(|r| r.windows_per_clip)),
            u8_lists(rows.iter().map(|r| r.actions.as_slice())),
        ],
    )
}

/// One ground-truth pre-training clip.
#[derive(Debug, Clone, PartialEq)]
pub struct PretrainClipRow {
    pub clip_id: i64,
    pub scene_seed: i64,
    pub file: String,
    pub index: i64,
    pub actions: Vec<u8>,
    pub combined_windows: i64,
}

pub fn pretrain_clips_to_batch(rows: &[PretrainClipRow]) -> RecordBatch {
    batch(
        &wc_schemas::tables::pretrain_clips(),
        vec![
            i64s(rows.iter().map(|r| r.clip_id)),
            i64s(rows.iter().map(|r| r.scene_seed)),
            strings(rows.iter().map(|r| r.file.as_str())),
            i64s(rows.iter().map(|r| r.index)),
            u8_lists(rows.iter().map(|r| r.actions.as_slice())),
            i64s(rows.iter().map(|r| r.combined_windows)),
        ],
    )
}

/// The exact pose of one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoseRow {
    pub clip_id: i64,
    pub frame: i64,
    pub pose: Pose,
}

pub fn poses_to_batch(rows: &[PoseRow]) -> RecordBatch {
    batch(
        &wc_schemas::tables::pretrain_poses(),
        vec![
            i64s(rows.iter().map(|r| r.clip_id)),
            i64s(rows.iter().map(|r| r.frame)),
            f64s(rows.iter().map(|r| r.pose.x)),
            f64s(rows.iter().map(|r| r.pose.y)),
            f64s(rows.iter().map(|r| r.pose.z)),
            f64s(rows.iter().map(|r| r.pose.yaw.to_degrees())),
            f64s(rows.iter().map(|r| r.pose.pitch.to_degrees())),
        ],
    )
}
