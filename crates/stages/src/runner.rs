//! The stage runner: skip what is committed, refuse a different config,
//! run the stage body, commit with a create-only manifest.

use std::sync::OnceLock;

use candle_core::Device;
use wc_config::{DeviceSpec, PipelineConfig};
use wc_store::{CommitOutcome, ManifestState, PendingCommit, RunStore, ShardSpec};

use crate::backend::{self, Backend, WithBackend};
use crate::error::StageError;
use crate::{inputs, layout, stages};

/// The five stages of an iteration, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Prefix,
    Rollout,
    Reward,
    Select,
    Optimize,
}

impl Stage {
    pub const ALL: [Stage; 5] = [Stage::Prefix, Stage::Rollout, Stage::Reward, Stage::Select, Stage::Optimize];

    pub fn name(&self) -> &'static str {
        match self {
            Stage::Prefix => "prefix",
            Stage::Rollout => "rollout",
            Stage::Reward => "reward",
            Stage::Select => "select",
            Stage::Optimize => "optimize",
        }
    }

    /// Whether the stage splits its groups across shards.
    pub fn sharded(&self) -> bool {
        matches!(self, Stage::Prefix | Stage::Rollout | Stage::Reward)
    }

    pub fn parse(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|st| st.name() == s)
    }
}

/// An opened, initialised run: its store, its pipeline config and the
/// device its models run on.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub store: RunStore,
    pub cfg: PipelineConfig,
    /// Fingerprint of the config; every commit of the run records it.
    pub fingerprint: String,
    /// The device the user chose (`--device`, else the config's
    /// `run.device`).
    pub device_spec: DeviceSpec,
    /// The opened device: opened once, on first use, so that commands that
    /// run no model (status, select) never need it.
    device: OnceLock<Device>,
}

impl RunContext {
    /// Open an initialised run (reads its `run.toml`).
    pub fn open(uri: &str) -> Result<Self, StageError> {
        let store = RunStore::open_existing(uri).map_err(|e| match e {
            wc_store::StoreError::NoSuchStore { uri } => StageError::NotInitialised { uri },
            other => other.into(),
        })?;
        Self::from_store(store)
    }

    /// Open an initialised run over an already-opened store.
    pub fn from_store(store: RunStore) -> Result<Self, StageError> {
        let Some(bytes) = store.get_opt(layout::RUN_CONFIG)? else {
            return Err(StageError::NotInitialised {
                uri: store.uri().to_string(),
            });
        };
        let origin = store.uri_of(layout::RUN_CONFIG);
        let text = String::from_utf8(bytes.to_vec()).map_err(|_| StageError::invalid(&origin, "not UTF-8 text"))?;
        let cfg = PipelineConfig::parse(&origin, &text)?;
        Ok(Self::with_config(store, cfg))
    }

    /// A context over `store` with a config given here instead of the run's
    /// `run.toml` (what a stage would see had the run been initialised
    /// with `cfg`).
    pub fn with_config(store: RunStore, cfg: PipelineConfig) -> Self {
        let fingerprint = cfg.fingerprint();
        let device_spec = cfg.run.device;
        RunContext { store, cfg, fingerprint, device_spec, device: OnceLock::new() }
    }

    /// Run models on `device` instead of the config's `run.device` (a
    /// command's `--device`); `None` keeps the config's.
    pub fn on_device(mut self, device: Option<DeviceSpec>) -> Self {
        if let Some(d) = device {
            self.device_spec = d;
            self.device = OnceLock::new();
        }
        self
    }

    /// The device models run on, opened on first use.
    pub fn device(&self) -> Result<&Device, StageError> {
        if let Some(d) = self.device.get() {
            return Ok(d);
        }
        let d = wc_model::device::open(self.device_spec)?;
        Ok(self.device.get_or_init(|| d))
    }
}

/// One stage run: which stage, iteration and shard, and whether to replace
/// a commit made under another config.
#[derive(Debug, Clone, Copy)]
pub struct StageRequest {
    pub stage: Stage,
    pub iter: u64,
    pub shard: ShardSpec,
    pub force: bool,
}

/// How a stage run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageOutcome {
    /// This run committed the stage.
    Committed { manifest: String, files: usize },
    /// The stage was committed before (same config): nothing was done.
    AlreadyCommitted { manifest: String },
    /// Another worker committed the same shard while this one ran.
    LostRace { manifest: String },
}

