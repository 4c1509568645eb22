//! The `worldcompass` command line: argument parsing and the pieces of it
//! worth testing on their own (shard selection from batch-engine variables).
//!
//! The binary (`main.rs`) parses [`Cli`], runs the command against the
//! library crates, prints the outcome, and on error prints the whole error
//! chain (credentials redacted) and exits non-zero.

use clap::{Args, Parser, Subcommand, ValueEnum};
use wc_config::DeviceSpec;
use wc_store::ShardSpec;

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
    Init {
        /// Run URI, e.g. file:///data/runs/exp1 or s3://bucket/runs/exp1.
        #[arg(long, env = "WORLDCOMPASS_RUN")]
        run: String,
        /// Pipeline config (TOML), e.g. pipelines/embedded.toml.
        #[arg(long, default_value = "pipelines/embedded.toml")]
        pipeline: String,
        /// Replace a run initialised with a different config.
        #[arg(long)]
        force: bool,
        /// Use this seed instead of the pipeline's run.seed: replicates of
        /// one setting without a config file per seed.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Run one stage of one iteration (one shard of it) and commit it.
    ///
    /// Stages of iteration K, in order: prefix, rollout, reward (sharded),
    /// select, optimize (whole). A stage already committed under the same
    /// config is skipped; two workers on the same shard end with one commit.
    ///
    /// Example: worldcompass stage rollout --run s3://bucket/runs/exp1 --iter 3 --shard 1/4
    Stage {
        /// The stage to run.
        #[arg(value_enum)]
        stage: StageArg,
        #[arg(long, env = "WORLDCOMPASS_RUN")]
        run: String,
        /// Iteration K (0-based).
        #[arg(long)]
        iter: u64,
        /// Shard I/N of a sharded stage. Without it, the shard is read from
        /// SLURM_ARRAY_TASK_ID + SLURM_ARRAY_TASK_COUNT, JOB_COMPLETION_INDEX +
        /// JOB_COMPLETIONS (Kubernetes Indexed Job), or AWS_BATCH_JOB_ARRAY_INDEX +
        /// AWS_BATCH_JOB_ARRAY_SIZE; else the whole stage runs as one shard.
        #[arg(long)]
        shard: Option<String>,
        /// Replace a commit made under a different config.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Run iterations locally, stage after stage, resuming what is committed.
    ///
    /// Safe to interrupt at any point: run it again and it continues from the
    /// last committed stage, with the same final bytes as an uninterrupted run.
    ///
    /// Example: worldcompass train --run file:///tmp/runs/demo --pipeline pipelines/embedded.toml
    Train {
        #[arg(long, env = "WORLDCOMPASS_RUN")]
        run: String,
        /// Initialise the run with this config first if it is not initialised.
        #[arg(long)]
        pipeline: Option<String>,
        /// Run iterations 0..ITERS (default: run.iterations of the config).
        #[arg(long, value_parser = clap::value_parser!(u64).range(..=1_000_000))]
        iters: Option<u64>,
        /// With --pipeline: initialise with this seed instead of the
        /// pipeline's run.seed (a run initialised with another is refused).
        #[arg(long, requires = "pipeline")]
        seed: Option<u64>,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Show what is committed in a run, per iteration, stage and shard.
    Status {
        #[arg(long, env = "WORLDCOMPASS_RUN")]
        run: String,
    },
    /// Write a dataset of the embedded world to the store (under <OUT>/dataset/).
    ///
    /// Prompts (scene seed, caption, first frame), basic and combined action
    /// sequences, and ground-truth pre-training clips with exact per-frame
    /// camera poses, in which combined actions are rare. Deterministic in --seed.
    ///
    /// Example: worldcompass data --out file:///data/wc-dataset --pretrain-clips 2000
    Data {
        /// Store URI the dataset is written under.
        #[arg(long)]
        out: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// World prompts (scenes).
        #[arg(long, default_value_t = 64)]
        prompts: usize,
        /// Action sequences of each kind (basic, combined).
        #[arg(long, default_value_t = 64)]
        sequences: usize,
        /// Clips per action sequence.
        #[arg(long, default_value_t = 4)]
        clips: usize,
        /// 4-frame windows per clip.
        #[arg(long, default_value_t = 1)]
        windows_per_clip: usize,
        /// Ground-truth pre-training clips.
        #[arg(long, default_value_t = 256)]
        pretrain_clips: usize,
        /// Windows per pre-training clip.
        #[arg(long, default_value_t = 2)]
        pretrain_windows: usize,
        /// Share of pre-training windows with a combined action.
        #[arg(long, default_value_t = 0.08)]
        combined_rate: f64,
        /// Frame size (square), pixels.
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// Replace a dataset written with other settings.
        #[arg(long)]
        force: bool,
    },
    /// Print the action-accuracy metric's reference points: ground-truth
    /// trajectories (100%), a static model, and a model that moves but
    /// ignores the actions, on generated basic and combined sequences.
    ///
    /// Any model's accuracy means something only above the static model's.
    Metric {
        /// Sequences of each kind.
        #[arg(long, default_value_t = 500)]
        sequences: usize,
        /// Clips per sequence.
        #[arg(long, default_value_t = 4)]
        clips: usize,
        /// 4-frame windows per clip.
        #[arg(long, default_value_t = 4)]
        windows_per_clip: usize,
        /// Switch to a new action every this many windows.
        #[arg(long, default_value_t = 1)]
        hold: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Rotation threshold in degrees.
        #[arg(long, default_value_t = 1.0)]
        tau_rot: f64,
        /// Translation thresholds (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "0.01,0.02,0.03,0.04,0.05")]
        thresholds: Vec<f64>,
    },
    /// Pre-train the base world model on a dataset's ground-truth clips.
    ///
    /// Commits a checkpoint every --checkpoint-every steps under
    /// <OUT>/pretrain/step-<s>/ (model.safetensors, which PyTorch's
    /// safetensors loader reads; optimizer state; loss log). Interrupt it at
    /// any time: run the same command again and it resumes from the newest
    /// checkpoint, with the same result as an uninterrupted run.
    ///
    /// Example: worldcompass pretrain --data file:///data/wc-dataset --out file:///data/wc-base --steps 3000
    Pretrain {
        /// Store URI holding the dataset (written by `worldcompass data`).
        #[arg(long)]
        data: String,
        /// Store URI the checkpoints are committed under.
        #[arg(long)]
        out: String,
        /// Train up to this many steps in total.
        #[arg(long, default_value_t = 3000)]
        steps: u64,
        #[arg(long, default_value_t = 24)]
        batch: usize,
        #[arg(long, default_value_t = 2e-3)]
        lr: f64,
        #[arg(long, default_value_t = 100)]
        warmup: u64,
        #[arg(long, default_value_t = 200)]
        checkpoint_every: u64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Model width.
        #[arg(long, default_value_t = 192)]
        d_model: usize,
        #[arg(long, default_value_t = 4)]
        layers: usize,
        #[arg(long, default_value_t = 6)]
        heads: usize,
        /// Patch size in pixels (a token is one patch of one frame).
        #[arg(long, default_value_t = 8)]
        patch: usize,
        /// Recent frames in the context besides the first frame.
        #[arg(long, default_value_t = 2)]
        context_frames: usize,
        /// MLP width as a multiple of the model width.
        #[arg(long, default_value_t = 2)]
        mlp_ratio: usize,
        #[command(flatten)]
        device: DeviceArgs,
    },
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
    Eval {
        /// Store URI holding the dataset (its prompts are held out of pre-training).
        #[arg(long)]
        data: String,
        /// A model to evaluate: STORE (pre-training checkpoints) or RUN@K
        /// (checkpoint K of a training run, its policy). Repeat to compare.
        #[arg(long, required = true)]
        model: Vec<String>,
        /// Pre-training checkpoint step for STORE models (default: the newest).
        #[arg(long)]
        step: Option<u64>,
        /// Sequences of each kind.
        #[arg(long, default_value_t = 16)]
        sequences: usize,
        /// Lengths as NAME=CLIPS, shortest first. The held-out sequences
        /// must have enough windows for the longest.
        #[arg(long, default_value = "short=1,medium=2,long=4")]
        lengths: String,
        /// Generate each clip from the simulator's true frames (teacher
        /// forcing) instead of the model's own.
        #[arg(long)]
        teacher_forced: bool,
        /// Store URI to write the results to (eval/eval-<unix time>.parquet).
        #[arg(long)]
        out: Option<String>,
        /// The models after the first are replicates of one setting (runs
        /// that differ only in their seed): end each length with their
        /// mean delta and its standard error. `just seeds` uses it.
        #[arg(long)]
        replicates: bool,
        #[command(flatten)]
        sampler: SamplerArgs,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Generate a sequence with a model from a scene's first frame and an
    /// action sequence, and write it as an animated GIF and a PNG strip
    /// (with --truth, the simulator's ground truth is placed beside it).
    ///
    /// Example: worldcompass sample --model file:///data/wc-base --scene 3 --actions forward,turn_left,left --out /tmp/gen
    Sample {
        /// Store URI holding the checkpoints.
        #[arg(long)]
        model: String,
        #[arg(long)]
        step: Option<u64>,
        /// Scene seed of the world prompt.
        #[arg(long, default_value_t = 0)]
        scene: u64,
        /// Comma-separated actions, one per 4-frame window.
        #[arg(long, value_delimiter = ',', required = true)]
        actions: Vec<String>,
        #[command(flatten)]
        sampler: SamplerArgs,
        /// Also render the ground truth beside the generated frames.
        #[arg(long)]
        truth: bool,
        /// Output path prefix: writes PREFIX.gif and PREFIX.png.
        #[arg(long)]
        out: String,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Roll out the same prompt and action sequence with two checkpoints and
    /// write them side by side (with the ground truth) as a GIF and a PNG
    /// strip, the action written under every frame.
    ///
    /// A model is a pre-training store (newest checkpoint) or RUN@K for
    /// checkpoint K of a training run.
    ///
    /// Example: worldcompass compare --a file://$PWD/runs/embedded@0 --b file://$PWD/runs/embedded@24 --scene 3 --actions forward+turn_left,left+turn_up --out /tmp/cmp
    Compare {
        /// First model (left column).
        #[arg(long)]
        a: String,
        /// Second model (middle column).
        #[arg(long)]
        b: String,
        /// Scene seed of the world prompt.
        #[arg(long, default_value_t = 0)]
        scene: u64,
        /// Comma-separated actions, one per 4-frame window.
        #[arg(long, value_delimiter = ',', required = true)]
        actions: Vec<String>,
        #[command(flatten)]
        sampler: SamplerArgs,
        /// Output path prefix: writes PREFIX.gif and PREFIX.png.
        #[arg(long)]
        out: String,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Measure speed on this machine, side by side in one process.
    ///
    /// `bench model`: the f32 matmul peak, a sampler step for a batch of G,
    /// G candidates with the prefix cache against recomputing the prefix,
    /// and a training step's forward and backward, in GFLOP/s and as a share
    /// of the measured peak.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Summarise a training run from its reward log (with Polars): a table
    /// per iteration (mean IF, rotation and translation accuracy, VQ, mean r
    /// of the selected candidates, advantage spread) and PNG charts of the
    /// reward curves.
    ///
    /// The same numbers come from Python with
    /// polars.scan_parquet("<run>/reward_log/**/*.parquet").
    ///
    /// Example: worldcompass report --run file:///tmp/runs/demo --out /tmp/report
    Report {
        #[arg(long, env = "WORLDCOMPASS_RUN")]
        run: String,
        /// Local folder for the charts (reward_if.png, reward_vq.png).
        #[arg(long)]
        out: Option<String>,
    },
    /// Train and validate the built-in reward scorers.
    ///
    /// `train-pose` trains the camera pose estimator on fresh simulator
    /// renders with exact poses (resumable); `eval-pose` measures its action
    /// accuracy on ground-truth windows of held-out scenes, basic and
    /// combined; `eval-vq` ranks clean held-out frames against graded
    /// blur, noise, washed-out colour, blocking and smear.
    ///
    /// Example: worldcompass scorers train-pose --out file://$PWD/models/pose --steps 4000
    Scorers {
        #[command(subcommand)]
        what: ScorersWhat,
        #[command(flatten)]
        device: DeviceArgs,
    },
    /// Render a scene and an action sequence as an animated GIF and a PNG strip.
    ///
    /// Actions are one per 4-frame window: basic (forward, backward, left,
    /// right, turn_up, turn_down, turn_left, turn_right), combined with '+'
    /// (forward+turn_left), or idle. Without --actions, a random sequence of
    /// --kind is drawn from --seed.
    ///
    /// Example: worldcompass render --scene 7 --actions forward,forward,turn_left,forward+right --out /tmp/walk
    Render {
        /// Scene seed.
        #[arg(long, default_value_t = 0)]
        scene: u64,
        /// Comma-separated actions, one per window.
        #[arg(long, value_delimiter = ',')]
        actions: Vec<String>,
        /// Kind of random sequence when --actions is not given.
        #[arg(long, value_enum, default_value = "basic")]
        kind: KindArg,
        /// Windows of the random sequence.
        #[arg(long, default_value_t = 8)]
        windows: usize,
        /// Seed of the random sequence.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Frame size (square), pixels.
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// Output path prefix: writes PREFIX.gif and PREFIX.png.
        #[arg(long)]
        out: String,
    },
    /// Write (or check) the schema files of every table and tensor file.
    ///
    /// The files under schemas/ are generated from the code; a test fails when
    /// they drift. After changing a schema: worldcompass schemas --write schemas/
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
    Plan {
        #[arg(long, default_value = "pipelines/paper.toml")]
        pipeline: String,
        /// Write the markdown here instead of printing it.
        #[arg(long)]
        out: Option<String>,
        /// With --out: only check that the file matches (exit 1 if not).
        #[arg(long, requires = "out")]
        check: bool,
        /// Shards per sharded stage (array size).
        #[arg(long, default_value_t = 64)]
        shards: u64,
        /// GPUs in the cluster.
        #[arg(long, default_value_t = 64)]
        gpus: u64,
        /// Dense bf16 peak per GPU, TFLOP/s (H20: 148, H100 SXM: 989).
        #[arg(long, default_value_t = 148.0)]
        peak_tflops: f64,
        /// Model FLOP utilisation assumed (0..1).
        #[arg(long, default_value_t = 0.4)]
        mfu: f64,
        /// Policy parameters, billions.
        #[arg(long, default_value_t = 8.0)]
        params_b: f64,
        /// Transformer layers and hidden width (attention cost).
        #[arg(long, default_value_t = 32)]
        layers: u64,
        #[arg(long, default_value_t = 4096)]
        hidden: u64,
        /// Latent grid per latent frame: HEIGHTxWIDTHxCHANNELS.
        #[arg(long, default_value = "60x104x16")]
        latent: String,
        /// Clips of context memory besides the first frame.
        #[arg(long, default_value_t = 4)]
        context_clips: u64,
        /// Pose (3D foundation) and VQ reward models, billions of parameters.
        #[arg(long, default_value_t = 1.2)]
        pose_params_b: f64,
        #[arg(long, default_value_t = 2.0)]
        vq_params_b: f64,
    },
    Schemas {
        /// Directory to write into (or check, with --check).
        #[arg(long, default_value = "schemas")]
        write: String,
        /// Only check that the directory matches the code.
        #[arg(long)]
        check: bool,
    },
}

/// How clips are sampled from a model.
#[derive(Debug, Clone, clap::Args)]
pub struct SamplerArgs {
    /// Sampler steps T.
    #[arg(long, default_value_t = 10)]
    pub sampler_steps: usize,
    /// Timestep shift of the sampler.
    #[arg(long, default_value_t = 3.0)]
    pub shift: f64,
    /// Classifier-free guidance scale over the action (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub guidance: f64,
    /// Seed of the initial noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplerArgs {
    pub fn config(&self) -> wc_model::flow::SamplerConfig {
        wc_model::flow::SamplerConfig { steps: self.sampler_steps, shift: self.shift, guidance: self.guidance }
    }
}

/// What `bench` measures.
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
        #[arg(long, default_value_t = 256)]
        hidden: usize,
        /// Frame size it reads (the world model's).
        #[arg(long, default_value_t = 32)]
        frame_size: usize,
        /// Add a translation network that reads each window again with the
        /// turn the rotation network found undone (its rotation homography;
        /// the start pitch searched): combined turn-and-move windows then
        /// show their translation like basic ones. `false` gives the
        /// cost-volume-only estimator of earlier versions.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        derotate: bool,
        /// The translation network reads the de-rotated halves of a window
        /// at every whole-pixel shift within a few pixels (-4..=4 for 32
        /// pixels) instead of the coarse 3-pixel grid: the parallax left
        /// once the turn is undone is that small. Same size of input, so
        /// --init-from may start it from an estimator without it (the
        /// translation network then learns its new inputs).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
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
        #[arg(long, env = "WORLDCOMPASS_RUN")]
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
        #[arg(long, env = "WORLDCOMPASS_RUN")]
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

/// Where a command's models run.
#[derive(Debug, Clone, Copy, Args)]
pub struct DeviceArgs {
    /// Where the model runs: cpu or cuda:N [default: the run's `[run]
    /// device`, else cpu]. cuda:N needs a build with the `cuda` feature
    /// (README, section "GPU").
    #[arg(long, env = "WORLDCOMPASS_DEVICE", value_name = "DEVICE", global = true)]
    pub device: Option<DeviceSpec>,
}

impl DeviceArgs {
    /// The device asked for, the CPU when none was.
    pub fn or_cpu(&self) -> DeviceSpec {
        self.device.unwrap_or_default()
    }
}

#[derive(Debug, Subcommand)]
pub enum BenchWhat {
    /// Everything, as ratios measured side by side in this one run: clip-
    /// vs sample-level rollout, the prefix cache, Table 3 iteration times,
    /// GFLOP/s against the matmul peak, candle against PyTorch, the storage
    /// share of each stage (file:// and a loopback S3 server), and each
    /// stage's peak memory. Prints a table and writes it as Parquet.
    ///
    /// Needs python3 with torch and safetensors for the PyTorch rows and
    /// moto_server for the S3 rows (`just bench` installs them); run it from
    /// the repository root (the pipeline's models/ paths are relative).
    All {
        /// Folder for the results (bench-<unix time>.parquet) and scratch runs.
        #[arg(long, default_value = "runs/bench")]
        out: String,
        /// Pipeline of the stage measurements.
        #[arg(long, default_value = "pipelines/embedded.toml")]
        pipeline: String,
        /// Only these sections (comma-separated): rollout, prefix_cache,
        /// compute, pytorch, stages (Table 3, storage, memory).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Do the CPU and --device compute the same? The world model with the
    /// same seeds and inputs on both: a velocity, a guided sample and one
    /// NFT optimizer step, each against its f32 tolerance. Exits non-zero
    /// if one is outside it.
    ///
    /// Example: worldcompass bench devices --device cuda:0
    Devices {
        /// Model size: tiny or default (the embedded model).
        #[arg(long, default_value = "default")]
        preset: String,
    },
    /// The world model at its default config: the matmul peak, a sampler
    /// step and a training step (quick; `bench all` has the rest).
    Model {
        /// Candidates G per group (the sampler step's batch).
        #[arg(long, default_value_t = 8)]
        candidates: usize,
        /// Training batch.
        #[arg(long, default_value_t = 24)]
        batch: usize,
    },
}

/// Action-sequence kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    Basic,
    Combined,
}

/// The stages, as the command line names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StageArg {
    Prefix,
    Rollout,
    Reward,
    Select,
    Optimize,
}

impl StageArg {
    pub fn stage(self) -> wc_stages::Stage {
        match self {
            StageArg::Prefix => wc_stages::Stage::Prefix,
            StageArg::Rollout => wc_stages::Stage::Rollout,
            StageArg::Reward => wc_stages::Stage::Reward,
            StageArg::Select => wc_stages::Stage::Select,
            StageArg::Optimize => wc_stages::Stage::Optimize,
        }
    }
}

/// Batch-engine variables that carry an array index and its count.
pub const SHARD_ENV: [(&str, &str, &str); 3] = [
    ("Slurm", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"),
    ("Kubernetes", "JOB_COMPLETION_INDEX", "JOB_COMPLETIONS"),
    ("AWS Batch", "AWS_BATCH_JOB_ARRAY_INDEX", "AWS_BATCH_JOB_ARRAY_SIZE"),
];

/// The shard of this worker: `--shard` if given, else the first batch
/// engine whose index variable is set (its count variable must be set too),
/// else `None` (the whole stage).
pub fn resolve_shard(flag: Option<&str>, env: impl Fn(&str) -> Option<String>) -> Result<Option<ShardSpec>, String> {
    if let Some(s) = flag {
        return ShardSpec::parse(s).map(Some).map_err(|e| format!("--shard {s}: {e}"));
    }
    for (engine, index_var, count_var) in SHARD_ENV {
        let Some(index) = env(index_var) else { continue };
        let count = env(count_var).ok_or_else(|| {
            format!("{engine}: {index_var} is set but {count_var} is not; set it to the number of array tasks (or pass --shard I/N)")
        })?;
        let mut i: u32 = index.trim().parse().map_err(|_| format!("{index_var}='{index}' is not a number"))?;
        // Slurm arrays may start anywhere (--array=1-4): count from the first.
        if index_var == "SLURM_ARRAY_TASK_ID"
            && let Some(min) = env("SLURM_ARRAY_TASK_MIN")
        {
            let min: u32 = min.trim().parse().map_err(|_| format!("SLURM_ARRAY_TASK_MIN='{min}' is not a number"))?;
            i = i.checked_sub(min).ok_or_else(|| format!("SLURM_ARRAY_TASK_ID={i} is below SLURM_ARRAY_TASK_MIN={min}"))?;
        }
        let n: u32 = count.trim().parse().map_err(|_| format!("{count_var}='{count}' is not a number"))?;
        return ShardSpec::new(i, n).map(Some).map_err(|e| format!("{engine} ({index_var}={i}, {count_var}={n}): {e}"));
    }
    Ok(None)
}

/// A share in [0, 1] (`--generated-share`).
fn share_in_0_1(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        Ok(v) => Err(format!("{v} is not a share between 0 and 1")),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn shard_flag_wins_over_environment() {
        let s = resolve_shard(Some("2/5"), env_of(&[("SLURM_ARRAY_TASK_ID", "1"), ("SLURM_ARRAY_TASK_COUNT", "3")])).unwrap();
        assert_eq!(s, Some(ShardSpec::new(2, 5).unwrap()));
    }

    #[test]
    fn each_batch_engine_maps_to_a_shard() {
        let slurm = resolve_shard(None, env_of(&[("SLURM_ARRAY_TASK_ID", "1"), ("SLURM_ARRAY_TASK_COUNT", "3")])).unwrap();
        assert_eq!(slurm, Some(ShardSpec::new(1, 3).unwrap()));
        let one_based = resolve_shard(
            None,
            env_of(&[("SLURM_ARRAY_TASK_ID", "3"), ("SLURM_ARRAY_TASK_MIN", "1"), ("SLURM_ARRAY_TASK_COUNT", "4")]),
        )
        .unwrap();
        assert_eq!(one_based, Some(ShardSpec { index: 2, count: 4 }));
        let k8s = resolve_shard(None, env_of(&[("JOB_COMPLETION_INDEX", "0"), ("JOB_COMPLETIONS", "4")])).unwrap();
        assert_eq!(k8s, Some(ShardSpec::new(0, 4).unwrap()));
        let batch = resolve_shard(None, env_of(&[("AWS_BATCH_JOB_ARRAY_INDEX", "7"), ("AWS_BATCH_JOB_ARRAY_SIZE", "8")])).unwrap();
        assert_eq!(batch, Some(ShardSpec::new(7, 8).unwrap()));
        assert_eq!(resolve_shard(None, env_of(&[])).unwrap(), None);
    }

    #[test]
    fn bad_shard_environment_is_a_clear_error() {
        let err = resolve_shard(None, env_of(&[("SLURM_ARRAY_TASK_ID", "3"), ("SLURM_ARRAY_TASK_COUNT", "3")])).unwrap_err();
        assert!(err.contains("out of range"), "{err}");
        let err = resolve_shard(None, env_of(&[("JOB_COMPLETION_INDEX", "0")])).unwrap_err();
        assert!(err.contains("JOB_COMPLETIONS is not"), "{err}");
        let err = resolve_shard(Some("1-4"), env_of(&[])).unwrap_err();
        assert!(err.contains("I/N"), "{err}");
    }

    #[test]
    fn a_share_outside_0_1_is_refused() {
        assert_eq!(share_in_0_1("0.25"), Ok(0.25));
        assert_eq!(share_in_0_1("1"), Ok(1.0));
        assert!(share_in_0_1("1.5").unwrap_err().contains("between 0 and 1"));
        assert!(share_in_0_1("-0.1").unwrap_err().contains("between 0 and 1"));
        assert!(share_in_0_1("half").is_err());
    }
}
