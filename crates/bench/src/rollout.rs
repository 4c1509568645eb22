//! Clip-level vs sample-level rollout (paper section 3.2).
//!
//! To get G candidates of clip n, clip-level rollout generates the n-1
//! prefix clips once (one sequence) and then G candidates of clip n from the
//! shared, cached prefix: (n-1) + G clip generations. Sample-level rollout
//! generates G whole sequences of n clips: n * G. The paper's ratio is about
//! (N+G)/(N*G); counted exactly it is (N-1+G)/(N*G). Both are measured here
//! with the world model on random weights and inputs (time does not depend
//! on the values), every clip generation a full T-step sampler run.

use candle_core::{Device, Tensor};
use wc_model::flow::{sample, seeded_noise, SamplerConfig};
use wc_model::params::Params;
use wc_model::{ModelConfig, WorldModel};

use crate::{BenchRow, Result};

/// What one rollout strategy did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RolloutCost {
    /// Clip generations (one sequence's clip, T sampler steps each).
    pub clip_generations: usize,
    /// Calls of the model (velocity or context encoding), any batch size.
    pub model_calls: usize,
    pub seconds: f64,
}

struct Bench<'a> {
    model: &'a WorldModel,
    cfg: &'a ModelConfig,
    sampler: SamplerConfig,
    dev: Device,
}

impl Bench<'_> {
    /// Generate one clip for each of `batch` sequences (each with its own
    /// context): one context encoding and T velocity calls at batch `batch`.
    fn clips(&self, batch: usize, seed: u64) -> Result<usize> {
        let (tpf, tok) = (self.cfg.tokens_per_frame(), self.cfg.token_dim());
        let ctx = seeded_noise(seed, &[batch, self.cfg.context_slots() * tpf, tok], &self.dev)?;
        let cache = self.model.encode_context(&ctx)?;
        self.candidates(&cache, batch, seed + 1)?;
        Ok(1 + self.sampler.steps)
    }

    /// G candidates from one encoded context: T velocity calls at batch G.
    fn candidates(&self, cache: &wc_model::ContextCache, g: usize, seed: u64) -> Result<Tensor> {
        let (tpf, tok) = (self.cfg.tokens_per_frame(), self.cfg.token_dim());
        let noise = seeded_noise(seed, &[g, self.cfg.frames_per_clip * tpf, tok], &self.dev)?;
        let masks = vec![vec![1u8; self.cfg.frames_per_clip]; g];
        Ok(sample(self.model, cache, &noise, &masks, &self.sampler)?)
    }

    fn clip_level(&self, n: usize, g: usize) -> Result<RolloutCost> {
        let t0 = std::time::Instant::now();
        let mut calls = 0;
        for i in 0..n - 1 {
            calls += self.clips(1, 100 + i as u64)?;
        }
        let (tpf, tok) = (self.cfg.tokens_per_frame(), self.cfg.token_dim());
        let ctx = seeded_noise(7, &[1, self.cfg.context_slots() * tpf, tok], &self.dev)?;
        let cache = self.model.encode_context(&ctx)?;
        self.candidates(&cache, g, 8)?;
        calls += 1 + self.sampler.steps;
        Ok(RolloutCost { clip_generations: (n - 1) + g, model_calls: calls, seconds: t0.elapsed().as_secs_f64() })
    }

    fn sample_level(&self, n: usize, g: usize) -> Result<RolloutCost> {
        let t0 = std::time::Instant::now();
        let mut calls = 0;
        for i in 0..n {
            calls += self.clips(g, 200 + i as u64)?;
        }
        Ok(RolloutCost { clip_generations: n * g, model_calls: calls, seconds: t0.elapsed().as_secs_f64() })
    }
}

/// Both strategies for G candidates of clip N, timed (best of `reps`).
pub fn compare(cfg: &ModelConfig, steps: usize, n: usize, g: usize, reps: usize, dev: &Device) -> Result<(RolloutCost, RolloutCost)> {
    let dev = dev.clone();
    let mut p = Params::new(0, &dev);
    let model = WorldModel::new(cfg, &mut p)?;
    let b = Bench { model: &model, cfg, sampler: SamplerConfig { steps, shift: 3.0, guidance: 1.0 }, dev };
    // Warm up (thread pool, allocator) so the first timed run is not penalised.
    b.clips(g, 1)?;
    let best = |f: &dyn Fn() -> Result<RolloutCost>| -> Result<RolloutCost> {
        let mut out = f()?;
        for _ in 1..reps.max(1) {
            let c = f()?;
            if c.seconds < out.seconds {
                out = c;
            }
        }
        Ok(out)
    };
    Ok((best(&|| b.clip_level(n, g))?, best(&|| b.sample_level(n, g))?))
}

/// The paper's anchor, counted exactly: (N-1+G)/(N*G).
pub fn expected_ratio(n: usize, g: usize) -> f64 {
    (n - 1 + g) as f64 / (n * g) as f64
}

/// Rows for every (N, G).
pub fn rows(cfg: &ModelConfig, steps: usize, settings: &[(usize, usize)], reps: usize, dev: &Device) -> Result<Vec<BenchRow>> {
    let mut rows = Vec::new();
    for &(n, g) in settings {
        let (clip, sample) = compare(cfg, steps, n, g, reps, dev)?;
        let config = format!("N={n} G={g} T={steps}, default model");
        let anchor = expected_ratio(n, g);
        let source = "paper (N+G)/(N*G), exact (N-1+G)/(N*G)";
        rows.push(
            BenchRow::new("rollout", "clip/sample clip generations", &config, clip.clip_generations as f64 / sample.clip_generations as f64, "x")
                .anchor(anchor, source)
                .detail(format!("{} vs {} clips; {} vs {} model calls", clip.clip_generations, sample.clip_generations, clip.model_calls, sample.model_calls)),
        );
        rows.push(
            BenchRow::new("rollout", "clip/sample wall time", &config, clip.seconds / sample.seconds, "x")
                .anchor(anchor, source)
                .detail(format!("{:.3} s vs {:.3} s", clip.seconds, sample.seconds)),
        );
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_anchor_matches_hand_counts() {
        // N = 4 clips, G = 2: clip-level 3 + 2 = 5 generations, sample-level 8.
        assert_eq!(expected_ratio(4, 2), 5.0 / 8.0);
        assert_eq!(expected_ratio(1, 8), 1.0); // no prefix: the same work
    }

    #[test]
    fn counted_work_of_both_strategies_on_the_tiny_model() {
        let (clip, sample) = compare(&ModelConfig::tiny(), 3, 4, 2, 1, &Device::Cpu).unwrap();
        assert_eq!((clip.clip_generations, sample.clip_generations), (5, 8));
        // clip-level: 3 prefix clips (1 encode + 3 steps each) + 1 encode + 3 steps.
        assert_eq!(clip.model_calls, 3 * 4 + 4);
        // sample-level: 4 clips at batch 2, each 1 encode + 3 steps.
        assert_eq!(sample.model_calls, 4 * 4);
        assert!(clip.seconds > 0.0 && sample.seconds > 0.0);
    }
}
