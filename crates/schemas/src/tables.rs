//! Arrow schemas of the Parquet tables the stages exchange.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema};
use serde::Serialize;

/// Column types used by the project's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    Int64,
    Float32,
    Float64,
    Boolean,
    Utf8,
    /// A list of u8 values (for example one action bit mask per window).
    ListUint8,
    /// A list of f32 values (for example per-frame scores).
    ListFloat32,
}

impl FieldType {
    /// The Arrow type of this column.
    pub fn arrow(&self) -> DataType {
        match self {
            FieldType::Int64 => DataType::Int64,
            FieldType::Float32 => DataType::Float32,
            FieldType::Float64 => DataType::Float64,
            FieldType::Boolean => DataType::Boolean,
            FieldType::Utf8 => DataType::Utf8,
            FieldType::ListUint8 => DataType::List(Arc::new(Field::new("item", DataType::UInt8, true))),
            FieldType::ListFloat32 => DataType::List(Arc::new(Field::new("item", DataType::Float32, true))),
        }
    }

    /// Whether an Arrow type read from a file is acceptable for this column.
    /// Lists are compared by item type only (item field names differ between
    /// writers: pyarrow says `element`, arrow-rs says `item`), and large
    /// strings are accepted as strings.
    pub fn accepts(&self, found: &DataType) -> bool {
        match (self, found) {
            (FieldType::Utf8, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) => true,
            (FieldType::ListUint8, DataType::List(f) | DataType::LargeList(f)) => f.data_type() == &DataType::UInt8,
            (FieldType::ListFloat32, DataType::List(f) | DataType::LargeList(f)) => {
                f.data_type() == &DataType::Float32
            }
            (t, found) => &t.arrow() == found,
        }
    }
}

/// One column of a table.
#[derive(Debug, Clone, Serialize)]
pub struct FieldSpec {
    pub name: &'static str,
    #[serde(rename = "type")]
    pub dtype: FieldType,
    pub nullable: bool,
    pub doc: &'static str,
}

/// A Parquet table's schema.
#[derive(Debug, Clone, Serialize)]
pub struct TableSchema {
    pub name: &'static str,
    pub format: &'static str,
    pub doc: &'static str,
    pub fields: Vec<FieldSpec>,
}

impl TableSchema {
    /// The Arrow schema.
    pub fn arrow(&self) -> Arc<Schema> {
        Arc::new(Schema::new(
            self.fields
                .iter()
                .map(|f| Field::new(f.name, f.dtype.arrow(), f.nullable))
                .collect::<Vec<_>>(),
        ))
    }

    /// The schema as the pretty JSON checked into `schemas/tables/`.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("schema serialises");
        s.push('\n');
        s
    }

    /// Look a column up by name.
    pub fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.fields.iter().find(|f| f.name == name)
    }
}

const fn col(name: &'static str, dtype: FieldType, doc: &'static str) -> FieldSpec {
    FieldSpec {
        name,
        dtype,
        nullable: false,
        doc,
    }
}

/// Prompts of a run: one row per world prompt (scene).
pub fn prompts() -> TableSchema {
    use FieldType::*;
    TableSchema {
        name: "prompts",
        format: "parquet",
        doc: "World prompts: one row per scene. Written by `init`/`data` at data/prompts.parquet.",
        fields: vec![
            col("prompt_id", Int64, "Prompt index, 0-based."),
            col("scene_seed", Int64, "Seed of the procedural scene."),
            col("caption", Utf8, "Text description of the scene."),
        ],
    }
}

