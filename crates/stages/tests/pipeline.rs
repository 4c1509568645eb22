//! The stages end to end, in process, on memory:// and file:// runs.

use wc_config::PipelineConfig;
use wc_stages::tables::selection_from_batch;
use wc_stages::{init_run, run_stage, train, RunContext, Stage, StageOutcome, StageRequest};
use wc_store::{RunStore, ShardSpec};

fn embedded() -> PipelineConfig {
    PipelineConfig::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../../pipelines/linear.toml")).unwrap()
}

fn new_run(uri: &str, cfg: &PipelineConfig) -> RunContext {
    let store = RunStore::open(uri).unwrap();
    init_run(&store, cfg, false).unwrap();
    RunContext::from_store(store).unwrap()
}

fn req(stage: Stage, iter: u64, shard: ShardSpec) -> StageRequest {
    StageRequest { stage, iter, shard, force: false }
}

fn mean_if(ctx: &RunContext, iter: u64) -> f64 {
    let path = format!("reward_log/iter-{iter:06}.parquet");
    let b = wc_schemas::read_table(&wc_schemas::tables::selection(), &path, ctx.store.get(&path).unwrap()).unwrap();
    let rows = selection_from_batch(&b, &path).unwrap();
    rows.iter().map(|r| r.score.if_score).sum::<f64>() / rows.len() as f64
}

#[test]
fn training_improves_interaction_following_on_the_linear_backend() {
    let mut cfg = embedded();
    cfg.run.iterations = 24;
    let ctx = new_run("memory://train", &cfg);
    train(&ctx, 24, |_, _, _| {}).unwrap();
    let early: f64 = (0..4).map(|k| mean_if(&ctx, k)).sum::<f64>() / 4.0;
    let late: f64 = (20..24).map(|k| mean_if(&ctx, k)).sum::<f64>() / 4.0;
    eprintln!("IF first 4 iterations {early:.3}, last 4 {late:.3}");
    assert!(late > early + 0.05, "IF did not improve: first 4 iterations {early:.3}, last 4 {late:.3}");
}

#[test]
fn stage_run_twice_commits_once() {
    let ctx = new_run("memory://twice", &embedded());
    let first = run_stage(&ctx, req(Stage::Prefix, 0, ShardSpec::WHOLE)).unwrap();
    assert!(matches!(first, StageOutcome::Committed { .. }));
    let before = ctx.store.list("iters").unwrap();
    let second = run_stage(&ctx, req(Stage::Prefix, 0, ShardSpec::WHOLE)).unwrap();
    assert!(matches!(second, StageOutcome::AlreadyCommitted { .. }), "{second:?}");
    assert!(second.to_string().contains("already committed"));
    assert_eq!(before, ctx.store.list("iters").unwrap());
}

#[test]
fn sharded_iteration_gives_the_same_bytes_as_unsharded() {
    let cfg = embedded();
    let whole = new_run("memory://whole", &cfg);
    let sharded = new_run("memory://sharded", &cfg);
    for k in 0..2 {
        for stage in Stage::ALL {
            run_stage(&whole, req(stage, k, ShardSpec::WHOLE)).unwrap();
            if stage.sharded() {
                for i in 0..3 {
                    run_stage(&sharded, req(stage, k, ShardSpec::new(i, 3).unwrap())).unwrap();
                }
            } else {
                run_stage(&sharded, req(stage, k, ShardSpec::WHOLE)).unwrap();
            }
        }
    }
    for f in ["checkpoints/000002/policy.safetensors", "checkpoints/000002/old_policy.safetensors", "reward_log/iter-000001.parquet"] {
        assert_eq!(whole.store.get(f).unwrap(), sharded.store.get(f).unwrap(), "{f}");
    }
    // Per-group outputs are identical too, wherever the shard put them.
    let a = whole.store.get("iters/000001/rollout/shard-000-of-001/group-00004.safetensors").unwrap();
    let b = sharded.store.get("iters/000001/rollout/shard-001-of-003/group-00004.safetensors").unwrap();
    assert_eq!(a, b);
}

#[test]
fn next_stage_refuses_incomplete_shards_and_says_which() {
    let ctx = new_run("memory://incomplete", &embedded());
    run_stage(&ctx, req(Stage::Prefix, 0, ShardSpec::new(0, 2).unwrap())).unwrap();
    let err = run_stage(&ctx, req(Stage::Rollout, 0, ShardSpec::WHOLE)).unwrap_err().to_string();
    assert!(err.contains("prefix of iteration 0 is not complete") && err.contains("1 of 2 shards"), "{err}");
    let err = run_stage(&ctx, req(Stage::Select, 0, ShardSpec::new(0, 2).unwrap())).unwrap_err().to_string();
    assert!(err.contains("not sharded"), "{err}");
}

