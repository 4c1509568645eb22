//! Advantages, optimality probability and best-of-N (paper section 3.4, eq. 5).

/// Standard deviations below this are "no spread": the group carries no
/// signal for that reward and every advantage is 0.
pub const MIN_STD: f64 = 1e-8;

/// Group-normalised advantages a_j = (s_j - mean) / std (population std).
///
/// When every candidate scored the same (std below [`MIN_STD`]) there is no
/// preference to learn from, and every advantage is 0 (so r = 1/2).
pub fn group_advantages(scores: &[f64]) -> Vec<f64> {
    if scores.is_empty() {
        return Vec::new();
    }
    let n = scores.len() as f64;
    let mean = scores.iter().sum::<f64>() / n;
    let var = scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n;
    let std = var.sqrt();
    if std < MIN_STD {
        return vec![0.0; scores.len()];
    }
    scores.iter().map(|s| (s - mean) / std).collect()
}

/// Which rewards enter the combined advantage (Table 2 ablations).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RewardMix {
    /// lambda * a_IF + (1 - lambda) * a_VQ.
    Both { lambda: f64 },
    IfOnly,
    VqOnly,
}

/// The combined advantage of one candidate.
pub fn combined_advantage(adv_if: f64, adv_vq: f64, mix: RewardMix) -> f64 {
    match mix {
        RewardMix::Both { lambda } => lambda * adv_if + (1.0 - lambda) * adv_vq,
        RewardMix::IfOnly => adv_if,
        RewardMix::VqOnly => adv_vq,
    }
}

/// Optimality probability r = 1/2 + 1/2 * clip(adv / Z, -1, 1), in [0, 1].
pub fn optimality_probability(adv: f64, z: f64) -> f64 {
    0.5 + 0.5 * (adv / z).clamp(-1.0, 1.0)
}

/// Best-of-N: keep the `top` highest and the `bottom` lowest candidates by
/// combined advantage. Ties are broken by candidate index (lower index ranks
/// first among equals), so the choice is deterministic. When `top + bottom`
/// covers the group, every candidate is kept.
pub fn best_of_n(adv: &[f64], top: usize, bottom: usize) -> Vec<bool> {
    let n = adv.len();
    if top + bottom >= n {
        return vec![true; n];
    }
    let mut order: Vec<usize> = (0..n).collect();
    // Descending by advantage; ties by index ascending.
    order.sort_by(|&a, &b| adv[b].total_cmp(&adv[a]).then(a.cmp(&b)));
    let mut keep = vec![false; n];
    for &i in order.iter().take(top) {
        keep[i] = true;
    }
    for &i in order.iter().rev().take(bottom) {
        keep[i] = true;
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advantages_of_a_known_group() {
        // mean 2, population std sqrt(2/3)
        let a = group_advantages(&[1.0, 2.0, 3.0]);
        let s = (2.0f64 / 3.0).sqrt();
        for (x, e) in a.iter().zip([-1.0 / s, 0.0, 1.0 / s]) {
            assert!((x - e).abs() < 1e-12, "{x} vs {e}");
        }
        assert!((a.iter().sum::<f64>()).abs() < 1e-12);
    }

    #[test]
    fn zero_variance_group_has_zero_advantage() {
        assert_eq!(group_advantages(&[0.7; 5]), vec![0.0; 5]);
        assert_eq!(group_advantages(&[]), Vec::<f64>::new());
    }

    #[test]
    fn r_is_clipped_at_z() {
        assert_eq!(optimality_probability(0.0, 2.0), 0.5);
        assert_eq!(optimality_probability(1.0, 2.0), 0.75);
        assert_eq!(optimality_probability(-1.0, 2.0), 0.25);
        assert_eq!(optimality_probability(2.0, 2.0), 1.0);
        assert_eq!(optimality_probability(5.0, 2.0), 1.0);
        assert_eq!(optimality_probability(-7.0, 2.0), 0.0);
    }

    #[test]
    fn combined_advantage_mixes() {
        let both = RewardMix::Both { lambda: 2.0 / 3.0 };
        assert!((combined_advantage(3.0, 0.0, both) - 2.0).abs() < 1e-12);
        assert!((combined_advantage(0.0, 3.0, both) - 1.0).abs() < 1e-12);
        assert_eq!(combined_advantage(1.5, -4.0, RewardMix::IfOnly), 1.5);
        assert_eq!(combined_advantage(1.5, -4.0, RewardMix::VqOnly), -4.0);
    }

    #[test]
    fn best_of_n_keeps_extremes_and_breaks_ties_by_index() {
        let adv = [0.1, 0.9, -0.5, 0.3, -0.9, 0.0, 0.5, -0.2];
        let keep = best_of_n(&adv, 3, 3);
        // top 3: 0.9 (1), 0.5 (6), 0.3 (3); bottom 3: -0.9 (4), -0.5 (2), -0.2 (7)
        assert_eq!(keep, vec![false, true, true, true, true, false, true, true]);
        // All equal: top are the lowest indices, bottom the highest.
        let keep = best_of_n(&[0.0; 6], 2, 1);
        assert_eq!(keep, vec![true, true, false, false, false, true]);
        // Covering the group keeps everything.
        assert_eq!(best_of_n(&[1.0, 2.0, 3.0], 2, 1), vec![true; 3]);
    }
}