/// Groups of a run: one row per (prompt, action sequence) pair trained on.
pub fn groups() -> TableSchema {
    use FieldType::*;
    TableSchema {
        name: "groups",
        format: "parquet",
        doc: "Training groups: one (prompt, action sequence) per row. Written at data/groups.parquet. \
              Action masks: one u8 per 4-frame window, bit 0 forward, 1 backward, 2 left, 3 right, \
              4 turn up, 5 turn down, 6 turn left, 7 turn right.",
        fields: vec![
            col("group_id", Int64, "Group index, 0-based; shards own groups round-robin."),
            col("prompt_id", Int64, "Prompt (scene) of the group."),
            col("kind", Utf8, "Action-sequence kind: 'basic' or 'combined'."),
            col("num_clips", Int64, "Clips in the sequence (N)."),
            col("actions", ListUint8, "Action bit mask per window, num_clips * windows_per_clip entries."),
        ],
    }
}

const SCORE_FIELDS: [FieldSpec; 9] = [
    col("iter", FieldType::Int64, "Training iteration k."),
    col("group_id", FieldType::Int64, "Group of the candidate."),
    col("prompt_id", FieldType::Int64, "Prompt of the group."),
    col("clip_index", FieldType::Int64, "Target clip n (1-based) scored in this iteration."),
    col("candidate", FieldType::Int64, "Candidate index j within the group, 0..G."),
    col("rot_acc", FieldType::Float64, "Rotation accuracy over the clip's windows, in [0, 1] (its expectation under the pose estimator's probabilities with reward.if_signal = \"expected\")."),
    col("trans_acc", FieldType::Float64, "Translation accuracy over the clip's windows, in [0, 1] (likewise)."),
    col("if_score", FieldType::Float64, "Interaction following: mean of rot_acc and trans_acc."),
    col("vq_score", FieldType::Float64, "Visual quality: mean score over frames sampled every 4 frames."),
];

/// Per-candidate scores written by the reward stage (and by external scorers).
pub fn reward_scores() -> TableSchema {
    TableSchema {
        name: "reward_scores",
        format: "parquet",
        doc: "Reward stage output: one row per candidate clip. iters/<k>/reward/<shard>/scores.parquet.",
        fields: SCORE_FIELDS.to_vec(),
    }
}

/// Per-window detail of the reward stage (world backend): what the pose
/// estimator saw in each window of each candidate, and the frame VQ.
pub fn reward_windows() -> TableSchema {
    use FieldType::*;
    TableSchema {
        name: "reward_windows",
        format: "parquet",
        doc: "Reward stage detail: one row per candidate and action window. iters/<k>/reward/<shard>/windows.parquet.",
        fields: vec![
            col("iter", Int64, "Training iteration k."),
            col("group_id", Int64, "Group within the iteration."),
            col("candidate", Int64, "Candidate index j in 0..G."),
            col("window", Int64, "4-frame action window within the clip."),
            col("action", Int64, "Commanded action bit mask (bits: forward, backward, left, right, turn_up, turn_down, turn_left, turn_right)."),
            col("est_yaw_deg", Float64, "Estimated yaw change over the window, degrees (positive: right)."),
            col("est_pitch_deg", Float64, "Estimated pitch change, degrees (positive: up)."),
            col("est_forward", Float64, "Estimated translation along the heading, world units."),
            col("est_right", Float64, "Estimated translation to the right, world units."),
            col("rot_ok", Boolean, "Rotation label matches the command."),
            col("trans_ok", Boolean, "Translation label matches the command (under any threshold)."),
            FieldSpec { nullable: true, ..col("vq_frame", Float64, "VQ of the frame sampled in this window (null when none is).") },
        ],
    }
}

/// The select stage's output, which is also the reward log.
pub fn selection() -> TableSchema {
    use FieldType::*;
    let mut fields = SCORE_FIELDS.to_vec();
    fields.extend([
        col("adv_if", Float64, "Group-normalised IF advantage (0 when the group has no spread)."),
        col("adv_vq", Float64, "Group-normalised VQ advantage (0 when the group has no spread)."),
        col("adv", Float64, "Combined advantage lambda*adv_if + (1-lambda)*adv_vq."),
        col("r", Float64, "Optimality probability 1/2 + 1/2 clip(adv/Z, -1, 1)."),
        col("selected", Boolean, "Kept by best-of-N (top k and bottom k by adv) for the update."),
    ]);
    TableSchema {
        name: "selection",
        format: "parquet",
        doc: "Select stage output and reward log: one row per candidate. Written at \
              iters/<k>/select/selection.parquet and reward_log/iter-<k>.parquet.",
        fields,
    }
}