#[test]
fn rerun_under_another_config_is_refused_unless_forced() {
    let cfg = embedded();
    let ctx = new_run("memory://refuse", &cfg);
    run_stage(&ctx, req(Stage::Prefix, 0, ShardSpec::WHOLE)).unwrap();
    let mut other = cfg.clone();
    other.optimize.lr *= 3.0;
    // init with another config is refused...
    let err = init_run(&ctx.store, &other, false).unwrap_err().to_string();
    assert!(err.contains("already initialised with a different pipeline config"), "{err}");
    // ...and so is a stage under a config the run was not initialised with.
    let ctx2 = RunContext::with_config(ctx.store.clone(), other.clone());
    let err = run_stage(&ctx2, StageRequest { force: true, ..req(Stage::Prefix, 0, ShardSpec::WHOLE) }).unwrap_err().to_string();
    assert!(err.contains("changed after the run was initialised"), "{err}");
    // Re-initialised with it (init --force), the stage committed under the
    // old config is refused unless forced.
    init_run(&ctx.store, &other, true).unwrap();
    let err = run_stage(&ctx2, req(Stage::Prefix, 0, ShardSpec::WHOLE)).unwrap_err().to_string();
    assert!(err.contains("different config fingerprint") && err.contains("--force"), "{err}");
    let forced = run_stage(&ctx2, StageRequest { force: true, ..req(Stage::Prefix, 0, ShardSpec::WHOLE) }).unwrap();
    assert!(matches!(forced, StageOutcome::Committed { .. }));
}

/// Regression test for "`train` silently mixes configs" (issue 28, 3):
/// with `run.toml` edited after init, `train` trained the next iteration
/// under the new values. Every command that continues a run now checks the
/// config against the one the run was initialised with.
#[test]
fn train_refuses_a_run_toml_edited_after_init() {
    let cfg = embedded();
    let ctx = new_run("memory://edited", &cfg);
    train(&ctx, 1, |_, _, _| {}).unwrap();
    let mut edited = cfg.clone();
    edited.select.lambda = 0.25;
    ctx.store.put("run.toml", edited.to_toml().into()).unwrap();
    let edited_ctx = RunContext::from_store(ctx.store.clone()).unwrap();
    let err = train(&edited_ctx, 2, |_, _, _| {}).unwrap_err().to_string();
    assert!(err.contains("run.toml was changed after the run was initialised") && err.contains("new run"), "{err}");
    for stage in Stage::ALL {
        let e = run_stage(&edited_ctx, req(stage, 1, ShardSpec::WHOLE)).unwrap_err().to_string();
        assert!(e.contains("changed after the run was initialised"), "{stage:?}: {e}");
    }
    assert!(ctx.store.get_opt("iters/000001/prefix/shard-000-of-001/_manifest.json").unwrap().is_none(), "nothing of iteration 1 ran");
    // Restored, the run continues.
    ctx.store.put("run.toml", cfg.to_toml().into()).unwrap();
    train(&RunContext::from_store(ctx.store.clone()).unwrap(), 2, |_, _, _| {}).unwrap();
}

#[test]
fn selection_follows_the_formulas() {
    let ctx = new_run("memory://select", &embedded());
    train(&ctx, 1, |_, _, _| {}).unwrap();
    let path = "reward_log/iter-000000.parquet";
    let b = wc_schemas::read_table(&wc_schemas::tables::selection(), path, ctx.store.get(path).unwrap()).unwrap();
    let rows = selection_from_batch(&b, path).unwrap();
    let (g, z, lambda) = (ctx.cfg.rollout.candidates as usize, ctx.cfg.select.z, ctx.cfg.select.lambda);
    assert_eq!(rows.len(), ctx.cfg.data.groups as usize * g);
    for group in rows.chunks(g) {
        // Advantages are zero-mean per group, r follows its formula, 6 kept.
        assert!(group.iter().map(|r| r.adv_if).sum::<f64>().abs() < 1e-9);
        for r in group {
            let adv = lambda * r.adv_if + (1.0 - lambda) * r.adv_vq;
            assert!((r.adv - adv).abs() < 1e-12);
            assert!((r.r - (0.5 + 0.5 * (adv / z).clamp(-1.0, 1.0))).abs() < 1e-12);
        }
        assert_eq!(group.iter().filter(|r| r.selected).count(), 6);
        let min_kept = group.iter().filter(|r| r.selected).map(|r| r.adv).fold(f64::INFINITY, f64::min);
        let max_dropped = group.iter().filter(|r| !r.selected).map(|r| r.adv).fold(f64::NEG_INFINITY, f64::max);
        let max_kept = group.iter().filter(|r| r.selected).map(|r| r.adv).fold(f64::NEG_INFINITY, f64::max);
        assert!(max_dropped <= max_kept && min_kept <= max_dropped.max(min_kept));
    }
}