impl std::fmt::Display for StageOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StageOutcome::Committed { manifest, files } => write!(f, "committed {files} files ({manifest})"),
            StageOutcome::AlreadyCommitted { manifest } => {
                write!(f, "already committed ({manifest}); nothing to do")
            }
            StageOutcome::LostRace { manifest } => write!(
                f,
                "lost the race: another worker committed this shard first ({manifest}); its outputs are identical, nothing to do"
            ),
        }
    }
}

/// Where a stage request commits.
pub fn commit_dir(req: &StageRequest) -> String {
    if req.stage.sharded() {
        layout::shard_dir(req.iter, req.stage.name(), req.shard)
    } else {
        layout::stage_dir(req.iter, req.stage.name())
    }
}

/// Run one stage (or one shard of it) and commit its outputs.
pub fn run_stage(ctx: &RunContext, req: StageRequest) -> Result<StageOutcome, StageError> {
    if !req.stage.sharded() && req.shard != ShardSpec::WHOLE {
        return Err(StageError::NotSharded { stage: req.stage.name() });
    }
    // The run's data, under the config it was initialised with.
    inputs::init_set(ctx)?;
    let dir = commit_dir(&req);
    let shard = req.stage.sharded().then_some(req.shard);
    let mut pending = PendingCommit::begin(&ctx.store, &dir, req.stage.name(), Some(req.iter), shard, &ctx.fingerprint);
    if let ManifestState::Committed(_) = pending.check(req.force)? {
        return Ok(StageOutcome::AlreadyCommitted {
            manifest: pending.manifest_path().to_string(),
        });
    }
    if req.stage != Stage::Select {
        // Every stage but select runs a model: a device this build cannot
        // open fails here, before anything is read.
        ctx.device()?;
    }
    tracing::info!(stage = req.stage.name(), iter = req.iter, shard = %req.shard, device = %ctx.device_spec, "running");
    let files = match req.stage {
        // Select runs no model.
        Stage::Select => stages::select(ctx, req.iter, &dir, &mut pending)?,
        _ => backend::with_backend(ctx, StageBody { ctx, req, dir: &dir, pending: &mut pending })?,
    };
    Ok(match pending.commit()? {
        CommitOutcome::Committed { manifest, .. } => StageOutcome::Committed { manifest, files },
        CommitOutcome::LostRace { manifest } => StageOutcome::LostRace { manifest },
    })
}

/// A model stage's body, run with the run's backend.
struct StageBody<'a> {
    ctx: &'a RunContext,
    req: StageRequest,
    dir: &'a str,
    pending: &'a mut PendingCommit,
}

impl WithBackend for StageBody<'_> {
    type Output = usize;

    fn run<B: Backend>(self, b: &B) -> Result<usize, StageError> {
        let StageBody { ctx, req, dir, pending } = self;
        match req.stage {
            Stage::Prefix => stages::prefix(b, ctx, req.iter, req.shard, dir, pending),
            Stage::Rollout => stages::rollout(b, ctx, req.iter, req.shard, dir, pending),
            Stage::Reward => stages::reward(b, ctx, req.iter, req.shard, dir, pending),
            Stage::Optimize => stages::optimize(b, ctx, req.iter, dir, pending),
            Stage::Select => stages::select(ctx, req.iter, dir, pending),
        }
    }
}

/// Run iterations `0..iters` locally, stage after stage, skipping every
/// stage already committed (by this command, a crashed earlier one, or
/// shards run elsewhere). `on_stage` is told each (iteration, stage, outcome).
pub fn train(
    ctx: &RunContext,
    iters: u64,
    mut on_stage: impl FnMut(u64, Stage, &StageOutcome),
) -> Result<(), StageError> {
    inputs::init_set(ctx)?;
    for k in 0..iters {
        for stage in Stage::ALL {
            let outcome = if inputs::is_committed(ctx, k, stage)? {
                StageOutcome::AlreadyCommitted {
                    manifest: layout::stage_dir(k, stage.name()),
                }
            } else {
                run_stage(
                    ctx,
                    StageRequest {
                        stage,
                        iter: k,
                        shard: ShardSpec::WHOLE,
                        force: false,
                    },
                )?
            };
            on_stage(k, stage, &outcome);
        }
    }
    Ok(())
}