/// Metrics of the optimize stage: one row per optimizer step.
pub fn optimize_metrics() -> TableSchema {
    use FieldType::*;
    TableSchema {
        name: "optimize_metrics",
        format: "parquet",
        doc: "Optimize stage metrics: one row per optimizer step. iters/<k>/optimize/metrics.parquet.",
        fields: vec![
            col("iter", Int64, "Training iteration k."),
            col("step", Int64, "Optimizer step within the iteration."),
            col("loss", Float64, "Loss of the step (NaN if the step was rejected)."),
            col("grad_norm", Float64, "Global gradient norm before the update."),
            col("lr", Float64, "Learning rate of the step."),
            col("eta", Float64, "EMA decay used for the old-policy update of this iteration."),
            col("samples", Int64, "Training samples (candidate x timestep) in the step."),
            col("applied", Boolean, "False when the step produced NaN/Inf and was not applied."),
        ],
    }
}

/// Results of `worldcompass bench`: one row per measurement, so runs can be
/// compared over time.
pub fn bench_results() -> TableSchema {
    use FieldType::*;
    TableSchema {
        name: "bench_results",
        format: "parquet",
        doc: "Benchmark results: one row per measurement of one `worldcompass bench` run (<out>/bench-<unix time>.parquet).",
        fields: vec![
            col("run_unix_s", Int64, "When the bench ran (seconds since the Unix epoch)."),
            col("section", Utf8, "Group of the measurement (rollout, prefix_cache, table3, compute, pytorch, storage, memory)."),
            col("name", Utf8, "What was measured."),
            col("config", Utf8, "The configuration it ran (model, sizes, pipeline)."),
            col("value", Float64, "The measured value, in `unit`."),
            col("unit", Utf8, "Unit of `value` (x for a ratio, %, GFLOP/s, MB, s)."),
            FieldSpec { nullable: true, ..col("anchor", Float64, "What the value is compared with: the paper's figure or the machine's limit (null when none).") },
            col("anchor_source", Utf8, "Where the anchor comes from (empty when none)."),
            col("detail", Utf8, "The raw numbers behind the value."),
        ],
    }
}

/// Results of `worldcompass eval` (the protocol of the paper's section 4.2).
pub fn eval_results() -> TableSchema {
    use FieldType::*;
    TableSchema {
        name: "eval_results",
        format: "parquet",
        doc: "Evaluation results (Table 1): one row per model x length x action kind of one `worldcompass eval` \
              (<out>/eval/eval-<unix time>.parquet).",
        fields: vec![
            col("run_unix_s", Int64, "When the evaluation ran (seconds since the Unix epoch)."),
            col("model", Utf8, "The model as given on the command line (STORE or RUN@K)."),
            col("checkpoint", Utf8, "The checkpoint evaluated (its URI)."),
            col("step", Int64, "Pre-training step or run checkpoint index."),
            col("context", Utf8, "'generated' (autoregressive, the paper's protocol) or 'ground_truth' (teacher-forced clips)."),
            col("length", Utf8, "Length name (short, medium, long)."),
            col("clips", Int64, "Clips generated per sequence at this length."),
            col("kind", Utf8, "'basic' or 'combined' action sequences."),
            col("sequences", Int64, "Held-out sequences of this kind."),
            col("windows", Int64, "4-frame windows judged."),
            col("rot_acc", Float64, "Rotation accuracy over the windows."),
            col("trans_acc", Float64, "Translation accuracy over the windows."),
            col("if_score", Float64, "Action accuracy (IF): mean of rotation and translation accuracy."),
            col("both_right", Float64, "Share of windows with both rotation and translation right."),
            col("vq_score", Float64, "Visual quality: mean frame VQ of every 4th generated frame."),
            col("static_if", Float64, "IF of a static camera on the same windows (the floor)."),
        ],
    }
}

