//! `init`: create a run: its config, its data, and checkpoint 0.

use bytes::Bytes;
use wc_config::PipelineConfig;
use wc_rl::seeds::{derive_seed, SeedDomain, SplitMix64};
use wc_schemas::{tensors, DimBindings, TensorSet};
use wc_store::{CommitOutcome, ManifestState, PendingCommit, RunStore};

use crate::error::StageError;
use crate::layout;
use crate::linear::LinearPolicy;
use crate::tables::{groups_to_batch, prompts_to_batch, GroupRow, PromptRow};

/// How `init` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitOutcome {
    Created,
    AlreadyInitialised,
}

/// Every combined action: two basic actions held at once that do not cancel
/// (a translation with a rotation, forward/back with a strafe, yaw with pitch).
pub fn combined_actions() -> Vec<u8> {
    let mut out = Vec::new();
    for t in 0..4 {
        for r in 4..8 {
            out.push((1u8 << t) | (1u8 << r));
        }
    }
    for fb in 0..2 {
        for lr in 2..4 {
            out.push((1u8 << fb) | (1u8 << lr));
        }
    }
    for pitch in 4..6 {
        for yaw in 6..8 {
            out.push((1u8 << pitch) | (1u8 << yaw));
        }
    }
    out
}

/// An action sequence of `windows` windows, a new action every `hold`
/// windows: basic (one of the 8 basic actions) or combined.
pub fn action_sequence(seed: u64, combined: bool, windows: usize, hold: usize) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    let combos = combined_actions();
    let mut out = Vec::with_capacity(windows);
    let mut current = 0u8;
    for w in 0..windows {
        if w % hold.max(1) == 0 {
            current = if combined {
                combos[(rng.next_u64() % combos.len() as u64) as usize]
            } else {
                1u8 << (rng.next_u64() % 8)
            };
        }
        out.push(current);
    }
    out
}

fn build_data(cfg: &PipelineConfig) -> (Vec<PromptRow>, Vec<GroupRow>) {
    let seed = cfg.run.seed;
    let prompts: Vec<PromptRow> = (0..cfg.data.prompts)
        .map(|p| {
            let scene_seed = (derive_seed(seed, 0, SeedDomain::Data, p, 0) >> 1) as i64;
            PromptRow {
                prompt_id: p as i64,
                scene_seed,
                caption: format!("procedural scene {p} (seed {scene_seed})"),
            }
        })
        .collect();
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
                    combined,
                    windows,
                    cfg.rollout.windows_per_clip as usize,
                ),
            }
        })
        .collect();
    (prompts, groups)
}

/// Create the run at `store` with `cfg`: `run.toml` (create-only), then one
/// commit with the prompts, the action-sequence pool and checkpoint 0.
/// Re-running with the same config is a no-op; with another config it is
/// refused unless `force`.
pub fn init_run(store: &RunStore, cfg: &PipelineConfig, force: bool) -> Result<InitOutcome, StageError> {
    let text = cfg.to_toml();
    if !store.put_if_absent(layout::RUN_CONFIG, Bytes::from(text.clone()))? {
        let existing = store.get(layout::RUN_CONFIG)?;
        if existing != text.as_bytes() {
            if !force {
                return Err(StageError::AlreadyInitialised {
                    uri: store.uri().to_string(),
                });
            }
            store.put(layout::RUN_CONFIG, Bytes::from(text))?;
        }
    }
    let fingerprint = cfg.fingerprint();
    let mut pending = PendingCommit::begin(store, layout::INIT_DIR, "init", None, None, &fingerprint);
    if let ManifestState::Committed(_) = pending.check(force)? {
        return Ok(InitOutcome::AlreadyInitialised);
    }
    let (prompts, groups) = build_data(cfg);
    let uri = |p: &str| store.uri_of(p);
    pending.write(layout::PROMPTS, wc_schemas::write_table(&wc_schemas::tables::prompts(), &uri(layout::PROMPTS), &prompts_to_batch(&prompts))?)?;
    pending.write(layout::GROUPS, wc_schemas::write_table(&wc_schemas::tables::groups(), &uri(layout::GROUPS), &groups_to_batch(&groups))?)?;

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
    match pending.commit()? {
        CommitOutcome::Committed { .. } => Ok(InitOutcome::Created),
        CommitOutcome::LostRace { .. } => Ok(InitOutcome::AlreadyInitialised),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn combined_actions_are_pairs_that_do_not_cancel() {
        let c = combined_actions();
        assert_eq!(c.len(), 24);
        for m in &c {
            assert_eq!(m.count_ones(), 2);
            for (a, b) in [(0, 1), (2, 3), (4, 5), (6, 7)] {
                assert!(!(m & (1 << a) != 0 && m & (1 << b) != 0), "{m:08b} holds opposite actions");
            }
        }
    }

    #[test]
    fn sequences_switch_every_hold_windows_and_are_deterministic() {
        let s = action_sequence(9, false, 8, 2);
        assert_eq!(s, action_sequence(9, false, 8, 2));
        assert!(s.iter().all(|m| m.count_ones() == 1));
        for w in s.chunks(2) {
            assert_eq!(w[0], w[1]);
        }
        assert!(action_sequence(9, true, 8, 1).iter().all(|m| m.count_ones() == 2));
    }
}
