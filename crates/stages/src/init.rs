//! `init`: create a run: its config, its data, and checkpoint 0.

use bytes::Bytes;
use wc_config::PipelineConfig;
use wc_data::rows::{prompts_to_batch, PromptRow};
use wc_rl::seeds::{derive_seed, SeedDomain};
use wc_world::actions::{action_sequence, Kinematics, SequenceKind};
use wc_schemas::{tensors, DimBindings, TensorSet};
use wc_store::{CommitOutcome, CommittedSet, ManifestState, PendingCommit, RunStore};

use crate::error::StageError;
use crate::layout;
use crate::linear::LinearPolicy;
use crate::tables::{groups_to_batch, GroupRow};

/// How `init` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitOutcome {
    Created,
    AlreadyInitialised,
}

fn build_data(cfg: &PipelineConfig) -> (Vec<PromptRow>, Vec<GroupRow>) {
    let seed = cfg.run.seed;
    let spec = wc_data::DatasetSpec {
        seed,
        prompts: cfg.data.prompts as usize,
        clips: cfg.rollout.clips as usize,
        windows_per_clip: cfg.rollout.windows_per_clip as usize,
        ..Default::default()
    };
    let prompts = wc_data::build::prompts(&spec);
    let kin = Kinematics::default();
    let combined_count = (cfg.data.combined_fraction * cfg.data.prompts as f64).round() as u64;
    let windows = (cfg.rollout.clips * cfg.rollout.windows_per_clip) as usize;
    let groups = (0..cfg.data.prompts)
        .map(|p| {
            // Alternate kinds through the pool so every iteration sees both.
            let combined = (p * combined_count) / cfg.data.prompts != ((p + 1) * combined_count) / cfg.data.prompts;
            GroupRow {
                group_id: p as i64,
                prompt_id: p as i64,
                kind: if combined { "combined" } else { "basic" }.to_string(),
                num_clips: cfg.rollout.clips as i64,
                actions: action_sequence(
                    derive_seed(seed, 0, SeedDomain::Data, p, 1),
                    if combined { SequenceKind::Combined } else { SequenceKind::Basic },
                    windows,
                    cfg.rollout.windows_per_clip as usize,
                    &kin,
                )
                .iter()
                .map(|a| a.0)
                .collect(),
            }
        })
        .collect();
    (prompts, groups)
}

/// Files of an init commit, computed in full before anything is written.
#[derive(Default)]
struct InitFiles(Vec<(String, Bytes)>);

impl InitFiles {
    fn write(&mut self, path: &str, bytes: Bytes) -> Result<(), StageError> {
        self.0.push((path.to_string(), bytes));
        Ok(())
    }
}

