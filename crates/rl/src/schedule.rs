//! Schedules: target clip, EMA decay, sampler timesteps, timestep subset.

use crate::seeds::SplitMix64;

/// The target clip of iteration k (1-based): n = (k mod N) + 1.
pub fn target_clip(iter: u64, clips: u64) -> u64 {
    (iter % clips) + 1
}

/// EMA decay eta of iteration k, linear from `start` (k = 0) to `end`
/// (k = iterations - 1), held at `end` afterwards.
pub fn eta_at(iter: u64, iterations: u64, start: f64, end: f64) -> f64 {
    if iterations <= 1 {
        return start;
    }
    let frac = (iter.min(iterations - 1)) as f64 / (iterations - 1) as f64;
    start + (end - start) * frac
}

/// The T + 1 times of the flow-matching sampler, from 1 (noise) down to 0,
/// with timestep shift s: t' = s t / (1 + (s - 1) t). s = 1 is uniform; s > 1
/// spends more steps at high noise.
pub fn sampler_times(steps: usize, shift: f64) -> Vec<f64> {
    (0..=steps)
        .map(|i| {
            let t = 1.0 - i as f64 / steps as f64;
            shift * t / (1.0 + (shift - 1.0) * t)
        })
        .collect()
}

/// A random subset of `round(fraction * steps)` (at least 1) of the sampler
/// step indices 0..steps, sorted, drawn from `seed`.
pub fn timestep_subset(steps: usize, fraction: f64, seed: u64) -> Vec<usize> {
    let k = ((fraction * steps as f64).round() as usize).clamp(1, steps);
    let mut idx: Vec<usize> = (0..steps).collect();
    let mut rng = SplitMix64::new(seed);
    // Partial Fisher-Yates.
    for i in 0..k {
        let j = i + (rng.next_u64() % (steps - i) as u64) as usize;
        idx.swap(i, j);
    }
    let mut out = idx[..k].to_vec();
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progressive_target_clip() {
        let n: Vec<u64> = (0..6).map(|k| target_clip(k, 4)).collect();
        assert_eq!(n, vec![1, 2, 3, 4, 1, 2]);
    }

    #[test]
    fn eta_anneals_linearly() {
        assert_eq!(eta_at(0, 5, 0.4, 0.8), 0.4);
        assert!((eta_at(2, 5, 0.4, 0.8) - 0.6).abs() < 1e-12);
        assert!((eta_at(4, 5, 0.4, 0.8) - 0.8).abs() < 1e-12);
        assert!((eta_at(9, 5, 0.4, 0.8) - 0.8).abs() < 1e-12);
        assert_eq!(eta_at(3, 1, 0.4, 0.8), 0.4);
    }

    #[test]
    fn sampler_times_with_and_without_shift() {
        assert_eq!(sampler_times(4, 1.0), vec![1.0, 0.75, 0.5, 0.25, 0.0]);
        let s = sampler_times(4, 3.0);
        assert_eq!(s[0], 1.0);
        assert_eq!(s[4], 0.0);
        // t = 0.5 with shift 3: 1.5 / 2 = 0.75
        assert!((s[2] - 0.75).abs() < 1e-12);
        assert!(s.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn timestep_subset_is_deterministic_sized_and_distinct() {
        let a = timestep_subset(40, 0.5, 7);
        assert_eq!(a, timestep_subset(40, 0.5, 7));
        assert_eq!(a.len(), 20);
        assert!(a.windows(2).all(|w| w[0] < w[1]) && *a.last().unwrap() < 40);
        assert_ne!(a, timestep_subset(40, 0.5, 8));
        assert_eq!(timestep_subset(10, 1.0, 1), (0..10).collect::<Vec<_>>());
        assert_eq!(timestep_subset(10, 0.01, 1).len(), 1);
    }
}
