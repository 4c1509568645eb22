//! Capacity plan of one WorldCompass iteration.
//!
//! From the pipeline config (groups, N clips, frames per clip, G, T, the
//! timestep subset, best-of-N) and a description of the model and hardware
//! ([`Hardware`], [`ModelShape`]), compute per stage: model FLOPs, GPU-hours,
//! bytes written and read, objects written, and the stage's wall time on the
//! cluster, and say which stage bounds the iteration. Everything is a plain
//! function of its inputs, so the plan changes when the config does
//! (`worldcompass plan`).
//!
//! FLOP model: a forward of the diffusion transformer over `q` query tokens
//! attending to `k` key tokens costs `2 * params * q` (the dense layers) plus
//! `4 * layers * hidden * q * k` (attention scores and values). A training
//! sample costs three forwards' worth (forward + backward) plus the old
//! policy's forward for v_old. The prefix context is cached once per clip
//! (the paper's clip-level rollout), so a denoising step processes one clip's
//! tokens against the cached context.

use serde::{Deserialize, Serialize};
use wc_config::{PipelineConfig, RolloutMode};

/// The policy model: size and latent geometry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelShape {
    /// Parameters of the policy (paper: an 8B model).
    pub params: f64,
    /// Transformer layers and hidden width (for the attention term).
    pub layers: u64,
    pub hidden: u64,
    /// Video frames per latent frame (the VAE's temporal compression).
    pub temporal_compression: u64,
    /// Latent grid of one latent frame (height x width) and its channels.
    pub latent_height: u64,
    pub latent_width: u64,
    pub latent_channels: u64,
    /// Spatial patch size of the transformer (tokens = grid / patch^2).
    pub patch: u64,
    /// Clips of context memory besides the first frame.
    pub context_clips: u64,
    /// Bytes per stored latent or weight element (2 = bf16).
    pub bytes_per_element: u64,
    /// Optimizer state bytes per parameter (Muon momentum in f32: 4).
    pub optimizer_bytes_per_param: u64,
    /// Reward models: parameters and tokens per frame of the pose (3D
    /// foundation) model and the visual-quality model.
    pub pose_params: f64,
    pub pose_tokens_per_frame: u64,
    pub vq_params: f64,
    pub vq_tokens_per_frame: u64,
}

/// The cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hardware {
    pub gpus: u64,
    /// Dense bf16 peak per GPU, FLOP/s (H100 SXM: 989e12).
    pub peak_flops: f64,
    /// Model FLOP utilisation actually reached (0..1).
    pub mfu: f64,
}

impl ModelShape {
    /// The paper's setting: an 8B video diffusion transformer on 480p latents.
    pub fn paper() -> ModelShape {
        ModelShape {
            params: 8.0e9,
            layers: 32,
            hidden: 4096,
            temporal_compression: 4,
            latent_height: 60,
            latent_width: 104,
            latent_channels: 16,
            patch: 2,
            context_clips: 4,
            bytes_per_element: 2,
            optimizer_bytes_per_param: 4,
            pose_params: 1.2e9,
            pose_tokens_per_frame: 1024,
            vq_params: 2.0e9,
            vq_tokens_per_frame: 1024,
        }
    }

    fn tokens_per_latent_frame(&self) -> f64 {
        (self.latent_height * self.latent_width) as f64 / (self.patch * self.patch) as f64
    }

    fn latent_frames(&self, video_frames: u64) -> u64 {
        video_frames.div_ceil(self.temporal_compression)
    }

    /// FLOPs of one forward over `q` query tokens attending to `k` tokens.
    pub fn forward_flops(&self, q: f64, k: f64) -> f64 {
        2.0 * self.params * q + 4.0 * (self.layers * self.hidden) as f64 * q * k
    }
}

impl Hardware {
    pub fn paper() -> Hardware {
        Hardware { gpus: 64, peak_flops: 989e12, mfu: 0.4 }
    }

    /// GPU-hours to execute `flops`.
    pub fn gpu_hours(&self, flops: f64) -> f64 {
        flops / (self.peak_flops * self.mfu) / 3600.0
    }
}

