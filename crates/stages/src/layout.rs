//! Where a run's files live, relative to the run root.
//!
//! ```text
//! run.toml                                   the pipeline config (written by init)
//! init/_manifest.json                        commits data/ and checkpoints/000000/
//! data/prompts.parquet, data/groups.parquet  prompts and action sequences
//! checkpoints/<k>/policy.safetensors         policy after k iterations
//! checkpoints/<k>/old_policy.safetensors     EMA old policy after k iterations
//! checkpoints/<k>/optimizer.safetensors      optimizer state after k iterations
//! iters/<k>/prefix/shard-I-of-N/             group-<g>.safetensors + _manifest.json
//! iters/<k>/rollout/shard-I-of-N/            group-<g>.safetensors + _manifest.json
//! iters/<k>/reward/shard-I-of-N/             scores.parquet + _manifest.json
//! iters/<k>/select/                          selection.parquet + _manifest.json
//! iters/<k>/optimize/                        metrics.parquet + _manifest.json
//!                                            (also commits checkpoints/<k+1>/)
//! reward_log/iter-<k>.parquet                one table per iteration (select commits it)
//! ```
//!
//! A world run's init also commits `data/first_frames.safetensors` and the
//! run's copy of the pose estimator under `data/pose_estimator/`, and
//! `checkpoints/000000/model.json` (the model config). Every stage
//! reads and writes through the names here.
//!
//! Iterations and checkpoints are zero-padded to six digits so that listings
//! sort in order.

use wc_store::ShardSpec;

pub const RUN_CONFIG: &str = "run.toml";
pub const INIT_DIR: &str = "init";
pub const PROMPTS: &str = "data/prompts.parquet";
pub const GROUPS: &str = "data/groups.parquet";
/// First frames of a world run's prompts at the model's frame size.
pub const FIRST_FRAMES: &str = "data/first_frames.safetensors";
/// The run's copy of the pose estimator (init copies it in).
pub const POSE_MODEL: &str = "data/pose_estimator/model.safetensors";
pub const POSE_SETTINGS: &str = "data/pose_estimator/settings.json";
/// The run's copies of a Matrix-Game model's frozen networks (init copies
/// them in from the base store, when its config names them): the Wan VAE
/// and the CLIP vision tower, in their released key layouts.
pub const MATRIX_GAME_VAE: &str = "data/matrix_game/vae.safetensors";
pub const MATRIX_GAME_CLIP: &str = "data/matrix_game/clip_vision.safetensors";

/// Files a stage writes into its folder (or shard folder).
pub const SCORES_FILE: &str = "scores.parquet";
pub const WINDOWS_FILE: &str = "windows.parquet";
pub const SELECTION_FILE: &str = "selection.parquet";
pub const METRICS_FILE: &str = "metrics.parquet";

/// `name` inside the folder `dir`.
pub fn in_dir(dir: &str, name: &str) -> String {
    format!("{dir}/{name}")
}

pub fn iter_dir(iter: u64) -> String {
    format!("iters/{iter:06}")
}

pub fn stage_dir(iter: u64, stage: &str) -> String {
    format!("{}/{stage}", iter_dir(iter))
}

pub fn shard_dir(iter: u64, stage: &str, shard: ShardSpec) -> String {
    format!("{}/{}", stage_dir(iter, stage), shard.dir_name())
}

pub fn group_file(dir: &str, group: u64) -> String {
    format!("{dir}/group-{group:05}.safetensors")
}

pub fn checkpoint_dir(k: u64) -> String {
    format!("checkpoints/{k:06}")
}

/// A checkpoint's weights file: `stem` is policy, old_policy or optimizer.
pub fn checkpoint_file(k: u64, stem: &str) -> String {
    format!("{}/{stem}.safetensors", checkpoint_dir(k))
}

/// A world run's model config (`checkpoints/000000/model.json`, written by
/// init).
pub fn model_config_file() -> String {
    in_dir(&checkpoint_dir(0), "model.json")
}

/// The selection table of iteration `iter`.
pub fn selection_file(iter: u64) -> String {
    in_dir(&stage_dir(iter, "select"), SELECTION_FILE)
}

pub fn reward_log(iter: u64) -> String {
    format!("reward_log/iter-{iter:06}.parquet")
}

/// Parse `shard-III-of-NNN` back into a shard spec.
pub fn parse_shard_dir(name: &str) -> Option<ShardSpec> {
    let rest = name.strip_prefix("shard-")?;
    let (i, n) = rest.split_once("-of-")?;
    ShardSpec::new(i.parse().ok()?, n.parse().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_dir_roundtrips() {
        let s = ShardSpec::new(2, 5).unwrap();
        assert_eq!(shard_dir(3, "prefix", s), "iters/000003/prefix/shard-002-of-005");
        assert_eq!(parse_shard_dir(&s.dir_name()), Some(s));
        assert_eq!(parse_shard_dir("shard-5-of-5"), None);
        assert_eq!(parse_shard_dir("select"), None);
    }
}
