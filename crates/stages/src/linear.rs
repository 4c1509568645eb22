//! The `linear` model backend: a linear-Gaussian policy over clip latents.
//!
//! It is not a video model. It exists so that every stage, the commit
//! protocol, sharding, resume and the RL loop can be exercised end to end in
//! milliseconds, with a policy that really improves under the loop.
//!
//! A clip is a latent vector of `dim >= 8` values. Clip n is generated from
//! clip n-1 and the clip's action mask m (8 bits, see `data::ACTION_NAMES`):
//!
//! ```text
//! x_n = x_{n-1} + bias + sum_a m_a theta[a] + NOISE_STD * eps
//! ```
//!
//! The builtin scorer reads the motion x_n - x_{n-1}: coordinate a < 8 is
//! the motion along basic action a, detected when above
//! [`MOTION_THRESHOLD`]; rotation accuracy is the share of the four rotation
//! actions detected as commanded, translation accuracy the same for the four
//! translations, and VQ = exp(-mean square of the remaining coordinates)
//! (motion that is no action is "artifact").
//!
//! The update is signed reward-weighted regression: with w = 2r - 1 for each
//! selected candidate, L = 1/(2|S|) sum_j w_j ||mu_theta(m_j) - motion_j||^2,
//! minimised with momentum SGD; candidates better than their group pull the
//! policy's mean toward them, worse ones push it away.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use wc_schemas::{Tensor, TensorSet};

/// Basic actions (mask bits).
pub const ACTIONS: usize = 8;
/// Standard deviation of the generation noise.
pub const NOISE_STD: f32 = 0.3;
/// Motion above this along an action's coordinate counts as that action.
pub const MOTION_THRESHOLD: f32 = 0.5;

/// `n` standard-normal f32 values from `seed` (ChaCha8: same on every machine).
pub fn gaussian_noise(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| StandardNormal.sample(&mut rng)).collect()
}

/// Per-action weights of a clip: the share of the clip's windows in which
/// each basic action is held.
pub fn clip_action_weights(window_masks: &[u8]) -> [f32; ACTIONS] {
    let mut w = [0.0f32; ACTIONS];
    for m in window_masks {
        for (a, wa) in w.iter_mut().enumerate() {
            if m & (1 << a) != 0 {
                *wa += 1.0;
            }
        }
    }
    let n = window_masks.len().max(1) as f32;
    w.map(|x| x / n)
}

/// The linear-Gaussian policy's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearPolicy {
    pub dim: usize,
    /// `ACTIONS x dim`, row-major.
    pub theta: Vec<f32>,
    pub bias: Vec<f32>,
}

impl LinearPolicy {
    /// A random initial policy (small weights: it follows no action yet).
    pub fn init(dim: usize, seed: u64) -> Self {
        let theta = gaussian_noise(seed, ACTIONS * dim).into_iter().map(|x| 0.15 * x).collect();
        let bias = gaussian_noise(seed ^ 0xB1A5, dim).into_iter().map(|x| 0.1 * x).collect();
        LinearPolicy { dim, theta, bias }
    }

    /// Mean motion of a clip with the given action weights.
    pub fn mean_motion(&self, w: &[f32; ACTIONS]) -> Vec<f32> {
        let mut mu = self.bias.clone();
        for (a, wa) in w.iter().enumerate() {
            if *wa != 0.0 {
                for (m, t) in mu.iter_mut().zip(&self.theta[a * self.dim..(a + 1) * self.dim]) {
                    *m += wa * t;
                }
            }
        }
        mu
    }

    /// Generate the next clip from the previous one.
    pub fn next_clip(&self, prev: &[f32], w: &[f32; ACTIONS], noise: &[f32]) -> Vec<f32> {
        self.mean_motion(w)
            .iter()
            .zip(prev)
            .zip(noise)
            .map(|((m, p), e)| p + m + NOISE_STD * e)
            .collect()
    }

    /// theta_old <- eta * theta_old + (1 - eta) * theta (self is the old policy).
    pub fn ema_toward(&mut self, policy: &LinearPolicy, eta: f32) {
        for (o, p) in self.theta.iter_mut().zip(&policy.theta).chain(self.bias.iter_mut().zip(&policy.bias)) {
            *o = eta * *o + (1.0 - eta) * p;
        }
    }

