//! `init`: create a run: its config, its data, and checkpoint 0.

use bytes::Bytes;
use wc_config::PipelineConfig;
use wc_data::rows::{prompts_to_batch, PromptRow};
use wc_rl::seeds::{derive_seed, SeedDomain};
use wc_world::actions::{action_sequence, Kinematics, SequenceKind};
use wc_store::{CommitOutcome, CommittedSet, ManifestState, PendingCommit, RunStore};

use crate::error::StageError;
use crate::layout;
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
pub struct InitFiles(Vec<(String, Bytes)>);

impl InitFiles {
    /// Add a file (path relative to the run root).
    pub fn write(&mut self, path: &str, bytes: Bytes) -> Result<(), StageError> {
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
    crate::backend::write_initial_checkpoint(store, cfg, &prompts, &mut files)?;
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
        return Ok(RunStore::open_existing(value)?);
    }
    let abs = std::path::absolute(value).map_err(StageError::io(format!("resolving the path {value}")))?;
    Ok(RunStore::open_existing(&format!("file://{}", abs.display()))?)
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
