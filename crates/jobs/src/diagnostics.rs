//! Offline diagnostics of a run's committed candidates: the reward's pose
//! estimator and the evaluation's re-render probe read the same generated
//! windows (`worldcompass scorers agreement`), and the probe labels them as
//! training data for the estimator (`worldcompass scorers label-windows`).
//! They read only; they commit nothing.

use candle_core::Device;
use rayon::prelude::*;
use wc_scorers::labelled::LabelledWindow;
use wc_scorers::pose::{sequence_windows, PoseNet};
use wc_stages::backend::world::WorldBackend;
use wc_stages::backend::{Backend, Decoded, GroupFrames};
use wc_stages::inputs::{self, iteration_groups, sequence_pool, stage_shards};
use wc_stages::stages::{candidates_of, clips_per_candidate, group_files, prefix_of, scored_windows};
use wc_stages::tables::GroupRow;
use wc_stages::world_stages::{load_checked_pose, metric_config, probe_start, scene_seeds, WindowReader};
use wc_stages::{RunContext, Stage, StageError};
use wc_world::metric::window_correct;
use wc_world::probe::track_windows;
use wc_world::{Kinematics, Pose, Scene, WindowMotion};

/// One group of an iteration's committed candidates, as the offline
/// instrument commands read it.
struct ReadGroup {
    row: GroupRow,
    clips: GroupFrames,
    /// The group's scene and the camera tracked through the prefix (what
    /// the probe reads from).
    scene: Scene,
    start: Pose,
    /// The action of each window the candidates are judged on.
    windows: Vec<u8>,
}

/// Every group of iteration `iter`'s committed candidates, with the scene
/// and start pose its probe reads from (for `scorers agreement` and
/// `scorers label-windows`).
fn read_groups(ctx: &RunContext, b: &WorldBackend, iter: u64) -> Result<Vec<ReadGroup>, StageError> {
    let init = inputs::init_set(ctx)?;
    let (prefixes, rollouts) = (stage_shards(ctx, iter, Stage::Prefix)?, stage_shards(ctx, iter, Stage::Rollout)?);
    let (pfiles, cfiles) = (group_files(&prefixes), group_files(&rollouts));
    let seeds = scene_seeds(ctx, &init)?;
    let clip_shape = b.clip_shape();
    iteration_groups(ctx, &sequence_pool(ctx, &init)?, iter)
        .into_iter()
        .map(|(g, row)| {
            let (pre, cands) = (prefix_of(ctx, &clip_shape, &pfiles, iter, g)?, candidates_of(ctx, &clip_shape, &cfiles, iter, g)?);
            let Decoded::Frames(clips) = b.decode(row.prompt_id, &pre, &cands, clips_per_candidate(ctx))? else {
                return Err(StageError::invalid("world backend", "decoded no frames"));
            };
            let (scene, start) = probe_start(ctx, &seeds, &row, &clips.prefix)?;
            let windows = scored_windows(ctx, &row, iter);
            Ok(ReadGroup { row, clips, scene, start, windows })
        })
        .collect()
}

/// The committed candidates of iteration `iter`, window by window, each
/// labelled with the motion class the evaluation's re-render probe finds
/// in it (`worldcompass scorers label-windows`): training and test data
/// for the pose estimator on generated frames. Reads only; commits nothing.
pub fn probe_labelled_windows(ctx: &RunContext, iter: u64) -> Result<Vec<LabelledWindow>, StageError> {
    let b = WorldBackend::open(ctx)?;
    let kin = Kinematics::default();
    let mut out = Vec::new();
    for group in read_groups(ctx, &b, iter)? {
        let (scene, start) = (&group.scene, group.start);
        let read: Vec<_> = group.clips.candidates.par_iter().map(|c| (sequence_windows(c, &kin), track_windows(scene, start, &c[1..], &kin).0)).collect();
        for (frames, found) in read {
            for ((frames, (found, _)), a) in frames.into_iter().zip(found).zip(&group.windows) {
                out.push(LabelledWindow { frames, found, commanded: wc_world::ActionMask(*a) });
            }
        }
    }
    Ok(out)
}

/// One candidate window read by both instruments: whether each reads the
/// commanded rotation and translation.
#[derive(Debug, Clone, PartialEq)]
pub struct AgreementRow {
    pub iter: u64,
    pub kind: String,
    pub action: u8,
    /// The pose estimator's (rotation, translation) right.
    pub estimator: (bool, bool),
    /// The re-render probe's (rotation, translation) right.
    pub probe: (bool, bool),
}

