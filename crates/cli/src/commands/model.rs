//! `worldcompass model`: see [`crate::Command::Model`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Tensor};
use clap::{Args, Subcommand, ValueEnum};
use wc_wan::{ClipVision, ClipVisionConfig, WanTransformer, WanTransformerConfig, WanVae, WanVaeConfig, Weights};

use crate::args::DeviceArgs;

/// The arguments of `worldcompass model`.
#[derive(Debug, Args)]
pub struct ModelArgs {
    #[command(subcommand)]
    pub what: ModelWhat,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// The dtype a model runs in.
#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
pub enum DtypeArg {
    F32,
    Bf16,
}

impl DtypeArg {
    fn dtype(self) -> DType {
        match self {
            DtypeArg::F32 => DType::F32,
            DtypeArg::Bf16 => DType::BF16,
        }
    }
}

/// Which model `model forward` runs.
#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
pub enum Part {
    Transformer,
    VaeEncode,
    VaeDecode,
    /// The CLIP ViT-H/14 vision tower Matrix-Game 2.0 reads its image
    /// tokens from.
    ClipVision,
}

/// The released sizes.
#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
pub enum Preset {
    #[value(name = "wan2.1-t2v-1.3b")]
    Wan21T2v1_3b,
    #[value(name = "wan2.1-t2v-14b")]
    Wan21T2v14b,
    /// Matrix-Game 2.0's transformer (36 input channels, CLIP image
    /// context, action modules in blocks 0-14); its forward reads idle
    /// actions and 257 context tokens.
    #[value(name = "matrix-game-2")]
    MatrixGame2,
    /// The Wan2.1 VAE; --latent FxHxW decodes a latent clip of that size.
    #[value(name = "wan2.1-vae")]
    Wan21Vae,
    /// The CLIP ViT-H/14 vision tower as Matrix-Game 2.0 runs it (31 of 32
    /// blocks); times the tokens of --batch 224x224 images.
    #[value(name = "clip-vit-h-14")]
    ClipVitH14,
    /// The test fixtures' tiny transformer.
    Tiny,
}

/// What `model` does.
#[derive(Debug, Subcommand)]
pub enum ModelWhat {
    /// One forward pass of a Wan2.1 model (the video transformer, the VAE's
    /// encoder or its decoder) from a file of inputs, written to a file:
    /// check this port against another implementation.
    ///
    /// INPUTS and OUT are safetensors files. The transformer reads `x`
    /// [B, C, F, H, W] (the noisy latent video), `timestep` [B] (0 to 1000)
    /// and `context` [B, L, text_dim] (the text embeddings, padded as the
    /// caller's pipeline pads them) and writes `out` [B, C_out, F, H, W].
    /// vae-encode reads `video` [B, 3, 1 + 4k, H, W] in [-1, 1] and writes
    /// the posterior's `mean` and `logvar`; vae-decode reads `z` [B, 16, T,
    /// h, w] and writes `decoded`. clip-vision reads `frames` [B, 3, H, W]
    /// in [-1, 1] (resized to 224x224 as Wan does) and writes the `tokens`
    /// of the first 31 blocks [B, 257, 1280], from the `visual.*` tensors of
    /// Wan's CLIP file (the others are skipped). Outputs are f32. The
    /// transformer's and the VAE's weights may be in Wan's or in diffusers'
    /// key layout, in one file or several (repeat --weights).
    ///
    /// Example: worldcompass model forward --config transformer/config.json --weights transformer/diffusion_pytorch_model.safetensors --inputs in.safetensors --out out.safetensors
    Forward {
        #[arg(long, value_enum, default_value = "transformer")]
        part: Part,
        /// The model's config.json: diffusers' WanTransformer3DModel or Wan's
        /// own for the transformer (required), diffusers' AutoencoderKLWan
        /// for the VAE (default: the released Wan2.1 VAE), the tower's
        /// fields for clip-vision (default: ViT-H/14).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The weights: safetensors files, or PyTorch checkpoints (.pth, .pt,
        /// .bin; Wan's VAE and CLIP files are these).
        #[arg(long, required = true)]
        weights: Vec<PathBuf>,
        #[arg(long)]
        inputs: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// The transformer's dtype (the VAE runs in f32).
        #[arg(long, value_enum, default_value = "f32")]
        dtype: DtypeArg,
    },
    /// A released Wan2.1 size with random weights: its parameter count and,
    /// with --latent, the time and peak memory of one forward pass (the
    /// transformer) or one decode (the VAE).
    ///
    /// Example: worldcompass model size --preset wan2.1-t2v-1.3b --latent 3x44x80
    Size {
        #[arg(long, value_enum, default_value = "wan2.1-t2v-1.3b")]
        preset: Preset,
        /// Latent frames x height x width (batch 1; a 352x640 video is 44x80
        /// latent pixels; Matrix-Game 2.0 generates 3 latent frames per
        /// chunk). The transformer also reads a 512-token context.
        #[arg(long)]
        latent: Option<String>,
        /// The transformer's dtype (the VAE runs in f32).
        #[arg(long, value_enum, default_value = "f32")]
        dtype: DtypeArg,
        /// Clips in the forward pass (e.g. the G candidates of a rollout).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
        batch: u32,
        /// With the VAE: time the image-to-video condition of the --latent
        /// clip instead of a decode (the encoding of an image and 4 (F - 1)
        /// grey frames: Matrix-Game's cost per prompt).
        #[arg(long)]
        condition: bool,
    },
    /// Matrix-Game 2.0's hot paths with random weights: a rollout chunk (G
    /// candidates of one block after a cached context block, through the
    /// three-step sampler) or one NFT optimizer step (policy and old-policy
    /// forwards over [context block, target block], the NFT loss, backward,
    /// Muon/AdamW on f32 weights; bf16 computes in bf16 from them). Prints
    /// the time and the peak resident memory (a GPU's peak: nvidia-smi,
    /// as `just gpu-check` reads it).
    ///
    /// Example: worldcompass model step --what rollout --latent 3x44x80 --batch 16 --dtype bf16 --device cuda:0
    Step {
        #[arg(long, value_enum)]
        what: StepKind,
        /// One block's latent frames x height x width (Matrix-Game 2.0:
        /// 3x44x80 for 352x640 video).
        #[arg(long, default_value = "3x44x80")]
        latent: String,
        /// G candidates (rollout) or the minibatch (nft).
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
        batch: u32,
        #[arg(long, value_enum, default_value = "bf16")]
        dtype: DtypeArg,
        /// Keep only this many transformer blocks (a smaller model of the
        /// same width, for a CPU; the action modules stay in the first
        /// blocks as far as they go).
        #[arg(long)]
        layers: Option<usize>,
        /// The tiny test configuration instead of Matrix-Game 2.0.
        #[arg(long)]
        tiny: bool,
    },
    /// Import released Matrix-Game 2.0 weights into a base store, for
    /// `[model] kind = "matrix_game"` with `base = OUT`.
    ///
    /// The transformer (`base_distill.safetensors`: Wan's keys and the
    /// action module's, under `model.`) becomes the policy's parameters,
    /// checked key by key and shape by shape against the config's network;
    /// the Wan VAE (`Wan2.1_VAE.pth`) and Wan's CLIP file
    /// (`models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`, its
    /// vision tower's keys) are checked the same way and kept frozen. A
    /// missing or misshapen key is named as the file spells it. Importing
    /// the same files again writes nothing.
    ///
    /// Example: worldcompass model import --transformer base_distill.safetensors --vae Wan2.1_VAE.pth --clip models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth --out models/matrix-game-2
    Import {
        /// A Matrix-Game config (the JSON of a run's checkpoints/000000/model.json)
        /// instead of --preset.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The configuration: matrix-game-2 (the released model, 352x352
        /// frames unless --frame-size), tiny-wan (the test fixtures' layout).
        #[arg(long, default_value = "matrix-game-2")]
        preset: String,
        /// Side of the square frames the model generates (a multiple of 8
        /// for the Wan VAE; the released model was trained on 352x640).
        #[arg(long)]
        frame_size: Option<usize>,
        /// The transformer's weights (safetensors, or a PyTorch checkpoint;
        /// repeat for shards).
        #[arg(long, required_unless_present = "random_weights")]
        transformer: Vec<PathBuf>,
        /// Seeded random weights in the released layouts instead of files
        /// (the transformer, the VAE and the CLIP tower): a full-size base
        /// for capacity runs without the release.
        #[arg(long, conflicts_with_all = ["transformer", "vae", "clip"])]
        random_weights: bool,
        /// With --random-weights: keep only this many transformer blocks (a
        /// smaller model of the same width, for a CPU; the action modules
        /// stay in the first blocks as far as they go).
        #[arg(long, requires = "random_weights")]
        layers: Option<usize>,
        /// The Wan VAE's weights.
        #[arg(long)]
        vae: Option<PathBuf>,
        /// Wan's CLIP weights (the text tower's keys are skipped).
        #[arg(long)]
        clip: Option<PathBuf>,
        /// The base store to write (a path or a URI).
        #[arg(long)]
        out: String,
    },
}

/// What `model step` times.
#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
pub enum StepKind {
    /// G candidates of one block from a cached context block (rollout).
    Rollout,
    /// One NFT optimizer step on a minibatch (optimize).
    Nft,
}

/// The process's peak resident memory (VmHWM), in MiB, or "unknown".
fn peak_rss_mib() -> String {
    match wc_bench::stage_runs::own_peak_rss_bytes() {
        0 => "unknown".into(),
        b => format!("{:.0} MiB", b as f64 / (1024.0 * 1024.0)),
    }
}

/// The tensors of a weights file on `device`: safetensors, or a PyTorch
/// checkpoint (`.pth`, `.pt`, `.bin`: a pickled state dict, as Wan's VAE and
/// CLIP files are).
fn read_weights(path: &std::path::Path, device: &candle_core::Device) -> anyhow::Result<Vec<(String, Tensor)>> {
    let pickled = matches!(path.extension().and_then(|e| e.to_str()), Some("pth" | "pt" | "bin"));
    if !pickled {
        return Ok(candle_core::safetensors::load(path, device)?.into_iter().collect());
    }
    let tensors = candle_core::pickle::read_all(path).context("a PyTorch checkpoint (a pickled state dict) was expected")?;
    anyhow::ensure!(!tensors.is_empty(), "no tensors in it: a state dict of tensors was expected");
    tensors.into_iter().map(|(k, t)| Ok((k, t.to_device(device)?))).collect()
}

/// `model import`: read the files on the CPU, import them.
fn import(config: Option<PathBuf>, preset: &str, (frame_size, layers): (Option<usize>, Option<usize>), (transformer, random): (&[PathBuf], bool), vae: Option<PathBuf>, clip: Option<PathBuf>, out: &str) -> anyhow::Result<()> {
    let mut cfg = match &config {
        Some(p) => serde_json::from_str(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?).with_context(|| format!("{} is not a Matrix-Game config", p.display()))?,
        None => wc_matrix_game::MatrixGameConfig::preset(preset).map_err(anyhow::Error::msg)?,
    };
    if let Some(s) = frame_size {
        cfg.frame_size = s;
    }
    if let Some(l) = layers {
        let t = &mut cfg.transformer;
        anyhow::ensure!(l >= 1 && l <= t.num_layers, "--layers {l}: 1..={}", t.num_layers);
        t.num_layers = l;
        t.action_blocks = t.action_blocks.min(l);
    }
    let cpu = candle_core::Device::Cpu;
    let read = |p: &PathBuf| read_weights(p, &cpu).with_context(|| format!("reading the weights {}", p.display()));
    let released = if random {
        wc_jobs::import::random_release(&cfg, 0)?
    } else {
        let mut t = Vec::new();
        for p in transformer {
            t.extend(read(p)?);
        }
        wc_jobs::import::ReleasedWeights { transformer: t, vae: vae.as_ref().map(read).transpose()?, clip: clip.as_ref().map(read).transpose()? }
    };
    let store = if out.contains("://") { wc_store::RunStore::open(out)? } else { wc_store::RunStore::open(&format!("file://{}", std::path::absolute(out)?.display()))? };
    let r = wc_jobs::import::import_matrix_game(&store, &cfg, released)?;
    let verb = if r.written { "imported" } else { "already imported (nothing written)" };
    println!(
        "{verb}: transformer {} parameters ({} blocks), VAE {}, CLIP tower {}; base store {} (frames {}x{}, {} latent frames per clip)",
        r.transformer_parameters,
        cfg.transformer.num_layers,
        r.vae_parameters,
        r.clip_parameters,
        store.uri(),
        cfg.frame_size,
        cfg.frame_size,
        cfg.frames_per_clip
    );
    Ok(())
}

/// FxHxW, e.g. 3x44x80.
fn parse_grid(s: &str) -> anyhow::Result<[usize; 3]> {
    let grid: Vec<usize> = s.split('x').map(|v| v.trim().parse::<usize>()).collect::<Result<_, _>>().map_err(|_| anyhow::anyhow!("--latent {s}: expected FxHxW, e.g. 3x44x80"))?;
    match grid[..] {
        [f, h, w] if f > 0 && h > 0 && w > 0 => Ok([f, h, w]),
        _ => anyhow::bail!("--latent {s}: expected FxHxW, e.g. 3x44x80"),
    }
}

pub fn run(a: ModelArgs) -> anyhow::Result<()> {
    if let ModelWhat::Size { preset, condition: true, .. } = &a.what {
        anyhow::ensure!(*preset == Preset::Wan21Vae, "--condition is the VAE's (--preset wan2.1-vae)");
    }
    let device = wc_model::device::open(a.device.or_cpu())?;
    match a.what {
        ModelWhat::Import { config, preset, frame_size, transformer, random_weights, layers, vae, clip, out } => import(config, &preset, (frame_size, layers), (&transformer, random_weights), vae, clip, &out)?,
        ModelWhat::Forward { part, config, weights, inputs, out, dtype } => {
            let mut tensors = Vec::new();
            for p in &weights {
                tensors.extend(read_weights(p, &device).with_context(|| format!("reading the weights {}", p.display()))?);
            }
            let io = candle_core::safetensors::load(&inputs, &device).with_context(|| format!("reading the inputs {}", inputs.display()))?;
            let get = |k: &str| io.get(k).with_context(|| format!("{} has no tensor `{k}` (--part {part:?} reads it)", inputs.display()));
            let config_text = match &config {
                Some(c) => Some(std::fs::read_to_string(c).with_context(|| format!("reading {}", c.display()))?),
                None => None,
            };
            let config_name = config.as_ref().map(|c| c.display().to_string()).unwrap_or_default();
            let started = Instant::now();
            let (outputs, what): (Vec<(&str, Tensor)>, String) = match part {
                Part::Transformer => {
                    let text = config_text.context("the transformer needs --config (its config.json)")?;
                    let cfg = WanTransformerConfig::from_json(&text).with_context(|| format!("reading {config_name}"))?;
                    let w = Weights::from_tensors(tensors);
                    let layout = w.layout();
                    let model = WanTransformer::new(&cfg, &w, dtype.dtype()).context("building the transformer from the weights")?;
                    let y = model.forward(get("x")?, get("timestep")?, get("context")?)?.to_dtype(DType::F32)?;
                    (vec![("out", y)], format!("Wan2.1 transformer ({} layers, width {}; {layout} layout), {} parameters", cfg.num_layers, cfg.dim(), cfg.parameter_count()))
                }
                Part::VaeEncode | Part::VaeDecode => {
                    anyhow::ensure!(dtype == DtypeArg::F32, "the VAE runs in f32 (--dtype f32)");
                    let cfg = match &config_text {
                        Some(t) => WanVaeConfig::from_json(t).with_context(|| format!("reading {config_name}"))?,
                        None => WanVaeConfig::wan2_1(),
                    };
                    let w = Weights::vae_from_tensors(tensors, cfg.num_res_blocks);
                    let layout = w.layout();
                    let vae = WanVae::new(&cfg, &w).context("building the VAE from the weights")?;
                    let what = format!("Wan2.1 VAE ({layout} layout), {} parameters", w.elements_taken());
                    if part == Part::VaeEncode {
                        let (mean, logvar) = vae.encode(get("video")?)?;
                        (vec![("mean", mean), ("logvar", logvar)], what)
                    } else {
                        (vec![("decoded", vae.decode(get("z")?)?)], what)
                    }
                }
                Part::ClipVision => {
                    let cfg: ClipVisionConfig = match &config_text {
                        Some(t) => serde_json::from_str(t).with_context(|| format!("reading {config_name}"))?,
                        None => ClipVisionConfig::vit_h_14(),
                    };
                    let w = Weights::from_tensors(tensors.into_iter().filter(|(k, _)| cfg.reads(k)));
                    let tower = ClipVision::new(&cfg, &w, dtype.dtype()).context("building the CLIP vision tower from the weights")?;
                    let pixels = wc_wan::clip_vision::preprocess(get("frames")?, cfg.image_size)?;
                    let what = format!("CLIP vision tower ({} of {} blocks, width {}), {} parameters", cfg.layers_run, cfg.layers, cfg.dim, w.elements_taken());
                    (vec![("tokens", tower.forward(&pixels)?)], what)
                }
            };
            let secs = started.elapsed().as_secs_f64();
            let shapes: Vec<String> = outputs.iter().map(|(k, t)| format!("{k} {:?}", t.dims())).collect();
            let map: HashMap<String, Tensor> = outputs.into_iter().map(|(k, t)| (k.to_string(), t)).collect();
            candle_core::safetensors::save(&map, &out).with_context(|| format!("writing {}", out.display()))?;
            println!("{what}; forward in {secs:.3} s; wrote {} to {}", shapes.join(", "), out.display());
        }
        ModelWhat::Size { preset: Preset::Wan21Vae, latent, condition, .. } => {
            // (--batch and --dtype are the transformer's.)
            let w = Weights::random(&device);
            let started = Instant::now();
            let cfg = WanVaeConfig::wan2_1();
            let vae = WanVae::new(&cfg, &w)?;
            println!("Wan2.1 VAE: {} parameters; random weights in {:.1} s", w.elements_taken(), started.elapsed().as_secs_f64());
            let Some(latent) = latent else {
                anyhow::ensure!(!condition, "--condition times the condition of a --latent clip (e.g. --latent 25x44x80)");
                return Ok(());
            };
            let [f, h, wd] = parse_grid(&latent)?;
            let started = Instant::now();
            if condition {
                let s = cfg.spatial_factor();
                let image = Tensor::rand(-1f32, 1.0, (1, 3, h * s, wd * s), &device)?;
                let c = vae.image_condition(&image, f)?;
                println!(
                    "image condition of {f} latent frames ({} pixel frames of {}x{}) {:?} in {:.2} s on {device:?}; peak resident memory {}",
                    1 + cfg.temporal_factor() * (f - 1),
                    h * s,
                    wd * s,
                    c.dims(),
                    started.elapsed().as_secs_f64(),
                    peak_rss_mib()
                );
            } else {
                let y = vae.decode(&Tensor::randn(0f32, 1.0, (1, 16, f, h, wd), &device)?)?;
                println!("decoded latent {f}x{h}x{wd} to {:?} in {:.2} s on {device:?}; peak resident memory {}", y.dims(), started.elapsed().as_secs_f64(), peak_rss_mib());
            }
        }
        ModelWhat::Size { preset: Preset::ClipVitH14, dtype, batch, .. } => {
            let cfg = ClipVisionConfig::vit_h_14();
            let w = Weights::random(&device);
            let started = Instant::now();
            let tower = ClipVision::new(&cfg, &w, dtype.dtype())?;
            println!("CLIP ViT-H/14 vision tower ({} of {} blocks): {} parameters; random weights in {:.1} s", cfg.layers_run, cfg.layers, w.elements_taken(), started.elapsed().as_secs_f64());
            let pixels = Tensor::randn(0f32, 1.0, (batch as usize, 3, cfg.image_size, cfg.image_size), &device)?;
            let started = Instant::now();
            let y = tower.forward(&pixels)?;
            let _ = y.sum_all()?.to_scalar::<f32>()?;
            println!("tokens {:?} of {batch} image(s) in {:.2} s ({dtype:?}) on {device:?}; peak resident memory {}", y.dims(), started.elapsed().as_secs_f64(), peak_rss_mib());
        }
        ModelWhat::Size { preset, latent, dtype, batch, .. } => {
            let b = batch as usize;
            let cfg = match preset {
                Preset::Wan21T2v14b => WanTransformerConfig::wan2_1_t2v_14b(),
                Preset::MatrixGame2 => WanTransformerConfig::matrix_game_2(),
                Preset::Tiny => WanTransformerConfig::tiny(),
                _ => WanTransformerConfig::wan2_1_t2v_1_3b(),
            };
            println!("{preset:?}: {} parameters ({:.3} B), {} layers, width {}", cfg.parameter_count(), cfg.parameter_count() as f64 / 1e9, cfg.num_layers, cfg.dim());
            let Some(latent) = latent else { return Ok(()) };
            let [f, h, w] = parse_grid(&latent)?;
            let started = Instant::now();
            let model = WanTransformer::new(&cfg, &Weights::random(&device), dtype.dtype())?;
            let init = started.elapsed().as_secs_f64();
            let x = Tensor::randn(0f32, 1.0, (b, cfg.in_channels, f, h, w), &device)?;
            let t = Tensor::full(500f32, b, &device)?;
            let started = Instant::now();
            let y = match &cfg.action {
                None => model.forward(&x, &t, &Tensor::randn(0f32, 1.0, (b, 512, cfg.text_dim), &device)?)?,
                Some(a) => {
                    // One block of f latent frames with idle actions.
                    let n_pix = 1 + a.time_compression * (f - 1);
                    let keyboard = Tensor::zeros((b, n_pix, a.keyboard_dim_in), DType::F32, &device)?;
                    let mouse = Tensor::zeros((b, n_pix, a.mouse_dim_in), DType::F32, &device)?;
                    let spec = wc_wan::CausalSpec::blocks_of(f);
                    let ctx = Tensor::randn(0f32, 1.0, (b, 257, cfg.text_dim), &device)?;
                    model.forward_block_causal(&x, &t, &ctx, Some(wc_wan::Actions { keyboard: &keyboard, mouse: &mouse }), &spec)?
                }
            };
            let _ = y.flatten_all()?.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
            let secs = started.elapsed().as_secs_f64();
            let tokens = f / cfg.patch_size[0] * (h / cfg.patch_size[1]) * (w / cfg.patch_size[2]);
            println!(
                "random weights in {init:.1} s; one forward of {b} x latent {f}x{h}x{w} ({tokens} tokens each, {dtype:?}) in {secs:.2} s on {device:?}; peak resident memory {}",
                peak_rss_mib()
            );
        }
        ModelWhat::Step { what, latent, batch, dtype, layers, tiny } => {
            let mut cfg = if tiny { WanTransformerConfig::tiny_matrix_game() } else { WanTransformerConfig::matrix_game_2() };
            if let Some(l) = layers {
                anyhow::ensure!(l >= 1 && l <= cfg.num_layers, "--layers {l}: 1..={}", cfg.num_layers);
                cfg.num_layers = l;
                cfg.action_blocks = cfg.action_blocks.min(l);
            }
            let block = parse_grid(&latent)?;
            let s = wc_matrix_game::at_scale::AtScale { cfg: cfg.clone(), block, batch: batch as usize, dtype: dtype.dtype(), image_tokens: if tiny { 5 } else { 257 } };
            let [f, h, w] = block;
            let what_text = match what {
                StepKind::Rollout => format!("a rollout chunk of {batch} candidates (latent block {f}x{h}x{w}, 3 sampler steps + the commit pass, after a cached context block)"),
                StepKind::Nft => format!("one NFT optimizer step on a minibatch of {batch} (context + target blocks of {f}x{h}x{w})"),
            };
            let (timing, note) = match what {
                StepKind::Rollout => (wc_matrix_game::at_scale::rollout_chunk(&s, &device)?.0, String::new()),
                StepKind::Nft => {
                    let (t, loss) = wc_matrix_game::at_scale::nft_step(&s, &device)?;
                    (t, format!(", loss {loss:.4}"))
                }
            };
            println!(
                "{} layers, {} parameters: {what_text} in {:.2} s ({dtype:?}, models built in {:.1} s) on {device:?}{note}; peak resident memory {}",
                cfg.num_layers,
                cfg.parameter_count(),
                timing.run.as_secs_f64(),
                timing.build.as_secs_f64(),
                peak_rss_mib()
            );

        }
    }
    Ok(())
}
