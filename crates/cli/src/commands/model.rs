//! `worldcompass model`: see [`crate::Command::Model`].

use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Tensor};
use clap::{Args, Subcommand, ValueEnum};
use wc_wan::{WanTransformer, WanTransformerConfig, Weights};

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
#[derive(Debug, Clone, Copy, ValueEnum)]
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

/// What `model` does.
#[derive(Debug, Subcommand)]
pub enum ModelWhat {
    /// One forward pass of a Wan2.1 video transformer from a file of inputs,
    /// written to a file: check this port against another implementation.
    ///
    /// INPUTS is a safetensors file with `x` [B, C, F, H, W] (the noisy latent
    /// video), `timestep` [B] (0 to 1000) and `context` [B, L, text_dim] (the
    /// text embeddings, padded as the caller's pipeline pads them); OUT gets
    /// `out` [B, C_out, F, H, W], f32. The weights may be in Wan's or in
    /// diffusers' key layout, in one file or several (repeat --weights).
    ///
    /// Example: worldcompass model forward --config transformer/config.json --weights transformer/diffusion_pytorch_model.safetensors --inputs in.safetensors --out out.safetensors
    Forward {
        /// The model's config.json (diffusers' WanTransformer3DModel or Wan's own).
        #[arg(long)]
        config: std::path::PathBuf,
        /// Safetensors file(s) of the weights.
        #[arg(long, required = true)]
        weights: Vec<std::path::PathBuf>,
        #[arg(long)]
        inputs: std::path::PathBuf,
        #[arg(long)]
        out: std::path::PathBuf,
        #[arg(long, value_enum, default_value = "f32")]
        dtype: DtypeArg,
    },
    /// A released Wan2.1 transformer size with random weights: its parameter
    /// count and, with --latent, the time and peak memory of one forward pass.
    ///
    /// Example: worldcompass model size --preset wan2.1-t2v-1.3b --latent 3x44x80
    Size {
        #[arg(long, value_enum, default_value = "wan2.1-t2v-1.3b")]
        preset: Preset,
        /// Latent frames x height x width of one forward pass (batch 1; a
        /// 352x640 video is 44x80 latent pixels; Matrix-Game 2.0 generates 3
        /// latent frames per chunk), with a 512-token context.
        #[arg(long)]
        latent: Option<String>,
        #[arg(long, value_enum, default_value = "f32")]
        dtype: DtypeArg,
    },
}

/// The released transformer sizes.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Preset {
    #[value(name = "wan2.1-t2v-1.3b")]
    Wan21T2v1_3b,
    #[value(name = "wan2.1-t2v-14b")]
    Wan21T2v14b,
    /// The test fixtures' tiny configuration.
    Tiny,
}

fn preset_config(p: Preset) -> WanTransformerConfig {
    match p {
        Preset::Wan21T2v1_3b => WanTransformerConfig::wan2_1_t2v_1_3b(),
        Preset::Wan21T2v14b => WanTransformerConfig::wan2_1_t2v_14b(),
        Preset::Tiny => WanTransformerConfig::tiny(),
    }
}

/// The process's peak resident memory, from /proc (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

pub fn run(a: ModelArgs) -> anyhow::Result<()> {
    let device = wc_model::device::open(a.device.or_cpu())?;
    match a.what {
        ModelWhat::Forward {
            config,
            weights,
            inputs,
            out,
            dtype,
        } => {
            let text = std::fs::read_to_string(&config)
                .with_context(|| format!("reading {}", config.display()))?;
            let cfg = WanTransformerConfig::from_json(&text)
                .with_context(|| format!("reading {}", config.display()))?;
            let mut tensors = Vec::new();
            for p in &weights {
                tensors.extend(
                    candle_core::safetensors::load(p, &device)
                        .with_context(|| format!("reading the weights {}", p.display()))?,
                );
            }
            let w = Weights::from_tensors(tensors);
            let layout = w.layout();
            let model = WanTransformer::new(&cfg, &w, dtype.dtype())
                .context("building the transformer from the weights")?;
            let io = candle_core::safetensors::load(&inputs, &device)
                .with_context(|| format!("reading the inputs {}", inputs.display()))?;
            let get = |k: &str| {
                io.get(k).with_context(|| {
                    format!(
                        "{} has no tensor `{k}` (it needs x, timestep and context)",
                        inputs.display()
                    )
                })
            };
            let started = Instant::now();
            let y = model
                .forward(get("x")?, get("timestep")?, get("context")?)?
                .to_dtype(DType::F32)?;
            let secs = started.elapsed().as_secs_f64();
            let dims = y.dims().to_vec();
            candle_core::safetensors::save(
                &std::collections::HashMap::from([("out".to_string(), y)]),
                &out,
            )
            .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "{} weights ({layout} layout), {} parameters; forward in {secs:.3} s; wrote out {dims:?} to {}",
                cfg_name(&cfg),
                cfg.parameter_count(),
                out.display()
            );
        }
        ModelWhat::Size {
            preset,
            latent,
            dtype,
        } => {
            let cfg = preset_config(preset);
            println!(
                "{preset:?}: {} parameters ({:.3} B), {} layers, width {}",
                cfg.parameter_count(),
                cfg.parameter_count() as f64 / 1e9,
                cfg.num_layers,
                cfg.dim()
            );
            let Some(latent) = latent else { return Ok(()) };
            let grid: Vec<usize> = latent
                .split('x')
                .map(|s| s.trim().parse::<usize>())
                .collect::<Result<_, _>>()
                .map_err(|_| anyhow::anyhow!("--latent {latent}: expected FxHxW, e.g. 3x44x80"))?;
            let [f, h, w] = grid[..] else {
                anyhow::bail!("--latent {latent}: expected FxHxW, e.g. 3x44x80")
            };
            let started = Instant::now();
            let model = WanTransformer::new(&cfg, &Weights::random(&device), dtype.dtype())?;
            let init = started.elapsed().as_secs_f64();
            let x = Tensor::randn(0f32, 1.0, (1, cfg.in_channels, f, h, w), &device)?;
            let t = Tensor::new(&[500f32], &device)?;
            let ctx = Tensor::randn(0f32, 1.0, (1, 512, cfg.text_dim), &device)?;
            let started = Instant::now();
            let y = model.forward(&x, &t, &ctx)?;
            let _ = y
                .flatten_all()?
                .sum_all()?
                .to_dtype(DType::F32)?
                .to_scalar::<f32>()?;
            let secs = started.elapsed().as_secs_f64();
            let tokens = f / cfg.patch_size[0] * (h / cfg.patch_size[1]) * (w / cfg.patch_size[2]);
            let peak = peak_rss_mib()
                .map(|m| format!("{m:.0} MiB"))
                .unwrap_or_else(|| "unknown".into());
            println!(
                "random weights in {init:.1} s; one forward of latent {f}x{h}x{w} ({tokens} tokens, {dtype:?}) in {secs:.2} s on {device:?}; peak resident memory {peak}"
            );
        }
    }
    Ok(())
}

fn cfg_name(cfg: &WanTransformerConfig) -> String {
    format!(
        "Wan2.1 transformer ({} layers, width {})",
        cfg.num_layers,
        cfg.dim()
    )
}
