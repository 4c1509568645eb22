//! `worldcompass plan`: see [`crate::Command::Plan`].

use clap::Args;
use anyhow::Context;
use wc_plan::{Hardware, ModelShape};

/// The arguments of `worldcompass plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    #[arg(long, default_value = "pipelines/paper.toml")]
    pub pipeline: String,
    /// Write the markdown here instead of printing it.
    #[arg(long)]
    pub out: Option<String>,
    /// With --out: only check that the file matches (exit 1 if not).
    #[arg(long, requires = "out")]
    pub check: bool,
    /// Shards per sharded stage (array size).
    #[arg(long, default_value_t = 64)]
    pub shards: u64,
    /// GPUs in the cluster.
    #[arg(long, default_value_t = 64)]
    pub gpus: u64,
    /// Dense bf16 peak per GPU, TFLOP/s (H20: 148, H100 SXM: 989).
    #[arg(long, default_value_t = 148.0)]
    pub peak_tflops: f64,
    /// Model FLOP utilisation assumed (0..1).
    #[arg(long, default_value_t = 0.4)]
    pub mfu: f64,
    /// Policy parameters, billions.
    #[arg(long, default_value_t = 8.0)]
    pub params_b: f64,
    /// Transformer layers and hidden width (attention cost).
    #[arg(long, default_value_t = 32)]
    pub layers: u64,
    #[arg(long, default_value_t = 4096)]
    pub hidden: u64,
    /// Latent grid per latent frame: HEIGHTxWIDTHxCHANNELS.
    #[arg(long, default_value = "60x104x16")]
    pub latent: String,
    /// Clips of context memory besides the first frame.
    #[arg(long, default_value_t = 4)]
    pub context_clips: u64,
    /// Pose (3D foundation) and VQ reward models, billions of parameters.
    #[arg(long, default_value_t = 1.2)]
    pub pose_params_b: f64,
    #[arg(long, default_value_t = 2.0)]
    pub vq_params_b: f64,
}

impl PlanArgs {
    /// The model and the cluster the plan is for.
    pub fn shape_and_hardware(&self) -> anyhow::Result<(ModelShape, Hardware)> {
        let dims: Vec<u64> = self
            .latent
            .split('x')
            .map(|d| d.trim().parse::<u64>())
            .collect::<Result<_, _>>()
            .ok()
            .filter(|d: &Vec<u64>| d.len() == 3 && d.iter().all(|&x| x > 0))
            .with_context(|| format!("--latent '{}': expected HEIGHTxWIDTHxCHANNELS, e.g. 60x104x16", self.latent))?;
        anyhow::ensure!(self.mfu > 0.0 && self.mfu <= 1.0, "--mfu {}: must be in (0, 1]", self.mfu);
        anyhow::ensure!(self.gpus > 0 && self.shards > 0, "--gpus and --shards must be positive");
        let model = ModelShape {
            params: self.params_b * 1e9,
            layers: self.layers,
            hidden: self.hidden,
            latent_height: dims[0],
            latent_width: dims[1],
            latent_channels: dims[2],
            context_clips: self.context_clips,
            pose_params: self.pose_params_b * 1e9,
            vq_params: self.vq_params_b * 1e9,
            ..ModelShape::paper()
        };
        Ok((model, Hardware { gpus: self.gpus, peak_flops: self.peak_tflops * 1e12, mfu: self.mfu }))
    }

    /// The command that writes this plan (recorded in it).
    fn command_line(&self) -> String {
        format!(
            "worldcompass plan --pipeline {} --shards {} --gpus {} --peak-tflops {} --mfu {} --params-b {} --layers {} --hidden {} --latent {} --context-clips {}",
            self.pipeline, self.shards, self.gpus, self.peak_tflops, self.mfu, self.params_b, self.layers, self.hidden, self.latent, self.context_clips
        )
    }
}

pub fn run(a: PlanArgs) -> anyhow::Result<()> {
    let cfg = wc_config::PipelineConfig::load(&a.pipeline)?;
    let (model, hw) = a.shape_and_hardware()?;
    let plan = wc_plan::plan(&cfg, &model, &hw, a.shards);
    let source = a.command_line();
    let md = wc_plan::to_markdown(&plan, &cfg, &model, &hw, a.shards, &source);
    match a.out {
        None => print!("{md}"),
        Some(path) if a.check => {
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            anyhow::ensure!(current == md, "{path} is out of date: rerun `{source} --out {path}`");
            println!("{path} is up to date");
        }
        Some(path) => {
            std::fs::write(&path, md).with_context(|| format!("writing {path}"))?;
            println!("wrote {path} (bounding stage: {})", plan.bounding_stage);
        }
    }
    Ok(())
}
