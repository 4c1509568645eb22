//! The `worldcompass` command line, kept at the edge: [`Cli`] and its
//! [`Command`]s, one module per subcommand under [`commands`] (its
//! arguments, turned into the library's settings, and its entry point), the
//! argument sets several share in [`args`], and [`run`], which dispatches.
//! The work itself is done by the library crates.
//!
//! The binary (`main.rs`) parses [`Cli`], calls [`run`], and on error prints
//! the whole error chain (credentials redacted) and exits non-zero.

use clap::{Parser, Subcommand};

pub mod args;
pub mod commands;

pub use args::{resolve_shard, DeviceArgs, KindArg, SamplerArgs, StageArg, SHARD_ENV};

/// Post-train action-conditioned video world models with RL (WorldCompass).
///
/// A run lives under one storage URI (file://, s3://, gs://, az://, memory://).
/// Create it with `init`, then either run everything locally with `train`, or
/// run each stage as its own batch job with `stage` (sharded stages take
/// --shard I/N or the array index of Slurm, Kubernetes or AWS Batch).
/// Every stage commits atomically and can be rerun: committed work is skipped.
///
/// S3 and S3-compatible servers are configured from the environment:
/// AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
/// AWS_ALLOW_HTTP=true for plain-HTTP endpoints.
#[derive(Debug, Parser)]
#[command(name = "worldcompass", version, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a run: store its pipeline config, its data and checkpoint 0.
    ///
    /// Running it again with the same config does nothing; with a different
    /// config it is refused (use a new run URI, or --force).
    ///
    /// Example: worldcompass init --run file:///tmp/runs/demo --pipeline pipelines/embedded.toml
    Init(commands::init::InitArgs),
    /// Run one stage of one iteration (one shard of it) and commit it.
    ///
    /// Stages of iteration K, in order: prefix, rollout, reward (sharded),
    /// select, optimize (whole). A stage already committed under the same
    /// config is skipped; two workers on the same shard end with one commit.
    ///
    /// Example: worldcompass stage rollout --run s3://bucket/runs/exp1 --iter 3 --shard 1/4
    Stage(commands::stage::StageArgs),
    /// Run iterations locally, stage after stage, resuming what is committed.
    ///
    /// Safe to interrupt at any point: run it again and it continues from the
    /// last committed stage, with the same final bytes as an uninterrupted run.
    ///
    /// Example: worldcompass train --run file:///tmp/runs/demo --pipeline pipelines/embedded.toml
    Train(commands::train::TrainArgs),
    /// Show what is committed in a run, per iteration, stage and shard.
    Status(commands::status::StatusArgs),
    /// Write a dataset of the embedded world to the store (under <OUT>/dataset/).
    ///
    /// Prompts (scene seed, caption, first frame), basic and combined action
    /// sequences, and ground-truth pre-training clips with exact per-frame
    /// camera poses, in which combined actions are rare. Deterministic in --seed.
    ///
    /// Example: worldcompass data --out file:///data/wc-dataset --pretrain-clips 2000
    Data(commands::data::DataArgs),
    /// Print the action-accuracy metric's reference points: ground-truth
    /// trajectories (100%), a static model, and a model that moves but
    /// ignores the actions, on generated basic and combined sequences.
    ///
    /// Any model's accuracy means something only above the static model's.
    Metric(commands::metric::MetricArgs),
    /// Pre-train the base world model on a dataset's ground-truth clips.
    ///
    /// Commits a checkpoint every --checkpoint-every steps under
    /// <OUT>/pretrain/step-<s>/ (model.safetensors, which PyTorch's
    /// safetensors loader reads; optimizer state; loss log). Interrupt it at
    /// any time: run the same command again and it resumes from the newest
    /// checkpoint, with the same result as an uninterrupted run.
    ///
    /// Example: worldcompass pretrain --data file:///data/wc-dataset --out file:///data/wc-base --steps 3000
    Pretrain(commands::pretrain::PretrainArgs),
    /// Evaluate checkpoints on held-out prompts: the paper's Table 1.
    ///
    /// Each held-out sequence (basic and combined actions) is generated clip
    /// after clip from its first frame, each clip from the model's own recent
    /// frames (autoregressive; --teacher-forced takes the simulator's true
    /// frames instead). Every 4-frame window is classified by re-rendering
    /// the 81 candidate motions from the camera's pose (an instrument that
    /// reads the simulator: evaluation only); VQ is the mean of every 4th
    /// generated frame. Numbers come per length (--lengths, in clips) and
    /// action kind: rotation and translation accuracy, IF (their mean), the
    /// rate of windows with both right, VQ. With several --model, all use
    /// the same sequences and noise, and each length ends with a delta row
    /// per model after the first (that model minus the first). --out
    /// appends the rows as Parquet to a store.
    ///
    /// A model is a pre-training store (its newest checkpoint, or --step) or
    /// RUN@K for checkpoint K of a training run.
    ///
    /// Example: worldcompass eval --data file://$PWD/runs/data --model file://$PWD/models/base --model file://$PWD/runs/embedded@24 --out file://$PWD/runs/eval
    Eval(commands::eval::EvalArgs),
    /// Generate a sequence with a model from a scene's first frame and an
    /// action sequence, and write it as an animated GIF and a PNG strip
    /// (with --truth, the simulator's ground truth is placed beside it).
    ///
    /// Example: worldcompass sample --model file:///data/wc-base --scene 3 --actions forward,turn_left,left --out /tmp/gen
    Sample(commands::sample::SampleArgs),
    /// Roll out the same prompt and action sequence with two checkpoints and
    /// write them side by side (with the ground truth) as a GIF and a PNG
    /// strip, the action written under every frame.
    ///
    /// A model is a pre-training store (newest checkpoint) or RUN@K for
    /// checkpoint K of a training run.
    ///
    /// Example: worldcompass compare --a file://$PWD/runs/embedded@0 --b file://$PWD/runs/embedded@24 --scene 3 --actions forward+turn_left,left+turn_up --out /tmp/cmp
    Compare(commands::compare::CompareArgs),
    /// Measure speed on this machine, side by side in one process.
    ///
    /// `bench model`: the f32 matmul peak, a sampler step for a batch of G,
    /// G candidates with the prefix cache against recomputing the prefix,
    /// and a training step's forward and backward, in GFLOP/s and as a share
    /// of the measured peak.
    Bench(commands::bench::BenchArgs),
    /// Summarise a training run from its reward log (with Polars): a table
    /// per iteration (mean IF, rotation and translation accuracy, VQ, mean r
    /// of the selected candidates, advantage spread) and PNG charts of the
    /// reward curves.
    ///
    /// The same numbers come from Python with
    /// polars.scan_parquet("<run>/reward_log/**/*.parquet").
    ///
    /// Example: worldcompass report --run file:///tmp/runs/demo --out /tmp/report
    Report(commands::report::ReportArgs),
    /// Train and validate the built-in reward scorers.
    ///
    /// `train-pose` trains the camera pose estimator on fresh simulator
    /// renders with exact poses (resumable); `eval-pose` measures its action
    /// accuracy on ground-truth windows of held-out scenes, basic and
    /// combined; `eval-vq` ranks clean held-out frames against graded
    /// blur, noise, washed-out colour, blocking and smear.
    ///
    /// Example: worldcompass scorers train-pose --out file://$PWD/models/pose --steps 4000
    Scorers(commands::scorers::ScorersArgs),
    /// Open video world models (the Wan2.1 family): one forward pass from a
    /// file of inputs, or a released size's parameters and speed.
    ///
    /// Example: worldcompass model size --preset wan2.1-t2v-1.3b --latent 3x44x80
    Model(commands::model::ModelArgs),
    /// Render a scene and an action sequence as an animated GIF and a PNG strip.
    ///
    /// Actions are one per 4-frame window: basic (forward, backward, left,
    /// right, turn_up, turn_down, turn_left, turn_right), combined with '+'
    /// (forward+turn_left), or idle. Without --actions, a random sequence of
    /// --kind is drawn from --seed.
    ///
    /// Example: worldcompass render --scene 7 --actions forward,forward,turn_left,forward+right --out /tmp/walk
    Render(commands::render::RenderArgs),
    /// Capacity plan of one iteration on a GPU cluster: per stage GPU-hours,
    /// wall time, bytes written and read, objects written, and the stage
    /// that bounds the iteration; computed from the pipeline config and the
    /// model's size, so it follows both.
    ///
    /// The defaults describe the paper's setting: an 8B model on 64 H20 GPUs
    /// (148 TFLOP/s dense bf16), 480p latents (60x104x16, 4x temporal
    /// compression, patch 2) and pipelines/paper.toml (64 groups, 16 clips
    /// of 16 frames, G = 16, T = 40).
    ///
    /// Example: worldcompass plan --pipeline pipelines/paper.toml --out pipelines/capacity-plan.md
    Plan(commands::plan::PlanArgs),
    /// Write (or check) the schema files of every table and tensor file.
    ///
    /// The files under schemas/ are generated from the code; a test fails when
    /// they drift. After changing a schema: worldcompass schemas --write schemas/
    Schemas(commands::schemas::SchemasArgs),
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    use commands::*;
    match cli.command {
        Command::Init(a) => init::run(a),
        Command::Stage(a) => stage::run(a),
        Command::Train(a) => train::run(a),
        Command::Status(a) => status::run(a),
        Command::Data(a) => data::run(a),
        Command::Metric(a) => metric::run(a),
        Command::Pretrain(a) => pretrain::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Sample(a) => sample::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Report(a) => report::run(a),
        Command::Scorers(a) => scorers::run(a),
        Command::Model(a) => model::run(a),
        Command::Render(a) => render::run(a),
        Command::Plan(a) => plan::run(a),
        Command::Schemas(a) => schemas::run(a),
    }
}

#[cfg(test)]
mod help_snapshots;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
