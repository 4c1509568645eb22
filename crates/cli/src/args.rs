//! Argument sets shared by several subcommands (the device, the sampler,
//! the run URI's stage and shard) and their conversion to the library's
//! types.

use clap::{Args, ValueEnum};
use wc_config::DeviceSpec;
use wc_model::flow::SamplerConfig;
use wc_store::ShardSpec;

/// Where a command's models run.
#[derive(Debug, Clone, Copy, Args)]
pub struct DeviceArgs {
    /// Where the model runs: cpu or cuda:N [default: the run's `[run]
    /// device`, else cpu]. cuda:N needs a build with the `cuda` feature
    /// (README, section "GPU").
    #[arg(long, env = "WORLDCOMPASS_DEVICE", hide_env_values = true, value_name = "DEVICE", global = true)]
    pub device: Option<DeviceSpec>,
}

impl DeviceArgs {
    /// The device asked for, the CPU when none was.
    pub fn or_cpu(&self) -> DeviceSpec {
        self.device.unwrap_or_default()
    }
}

/// How clips are sampled from a model.
#[derive(Debug, Clone, clap::Args)]
pub struct SamplerArgs {
    /// Sampler steps T.
    #[arg(long, default_value_t = SamplerConfig::default().steps)]
    pub sampler_steps: usize,
    /// Timestep shift of the sampler.
    #[arg(long, default_value_t = SamplerConfig::default().shift)]
    pub shift: f64,
    /// Classifier-free guidance scale over the action (1 = off).
    #[arg(long, default_value_t = SamplerConfig::default().guidance)]
    pub guidance: f64,
    /// Seed of the initial noise.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplerArgs {
    /// The library's sampler settings.
    pub fn config(&self) -> SamplerConfig {
        SamplerConfig { steps: self.sampler_steps, shift: self.shift, guidance: self.guidance }
    }
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
pub(crate) fn share_in_0_1(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        Ok(v) => Err(format!("{v} is not a share between 0 and 1")),
        Err(e) => Err(e.to_string()),
    }
}


/// A world prompt and an action sequence to generate from.
#[derive(Debug, Clone, Args)]
pub struct PromptArgs {
    /// Scene seed of the world prompt.
    #[arg(long, default_value_t = 0)]
    pub scene: u64,
    /// Comma-separated actions, one per 4-frame window.
    #[arg(long, value_delimiter = ',', required = true)]
    pub actions: Vec<String>,
}

impl PromptArgs {
    /// The actions, parsed.
    pub fn actions(&self) -> anyhow::Result<Vec<wc_world::ActionMask>> {
        parse_actions(&self.actions)
    }
}

/// Parse comma-separated actions (`forward,turn_left+right`), one per
/// 4-frame window.
pub fn parse_actions(actions: &[String]) -> anyhow::Result<Vec<wc_world::ActionMask>> {
    actions.iter().map(|a| wc_world::ActionMask::parse(a)).collect::<Result<_, _>>().map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
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
