//! Typed rows of the project's tables, to and from Arrow record batches.
//!
//! Batches are validated against `wc_schemas::tables` by the Parquet reader
//! and writer; these conversions only move values between rows and columns.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, ListArray, RecordBatch, StringArray, UInt8Array,
};
use wc_data::rows::{f64s, i64s, strings, u8_lists};
use wc_schemas::TableSchema;

use crate::error::StageError;

fn batch(schema: &TableSchema, cols: Vec<ArrayRef>) -> RecordBatch {
    RecordBatch::try_new(schema.arrow(), cols).expect("columns follow the schema")
}


fn col<'a, T: 'static>(b: &'a RecordBatch, artifact: &str, name: &str) -> Result<&'a T, StageError> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| StageError::invalid(artifact, format!("column '{name}' missing or of the wrong type")))
}

/// One (prompt, action sequence) of the sequence pool.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupRow {
    pub group_id: i64,
    pub prompt_id: i64,
    pub kind: String,
    pub num_clips: i64,
    /// One action mask per window.
    pub actions: Vec<u8>,
}

pub fn groups_to_batch(rows: &[GroupRow]) -> RecordBatch {
    batch(
        &wc_schemas::tables::groups(),
        vec![
            i64s(rows.iter().map(|r| r.group_id)),
            i64s(rows.iter().map(|r| r.prompt_id)),
            strings(rows.iter().map(|r| r.kind.as_str())),
            i64s(rows.iter().map(|r| r.num_clips)),
            u8_lists(rows.iter().map(|r| r.actions.as_slice())),
        ],
    )
}

pub fn groups_from_batch(b: &RecordBatch, artifact: &str) -> Result<Vec<GroupRow>, StageError> {
    let gid = col::<Int64Array>(b, artifact, "group_id")?;
    let pid = col::<Int64Array>(b, artifact, "prompt_id")?;
    let kind = col::<StringArray>(b, artifact, "kind")?;
    let nc = col::<Int64Array>(b, artifact, "num_clips")?;
    let acts = col::<ListArray>(b, artifact, "actions")?;
    (0..b.num_rows())
        .map(|i| {
            let list = acts.value(i);
            let a = list
                .as_any()
                .downcast_ref::<UInt8Array>()
                .ok_or_else(|| StageError::invalid(artifact, "actions is not a list of u8"))?;
            Ok(GroupRow {
                group_id: gid.value(i),
                prompt_id: pid.value(i),
                kind: kind.value(i).to_string(),
                num_clips: nc.value(i),
                actions: a.values().to_vec(),
            })
        })
        .collect()
}

/// The scene seed of every prompt, indexed by prompt id (the run's
/// `data/prompts.parquet`).
pub fn scene_seeds_from_batch(b: &RecordBatch, artifact: &str) -> Result<Vec<u64>, StageError> {
    let pid = col::<Int64Array>(b, artifact, "prompt_id")?;
    let seed = col::<Int64Array>(b, artifact, "scene_seed")?;
    let mut seeds = vec![None; b.num_rows()];
    for i in 0..b.num_rows() {
        let slot = usize::try_from(pid.value(i)).ok().and_then(|p| seeds.get_mut(p));
        match slot {
            Some(s @ None) => *s = Some(seed.value(i) as u64),
            _ => return Err(StageError::invalid(artifact, format!("prompt ids must be 0..{} each once; found {}", b.num_rows(), pid.value(i)))),
        }
    }
    Ok(seeds.into_iter().flatten().collect())
}

/// Scores of one candidate clip (reward stage).
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreRow {
    pub iter: i64,
    pub group_id: i64,
    pub prompt_id: i64,
    pub clip_index: i64,
    pub candidate: i64,
    pub rot_acc: f64,
    pub trans_acc: f64,
    pub if_score: f64,
    pub vq_score: f64,
}

/// The largest |vq_score| accepted: far beyond any scorer's scale, small
/// enough that a group's mean and spread stay finite.
pub const MAX_ABS_VQ: f64 = 1e9;