/// Create the run at `store` with `cfg`: one commit with the prompts, the
/// action-sequence pool and checkpoint 0, then `run.toml`. Re-running with
/// the same config is a no-op; with another config it is refused unless
/// `force`.
///
/// Everything is computed before anything is written, so a config that
/// cannot initialise (a missing base model, say) leaves the store as it
/// was: no `run.toml` of a run that does not exist, and under `--force`
/// the committed run untouched. `run.toml` is written last, once the init
/// commit holds: it is trusted only beside a committed init with the same
/// config (a `run.toml` without one, left by a crash, is replaced).
pub fn init_run(store: &RunStore, cfg: &PipelineConfig, force: bool) -> Result<InitOutcome, StageError> {
    let text = cfg.to_toml();
    let fingerprint = cfg.fingerprint();
    if let Some(committed) = CommittedSet::open_dir(store, layout::INIT_DIR)? {
        if committed.manifest.fingerprint == fingerprint {
            // Committed with this config: make sure run.toml says so (a crash
            // may have come between the commit and run.toml).
            if store.get_opt(layout::RUN_CONFIG)?.as_deref() != Some(text.as_bytes()) {
                store.put(layout::RUN_CONFIG, Bytes::from(text))?;
            }
            return Ok(InitOutcome::AlreadyInitialised);
        }
        if !force {
            return Err(StageError::AlreadyInitialised { uri: store.uri().to_string() });
        }
    }
    let (prompts, groups) = build_data(cfg);
    let uri = |p: &str| store.uri_of(p);
    let mut files = InitFiles::default();
    files.write(layout::PROMPTS, wc_schemas::write_table(&wc_schemas::tables::prompts(), &uri(layout::PROMPTS), &prompts_to_batch(&prompts))?)?;
    files.write(layout::GROUPS, wc_schemas::write_table(&wc_schemas::tables::groups(), &uri(layout::GROUPS), &groups_to_batch(&groups))?)?;
    if cfg.model.kind == wc_config::ModelKind::World {
        write_world_checkpoint(store, cfg, &prompts, &mut files)?;
    } else {
        write_linear_checkpoint(store, cfg, &mut files)?;
    }
    // Only now is anything written (under --force, the old init manifest is
    // replaced here).
    let mut pending = PendingCommit::begin(store, layout::INIT_DIR, "init", None, None, &fingerprint);
    if let ManifestState::Committed(_) = pending.check(force)? {
        return Ok(InitOutcome::AlreadyInitialised);
    }
    for (path, bytes) in files.0 {
        pending.write(&path, bytes)?;
    }
    let outcome = match pending.commit()? {
        CommitOutcome::Committed { .. } => InitOutcome::Created,
        CommitOutcome::LostRace { .. } => InitOutcome::AlreadyInitialised,
    };
    store.put(layout::RUN_CONFIG, Bytes::from(text))?;
    Ok(outcome)
}

/// A store URI from a config value: a URI as is, a local path made absolute
/// against the working directory.
pub fn resolve_store(value: &str) -> Result<RunStore, StageError> {
    if value.contains("://") {
        return Ok(RunStore::open(value)?);
    }
    let abs = std::path::absolute(value).map_err(|e| StageError::invalid(value, format!("cannot resolve the path: {e}")))?;
    Ok(RunStore::open(&format!("file://{}", abs.display()))?)
}

fn write_world_checkpoint(store: &RunStore, cfg: &PipelineConfig, prompts: &[PromptRow], pending: &mut InitFiles) -> Result<(), StageError> {
    use crate::world::{WorldPolicy, MODEL_CONFIG_FILE};
    use crate::world_stages::{FIRST_FRAMES, POSE_MODEL, POSE_SETTINGS};
    // Init only copies weights into the run (or seeds a fresh model): the
    // CPU does it, whatever device the stages run on later.
    let device = candle_core::Device::Cpu;
    let policy = if cfg.model.base.is_empty() {
        let mc = if cfg.model.preset == "default" { wc_model::ModelConfig::default() } else { wc_model::ModelConfig::tiny() };
        WorldPolicy::fresh(&mc, derive_seed(cfg.run.seed, 0, SeedDomain::Init, 0, 0), &device)?
    } else {
        let base = resolve_store(&cfg.model.base)?;
        let m = crate::evaluate::load_checkpoint(&base, cfg.model.base_step, &device)?;
        tracing::info!(base = %m.path, step = m.step, "initialising the policy from the base model");
        WorldPolicy { model: m.model, params: m.params }
    };
    let mc = policy.model.cfg.clone();
    if cfg.rollout.windows_per_clip as usize * 4 != mc.frames_per_clip {
        return Err(StageError::invalid(
            "rollout.windows_per_clip",
            format!("{} windows of 4 frames per clip, but the model makes {}-frame clips", cfg.rollout.windows_per_clip, mc.frames_per_clip),
        ));
    }
    let uri = |p: &str| store.uri_of(p);
    let dir = layout::checkpoint_dir(0);
    let weights = policy.params.to_tensor_set()?;
    for name in ["policy", "old_policy"] {
        let path = format!("{dir}/{name}.safetensors");
        pending.write(&path, wc_schemas::write_any(&uri(&path), &weights)?)?;
    }
    let opt = wc_model::optim::Optimizer::new(wc_model::optim::OptimConfig::default(), &policy.params)?;
    let path = format!("{dir}/optimizer.safetensors");
    pending.write(&path, wc_schemas::write_any(&uri(&path), &opt.to_tensor_set()?)?)?;
    let path = format!("{dir}/{MODEL_CONFIG_FILE}");
    pending.write(&path, Bytes::from(serde_json::to_vec_pretty(&mc).expect("serialises")))?;
    // First frames at the model's size.
    let spec = wc_data::DatasetSpec {
        render: wc_world::RenderConfig { width: mc.frame_size, height: mc.frame_size, ..Default::default() },
        ..Default::default()
    };
    let frames = wc_data::build::first_frames(&spec, prompts);
    let mut t = TensorSet::new();
    t.insert("frames".into(), wc_schemas::Tensor::from_u8(&[prompts.len(), mc.frame_size, mc.frame_size, 3], &frames));
    let b = DimBindings::new().dim("prompts", prompts.len()).dim("height", mc.frame_size).dim("width", mc.frame_size);
    pending.write(FIRST_FRAMES, wc_schemas::write_tensors(&tensors::first_frames(), &b, &uri(FIRST_FRAMES), &t)?)?;
    // The pose estimator, copied so that the run is self-contained.
    if !cfg.reward.pose_model.is_empty() {
        let pose_store = resolve_store(&cfg.reward.pose_model)?;
        let pose = crate::scorer_models::load_pose(&pose_store, &device)?;
        if pose.net.cfg.frame_size != mc.frame_size {
            return Err(StageError::invalid(
                pose.path,
                format!("the pose estimator reads {0}x{0} frames, the model makes {1}x{1}", pose.net.cfg.frame_size, mc.frame_size),
            ));
        }
        let settings = crate::scorer_models::read_settings(&pose_store, pose.step)?;
        pending.write(POSE_MODEL, wc_schemas::write_any(&uri(POSE_MODEL), &pose.params.to_tensor_set()?)?)?;
        pending.write(POSE_SETTINGS, Bytes::from(serde_json::to_vec_pretty(&settings).expect("serialises")))?;
    }
    Ok(())
}