/// One stage's cost per iteration.
#[derive(Debug, Clone, Serialize)]
pub struct StagePlan {
    pub stage: &'static str,
    pub flops: f64,
    pub gpu_hours: f64,
    /// Independent units of work the stage can spread over GPUs.
    pub parallel_units: u64,
    /// Wall time on the cluster: GPU-hours over min(gpus, units), seconds.
    pub wall_s: f64,
    pub bytes_written: f64,
    pub bytes_read: f64,
    pub objects_written: u64,
}

/// The plan of one iteration (at the average clip index over the N-cycle).
#[derive(Debug, Clone, Serialize)]
pub struct CapacityPlan {
    pub stages: Vec<StagePlan>,
    pub bounding_stage: &'static str,
    pub iteration_wall_s: f64,
    pub iteration_gpu_hours: f64,
    /// Derived sizes, for the report.
    pub clip_tokens: f64,
    pub context_tokens: f64,
    pub clip_latent_bytes: f64,
    pub checkpoint_bytes: f64,
}

/// The capacity plan of one iteration of `cfg` with `shards` shards per
/// sharded stage.
pub fn plan(cfg: &PipelineConfig, model: &ModelShape, hw: &Hardware, shards: u64) -> CapacityPlan {
    let r = &cfg.rollout;
    let groups = cfg.data.groups as f64;
    let g = r.candidates as f64;
    let t = r.sampler_steps as f64;
    let n_clips = r.clips as f64;
    let frames_per_clip = 4 * r.windows_per_clip;
    let latent_frames = model.latent_frames(frames_per_clip) as f64;
    let clip_tokens = latent_frames * model.tokens_per_latent_frame();
    let first_frame_tokens = model.tokens_per_latent_frame();
    // Average prefix length over the progressive schedule n = (k mod N) + 1.
    let mean_prefix_clips = (n_clips - 1.0) / 2.0;
    let context_tokens = first_frame_tokens + clip_tokens * (model.context_clips as f64).min(mean_prefix_clips.max(0.0));
    // One denoising step of one clip against the (cached) context.
    let step = model.forward_flops(clip_tokens, context_tokens + clip_tokens);
    // Encoding a finished clip into the cache.
    let cache = model.forward_flops(clip_tokens, context_tokens + clip_tokens);
    let elem = model.bytes_per_element as f64;
    let clip_latent_bytes = latent_frames * (model.latent_height * model.latent_width * model.latent_channels) as f64 * elem;
    let weights = model.params * elem;
    let checkpoint_bytes = 2.0 * weights + model.params * model.optimizer_bytes_per_param as f64;
    let shards_f = shards as f64;
    let candidates_total = groups * g;

    let (prefix_flops, rollout_flops, rollout_clips) = match r.mode {
        RolloutMode::Clip => (
            groups * mean_prefix_clips * (t * step + cache),
            candidates_total * t * step + groups * cache,
            1.0,
        ),
        // Sample-level: every candidate is a whole sequence of N clips.
        RolloutMode::Sample => (0.0, candidates_total * n_clips * (t * step + cache), n_clips),
    };
    let selected = if cfg.select.best_of_n { (cfg.select.keep_top + cfg.select.keep_bottom).min(r.candidates) as f64 } else { g };
    let timesteps = (t * cfg.optimize.timestep_fraction).ceil().max(1.0);
    let train_samples = groups * selected * timesteps * rollout_clips;
    // v_old (old policy forward) + forward + backward (2 forwards' worth).
    let optimize_flops = train_samples * 4.0 * step;
    let frames_scored = candidates_total * (frames_per_clip as f64) * rollout_clips;
    let vq_frames = candidates_total * (frames_per_clip as f64 / cfg.reward.vq_frame_stride.max(1) as f64).ceil() * rollout_clips;
    let reward_flops = frames_scored * 2.0 * model.pose_params * model.pose_tokens_per_frame as f64
        + vq_frames * 2.0 * model.vq_params * model.vq_tokens_per_frame as f64;
    let table_row = 128.0; // bytes per Parquet row, compressed, roughly
    let manifests = shards;

    let stage = |name: &'static str, flops: f64, units: f64, written: f64, read: f64, objects: u64| {
        let gpu_hours = hw.gpu_hours(flops);
        let parallel = (units.max(1.0) as u64).min(hw.gpus).max(1);
        StagePlan {
            stage: name,
            flops,
            gpu_hours,
            parallel_units: units.max(1.0) as u64,
            wall_s: gpu_hours * 3600.0 / parallel as f64,
            bytes_written: written,
            bytes_read: read,
            objects_written: objects,
        }
    };
    let prefix_bytes = groups * mean_prefix_clips * clip_latent_bytes;
    let rollout_bytes = candidates_total * rollout_clips * clip_latent_bytes;
    let stages = vec![
        stage("prefix", prefix_flops, groups, prefix_bytes, shards_f * weights, cfg.data.groups + manifests),
        stage("rollout", rollout_flops, candidates_total, rollout_bytes, shards_f * weights + prefix_bytes, cfg.data.groups + manifests),
        stage("reward", reward_flops, candidates_total, candidates_total * 2.0 * table_row, rollout_bytes, 2 * shards + manifests),
        stage("select", 0.0, 1.0, 2.0 * candidates_total * table_row, candidates_total * table_row, 3), // selection, reward log, manifest
        stage(
            "optimize",
            optimize_flops,
            hw.gpus as f64, // data-parallel (FSDP) over the whole cluster
            checkpoint_bytes,
            checkpoint_bytes + prefix_bytes + rollout_bytes,
            5, // policy, old policy, optimizer state, metrics, manifest
        ),
    ];
    let bounding = stages.iter().max_by(|a, b| a.wall_s.total_cmp(&b.wall_s)).unwrap().stage;
    CapacityPlan {
        iteration_wall_s: stages.iter().map(|s| s.wall_s).sum(),
        iteration_gpu_hours: stages.iter().map(|s| s.gpu_hours).sum(),
        bounding_stage: bounding,
        stages,
        clip_tokens,
        context_tokens,
        clip_latent_bytes,
        checkpoint_bytes,
    }
}