/// Whether a score row's values are in their ranges: accuracies and IF in
/// [0, 1], VQ finite and within ±[`MAX_ABS_VQ`].
pub fn check_score_ranges(r: &ScoreRow) -> Result<(), String> {
    for (name, v) in [("rot_acc", r.rot_acc), ("trans_acc", r.trans_acc), ("if_score", r.if_score)] {
        if !(0.0..=1.0).contains(&v) {
            return Err(format!("{name} = {v} is outside [0, 1]"));
        }
    }
    if !(r.vq_score.abs() <= MAX_ABS_VQ) {
        return Err(format!("vq_score = {:e} is not a finite score within ±{MAX_ABS_VQ:e} (a scorer bug?)", r.vq_score));
    }
    Ok(())
}

fn score_columns(rows: &[&ScoreRow]) -> Vec<ArrayRef> {
    vec![
        i64s(rows.iter().map(|r| r.iter)),
        i64s(rows.iter().map(|r| r.group_id)),
        i64s(rows.iter().map(|r| r.prompt_id)),
        i64s(rows.iter().map(|r| r.clip_index)),
        i64s(rows.iter().map(|r| r.candidate)),
        f64s(rows.iter().map(|r| r.rot_acc)),
        f64s(rows.iter().map(|r| r.trans_acc)),
        f64s(rows.iter().map(|r| r.if_score)),
        f64s(rows.iter().map(|r| r.vq_score)),
    ]
}

pub fn scores_to_batch(rows: &[ScoreRow]) -> RecordBatch {
    batch(&wc_schemas::tables::reward_scores(), score_columns(&rows.iter().collect::<Vec<_>>()))
}

/// Rows of a score table; NaN or infinite scores are refused.
pub fn scores_from_batch(b: &RecordBatch, artifact: &str) -> Result<Vec<ScoreRow>, StageError> {
    let ints: Vec<&Int64Array> = ["iter", "group_id", "prompt_id", "clip_index", "candidate"]
        .iter()
        .map(|n| col::<Int64Array>(b, artifact, n))
        .collect::<Result<_, _>>()?;
    let names = ["rot_acc", "trans_acc", "if_score", "vq_score"];
    let floats: Vec<&Float64Array> = names.iter().map(|n| col::<Float64Array>(b, artifact, n)).collect::<Result<_, _>>()?;
    (0..b.num_rows())
        .map(|i| {
            for (n, f) in names.iter().zip(&floats) {
                if !f.value(i).is_finite() {
                    return Err(StageError::invalid(artifact, format!("row {i}: {n} is {} (scores must be finite)", f.value(i))));
                }
            }
            Ok(ScoreRow {
                iter: ints[0].value(i),
                group_id: ints[1].value(i),
                prompt_id: ints[2].value(i),
                clip_index: ints[3].value(i),
                candidate: ints[4].value(i),
                rot_acc: floats[0].value(i),
                trans_acc: floats[1].value(i),
                if_score: floats[2].value(i),
                vq_score: floats[3].value(i),
            })
        })
        .collect()
}

/// One window of one candidate (reward stage detail).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowRow {
    pub iter: i64,
    pub group_id: i64,
    pub candidate: i64,
    pub window: i64,
    pub action: u8,
    pub est_yaw_deg: f64,
    pub est_pitch_deg: f64,
    pub est_forward: f64,
    pub est_right: f64,
    pub rot_ok: bool,
    pub trans_ok: bool,
    pub vq_frame: Option<f64>,
}