/// Action sequences of a dataset (evaluation and training).
pub fn sequences() -> TableSchema {
    use FieldType::*;
    TableSchema {
        name: "sequences",
        format: "parquet",
        doc: "Action sequences of a dataset: <dataset>/sequences.parquet. Action masks as in `groups`.",
        fields: vec![
            col("sequence_id", Int64, "Sequence index, 0-based."),
            col("prompt_id", Int64, "Prompt (scene) the sequence starts from."),
            col("kind", Utf8, "'basic' (one basic action per window) or 'combined' (two at once)."),
            col("num_clips", Int64, "Clips in the sequence."),
            col("windows_per_clip", Int64, "4-frame windows per clip."),
            col("actions", ListUint8, "Action bit mask per window."),
        ],
    }
}

/// Ground-truth pre-training clips: one row per clip.
pub fn pretrain_clips() -> TableSchema {
    use FieldType::*;
    TableSchema {
        name: "pretrain_clips",
        format: "parquet",
        doc: "Ground-truth pre-training clips: <dataset>/pretrain/clips.parquet. Frames are in \
              pretrain/frames-<shard>.safetensors, row `index` of tensor `frames`.",
        fields: vec![
            col("clip_id", Int64, "Clip index, 0-based."),
            col("scene_seed", Int64, "Scene the clip was rendered in."),
            col("file", Utf8, "Frames file (relative to the dataset root)."),
            col("index", Int64, "Row of the clip in the frames file."),
            col("actions", ListUint8, "Action bit mask per window."),
            col("combined_windows", Int64, "Windows holding a combined action."),
        ],
    }
}

/// Exact per-frame camera poses of the pre-training clips.
pub fn pretrain_poses() -> TableSchema {
    use FieldType::*;
    TableSchema {
        name: "pretrain_poses",
        format: "parquet",
        doc: "Exact camera pose of every frame of every pre-training clip: <dataset>/pretrain/poses.parquet. \
              World y is up; yaw grows turning right, pitch grows looking up.",
        fields: vec![
            col("clip_id", Int64, "Clip of the frame."),
            col("frame", Int64, "Frame index in the clip (0 = context frame)."),
            col("x", Float64, "Camera position x."),
            col("y", Float64, "Camera position y (height)."),
            col("z", Float64, "Camera position z."),
            col("yaw_deg", Float64, "Yaw in degrees."),
            col("pitch_deg", Float64, "Pitch in degrees."),
        ],
    }
}

/// Pre-training metrics: one row per step.
pub fn pretrain_metrics() -> TableSchema {
    use FieldType::*;
    TableSchema {
        name: "pretrain_metrics",
        format: "parquet",
        doc: "Pre-training loss log: <out>/pretrain/step-<s>/metrics.parquet holds the steps since the previous checkpoint.",
        fields: vec![
            col("step", Int64, "Optimizer step (0-based)."),
            col("loss", Float64, "Flow-matching loss of the batch."),
            col("grad_norm", Float64, "Global gradient norm."),
            col("lr", Float64, "Learning rate."),
            col("applied", Boolean, "False when the step was skipped for a non-finite loss or gradient."),
        ],
    }
}

/// Every table schema.
pub fn all() -> Vec<TableSchema> {
    vec![
        eval_results(),
        prompts(),
        groups(),
        reward_scores(),
        reward_windows(),
        selection(),
        optimize_metrics(),
        bench_results(),
        sequences(),
        pretrain_clips(),
        pretrain_poses(),
        pretrain_metrics(),
    ]
}
