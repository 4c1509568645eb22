//! `worldcompass`: see `worldcompass --help`.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use tracing_subscriber::EnvFilter;
use wc_config::PipelineConfig;
use wc_stages::{init_run, run_stage, run_status, train, InitOutcome, RunContext, StageOutcome, StageRequest};
use wc_store::{RunStore, ShardSpec};
use worldcompass::{resolve_shard, Cli, Command};

fn main() -> ExitCode {
    // Behave like a Unix tool when piped into `head`: exit quietly on a closed pipe.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        // Keep freed tensor buffers in the heap instead of returning them to
        // the kernel: candle allocates a buffer per op, and re-faulting fresh
        // pages cost about a tenth of a training step.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("WORLDCOMPASS_LOG").unwrap_or_else(|_| EnvFilter::new("warn")))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain, each cause on its own line, credentials redacted.
            let mut msg = format!("error: {e}");
            for cause in e.chain().skip(1) {
                msg.push_str(&format!("\n  caused by: {cause}"));
            }
            eprintln!("{}", wc_store::redact(&msg));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init { run, pipeline, force, seed } => {
            let cfg = with_seed(PipelineConfig::load(&pipeline)?, seed);
            let store = RunStore::open(&run)?;
            match init_run(&store, &cfg, force)? {
                InitOutcome::Created => println!("initialised {} with {pipeline}{}", store.uri(), seed_note(seed)),
                InitOutcome::AlreadyInitialised => println!("{} is already initialised with this config; nothing to do", store.uri()),
            }
        }
        Command::Stage { stage, run, iter, shard, force, device } => {
            let shard = resolve_shard(shard.as_deref(), |k| std::env::var(k).ok()).map_err(anyhow::Error::msg)?;
            let stage = stage.stage();
            let shard = match shard {
                Some(s) if !stage.sharded() && s.count > 1 => {
                    anyhow::bail!("stage {} is not sharded: run it as a single job (got shard {s})", stage.name())
                }
                Some(s) if stage.sharded() => s,
                _ => ShardSpec::WHOLE,
            };
            let t0 = std::time::Instant::now();
            let ctx = RunContext::open(&run)?.on_device(device.device);
            let outcome = run_stage(&ctx, StageRequest { stage, iter, shard, force })
                .with_context(|| format!("stage {} of iteration {iter} (shard {shard}) failed; nothing was committed", stage.name()))?;
            println!("{} iter {iter} shard {shard}: {outcome}", stage.name());
            // One machine-readable line for batch logs (and `worldcompass bench`).
            let io = ctx.store.io_stats();
            let stats = wc_bench::stage_runs::StageStats {
                wall_s: t0.elapsed().as_secs_f64(),
                io_s: io.seconds,
                io_calls: io.calls,
                read_bytes: io.bytes_read,
                written_bytes: io.bytes_written,
                peak_rss_bytes: wc_bench::stage_runs::own_peak_rss_bytes(),
            };
            println!("{stats}");
        }
        Command::Train { run, pipeline, iters, seed, device } => {
            // Only a train that may initialise the run creates its folder.
            let store = if pipeline.is_some() { RunStore::open(&run)? } else { RunStore::open_existing(&run)? };
            if let Some(p) = &pipeline {
                let cfg = with_seed(PipelineConfig::load(p)?, seed);
                if init_run(&store, &cfg, false)? == InitOutcome::Created {
                    println!("initialised {} with {p}{}", store.uri(), seed_note(seed));
                }
            }
            let ctx = RunContext::from_store(store)?.on_device(device.device);
            let iters = iters.unwrap_or(ctx.cfg.run.iterations);
            let bar = indicatif::ProgressBar::new(iters * 5);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} stages {msg} ({elapsed})")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix("train");
            let mut t0 = std::time::Instant::now();
            // Stages committed earlier are reported as one line per run of
            // them (a resumed run would otherwise print five lines per
            // finished iteration).
            let mut skipped: Option<(String, usize)> = None;
            let flush = |skipped: &mut Option<(String, usize)>| {
                if let Some((from, n)) = skipped.take() {
                    println!("{from} onwards: {n} stage{} already committed; nothing to do", if n == 1 { "" } else { "s" });
                }
            };
            train(&ctx, iters, |k, stage, outcome| {
                let secs = t0.elapsed().as_secs_f64();
                t0 = std::time::Instant::now();
                bar.set_message(format!("iter {k} {}", stage.name()));
                bar.inc(1);
                if matches!(outcome, StageOutcome::AlreadyCommitted { .. }) {
                    skipped.get_or_insert_with(|| (format!("iter {k} {}", stage.name()), 0)).1 += 1;
                    return;
                }
                bar.suspend(|| {
                    flush(&mut skipped);
                    println!("iter {k} {}: {outcome} [{secs:.1} s]", stage.name())
                });
            })?;
            bar.finish_and_clear();
            flush(&mut skipped);
            println!("trained {iters} iterations; checkpoint: {}/checkpoints/{iters:06}", ctx.store.uri());
        }
        Command::Status { run } => {
            let ctx = RunContext::open(&run)?;
            let rows = run_status(&ctx)?;
            println!("run {} (config {})", ctx.store.uri(), &ctx.fingerprint[..12]);
            if rows.is_empty() {
                println!("no stage has run yet");
            }
            println!("{:>6}  {:<9} {:<10} {:<18} committed shards", "iter", "stage", "shards", "state");
            for r in rows {
                let idx = if r.committed.is_empty() { "-".to_string() } else { format!("{:?}", r.committed) };
                println!("{:>6}  {:<9} {:<10} {:<18} {idx}", r.iter, r.stage, r.shards, r.state);
            }
        }
        Command::Data { out, seed, prompts, sequences, clips, windows_per_clip, pretrain_clips, pretrain_windows, combined_rate, size, force } => {
            let spec = wc_data::DatasetSpec {
                seed,
                prompts,
                sequences_per_kind: sequences,
                clips,
                windows_per_clip,
                pretrain_clips,
                pretrain_windows,
                pretrain_combined_rate: combined_rate,
                render: wc_world::RenderConfig { width: size, height: size, ..Default::default() },
                ..Default::default()
            };
            let store = RunStore::open(&out)?;
            match wc_data::write_dataset(&store, &spec, force)? {
                wc_data::DataOutcome::Written { files } => println!("wrote {files} files under {}/{}", store.uri(), wc_data::DATASET_DIR),
                wc_data::DataOutcome::AlreadyWritten => println!("{}/{} already holds this dataset; nothing to do", store.uri(), wc_data::DATASET_DIR),
                wc_data::DataOutcome::LostRace => println!("another worker wrote this dataset first; nothing to do"),
            }
        }
        Command::Pretrain { data, out, steps, batch, lr, warmup, checkpoint_every, seed, d_model, layers, heads, patch, context_frames, mlp_ratio, device } => {
            let data = RunStore::open_existing(&data)?;
            let out = RunStore::open(&out)?;
            anyhow::ensure!(checkpoint_every > 0, "--checkpoint-every must be at least 1");
            let model = wc_model::ModelConfig {
                d_model,
                layers,
                heads,
                patch,
                context_frames,
                mlp_ratio,
                ..Default::default()
            };
            let settings = wc_stages::pretrain::PretrainSettings {
                model,
                seed,
                batch,
                lr,
                warmup_steps: warmup,
                action_dropout: 0.1,
                checkpoint_every,
                dataset: String::new(),
            };
            let bar = step_bar(steps, "pretrain");
            let mut ema_loss: Option<f64> = None;
            let mut first = true;
            let done = wc_stages::pretrain::run_pretrain(&data, &out, settings, steps, &wc_model::device::open(device.or_cpu())?, |step, r| {
                if first {
                    bar.set_position(step);
                    first = false;
                }
                let l = ema_loss.map_or(r.loss, |e| 0.98 * e + 0.02 * r.loss);
                ema_loss = Some(l);
                bar.set_message(format!("loss {l:.4} lr {:.1e}", r.lr));
                bar.inc(1);
                if !bar.is_hidden() {
                    return;
                }
                if (step + 1) % 50 == 0 {
                    eprintln!("step {} loss {l:.4} grad_norm {:.3}", step + 1, r.grad_norm);
                }
            })?;
            bar.finish_and_clear();
            println!("pre-trained to step {done}; checkpoint: {}/{}", out.uri(), wc_stages::pretrain::step_dir(done));
        }
        Command::Eval { data, model, step, sequences, lengths, teacher_forced, out, replicates, sampler, device } => {
            use wc_stages::evaluate::{self, ContextSource};
            let lengths = evaluate::parse_lengths(&lengths).map_err(|e| anyhow::anyhow!("--lengths: {e}"))?;
            let source = if teacher_forced { ContextSource::GroundTruth } else { ContextSource::Generated };
            let seqs = evaluate::held_out(&RunStore::open_existing(&data)?, sequences)?;
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
            println!(
                "{} held-out sequences per kind, context: {}, T={}, shift={}, guidance={}, seed {}",
                sequences,
                source.name(),
                sampler.sampler_steps,
                sampler.shift,
                sampler.guidance,
                sampler.seed
            );
            let mut rows = Vec::new();
            for spec in &model {
                let m = load_model_spec(spec, step, device.or_cpu())?;
                let bar = indicatif::ProgressBar::new(seqs.len() as u64);
                bar.set_style(indicatif::ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} sequences ({elapsed})")?.progress_chars("=> "));
                bar.set_prefix("eval");
                let results = evaluate::evaluate(&m, &seqs, &lengths, source, &sampler.config(), sampler.seed, &|| bar.inc(1))
                    .with_context(|| format!("evaluating {spec}"))?;
                bar.finish_and_clear();
                println!("{spec}: {} (step {})", m.path, m.step);
                rows.extend(evaluate::eval_rows(now, spec, &m, source, &results));
            }
            print!("{}", evaluate::table1(&rows, replicates));
            if let Some(out) = out {
                let store = RunStore::open(&out)?;
                // Create-only: a second eval in the same second takes the next suffix.
                let first = format!("eval/eval-{now}.parquet");
                let bytes = wc_schemas::write_table(&wc_schemas::tables::eval_results(), &store.uri_of(&first), &wc_stages::tables::eval_to_batch(&rows))?;
                for n in 0.. {
                    let path = if n == 0 { first.clone() } else { format!("eval/eval-{now}-{n}.parquet") };
                    if store.put_if_absent(&path, bytes.clone())? {
                        println!("wrote {}", store.uri_of(&path));
                        break;
                    }
                }
            }
        }
        Command::Sample { model, step, scene, actions, sampler, truth, out, device } => {
            let store = RunStore::open_existing(&model)?;
            let m = wc_stages::evaluate::load_checkpoint(&store, step, &wc_model::device::open(device.or_cpu())?)?;
            let size = m.model.cfg.frame_size;
            let (acts, world, gt) = ground_truth(scene, &actions, size)?;
            let generated = wc_stages::evaluate::rollout_sequence(&m, &gt[0], &acts, &sampler.config(), sampler.seed)?;
            let to_frame = |rgb: &Vec<u8>, w: usize| wc_world::Frame::from_u8(w, size, rgb);
            let frames: Vec<wc_world::Frame> = if truth {
                generated
                    .iter()
                    .zip(&gt)
                    .map(|(g, t)| {
                        let mut row = Vec::with_capacity(2 * g.len());
                        for y in 0..size {
                            row.extend_from_slice(&g[y * size * 3..(y + 1) * size * 3]);
                            row.extend_from_slice(&t[y * size * 3..(y + 1) * size * 3]);
                        }
                        to_frame(&row, 2 * size)
                    })
                    .collect()
            } else {
                generated.iter().map(|g| to_frame(g, size)).collect()
            };
            let scale = (256 / size).max(1);
            std::fs::write(format!("{out}.gif"), wc_world::media::gif_bytes(&frames, scale, 12)?).with_context(|| format!("writing {out}.gif"))?;
            std::fs::write(format!("{out}.png"), wc_world::media::png_strip_bytes(&frames, scale.min(4), 4 * acts.len().min(4) + 1)?)
                .with_context(|| format!("writing {out}.png"))?;
            println!("model {} (step {}); scene {scene}: {}", m.path, m.step, world.caption);
            println!("wrote {out}.gif and {out}.png ({} frames{})", frames.len(), if truth { ", generated left, ground truth right" } else { "" });
        }
        Command::Bench { what: worldcompass::BenchWhat::All { out, pipeline, only }, device } => bench_all(&out, &pipeline, &only, device.or_cpu())?,
        Command::Bench { what: worldcompass::BenchWhat::Model { candidates, batch }, device } => {
            let cfg = wc_model::ModelConfig::default();
            println!("model: {cfg:?}");
            println!("{:<48} {:>10} {:>9}  note", "measurement", "seconds", "GFLOP/s");
            for r in wc_model::bench::model_bench(&cfg, candidates, batch, &wc_model::device::open(device.or_cpu())?)? {
                let g = r.gflops.map(|g| format!("{g:.1}")).unwrap_or_else(|| "-".into());
                println!("{:<48} {:>10.4} {:>9}  {}", r.name, r.seconds, g, r.note);
            }
        }
        Command::Bench { what: worldcompass::BenchWhat::Devices { preset }, device } => {
            let cfg = match preset.as_str() {
                "tiny" => wc_model::ModelConfig::tiny(),
                "default" => wc_model::ModelConfig::default(),
                other => anyhow::bail!("--preset {other}: must be tiny or default"),
            };
            let other = device.or_cpu();
            println!("the {preset} world model on cpu and on {other}, same seeds and inputs");
            println!("{:<28} {:>14} {:>12} {:>10}  result", "quantity", "max |diff|", "max |cpu|", "tolerance");
            let rows = wc_model::device_check::compare_with_cpu(&cfg, &wc_model::device::open(other)?)?;
            for r in &rows {
                let verdict = if r.passes() { "ok" } else { "OUTSIDE THE TOLERANCE" };
                println!("{:<28} {:>14.3e} {:>12.3e} {:>10.0e}  {verdict}", r.name, r.max_abs_diff, r.scale, r.tolerance);
            }
            let failed = rows.iter().filter(|r| !r.passes()).count();
            anyhow::ensure!(failed == 0, "{failed} of {} quantities differ between cpu and {other} beyond their tolerance", rows.len());
        }
        Command::Scorers { what, device } => scorers(what, device.or_cpu())?,
        Command::Compare { a, b, scene, actions, sampler, out, device } => {
            let (ma, mb) = (load_model_spec(&a, None, device.or_cpu())?, load_model_spec(&b, None, device.or_cpu())?);
            anyhow::ensure!(ma.model.cfg.frame_size == mb.model.cfg.frame_size, "the two models make frames of different sizes");
            let size = ma.model.cfg.frame_size;
            let (acts, world, gt) = ground_truth(scene, &actions, size)?;
            let ga = wc_stages::evaluate::rollout_sequence(&ma, &gt[0], &acts, &sampler.config(), sampler.seed)?;
            let gb = wc_stages::evaluate::rollout_sequence(&mb, &gt[0], &acts, &sampler.config(), sampler.seed)?;
            let labels: Vec<String> = (0..gt.len()).map(|t| if t == 0 { "prompt".to_string() } else { acts[(t - 1) / 4].to_string() }).collect();
            let frames = wc_report::compose::side_by_side(&[ga, gb, gt], size, 4, &["A", "B", "TRUTH"], &labels);
            std::fs::write(format!("{out}.gif"), wc_world::media::gif_bytes(&frames, 1, 12)?).with_context(|| format!("writing {out}.gif"))?;
            std::fs::write(format!("{out}.png"), wc_world::media::png_strip_bytes(&frames, 1, 4)?).with_context(|| format!("writing {out}.png"))?;
            println!("A = {} ; B = {} ; scene {scene}: {}", ma.path, mb.path, world.caption);
            println!("wrote {out}.gif and {out}.png ({} frames: A left, B middle, ground truth right)", frames.len());
        }
        Command::Report { run, out } => {
            let store = RunStore::open_existing(&run)?;
            let log = wc_report::reward_log(&store)?;
            let summary = wc_report::iteration_summary(&log)?;
            println!("run {}: {} reward-log rows", store.uri(), log.height());
            println!("{}", wc_report::summary_table(&summary)?);
            if let Some(dir) = out {
                std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {dir}"))?;
                for (name, png) in wc_report::reward_charts(&summary)? {
                    let path = std::path::Path::new(&dir).join(name);
                    std::fs::write(&path, png).with_context(|| format!("cannot write {}", path.display()))?;
                    println!("wrote {}", path.display());
                }
            }
        }
        Command::Metric { sequences, clips, windows_per_clip, hold, seed, tau_rot, thresholds } => {
            use wc_world::actions::{Kinematics, SequenceKind};
            let cfg = wc_world::metric::MetricConfig { tau_rot_deg: tau_rot, trans_thresholds: thresholds, ..Default::default() };
            let kin = Kinematics::default();
            println!("{:<9} {:<15} {:>8} {:>8} {:>9} {:>6} {:>10}", "kind", "model", "windows", "rot_acc", "trans_acc", "IF", "both_right");
            for kind in [SequenceKind::Basic, SequenceKind::Combined] {
                for (name, a) in wc_world::metric::reference_scores(kind, sequences, clips * windows_per_clip, hold, seed, &cfg, &kin) {
                    println!("{:<9} {:<15} {:>8} {:>8.3} {:>9.3} {:>6.3} {:>10.3}", kind.name(), name, a.windows, a.rot_acc, a.trans_acc, a.if_score, a.both_rate);
                }
            }
        }
        Command::Render { scene, actions, kind, windows, seed, size, out } => {
            use wc_world::actions::{action_sequence, ActionMask, Kinematics, SequenceKind};
            let kin = Kinematics::default();
            let acts: Vec<ActionMask> = if actions.is_empty() {
                let kind = match kind {
                    worldcompass::KindArg::Basic => SequenceKind::Basic,
                    worldcompass::KindArg::Combined => SequenceKind::Combined,
                };
                action_sequence(seed, kind, windows, 1, &kin)
            } else {
                actions.iter().map(|a| ActionMask::parse(a)).collect::<Result<_, _>>().map_err(anyhow::Error::msg)?
            };
            anyhow::ensure!(size >= 8 && size <= 512, "--size {size}: use 8 to 512 pixels");
            let cfg = wc_world::RenderConfig { width: size, height: size, ..Default::default() };
            let world = wc_world::Scene::generate(scene);
            let frames = wc_world::render::render_trajectory(&world, &kin.trajectory(wc_world::Pose::START, &acts), &cfg);
            let scale = (256 / size).max(1);
            let gif = wc_world::media::gif_bytes(&frames, scale, 12)?;
            let png = wc_world::media::png_strip_bytes(&frames, scale.min(4), kin.frames_per_window * 4 + 1)?;
            std::fs::write(format!("{out}.gif"), gif).with_context(|| format!("writing {out}.gif"))?;
            std::fs::write(format!("{out}.png"), png).with_context(|| format!("writing {out}.png"))?;
            println!("scene {scene}: {}", world.caption);
            println!("actions: {}", acts.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", "));
            println!("wrote {out}.gif and {out}.png ({} frames)", frames.len());
        }
        Command::Plan {
            pipeline,
            out,
            check,
            shards,
            gpus,
            peak_tflops,
            mfu,
            params_b,
            layers,
            hidden,
            latent,
            context_clips,
            pose_params_b,
            vq_params_b,
        } => {
            let cfg = wc_config::PipelineConfig::load(&pipeline)?;
            let dims: Vec<u64> = latent
                .split('x')
                .map(|d| d.trim().parse::<u64>())
                .collect::<Result<_, _>>()
                .ok()
                .filter(|d: &Vec<u64>| d.len() == 3 && d.iter().all(|&x| x > 0))
                .with_context(|| format!("--latent '{latent}': expected HEIGHTxWIDTHxCHANNELS, e.g. 60x104x16"))?;
            anyhow::ensure!(mfu > 0.0 && mfu <= 1.0, "--mfu {mfu}: must be in (0, 1]");
            anyhow::ensure!(gpus > 0 && shards > 0, "--gpus and --shards must be positive");
            let model = wc_plan::ModelShape {
                params: params_b * 1e9,
                layers,
                hidden,
                latent_height: dims[0],
                latent_width: dims[1],
                latent_channels: dims[2],
                context_clips,
                pose_params: pose_params_b * 1e9,
                vq_params: vq_params_b * 1e9,
                ..wc_plan::ModelShape::paper()
            };
            let hw = wc_plan::Hardware { gpus, peak_flops: peak_tflops * 1e12, mfu };
            let plan = wc_plan::plan(&cfg, &model, &hw, shards);
            let source = format!(
                "worldcompass plan --pipeline {pipeline} --shards {shards} --gpus {gpus} --peak-tflops {peak_tflops} --mfu {mfu} --params-b {params_b} --layers {layers} --hidden {hidden} --latent {latent} --context-clips {context_clips}"
            );
            let md = wc_plan::to_markdown(&plan, &cfg, &model, &hw, shards, &source);
            match out {
                None => print!("{md}"),
                Some(path) if check => {
                    let current = std::fs::read_to_string(&path).unwrap_or_default();
                    anyhow::ensure!(current == md, "{path} is out of date: rerun `{source} --out {path}`");
                    println!("{path} is up to date");
                }
                Some(path) => {
                    std::fs::write(&path, md).with_context(|| format!("writing {path}"))?;
                    println!("wrote {path} (bounding stage: {})", plan.bounding_stage);
                }
            }
        }
        Command::Schemas { write, check } => {
            let dir = std::path::Path::new(&write);
            let mut drift = Vec::new();
            let mut files = wc_schemas::all_schema_files();
            files.push(("tensors/world_model.json".into(), wc_model::checkpoint_layout_json(&wc_model::ModelConfig::default())?));
            for (rel, json) in files {
                let path = dir.join(&rel);
                if check {
                    if std::fs::read_to_string(&path).ok().as_deref() != Some(json.as_str()) {
                        drift.push(rel);
                    }
                } else {
                    std::fs::create_dir_all(path.parent().expect("has parent"))?;
                    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
                    println!("wrote {}", path.display());
                }
            }
            if !drift.is_empty() {
                anyhow::bail!("schema files differ from the code: {}; run `worldcompass schemas --write {write}`", drift.join(", "));
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
fn accuracy_row(name: &str, a: &wc_world::metric::Accuracy) -> String {
    format!("{:<9} {:>8} {:>8.3} {:>9.3} {:>6.3} {:>10.3}", name, a.windows, a.rot_acc, a.trans_acc, a.if_score, a.both_rate)
}

/// `worldcompass scorers ...`.
fn scorers(what: worldcompass::ScorersWhat, device: wc_config::DeviceSpec) -> anyhow::Result<()> {
    use worldcompass::ScorersWhat;
    let dev = || wc_model::device::open(device);
    match what {
        ScorersWhat::TrainPose { out, steps, batch, lr, checkpoint_every, hidden, frame_size, derotate, fine_halves, seed, init_from, generated, generated_share } => {
            anyhow::ensure!(checkpoint_every > 0, "--checkpoint-every must be at least 1");
            let out = RunStore::open(&out)?;
            let source = init_from.as_deref().map(RunStore::open_existing).transpose()?;
            let warm_start = match &source {
                Some(src) => {
                    let w = wc_stages::scorer_models::WarmStart::newest(src).with_context(|| format!("--init-from {}", src.uri()))?;
                    if wc_stages::scorer_models::read_settings(src, w.step)?.seed == seed {
                        eprintln!("note: --seed {seed} is the seed {} was trained with: the run sees the same windows again", src.uri());
                    }
                    Some(w)
                }
                None => None,
            };
            let labelled = generated
                .iter()
                .map(|uri| wc_stages::scorer_models::load_labelled(&RunStore::open_existing(uri)?).with_context(|| format!("--generated {uri}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            for (uri, set) in generated.iter().zip(&labelled) {
                if let Some(w) = set.windows.first().filter(|w| w.frames.first.width != frame_size) {
                    anyhow::bail!("--generated {uri}: its windows are {0}x{0}, the estimator reads {frame_size}x{frame_size}", w.frames.first.width);
                }
            }
            let mix = (!labelled.is_empty()).then(|| wc_stages::scorer_models::GeneratedMix {
                sets: labelled.iter().map(|l| l.identity.clone()).collect(),
                windows: labelled.iter().map(|l| l.windows.len()).sum(),
                share: generated_share,
            });
            if let Some(m) = &mix {
                eprintln!("mixing {} labelled generated windows into {:.0}% of every batch", m.windows, 100.0 * m.share);
            }
            let settings = wc_stages::scorer_models::PoseSettings {
                model: wc_scorers::pose::PoseConfig { frame_size, hidden, derotate, fine_halves },
                seed,
                batch,
                lr,
                schedule_steps: steps,
                checkpoint_every,
                warm_start,
                generated: mix,
            };
            let bar = step_bar(steps, "pose");
            let mut ema: Option<f64> = None;
            let done = wc_stages::scorer_models::train_pose(&out, &settings, steps, source.as_ref(), &labelled, &dev()?, |step, loss| {
                let e = ema.map_or(loss, |e| 0.98 * e + 0.02 * loss);
                ema = Some(e);
                bar.set_position(step + 1);
                bar.set_message(format!("loss {e:.4}"));
            })?;
            bar.finish_and_clear();
            println!("pose estimator at step {done} under {}", out.uri_of(wc_stages::scorer_models::POSE_DIR));
        }
        ScorersWhat::EvalPose { model, windows, seed, per_action, misreads, generated } => {
            let store = RunStore::open_existing(&model)?;
            let m = wc_stages::scorer_models::load_pose(&store, &dev()?)?;
            let metric = wc_world::metric::MetricConfig::default();
            println!("pose estimator {} (step {}), held-out scenes, clean ground-truth renders", m.path, m.step);
            println!("{}", accuracy_header("kind"));
            for (name, draw) in [("basic", wc_scorers::pose::ActionDraw::Basic), ("combined", wc_scorers::pose::ActionDraw::Combined)] {
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
                let set = wc_stages::scorer_models::load_labelled(&RunStore::open_existing(&uri)?).with_context(|| format!("--generated {uri}"))?;
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
            let other = pose_model.as_deref().map(|uri| wc_stages::scorer_models::load_pose(&RunStore::open_existing(uri)?, &dev()?).with_context(|| format!("--pose-model {uri}"))).transpose()?;
            if let Some(m) = &other {
                println!("pose estimator under test: {} (step {})", m.path, m.step);
            }
            let bar = step_bar(to - from, "agreement");
            let mut rows = Vec::new();
            for iter in from..to {
                let under_test = other.as_ref().map(|m| (&m.net, m.params.device()));
                rows.extend(wc_stages::world_stages::instrument_agreement(&ctx, iter, under_test).with_context(|| format!("iteration {iter} of {run}"))?);
                bar.inc(1);
            }
            bar.finish_and_clear();
            print!("{}", wc_stages::world_stages::agreement_table(&rows));
        }
        ScorersWhat::LabelWindows { run, from, to, out } => {
            anyhow::ensure!(from < to, "--from {from} must be below --to {to}");
            let ctx = RunContext::open(&run)?.on_device(Some(device));
            let store = RunStore::open(&out)?;
            let bar = step_bar(to - from, "label");
            let (mut labelled, mut found) = (0usize, 0usize);
            for iter in from..to {
                let source = wc_stages::scorer_models::LabelledSource { run: ctx.store.uri().to_string(), iter };
                if wc_stages::scorer_models::labelled_is_committed(&store, &source)? {
                    found += 1;
                } else {
                    let windows = wc_stages::world_stages::probe_labelled_windows(&ctx, iter).with_context(|| format!("iteration {iter} of {run}"))?;
                    labelled += windows.len();
                    wc_stages::scorer_models::commit_labelled(&store, &source, &windows)?;
                }
                bar.inc(1);
            }
            bar.finish_and_clear();
            println!("labelled {labelled} windows of {} iterations ({found} already committed) under {}", to - from - found as u64, store.uri_of(wc_stages::scorer_models::LABELLED_DIR));
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

/// Parse `actions` (one per window) and render the ground truth of `scene`
/// under them from the start pose: (actions, scene, frames u8 HWC of
/// `size` x `size`, the first frame and 4 per window).
fn ground_truth(scene: u64, actions: &[String], size: usize) -> anyhow::Result<(Vec<wc_world::ActionMask>, wc_world::Scene, Vec<Vec<u8>>)> {
    let acts: Vec<wc_world::ActionMask> = actions.iter().map(|a| wc_world::ActionMask::parse(a)).collect::<Result<_, _>>().map_err(anyhow::Error::msg)?;
    let rcfg = wc_world::RenderConfig { width: size, height: size, ..Default::default() };
    let world = wc_world::Scene::generate(scene);
    let poses = wc_world::Kinematics::default().trajectory(wc_world::Pose::START, &acts);
    let gt = poses.iter().map(|p| wc_world::render::render(&world, p, &rcfg).to_u8()).collect();
    Ok((acts, world, gt))
}

/// A step progress bar on stderr.
fn step_bar(len: u64, label: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} steps {msg} ({elapsed}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}

/// `worldcompass bench all`: every section, one table, one Parquet file.
fn bench_all(out: &str, pipeline: &str, only: &[String], device: wc_config::DeviceSpec) -> anyhow::Result<()> {
    use wc_bench::stage_runs;
    const SECTIONS: [&str; 5] = ["rollout", "prefix_cache", "compute", "pytorch", "stages"];
    for s in only {
        anyhow::ensure!(SECTIONS.contains(&s.as_str()), "--only {s}: unknown section (one of {})", SECTIONS.join(", "));
    }
    let want = |s: &str| only.is_empty() || only.iter().any(|o| o == s);
    let dev = wc_model::device::open(device)?;
    // The stage processes run on the same device.
    let stage_env = [("WORLDCOMPASS_DEVICE", device.to_string())];
    let cfg = wc_model::ModelConfig::default();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let out_dir = std::path::Path::new(out);
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {out}"))?;
    let mut rows = Vec::new();
    let started = std::time::Instant::now();
    let note = |s: &str| eprintln!("[{:>6.1} s] {s}", started.elapsed().as_secs_f64());
    if want("rollout") {
        note("rollout: clip-level vs sample-level, N in {8, 16}, G in {8, 16}");
        rows.extend(wc_bench::rollout::rows(&cfg, 10, &[(8, 8), (8, 16), (16, 8), (16, 16)], 1, &dev)?);
    }
    if want("prefix_cache") {
        note("prefix cache: cached vs recomputed, short and long context");
        rows.extend(wc_bench::compute::cache_rows(&cfg, 8, 10, &[2, 8], &dev)?);
    }
    if want("compute") {
        note("compute: GFLOP/s against the matmul peak");
        rows.extend(wc_bench::compute::efficiency_rows(&cfg, 8, 24, &dev)?);
    }
    if want("pytorch") {
        note("pytorch: the same model in PyTorch");
        rows.extend(wc_bench::pytorch::rows(&cfg, 24, threads, 5, &out_dir.join("work"))?);
    }
    if want("stages") {
        let exe = std::env::current_exe().context("locating the worldcompass binary")?;
        let work = out_dir.join("work");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        let work = work.canonicalize()?;
        let name = std::path::Path::new(pipeline).file_name().and_then(|n| n.to_str()).unwrap_or(pipeline).to_string();
        let variants = [
            ("timestep subset + best-of-N", 1.0, vec![]),
            ("timestep subset only", 1.42, vec![("best_of_n = true", "best_of_n = false")]),
            ("neither", 2.26, vec![("best_of_n = true", "best_of_n = false"), ("timestep_fraction = 0.5", "timestep_fraction = 1.0")]),
        ];
        let mut measured = Vec::new();
        for (i, (label, paper, edits)) in variants.into_iter().enumerate() {
            note(&format!("stages: 2 iterations of {name} with {label}, each stage a process"));
            let p = stage_runs::pipeline_variant(pipeline, &edits, &work.join(format!("pipeline-{i}.toml")))?;
            let run = format!("file://{}", work.join(format!("run-{i}")).display());
            measured.push((label, paper, stage_runs::run_iterations(&exe, &run, &p, 2, &stage_env)?));
        }
        let config = format!("{name}, iteration 1");
        rows.extend(stage_runs::table3_rows(&measured, 1, &config));
        let default_runs = &measured[0].2;
        rows.extend(stage_runs::storage_rows(default_runs, 1, "file://", &config));
        note("stages: the same on the loopback S3 server");
        match wc_bench::s3_server::LoopbackS3::start() {
            Ok(s3) => {
                s3.create_bucket("wc-bench")?;
                let p = work.join("pipeline-0.toml");
                let s3_runs = stage_runs::run_iterations(&exe, "s3://wc-bench/run", &p, 2, &s3.env())?;
                rows.extend(stage_runs::storage_rows(&s3_runs, 1, "s3:// (moto, loopback)", &config));
            }
            Err(e) => eprintln!("warning: no S3 rows: {e}"),
        }
        let (idle, _) = stage_runs::run_stage(&exe, &format!("file://{}", work.join("run-0").display()), "select", 1, &[])?;
        let baseline = idle.peak_rss_bytes;
        let hold = stage_runs::must_hold_bytes(&work.join("run-0"), 1)?;
        rows.extend(stage_runs::memory_rows(default_runs, &hold, baseline, 1, &config));
    }
    println!("{}", wc_bench::render_table(&rows));
    let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let path = out_dir.join(format!("bench-{unix}.parquet"));
    std::fs::write(&path, wc_bench::to_parquet(&rows, unix)?).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {} ({} rows, {:.0} s)", path.display(), rows.len(), started.elapsed().as_secs_f64());
    Ok(())
}

/// The pipeline config with `run.seed` replaced by `--seed`, if given.
fn with_seed(mut cfg: PipelineConfig, seed: Option<u64>) -> PipelineConfig {
    if let Some(s) = seed {
        cfg.run.seed = s;
    }
    cfg
}

/// ", seed S" where `--seed` replaced the pipeline's seed.
fn seed_note(seed: Option<u64>) -> String {
    seed.map(|s| format!(", seed {s}")).unwrap_or_default()
}

/// Load a model named on the command line: RUN@K (checkpoint K of a
/// training run, its policy) or STORE (a pre-training store: checkpoint
/// `step`, default the newest).
fn load_model_spec(spec: &str, step: Option<u64>, device: wc_config::DeviceSpec) -> anyhow::Result<wc_stages::evaluate::LoadedModel> {
    match spec.rsplit_once('@') {
        Some((uri, k)) if k.parse::<u64>().is_ok() => Ok(wc_stages::evaluate::load_run_checkpoint(&RunStore::open_existing(uri)?, k.parse()?, "policy", device)?),
        _ => Ok(wc_stages::evaluate::load_checkpoint(&RunStore::open_existing(spec)?, step, &wc_model::device::open(device)?)?),
    }
}