pub fn windows_to_batch(rows: &[WindowRow]) -> RecordBatch {
    batch(
        &wc_schemas::tables::reward_windows(),
        vec![
            i64s(rows.iter().map(|r| r.iter)),
            i64s(rows.iter().map(|r| r.group_id)),
            i64s(rows.iter().map(|r| r.candidate)),
            i64s(rows.iter().map(|r| r.window)),
            i64s(rows.iter().map(|r| r.action as i64)),
            f64s(rows.iter().map(|r| r.est_yaw_deg)),
            f64s(rows.iter().map(|r| r.est_pitch_deg)),
            f64s(rows.iter().map(|r| r.est_forward)),
            f64s(rows.iter().map(|r| r.est_right)),
            Arc::new(BooleanArray::from(rows.iter().map(|r| r.rot_ok).collect::<Vec<_>>())) as ArrayRef,
            Arc::new(BooleanArray::from(rows.iter().map(|r| r.trans_ok).collect::<Vec<_>>())) as ArrayRef,
            Arc::new(arrow::array::Float64Array::from(rows.iter().map(|r| r.vq_frame).collect::<Vec<_>>())) as ArrayRef,
        ],
    )
}

/// One candidate's selection (select stage; also the reward log row).
#[derive(Debug, Clone, PartialEq)]
pub struct SelectionRow {
    pub score: ScoreRow,
    pub adv_if: f64,
    pub adv_vq: f64,
    pub adv: f64,
    pub r: f64,
    pub selected: bool,
}

pub fn selection_to_batch(rows: &[SelectionRow]) -> RecordBatch {
    let mut cols = score_columns(&rows.iter().map(|r| &r.score).collect::<Vec<_>>());
    cols.extend([
        f64s(rows.iter().map(|r| r.adv_if)),
        f64s(rows.iter().map(|r| r.adv_vq)),
        f64s(rows.iter().map(|r| r.adv)),
        f64s(rows.iter().map(|r| r.r)),
        Arc::new(BooleanArray::from(rows.iter().map(|r| r.selected).collect::<Vec<_>>())) as ArrayRef,
    ]);
    batch(&wc_schemas::tables::selection(), cols)
}

pub fn selection_from_batch(b: &RecordBatch, artifact: &str) -> Result<Vec<SelectionRow>, StageError> {
    let scores = scores_from_batch(b, artifact)?;
    let f = |n: &str| col::<Float64Array>(b, artifact, n);
    let (ai, av, a, r) = (f("adv_if")?, f("adv_vq")?, f("adv")?, f("r")?);
    let sel = col::<BooleanArray>(b, artifact, "selected")?;
    Ok(scores
        .into_iter()
        .enumerate()
        .map(|(i, score)| SelectionRow {
            score,
            adv_if: ai.value(i),
            adv_vq: av.value(i),
            adv: a.value(i),
            r: r.value(i),
            selected: sel.value(i),
        })
        .collect())
}

/// One optimizer step's metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRow {
    pub iter: i64,
    pub step: i64,
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    pub eta: f64,
    pub samples: i64,
    pub applied: bool,
}

pub fn metrics_to_batch(rows: &[MetricRow]) -> RecordBatch {
    batch(
        &wc_schemas::tables::optimize_metrics(),
        vec![
            i64s(rows.iter().map(|r| r.iter)),
            i64s(rows.iter().map(|r| r.step)),
            f64s(rows.iter().map(|r| r.loss)),
            f64s(rows.iter().map(|r| r.grad_norm)),
            f64s(rows.iter().map(|r| r.lr)),
            f64s(rows.iter().map(|r| r.eta)),
            i64s(rows.iter().map(|r| r.samples)),
            Arc::new(BooleanArray::from(rows.iter().map(|r| r.applied).collect::<Vec<_>>())),
        ],
    )
}

/// One row of `eval_results`: a model at one length on one action kind.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalRow {
    pub run_unix_s: i64,
    pub model: String,
    pub checkpoint: String,
    pub step: i64,
    pub context: String,
    pub length: String,
    pub clips: i64,
    pub kind: String,
    pub sequences: i64,
    pub windows: i64,
    pub rot_acc: f64,
    pub trans_acc: f64,
    pub if_score: f64,
    pub both_right: f64,
    pub vq_score: f64,
    pub static_if: f64,
}