/// The committed candidates of iteration `iter` read by the pose estimator
/// and by the evaluation's re-render probe, window by window: how far the
/// reward's instrument agrees with the evaluation's on generated frames
/// (`worldcompass scorers agreement`). Reads only; commits nothing.
///
/// `other` reads with that estimator instead of the run's own (an
/// estimator under test; it must read the model's frame size).
pub fn instrument_agreement(ctx: &RunContext, iter: u64, other: Option<(&PoseNet, &Device)>) -> Result<Vec<AgreementRow>, StageError> {
    let b = WorldBackend::open(ctx)?;
    let size = b.cfg.frame_size;
    let own;
    let estimator = match other {
        Some((net, _)) if net.cfg.frame_size != size => {
            return Err(StageError::invalid("pose estimator under test", format!("it reads {0}x{0} frames, the model makes {1}x{1}", net.cfg.frame_size, size)));
        }
        Some((net, device)) => WindowReader::Estimator { net, device },
        None => {
            own = load_checked_pose(ctx, &inputs::init_set(ctx)?, size)?;
            WindowReader::Estimator { net: &own.0, device: own.1.device() }
        }
    };
    let (metric, kin) = (metric_config(ctx), Kinematics::default());
    let mut rows = Vec::new();
    for ReadGroup { row, clips, scene, start, windows } in read_groups(ctx, &b, iter)? {
        let probe = WindowReader::Probe { scene, start };
        for (e, p) in estimator.read_all(&clips.candidates, &kin)?.iter().zip(probe.read_all(&clips.candidates, &kin)?) {
            for ((em, pm), a) in e.iter().zip(&p).zip(&windows) {
                let judge = |m: &WindowMotion| window_correct(m, wc_world::ActionMask(*a), &metric);
                rows.push(AgreementRow { iter, kind: row.kind.clone(), action: *a, estimator: judge(&em.0), probe: judge(&pm.0) });
            }
        }
    }
    Ok(rows)
}

/// The agreement of the two instruments per kind of sequence: how often
/// each reads the commanded rotation, translation and both, and how often
/// they agree on it.
pub fn agreement_table(rows: &[AgreementRow]) -> String {
    let mut out = format!(
        "{:<9} {:>7} | {:>9} {:>9} {:>6} | {:>9} {:>9} {:>6} {:>14} | {:>9} {:>9}\n",
        "kind", "windows", "rot est", "rot probe", "agree", "trans est", "trans prb", "agree", "est-only right", "both est", "both prb"
    );
    for kind in ["basic", "combined"] {
        let k: Vec<&AgreementRow> = rows.iter().filter(|r| r.kind == kind).collect();
        if k.is_empty() {
            continue;
        }
        let share = |f: &dyn Fn(&AgreementRow) -> bool| k.iter().filter(|r| f(r)).count() as f64 / k.len() as f64;
        out += &format!(
            "{:<9} {:>7} | {:>9.3} {:>9.3} {:>6.3} | {:>9.3} {:>9.3} {:>6.3} {:>14.3} | {:>9.3} {:>9.3}\n",
            kind,
            k.len(),
            share(&|r| r.estimator.0),
            share(&|r| r.probe.0),
            share(&|r| r.estimator.0 == r.probe.0),
            share(&|r| r.estimator.1),
            share(&|r| r.probe.1),
            share(&|r| r.estimator.1 == r.probe.1),
            share(&|r| r.estimator.1 && !r.probe.1),
            share(&|r| r.estimator.0 && r.estimator.1),
            share(&|r| r.probe.0 && r.probe.1),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agreement_table_counts_by_hand() {
        let row = |kind: &str, estimator: (bool, bool), probe: (bool, bool)| AgreementRow { iter: 0, kind: kind.into(), action: 65, estimator, probe };
        let rows = [
            row("combined", (true, true), (true, false)),
            row("combined", (true, true), (true, true)),
            row("combined", (false, false), (true, false)),
            row("combined", (true, false), (true, true)),
        ];
        let table = agreement_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 2, "header and the one kind present:\n{table}");
        let f: Vec<&str> = lines[1].split_whitespace().filter(|f| *f != "|").collect();
        // windows, rot est / probe / agree, trans est / probe / agree,
        // estimator-only right, both est / probe.
        assert_eq!(f, ["combined", "4", "0.750", "1.000", "0.750", "0.500", "0.500", "0.500", "0.250", "0.500", "0.500"]);
    }
}
