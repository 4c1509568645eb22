//! `status`: what is committed in a run, per iteration, stage and shard.

use std::collections::BTreeMap;

use wc_store::MANIFEST_FILE;

use crate::error::StageError;
use crate::layout;
use crate::runner::{RunContext, Stage};

/// One line of the status table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRow {
    pub iter: u64,
    pub stage: &'static str,
    /// "whole", or e.g. "3 shards".
    pub shards: String,
    /// Committed shard indices (sharded stages).
    pub committed: Vec<u32>,
    /// "committed", "partial", "uncommitted files" (data without a manifest:
    /// running now, or interrupted; a rerun completes it), or "corrupt
    /// manifest" (one that does not parse: not committed, readers refuse it).
    pub state: &'static str,
}

/// What one stage or shard folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    /// Data files, no manifest.
    Files,
    /// A manifest that parses.
    Committed,
    /// A manifest that does not parse.
    Corrupt,
}

impl Unit {
    fn state(self) -> &'static str {
        match self {
            Unit::Files => "uncommitted files",
            Unit::Committed => "committed",
            Unit::Corrupt => "corrupt manifest",
        }
    }
}

/// Status of every stage of every iteration that has any file.
pub fn run_status(ctx: &RunContext) -> Result<Vec<StatusRow>, StageError> {
    // (iter, stage) -> (shard dir or "" -> has manifest)
    let mut seen: BTreeMap<(u64, usize), BTreeMap<String, Unit>> = BTreeMap::new();
    for path in ctx.store.list("iters")? {
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() < 4 {
            continue;
        }
        let (Ok(iter), Some(stage)) = (parts[1].parse::<u64>(), Stage::parse(parts[2])) else {
            continue;
        };
        let (unit, file) = if stage.sharded() && parts.len() >= 5 {
            (parts[3].to_string(), parts[4])
        } else {
            (String::new(), parts[3])
        };
        let order = Stage::ALL.iter().position(|s| *s == stage).expect("known stage");
        let e = seen.entry((iter, order)).or_default().entry(unit).or_insert(Unit::Files);
        if file == MANIFEST_FILE {
            // Committed only if the manifest parses (as readers require).
            *e = match wc_store::Manifest::read(&ctx.store, &path) {
                Ok(Some(_)) => Unit::Committed,
                _ => Unit::Corrupt,
            };
        }
    }
    let mut rows = Vec::new();
    for ((iter, order), units) in seen {
        let stage = Stage::ALL[order].name();
        if let Some(unit) = units.get("") {
            rows.push(StatusRow {
                iter,
                stage,
                shards: "whole".into(),
                committed: vec![],
                state: unit.state(),
            });
            continue;
        }
        let mut by_count: BTreeMap<u32, (Vec<u32>, bool, bool)> = BTreeMap::new();
        for (dir, unit) in units {
            if let Some(spec) = layout::parse_shard_dir(&dir) {
                let e = by_count.entry(spec.count).or_default();
                match unit {
                    Unit::Committed => e.0.push(spec.index),
                    Unit::Files => e.1 = true,
                    Unit::Corrupt => e.2 = true,
                }
            }
        }
        for (count, (committed, dangling, corrupt)) in by_count {
            let state = if corrupt {
                "corrupt manifest"
            } else if committed.len() == count as usize {
                "committed"
            } else if committed.is_empty() && dangling {
                "uncommitted files"
            } else {
                "partial"
            };
            rows.push(StatusRow {
                iter,
                stage,
                shards: format!("{count} shard{}", if count == 1 { "" } else { "s" }),
                committed,
                state,
            });
        }
    }
    Ok(rows)
}

/// The status printout: a header naming the run and its config, then one
/// line per stage (or "no stage has run yet").
pub fn status_table(uri: &str, fingerprint: &str, rows: &[StatusRow]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "run {uri} (config {})", &fingerprint[..fingerprint.len().min(12)]);
    if rows.is_empty() {
        let _ = writeln!(out, "no stage has run yet");
    }
    let _ = writeln!(out, "{:>6}  {:<9} {:<10} {:<18} committed shards", "iter", "stage", "shards", "state");
    for r in rows {
        let idx = if r.committed.is_empty() { "-".to_string() } else { format!("{:?}", r.committed) };
        let _ = writeln!(out, "{:>6}  {:<9} {:<10} {:<18} {idx}", r.iter, r.stage, r.shards, r.state);
    }
    out
}