fn human_bytes(b: f64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 { format!("{v:.0} {}", units[i]) } else { format!("{v:.1} {}", units[i]) }
}

/// The plan as a markdown document.
pub fn to_markdown(p: &CapacityPlan, cfg: &PipelineConfig, model: &ModelShape, hw: &Hardware, shards: u64, source: &str) -> String {
    let r = &cfg.rollout;
    let mut s = String::new();
    s += "# Capacity plan of one WorldCompass iteration\n\n";
    s += &format!("Generated by `{source}`; rerun it after changing the model or the config.\n\n");
    s += "## Setting\n\n";
    s += &format!(
        "- Pipeline: {} groups per iteration, N = {} clips of {} frames, G = {} candidates, T = {} sampler steps, {:.0}% of timesteps trained, best-of-N {} (keep {} + {}), {} rollout.\n",
        cfg.data.groups,
        r.clips,
        4 * r.windows_per_clip,
        r.candidates,
        r.sampler_steps,
        100.0 * cfg.optimize.timestep_fraction,
        if cfg.select.best_of_n { "on" } else { "off" },
        cfg.select.keep_top,
        cfg.select.keep_bottom,
        match r.mode {
            RolloutMode::Clip => "clip-level",
            RolloutMode::Sample => "sample-level",
        }
    );
    s += &format!(
        "- Model: {:.1}B parameters, {} layers x {} hidden; latents {}x{}x{} per latent frame ({}x temporal compression, patch {}), {:.0} tokens per clip, context {:.0} tokens (first frame + up to {} clips, at the mean prefix length).\n",
        model.params / 1e9,
        model.layers,
        model.hidden,
        model.latent_channels,
        model.latent_height,
        model.latent_width,
        model.temporal_compression,
        model.patch,
        p.clip_tokens,
        p.context_tokens,
        model.context_clips
    );
    s += &format!(
        "- Rewards: pose model {:.1}B on {} tokens per frame, VQ model {:.1}B on {} tokens per frame (every {} frames).\n",
        model.pose_params / 1e9,
        model.pose_tokens_per_frame,
        model.vq_params / 1e9,
        model.vq_tokens_per_frame,
        cfg.reward.vq_frame_stride
    );
    s += &format!(
        "- Cluster: {} GPUs at {:.0} TFLOP/s dense bf16 peak, {:.0}% MFU assumed; {} shards per sharded stage.\n\n",
        hw.gpus,
        hw.peak_flops / 1e12,
        100.0 * hw.mfu,
        shards
    );
    s += "## Per stage, per iteration (mean over the N-clip cycle)\n\n";
    s += "| stage | PFLOP | GPU-hours | parallel units | wall on the cluster | written | read | objects written |\n";
    s += "|---|---:|---:|---:|---:|---:|---:|---:|\n";
    for st in &p.stages {
        s += &format!(
            "| {} | {:.1} | {:.2} | {} | {:.0} s | {} | {} | {} |\n",
            st.stage,
            st.flops / 1e15,
            st.gpu_hours,
            st.parallel_units,
            st.wall_s,
            human_bytes(st.bytes_written),
            human_bytes(st.bytes_read),
            st.objects_written
        );
    }
    s += &format!(
        "| **iteration** | {:.1} | {:.2} | | {:.0} s | | | |\n\n",
        p.stages.iter().map(|x| x.flops).sum::<f64>() / 1e15,
        p.iteration_gpu_hours,
        p.iteration_wall_s
    );
    s += &format!(
        "**Bounding stage: {}.** One clip's latents take {}; a checkpoint (policy + old policy + optimizer state) takes {}.\n\n",
        p.bounding_stage,
        human_bytes(p.clip_latent_bytes),
        human_bytes(p.checkpoint_bytes)
    );
    s += "Notes: wall time assumes the stage's units spread evenly over min(GPUs, units) GPUs with the stated MFU and excludes queueing, model loading and storage latency. The optimize stage is data-parallel over all GPUs (the weights, gradients and optimizer state of a model this size need sharding, e.g. FSDP). The VAE decode before the reward models is not counted. The select stage runs on a CPU.\n";
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The small linear pipeline switched to the world backend (the plan
    /// sizes a world model; sample-level rollout exists only there), with
    /// the lines of `text` replaced.
    fn config(text: &str) -> PipelineConfig {
        let base = include_str!("../../../pipelines/linear.toml");
        let mut t = base
            .replace("kind = \"linear\"", "kind = \"world\"\npreset = \"tiny\"")
            .replace("latent_dim = 16\n", "")
            .replace("vq_frame_stride = 4", "vq_frame_stride = 4\npose_model = \"models/pose\"");
        for line in text.lines().filter(|l| !l.is_empty()) {
            let key = line.split('=').next().unwrap().trim();
            let start = t.find(&format!("\n{key} ")).unwrap_or_else(|| panic!("no key {key}")) + 1;
            let end = start + t[start..].find('\n').unwrap();
            t.replace_range(start..end, line);
        }
        PipelineConfig::parse("test", &t).unwrap()
    }

    /// A model with no attention term and no compression: one token per pixel-free frame.
    fn unit_model() -> ModelShape {
        ModelShape {
            params: 1.0e6,
            layers: 0,
            hidden: 0,
            temporal_compression: 4,
            latent_height: 2,
            latent_width: 2,
            latent_channels: 1,
            patch: 2,
            context_clips: 1,
            bytes_per_element: 2,
            optimizer_bytes_per_param: 4,
            pose_params: 0.0,
            pose_tokens_per_frame: 0,
            vq_params: 0.0,
            vq_tokens_per_frame: 0,
        }
    }

    fn hw() -> Hardware {
        Hardware { gpus: 4, peak_flops: 1e12, mfu: 0.5 }
    }

    #[test]
    fn forward_flops_are_dense_plus_attention() {
        let m = ModelShape { layers: 2, hidden: 8, ..unit_model() };
        // 2 * 1e6 * 3 + 4 * 2 * 8 * 3 * 5
        assert_eq!(m.forward_flops(3.0, 5.0), 6.0e6 + 960.0);
    }

    #[test]
    fn hand_computed_iteration_of_a_tiny_setting() {
        // 2 groups, N = 3 clips of 4 frames (1 latent frame = 1 token), G = 4, T = 10,
        // half the timesteps, best-of-N keeping 1 + 1.
        let cfg = config("groups = 2\nclips = 3\nwindows_per_clip = 1\ncandidates = 4\nsampler_steps = 10\ntimestep_fraction = 0.5\nkeep_top = 1\nkeep_bottom = 1");
        let p = plan(&cfg, &unit_model(), &hw(), 2);
        let step = 2.0e6; // 2 * params * 1 token
        let by = |n: &str| p.stages.iter().find(|s| s.stage == n).unwrap().clone();
        // prefix: groups * mean prefix clips (1) * (T steps + 1 cache encode)
        assert_eq!(by("prefix").flops, 2.0 * 1.0 * 11.0 * step);
        // rollout: groups * G * T steps + one context encode per group
        assert_eq!(by("rollout").flops, 2.0 * 4.0 * 10.0 * step + 2.0 * step);
        // optimize: groups * 2 selected * 5 timesteps * 4 forwards' worth
        assert_eq!(by("optimize").flops, 2.0 * 2.0 * 5.0 * 4.0 * step);
        // GPU-hours at 0.5e12 FLOP/s; rollout spreads over min(4 GPUs, 8 candidates).
        let r = by("rollout");
        assert!((r.gpu_hours - r.flops / 0.5e12 / 3600.0).abs() < 1e-15);
        assert!((r.wall_s - r.gpu_hours * 3600.0 / 4.0).abs() < 1e-12);
        // Latents: 1 latent frame of 2x2x1 at 2 bytes = 8 bytes per clip.
        assert_eq!(p.clip_latent_bytes, 8.0);
        assert_eq!(r.bytes_written, 8.0 * 8.0);
        // A checkpoint: policy + old policy (2 bytes each) + 4 bytes of optimizer state per parameter.
        assert_eq!(p.checkpoint_bytes, 8.0e6);
        assert_eq!(by("prefix").objects_written, 2 + 2);
        assert_eq!(p.bounding_stage, "rollout");
    }

    #[test]
    fn clip_level_rollout_costs_about_n_plus_g_over_n_times_g_of_sample_level() {
        let clip = config("groups = 8\nclips = 16\ncandidates = 16\nsampler_steps = 40");
        let sample = config("groups = 8\nclips = 16\ncandidates = 16\nsampler_steps = 40\nmode = \"sample\"");
        let m = unit_model();
        let pc = plan(&clip, &m, &hw(), 1);
        let ps = plan(&sample, &m, &hw(), 1);
        let generation = |p: &CapacityPlan| p.stages.iter().filter(|s| s.stage == "prefix" || s.stage == "rollout").map(|s| s.flops).sum::<f64>();
        let ratio = generation(&pc) / generation(&ps);
        // clip-level: mean prefix (N-1)/2 clips + G candidates; sample-level: N * G clips.
        let expected = (7.5 + 16.0) / (16.0 * 16.0);
        assert!((ratio - expected).abs() < 0.01, "{ratio} vs {expected}");
    }

    #[test]
    fn the_plan_follows_the_config() {
        let small = plan(&config("candidates = 8"), &unit_model(), &hw(), 1);
        let big = plan(&config("candidates = 16"), &unit_model(), &hw(), 1);
        let rollout = |p: &CapacityPlan| p.stages[1].flops;
        assert!(rollout(&big) > 1.9 * rollout(&small));
        let no_bon = plan(&config("best_of_n = false"), &unit_model(), &hw(), 1);
        let bon = plan(&config("best_of_n = true"), &unit_model(), &hw(), 1);
        assert!(no_bon.stages[4].flops > bon.stages[4].flops);
    }
}
