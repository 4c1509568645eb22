//! `worldcompass scorers`: see [`crate::Command::Scorers`].

use clap::{Args, Subcommand};
use anyhow::Context;
use wc_jobs::pose_training;
use wc_stages::checkpoints;
use wc_stages::RunContext;
use wc_store::RunStore;

use wc_scorers::pose::{ActionDraw, PoseConfig};
use wc_world::metric::Accuracy;

use crate::args::{share_in_0_1, DeviceArgs};

/// The arguments of `worldcompass scorers`.
#[derive(Debug, Args)]
pub struct ScorersArgs {
    #[command(subcommand)]
    pub what: ScorersWhat,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// What `scorers` does.
#[derive(Debug, Subcommand)]
pub enum ScorersWhat {
    /// Train (or resume) the pose estimator; checkpoints under OUT/pose_estimator/.
    TrainPose {
        /// Store URI the checkpoints are committed under.
        #[arg(long)]
        out: String,
        #[arg(long, default_value_t = 4000)]
        steps: u64,
        #[arg(long, default_value_t = 128)]
        batch: usize,
        #[arg(long, default_value_t = 1e-3)]
        lr: f64,
        #[arg(long, default_value_t = 500)]
        checkpoint_every: u64,
        /// Hidden width of the estimator.
        #[arg(long, default_value_t = PoseConfig::default().hidden)]
        hidden: usize,
        /// Frame size it reads (the world model's).
        #[arg(long, default_value_t = PoseConfig::default().frame_size)]
        frame_size: usize,
        /// Add a translation network that reads each window again with the
        /// turn the rotation network found undone (its rotation homography;
        /// the start pitch searched): combined turn-and-move windows then
        /// show their translation like basic ones. `false` gives the
        /// cost-volume-only estimator of earlier versions.
        #[arg(long, default_value_t = PoseConfig::default().derotate, action = clap::ArgAction::Set)]
        derotate: bool,
        /// The translation network reads the de-rotated halves of a window
        /// at every whole-pixel shift within a few pixels (-4..=4 for 32
        /// pixels) instead of the coarse 3-pixel grid: the parallax left
        /// once the turn is undone is that small. Same size of input, so
        /// --init-from may start it from an estimator without it (the
        /// translation network then learns its new inputs).
        #[arg(long, default_value_t = PoseConfig::default().fine_halves, action = clap::ArgAction::Set)]
        fine_halves: bool,
        /// Seed of the training windows (batches derive from seed and step).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Start from the newest estimator under this store URI (its
        /// weights, not its optimizer state) instead of random weights: a
        /// new learning-rate schedule of --steps on top of a trained
        /// estimator. --hidden, --frame-size and --derotate must describe
        /// the same estimator (--fine-halves may differ); give a --seed it
        /// was not trained with, or it sees the same windows again.
        #[arg(long, value_name = "URI")]
        init_from: Option<String>,
        /// Also train on generated windows labelled by the evaluation's
        /// probe: every labelled window under this store URI (written by
        /// `scorers label-windows`). Repeat for several stores. The
        /// estimator still scores from pixels alone; the probe only labels.
        #[arg(long, value_name = "URI")]
        generated: Vec<String>,
        /// Share of every batch drawn from the --generated windows (the
        /// rest are fresh renders, so clean frames are not forgotten).
        #[arg(long, default_value_t = 0.5, value_parser = share_in_0_1)]
        generated_share: f64,
    },
    /// Action accuracy of the pose estimator on held-out ground-truth windows.
    EvalPose {
        /// Store URI holding the estimator (OUT of train-pose).
        #[arg(long)]
        model: String,
        /// Windows of each kind (basic, combined).
        #[arg(long, default_value_t = 2000)]
        windows: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also print the accuracy per commanded action.
        #[arg(long)]
        per_action: bool,
        /// Also print what the misread windows were read as, per command
        /// (most frequent first, at most this many lines per kind):
        /// `forward+left read as left` is a forward motion not seen.
        #[arg(long, value_name = "LINES")]
        misreads: Option<usize>,
        /// Also read the generated windows labelled under this store URI
        /// (`scorers label-windows`; use a run not trained on) and print how
        /// often the estimator reads the probe's class, by whether the
        /// window's command was basic or combined.
        #[arg(long, value_name = "URI")]
        generated: Option<String>,
    },
    /// How far the reward's pose estimator agrees with the evaluation's
    /// re-render probe on a run's own generated candidates (the frames RL
    /// is trained on, not clean renders): every committed candidate window
    /// of iterations FROM..TO read by both, judged against its command.
    ///
    /// Example: worldcompass scorers agreement --run file://$PWD/runs/embedded --from 0 --to 8
    Agreement {
        /// Run URI, e.g. file:///data/runs/exp1 or s3://bucket/runs/exp1.
        #[arg(long, env = "WORLDCOMPASS_RUN", hide_env_values = true)]
        run: String,
        /// First iteration read.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Iteration after the last one read (its rollouts must be committed).
        #[arg(long, default_value_t = 8)]
        to: u64,
        /// Read with the newest estimator under this store URI instead of
        /// the run's own copy (an estimator under test).
        #[arg(long, value_name = "URI")]
        pose_model: Option<String>,
    },
    /// Label a run's own generated candidate windows with the motion class
    /// the evaluation's re-render probe finds in each (iterations
    /// FROM..TO; one commit per iteration under OUT/labelled_windows/, so
    /// a rerun resumes). The labelled windows train the pose estimator on
    /// the frames RL produces (`train-pose --generated OUT`) and test it
    /// (`eval-pose --generated OUT`).
    ///
    /// Example: worldcompass scorers label-windows --run file://$PWD/runs/embedded --from 0 --to 24 --out file://$PWD/runs/labelled-embedded
    LabelWindows {
        /// Run URI, e.g. file:///data/runs/exp1 or s3://bucket/runs/exp1.
        #[arg(long, env = "WORLDCOMPASS_RUN", hide_env_values = true)]
        run: String,
        /// First iteration read.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Iteration after the last one read (its rollouts must be committed).
        #[arg(long)]
        to: u64,
        /// Store URI the labelled windows are committed under.
        #[arg(long)]
        out: String,
    },
    /// Ranking of clean held-out frames above their degraded versions.
    EvalVq {
        /// Held-out frames (one per scene).
        #[arg(long, default_value_t = 200)]
        frames: usize,
        #[arg(long, default_value_t = 32)]
        size: usize,
    },
}

pub fn run(a: ScorersArgs) -> anyhow::Result<()> {
    let device = a.device.or_cpu();
    let dev = || wc_model::device::open(device);
    match a.what {
        ScorersWhat::TrainPose { out, steps, batch, lr, checkpoint_every, hidden, frame_size, derotate, fine_halves, seed, init_from, generated, generated_share } => {
            anyhow::ensure!(checkpoint_every > 0, "--checkpoint-every must be at least 1");
            let out = RunStore::open(&out)?;
            let source = init_from.as_deref().map(RunStore::open_existing).transpose()?;
            let warm_start = match &source {
                Some(src) => {
                    let w = checkpoints::WarmStart::newest(src).with_context(|| format!("--init-from {}", src.uri()))?;
                    if checkpoints::read_settings(src, w.step)?.seed == seed {
                        eprintln!("note: --seed {seed} is the seed {} was trained with: the run sees the same windows again", src.uri());
                    }
                    Some(w)
                }
                None => None,
            };
            let labelled = generated
                .iter()
                .map(|uri| pose_training::load_labelled(&RunStore::open_existing(uri)?).with_context(|| format!("--generated {uri}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            for (uri, set) in generated.iter().zip(&labelled) {
                if let Some(w) = set.windows.first().filter(|w| w.frames.first.width != frame_size) {
                    anyhow::bail!("--generated {uri}: its windows are {0}x{0}, the estimator reads {frame_size}x{frame_size}", w.frames.first.width);
                }
            }
            let mix = (!labelled.is_empty()).then(|| checkpoints::GeneratedMix {
                sets: labelled.iter().map(|l| l.identity.clone()).collect(),
                windows: labelled.iter().map(|l| l.windows.len()).sum(),
                share: generated_share,
            });
            if let Some(m) = &mix {
                eprintln!("mixing {} labelled generated windows into {:.0}% of every batch", m.windows, 100.0 * m.share);
            }
            let settings = checkpoints::PoseSettings {
                model: PoseConfig { frame_size, hidden, derotate, fine_halves },
                seed,
                batch,
                lr,
                schedule_steps: steps,
                checkpoint_every,
                warm_start,
                generated: mix,
            };
            let bar = super::step_bar(steps, "pose");
            let mut ema: Option<f64> = None;
            let done = pose_training::train_pose(&out, &settings, steps, source.as_ref(), &labelled, &dev()?, |step, loss| {
                let e = ema.map_or(loss, |e| 0.98 * e + 0.02 * loss);
                ema = Some(e);
                bar.set_position(step + 1);
                bar.set_message(format!("loss {e:.4}"));
            })?;
            bar.finish_and_clear();
            println!("pose estimator at step {done} under {}", out.uri_of(checkpoints::POSE_DIR));
        }
        ScorersWhat::EvalPose { model, windows, seed, per_action, misreads, generated } => {
            let store = RunStore::open_existing(&model)?;
            let m = checkpoints::load_pose(&store, &dev()?)?;
            let metric = wc_world::metric::MetricConfig::default();
            println!("pose estimator {} (step {}), held-out scenes, clean ground-truth renders", m.path, m.step);
            println!("{}", accuracy_header("kind"));
            for (name, draw) in [("basic", ActionDraw::Basic), ("combined", ActionDraw::Combined)] {
                let pred = wc_scorers::pose::held_out_predictions(&m.net, draw, windows, seed, m.params.device())?;
                println!("{}", accuracy_row(name, &wc_scorers::pose::prediction_accuracy(&pred, &metric)));
                if per_action {
                    for (action, a) in wc_scorers::pose::per_action_accuracy(&pred, &metric) {
                        println!("  {:<24} {:>6} {:>8.3} {:>9.3}", action.to_string(), a.windows, a.rot_acc, a.trans_acc);
                    }
                }
                if let Some(lines) = misreads {
                    for m in wc_scorers::pose::misreads(&pred, &metric).iter().take(lines) {
                        println!("  {:<24} read as {:<24} {:>5} windows", m.commanded.to_string(), m.read.to_string(), m.windows);
                    }
                }
            }
            if let Some(uri) = generated {
                let set = pose_training::load_labelled(&RunStore::open_existing(&uri)?).with_context(|| format!("--generated {uri}"))?;
                println!("\ngenerated windows under {uri}: how often the estimator reads the probe's class (by the command's kind)");
                println!("{}", accuracy_header("command"));
                let pred = wc_scorers::labelled::predictions(&m.net, &set.windows, m.params.device())?;
                for (name, combined) in [("basic", false), ("combined", true)] {
                    let kind: Vec<_> = set.windows.iter().zip(&pred).filter(|(w, _)| w.commanded.is_combined() == combined).map(|(_, p)| *p).collect();
                    println!("{}", accuracy_row(name, &wc_scorers::pose::prediction_accuracy(&kind, &metric)));
                }
            }
        }
        ScorersWhat::Agreement { run, from, to, pose_model } => {
            anyhow::ensure!(from < to, "--from {from} must be below --to {to}");
            let ctx = RunContext::open(&run)?.on_device(Some(device));
            let other = pose_model.as_deref().map(|uri| checkpoints::load_pose(&RunStore::open_existing(uri)?, &dev()?).with_context(|| format!("--pose-model {uri}"))).transpose()?;
            if let Some(m) = &other {
                println!("pose estimator under test: {} (step {})", m.path, m.step);
            }
            let bar = super::step_bar(to - from, "agreement");
            let mut rows = Vec::new();
            for iter in from..to {
                let under_test = other.as_ref().map(|m| (&m.net, m.params.device()));
                rows.extend(wc_jobs::diagnostics::instrument_agreement(&ctx, iter, under_test).with_context(|| format!("iteration {iter} of {run}"))?);
                bar.inc(1);
            }
            bar.finish_and_clear();
            print!("{}", wc_jobs::diagnostics::agreement_table(&rows));
        }
        ScorersWhat::LabelWindows { run, from, to, out } => {
            anyhow::ensure!(from < to, "--from {from} must be below --to {to}");
            let ctx = RunContext::open(&run)?.on_device(Some(device));
            let store = RunStore::open(&out)?;
            let bar = super::step_bar(to - from, "label");
            let (mut labelled, mut found) = (0usize, 0usize);
            for iter in from..to {
                let source = pose_training::LabelledSource { run: ctx.store.uri().to_string(), iter };
                if pose_training::labelled_is_committed(&store, &source)? {
                    found += 1;
                } else {
                    let windows = wc_jobs::diagnostics::probe_labelled_windows(&ctx, iter).with_context(|| format!("iteration {iter} of {run}"))?;
                    labelled += windows.len();
                    pose_training::commit_labelled(&store, &source, &windows)?;
                }
                bar.inc(1);
            }
            bar.finish_and_clear();
            println!("labelled {labelled} windows of {} iterations ({found} already committed) under {}", to - from - found as u64, store.uri_of(pose_training::LABELLED_DIR));
        }
        ScorersWhat::EvalVq { frames, size } => {
            println!("VQ scorer on {frames} held-out frames: share of frames whose clean version scores higher, per level; mean score clean -> level 1..3");
            for v in wc_scorers::vq::validate(wc_scorers::pose::HELD_OUT_SCENE_BASE, frames, size) {
                let wins: Vec<String> = v.clean_wins.iter().map(|w| format!("{w:.3}")).collect();
                let means: Vec<String> = v.mean_scores.iter().map(|m| format!("{m:.3}")).collect();
                println!("{:<11} wins {}   mean {}", v.degradation.name(), wins.join(" "), means.join(" -> "));
            }
        }
    }
    Ok(())
}

/// The header of `eval-pose`'s accuracy tables.
fn accuracy_header(first: &str) -> String {
    format!("{:<9} {:>8} {:>8} {:>9} {:>6} {:>10}", first, "windows", "rot_acc", "trans_acc", "IF", "both_right")
}

/// One row of `eval-pose`'s accuracy tables.
fn accuracy_row(name: &str, a: &Accuracy) -> String {
    format!("{:<9} {:>8} {:>8.3} {:>9.3} {:>6.3} {:>10.3}", name, a.windows, a.rot_acc, a.trans_acc, a.if_score, a.both_rate)
}
