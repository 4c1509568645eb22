//! Reading a committed dataset back.

use arrow::array::{Array, Int64Array, ListArray, StringArray, UInt8Array};
use wc_schemas::{tables, tensors, DimBindings};
use wc_store::{CommittedSet, RunStore};

use crate::{DataError, DATASET_DIR};

/// One ground-truth video: frames (u8 HWC, frame 0 first) and actions.
#[derive(Debug, Clone, PartialEq)]
pub struct GroundTruthVideo {
    pub clip_id: i64,
    pub scene_seed: i64,
    pub frames: Vec<u8>,
    pub actions: Vec<u8>,
}

fn invalid(artifact: &str, reason: &str) -> DataError {
    DataError::Spec(format!("{artifact}: {reason}"))
}

/// The dataset's commit (its manifest and files).
pub fn open_dataset(store: &RunStore) -> Result<CommittedSet, DataError> {
    Ok(CommittedSet::open(store, &format!("{DATASET_DIR}/{}", wc_store::MANIFEST_FILE))?)
}

/// Every ground-truth pre-training video of a dataset, with frame size.
pub fn pretrain_videos(store: &RunStore) -> Result<(Vec<GroundTruthVideo>, usize), DataError> {
    let set = open_dataset(store)?;
    let path = format!("{DATASET_DIR}/pretrain/clips.parquet");
    let artifact = store.uri_of(&path);
    let batch = wc_schemas::read_table(&tables::pretrain_clips(), &artifact, set.read(&path)?)?;
    let col = |n: &str| batch.column_by_name(n).expect("validated");
    let ids = col("clip_id").as_any().downcast_ref::<Int64Array>().expect("validated");
    let seeds = col("scene_seed").as_any().downcast_ref::<Int64Array>().expect("validated");
    let files = col("file").as_any().downcast_ref::<StringArray>().expect("validated");
    let index = col("index").as_any().downcast_ref::<Int64Array>().expect("validated");
    let actions = col("actions").as_any().downcast_ref::<ListArray>().expect("validated");
    let mut by_file: std::collections::BTreeMap<String, wc_schemas::Tensor> = Default::default();
    let mut out = Vec::with_capacity(batch.num_rows());
    let mut size = 0;
    for i in 0..batch.num_rows() {
        let file = files.value(i).to_string();
        if !by_file.contains_key(&file) {
            let p = format!("{DATASET_DIR}/{file}");
            let bytes = set.read(&p)?;
            let mut t = wc_schemas::read_tensors(&tensors::pretrain_frames(), &DimBindings::new(), &store.uri_of(&p), &bytes)?;
            by_file.insert(file.clone(), t.remove("frames").ok_or_else(|| invalid(&p, "no frames tensor"))?);
        }
        let t = &by_file[&file];
        let (frames, h, w) = (t.shape[1], t.shape[2], t.shape[3]);
        if h != w {
            return Err(invalid(&file, "frames must be square"));
        }
        size = h;
        let per_clip = frames * h * w * 3;
        let idx = index.value(i) as usize;
        if idx >= t.shape[0] {
            return Err(invalid(&artifact, &format!("row {i} points at clip {idx} of {file}, which has {}", t.shape[0])));
        }
        let list = actions.value(i);
        let acts = list.as_any().downcast_ref::<UInt8Array>().expect("validated").values().to_vec();
        if 1 + acts.len() * 4 != frames {
            return Err(invalid(&artifact, &format!("clip {} has {} windows but {frames} frames", ids.value(i), acts.len())));
        }
        out.push(GroundTruthVideo {
            clip_id: ids.value(i),
            scene_seed: seeds.value(i),
            frames: t.data[idx * per_clip..(idx + 1) * per_clip].to_vec(),
            actions: acts,
        });
    }
    Ok((out, size))
}