fn write_linear_checkpoint(store: &RunStore, cfg: &PipelineConfig, pending: &mut InitFiles) -> Result<(), StageError> {
    let uri = |p: &str| store.uri_of(p);
    let d = cfg.model.latent_dim;
    let policy = LinearPolicy::init(d, derive_seed(cfg.run.seed, 0, SeedDomain::Init, 0, 0));
    let zeros = LinearPolicy {
        dim: d,
        theta: vec![0.0; policy.theta.len()],
        bias: vec![0.0; d],
    };
    let b = DimBindings::new().splice("latent", &[d]);
    let dir = layout::checkpoint_dir(0);
    for name in ["policy", "old_policy"] {
        let path = format!("{dir}/{name}.safetensors");
        pending.write(&path, wc_schemas::write_tensors(&tensors::linear_policy(), &b, &uri(&path), &policy.to_tensors())?)?;
    }
    let zt = zeros.to_tensors();
    let mut mom = TensorSet::new();
    mom.insert("momentum.theta".into(), zt["theta"].clone());
    mom.insert("momentum.bias".into(), zt["bias"].clone());
    let path = format!("{dir}/optimizer.safetensors");
    pending.write(&path, wc_schemas::write_tensors(&tensors::linear_optimizer(), &b, &uri(&path), &mom)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_mixes_kinds_at_the_configured_fraction_with_scene_captions() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../pipelines/embedded.toml");
        let cfg = PipelineConfig::load(path).unwrap();
        let (prompts, groups) = build_data(&cfg);
        let combined = groups.iter().filter(|g| g.kind == "combined").count();
        assert_eq!(combined as f64, (cfg.data.combined_fraction * cfg.data.prompts as f64).round());
        for g in &groups {
            let want = if g.kind == "combined" { 2 } else { 1 };
            assert!(g.actions.iter().all(|m| m.count_ones() == want), "{g:?}");
        }
        assert!(prompts.iter().all(|p| p.caption.starts_with("a ")), "captions come from the scenes");
    }
}