#[test]
fn file_run_survives_reopen_and_status_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let uri = format!("file://{}", dir.path().display());
    let ctx = new_run(&uri, &embedded());
    run_stage(&ctx, req(Stage::Prefix, 0, ShardSpec::new(1, 2).unwrap())).unwrap();
    let reopened = RunContext::open(&uri).unwrap();
    let rows = wc_stages::run_status(&reopened).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].stage, rows[0].state, rows[0].committed.clone()), ("prefix", "partial", vec![1]));
}

/// A tiny world-model run that needs nothing outside the run: a fresh,
/// seeded tiny model, the probe as the IF instrument.
fn tiny_world() -> PipelineConfig {
    let mut cfg = embedded();
    cfg.model = wc_config::ModelSection::World(wc_config::WorldModelConfig { base: String::new(), base_step: None, preset: "tiny".into() });
    cfg.reward.if_instrument = wc_config::IfInstrument::Probe;
    cfg.data.prompts = 6;
    cfg.data.groups = 3;
    cfg.rollout.candidates = 4;
    cfg.rollout.sampler_steps = 3;
    cfg.select.keep_top = 1;
    cfg.select.keep_bottom = 1;
    cfg.optimize.lr = 1e-3;
    PipelineConfig::parse("tiny world", &cfg.to_toml()).unwrap()
}

/// Which backend the registry gives a run, and that it trains.
struct Probe;

impl wc_stages::backend::WithBackend for Probe {
    type Output = (String, Vec<usize>);
    fn run<B: wc_stages::backend::Backend>(self, b: &B) -> Result<Self::Output, wc_stages::StageError> {
        Ok((std::any::type_name::<B>().rsplit("::").next().unwrap().to_string(), b.clip_shape()))
    }
}

/// The backends issue: the linear test double and the world model go
/// through the same stage functions (the runner's one path, generic over
/// the backend the registry picks), and each trains.
#[test]
fn both_backends_train_through_the_same_stage_functions() {
    for (cfg, backend, clip) in [(embedded(), "LinearBackend<'_>", vec![16]), (tiny_world(), "WorldBackend<'_>", vec![4, 3, 16, 16])] {
        let ctx = new_run(&format!("memory://both-{backend}"), &cfg);
        assert_eq!(wc_stages::backend::with_backend(&ctx, Probe).unwrap(), (backend.to_string(), clip.clone()));
        train(&ctx, 2, |_, _, _| {}).unwrap();
        for k in [1, 2] {
            let before = ctx.store.get(&format!("checkpoints/{:06}/policy.safetensors", k - 1)).unwrap();
            let after = ctx.store.get(&format!("checkpoints/{k:06}/policy.safetensors")).unwrap();
            assert_ne!(before, after, "{backend}: iteration {} moved the policy", k - 1);
        }
    }
}

/// `[run] dtype = "bf16"` samples on CUDA only: on the CPU the sampling
/// stages refuse it and commit nothing, and it is part of the fingerprint.
#[test]
fn bf16_sampling_on_the_cpu_is_refused_and_commits_nothing() {
    let mut cfg = tiny_world();
    cfg.run.dtype = wc_config::SamplingDtype::Bf16;
    let cfg = PipelineConfig::parse("bf16", &cfg.to_toml()).unwrap();
    assert_ne!(cfg.fingerprint(), tiny_world().fingerprint());
    let ctx = new_run("memory://bf16", &cfg);
    let err = run_stage(&ctx, req(Stage::Prefix, 0, ShardSpec::WHOLE)).unwrap_err().to_string();
    assert!(err.contains("samples on CUDA devices") && err.contains("--device cuda:N"), "{err}");
    assert!(ctx.store.list("iters").unwrap().iter().all(|p| !p.ends_with(wc_store::MANIFEST_FILE)), "nothing committed");
}

/// The stage bodies name no model: the registry (`backend/mod.rs`) is the
/// one place that does.
#[test]
fn stage_bodies_name_no_model_kind() {
    let files = [
        ("stages/mod.rs", include_str!("../src/stages/mod.rs")),
        ("stages/prefix.rs", include_str!("../src/stages/prefix.rs")),
        ("stages/rollout.rs", include_str!("../src/stages/rollout.rs")),
        ("stages/reward.rs", include_str!("../src/stages/reward.rs")),
        ("stages/select.rs", include_str!("../src/stages/select.rs")),
        ("stages/optimize.rs", include_str!("../src/stages/optimize.rs")),
        ("runner.rs", include_str!("../src/runner.rs")),
        ("init.rs", include_str!("../src/init.rs")),
    ];
    for (file, text) in files {
        for name in ["ModelKind", "model.kind", "WorldModel", "LinearPolicy", "WorldPolicy", "PixelCodec"] {
            assert!(!text.contains(name), "{file} names {name}: stage code goes through the Backend trait");
        }
    }
    let registry = include_str!("../src/backend/mod.rs");
    assert!(registry.contains("ModelSection::Linear") && registry.contains("ModelSection::World"));
}