pub fn eval_to_batch(rows: &[EvalRow]) -> RecordBatch {
    batch(
        &wc_schemas::tables::eval_results(),
        vec![
            i64s(rows.iter().map(|r| r.run_unix_s)),
            strings(rows.iter().map(|r| r.model.as_str())),
            strings(rows.iter().map(|r| r.checkpoint.as_str())),
            i64s(rows.iter().map(|r| r.step)),
            strings(rows.iter().map(|r| r.context.as_str())),
            strings(rows.iter().map(|r| r.length.as_str())),
            i64s(rows.iter().map(|r| r.clips)),
            strings(rows.iter().map(|r| r.kind.as_str())),
            i64s(rows.iter().map(|r| r.sequences)),
            i64s(rows.iter().map(|r| r.windows)),
            f64s(rows.iter().map(|r| r.rot_acc)),
            f64s(rows.iter().map(|r| r.trans_acc)),
            f64s(rows.iter().map(|r| r.if_score)),
            f64s(rows.iter().map(|r| r.both_right)),
            f64s(rows.iter().map(|r| r.vq_score)),
            f64s(rows.iter().map(|r| r.static_if)),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scene_seeds_are_indexed_by_prompt_id_and_gaps_are_refused() {
        let rows = |ids: &[i64]| -> RecordBatch {
            let prompts: Vec<wc_data::rows::PromptRow> = ids.iter().map(|&i| wc_data::rows::PromptRow { prompt_id: i, scene_seed: 100 + i, caption: "a".into() }).collect();
            wc_data::rows::prompts_to_batch(&prompts)
        };
        assert_eq!(scene_seeds_from_batch(&rows(&[2, 0, 1]), "p").unwrap(), vec![100, 101, 102]);
        for bad in [&[0, 2][..], &[0, 0], &[-1, 0]] {
            let err = scene_seeds_from_batch(&rows(bad), "p.parquet").unwrap_err().to_string();
            assert!(err.contains("p.parquet") && err.contains("prompt ids"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn groups_roundtrip_through_parquet() {
        let rows = vec![
            GroupRow { group_id: 0, prompt_id: 3, kind: "basic".into(), num_clips: 2, actions: vec![1, 64] },
            GroupRow { group_id: 1, prompt_id: 5, kind: "combined".into(), num_clips: 2, actions: vec![65, 3] },
        ];
        let s = wc_schemas::tables::groups();
        let bytes = wc_schemas::write_table(&s, "g", &groups_to_batch(&rows)).unwrap();
        let back = groups_from_batch(&wc_schemas::read_table(&s, "g", bytes).unwrap(), "g").unwrap();
        assert_eq!(back, rows);
    }

    #[test]
    fn nan_score_is_refused_with_row_and_column() {
        let row = ScoreRow { iter: 0, group_id: 0, prompt_id: 0, clip_index: 1, candidate: 0, rot_acc: 1.0, trans_acc: 0.5, if_score: f64::NAN, vq_score: 0.1 };
        let err = scores_from_batch(&scores_to_batch(&[row]), "scores.parquet").unwrap_err().to_string();
        assert!(err.contains("scores.parquet") && err.contains("if_score") && err.contains("NaN"), "{err}");
    }
}

/// Pre-training metrics rows.
pub fn pretrain_metrics_to_batch(rows: &[(u64, wc_model::train::StepReport)]) -> RecordBatch {
    batch(
        &wc_schemas::tables::pretrain_metrics(),
        vec![
            i64s(rows.iter().map(|(s, _)| *s as i64)),
            f64s(rows.iter().map(|(_, r)| r.loss)),
            f64s(rows.iter().map(|(_, r)| r.grad_norm)),
            f64s(rows.iter().map(|(_, r)| r.lr)),
            Arc::new(BooleanArray::from(rows.iter().map(|(_, r)| r.applied).collect::<Vec<_>>())),
        ],
    )
}