    /// Whether every weight is finite.
    pub fn is_finite(&self) -> bool {
        self.theta.iter().chain(&self.bias).all(|v| v.is_finite())
    }

    pub fn to_tensors(&self) -> TensorSet {
        let mut t = TensorSet::new();
        t.insert("theta".into(), Tensor::from_f32(&[ACTIONS, self.dim], &self.theta));
        t.insert("bias".into(), Tensor::from_f32(&[self.dim], &self.bias));
        t
    }

    /// From tensors already validated against the `linear_policy` layout.
    pub fn from_tensors(dim: usize, t: &TensorSet) -> Self {
        LinearPolicy {
            dim,
            theta: t["theta"].to_f32(),
            bias: t["bias"].to_f32(),
        }
    }
}

/// Scores of one candidate clip from its motion and its action weights:
/// (rotation accuracy, translation accuracy, VQ).
pub fn score_motion(motion: &[f32], w: &[f32; ACTIONS]) -> (f64, f64, f64) {
    let correct = |a: usize| (motion[a] > MOTION_THRESHOLD) == (w[a] >= 0.5);
    let trans = (0..4).filter(|&a| correct(a)).count() as f64 / 4.0;
    let rot = (4..8).filter(|&a| correct(a)).count() as f64 / 4.0;
    let rest = &motion[ACTIONS..];
    let artifact = if rest.is_empty() {
        0.0
    } else {
        rest.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / rest.len() as f64
    };
    (rot, trans, (-artifact).exp())
}

/// One training sample of the update: a candidate's action weights, its
/// motion, and its optimality probability r.
pub struct Sample {
    pub weights: [f32; ACTIONS],
    pub motion: Vec<f32>,
    pub r: f64,
}

/// Loss and gradient (theta, bias) of the signed reward-weighted regression.
pub fn loss_and_grad(policy: &LinearPolicy, samples: &[Sample]) -> (f64, Vec<f32>, Vec<f32>) {
    let d = policy.dim;
    let mut g_theta = vec![0.0f64; ACTIONS * d];
    let mut g_bias = vec![0.0f64; d];
    let mut loss = 0.0f64;
    let s = samples.len().max(1) as f64;
    for smp in samples {
        let w = 2.0 * smp.r - 1.0;
        let mu = policy.mean_motion(&smp.weights);
        for k in 0..d {
            let diff = (mu[k] - smp.motion[k]) as f64;
            loss += 0.5 * w * diff * diff / s;
            let g = w * diff / s;
            g_bias[k] += g;
            for a in 0..ACTIONS {
                g_theta[a * d + k] += g * smp.weights[a] as f64;
            }
        }
    }
    (
        loss,
        g_theta.into_iter().map(|x| x as f32).collect(),
        g_bias.into_iter().map(|x| x as f32).collect(),
    )
}

/// Momentum SGD on the policy. Returns (loss, gradient norm, applied): a
/// step whose loss or gradient is not finite is not applied.
pub fn sgd_step(
    policy: &mut LinearPolicy,
    momentum: &mut LinearPolicy,
    samples: &[Sample],
    lr: f32,
    beta: f32,
) -> (f64, f64, bool) {
    let (loss, g_theta, g_bias) = loss_and_grad(policy, samples);
    let norm = g_theta.iter().chain(&g_bias).map(|g| (*g as f64).powi(2)).sum::<f64>().sqrt();
    if !loss.is_finite() || !norm.is_finite() {
        return (loss, norm, false);
    }
    // All or nothing: the step is applied only if every new weight and
    // momentum is finite.
    let (mut next, mut next_m) = (policy.clone(), momentum.clone());
    for ((p, m), g) in next
        .theta
        .iter_mut()
        .zip(next_m.theta.iter_mut())
        .zip(&g_theta)
        .chain(next.bias.iter_mut().zip(next_m.bias.iter_mut()).zip(&g_bias))
    {
        *m = beta * *m + g;
        *p -= lr * *m;
    }
    if !next.is_finite() || !next_m.is_finite() {
        return (loss, norm, false);
    }
    (*policy, *momentum) = (next, next_m);
    (loss, norm, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nan_momentum_step_is_not_applied() {
        let mut policy = LinearPolicy::init(8, 1);
        let mut momentum = LinearPolicy::init(8, 2);
        momentum.bias[3] = f32::NAN;
        let samples = vec![Sample { weights: [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], motion: vec![1.0; 8], r: 0.9 }];
        let (p0, m0) = (policy.clone(), momentum.clone());
        let (loss, norm, applied) = sgd_step(&mut policy, &mut momentum, &samples, 0.1, 0.9);
        assert!(loss.is_finite() && norm.is_finite() && !applied);
        assert_eq!(policy, p0);
        assert_eq!(momentum.theta, m0.theta);
        assert!(sgd_step(&mut policy, &mut LinearPolicy::init(8, 2), &samples, 0.1, 0.9).2, "a finite state steps");
    }

    #[test]
    fn action_weights_average_windows() {
        let w = clip_action_weights(&[0b0000_0001, 0b0100_0001]);
        assert_eq!(w[0], 1.0);
        assert_eq!(w[6], 0.5);
        assert_eq!(w[1], 0.0);
    }

    #[test]
    fn perfect_motion_scores_one_and_wrong_motion_less() {
        let mut motion = vec![0.0f32; 12];
        motion[0] = 1.0; // forward
        motion[6] = 1.0; // turn left
        let w = clip_action_weights(&[0b0100_0001]);
        assert_eq!(score_motion(&motion, &w), (1.0, 1.0, 1.0));
        let w_other = clip_action_weights(&[0b0000_0010]); // backward
        let (rot, trans, _) = score_motion(&motion, &w_other);
        assert_eq!((rot, trans), (0.75, 0.5));
        motion[10] = 2.0;
        assert!((score_motion(&motion, &w).2 - (-1.0f64).exp()).abs() < 1e-12);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let p = LinearPolicy::init(9, 3);
        let samples: Vec<Sample> = (0..4)
            .map(|i| Sample {
                weights: clip_action_weights(&[1 << i, 1 << (i + 4)]),
                motion: gaussian_noise(100 + i as u64, 9),
                r: [0.9, 0.1, 0.6, 0.3][i],
            })
            .collect();
        let (_, g_theta, g_bias) = loss_and_grad(&p, &samples);
        let h = 1e-3f32;
        for idx in [0usize, 10, 40, 71] {
            let mut plus = p.clone();
            plus.theta[idx] += h;
            let mut minus = p.clone();
            minus.theta[idx] -= h;
            let fd = (loss_and_grad(&plus, &samples).0 - loss_and_grad(&minus, &samples).0) / (2.0 * h as f64);
            assert!((fd - g_theta[idx] as f64).abs() < 1e-3, "theta[{idx}]: {fd} vs {}", g_theta[idx]);
        }
        let mut plus = p.clone();
        plus.bias[2] += h;
        let mut minus = p.clone();
        minus.bias[2] -= h;
        let fd = (loss_and_grad(&plus, &samples).0 - loss_and_grad(&minus, &samples).0) / (2.0 * h as f64);
        assert!((fd - g_bias[2] as f64).abs() < 1e-3);
    }

    #[test]
    fn non_finite_step_is_not_applied() {
        let mut p = LinearPolicy::init(8, 1);
        let before = p.clone();
        let mut m = LinearPolicy { dim: 8, theta: vec![0.0; 64], bias: vec![0.0; 8] };
        let samples = vec![Sample { weights: [1.0; 8], motion: vec![f32::NAN; 8], r: 1.0 }];
        let (_, _, applied) = sgd_step(&mut p, &mut m, &samples, 0.1, 0.9);
        assert!(!applied);
        assert_eq!(p, before);
    }

    #[test]
    fn ema_update_is_convex_combination() {
        let mut old = LinearPolicy { dim: 1, theta: vec![1.0; 8], bias: vec![2.0] };
        let new = LinearPolicy { dim: 1, theta: vec![0.0; 8], bias: vec![0.0] };
        old.ema_toward(&new, 0.25);
        assert_eq!(old.theta, vec![0.25; 8]);
        assert_eq!(old.bias, vec![0.5]);
    }
}
