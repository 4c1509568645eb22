//! The DiffusionNFT loss of the paper's eq. 6, on plain slices.
//!
//! For a clean sample x, noise eps and time t, z_t = (1 - t) x + t eps and the
//! flow-matching target is v = eps - x. With v_old the old (EMA) policy's
//! prediction (no gradient) and v_theta the policy's:
//!
//! ```text
//! v+ = (1 - beta) v_old + beta v_theta      (implicit positive policy)
//! v- = (1 + beta) v_old - beta v_theta      (implicit negative policy)
//! L  = r ||v+ - v||^2 + (1 - r) ||v- - v||^2
//! ```
//!
//! Squared norms are averaged over elements (a per-element mean keeps the
//! scale independent of the latent size).

/// The flow-matching velocity target of (x, eps): v = eps - x.
pub fn flow_target(x: &[f64], eps: &[f64]) -> Vec<f64> {
    x.iter().zip(eps).map(|(x, e)| e - x).collect()
}

/// The noisy sample z_t = (1 - t) x + t eps.
pub fn noisy_sample(x: &[f64], eps: &[f64], t: f64) -> Vec<f64> {
    x.iter().zip(eps).map(|(x, e)| (1.0 - t) * x + t * e).collect()
}

/// The NFT loss of one sample and its gradient with respect to v_theta.
pub fn nft_loss(v: &[f64], v_old: &[f64], v_theta: &[f64], r: f64, beta: f64) -> (f64, Vec<f64>) {
    let n = v.len() as f64;
    let mut loss = 0.0;
    let mut grad = Vec::with_capacity(v.len());
    for ((v, vo), vt) in v.iter().zip(v_old).zip(v_theta) {
        let pos = (1.0 - beta) * vo + beta * vt - v;
        let neg = (1.0 + beta) * vo - beta * vt - v;
        loss += r * pos * pos + (1.0 - r) * neg * neg;
        grad.push((2.0 * r * beta * pos - 2.0 * (1.0 - r) * beta * neg) / n);
    }
    (loss / n, grad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beta_one_matches_hand_expansion() {
        // beta = 1: v+ = v_theta, v- = 2 v_old - v_theta.
        let v = [1.0, -2.0];
        let vo = [0.5, 0.0];
        let vt = [2.0, -1.0];
        let r = 0.75;
        // pos = vt - v = [1, 1]; neg = 2vo - vt - v = [1-2-1, 0+1+2] = [-2, 3]
        // L = (0.75*(1+1) + 0.25*(4+9)) / 2 = (1.5 + 3.25) / 2 = 2.375
        let (l, g) = nft_loss(&v, &vo, &vt, r, 1.0);
        assert!((l - 2.375).abs() < 1e-12, "{l}");
        // dL/dvt = (2 r pos - 2 (1-r) neg) / n = [(1.5 + 1.0)/2, (1.5 - 1.5)/2]
        assert!((g[0] - 1.25).abs() < 1e-12 && g[1].abs() < 1e-12, "{g:?}");
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let v = [0.3, -1.1, 0.8];
        let vo = [0.1, -0.4, 1.0];
        let vt = [0.6, -0.9, 0.2];
        for (r, beta) in [(0.2, 1.0), (0.9, 0.5), (0.5, 2.0)] {
            let (_, g) = nft_loss(&v, &vo, &vt, r, beta);
            for i in 0..3 {
                let h = 1e-6;
                let mut p = vt;
                p[i] += h;
                let mut m = vt;
                m[i] -= h;
                let fd = (nft_loss(&v, &vo, &p, r, beta).0 - nft_loss(&v, &vo, &m, r, beta).0) / (2.0 * h);
                assert!((fd - g[i]).abs() < 1e-7, "r={r} beta={beta} i={i}: {fd} vs {}", g[i]);
            }
        }
    }

    #[test]
    fn r_one_is_plain_regression_toward_target_when_old_equals_theta() {
        // With v_old == v_theta and r = 1 the loss is the flow-matching MSE.
        let v = [1.0, 2.0];
        let vt = [0.0, 0.0];
        let (l, _) = nft_loss(&v, &vt, &vt, 1.0, 1.0);
        assert!((l - 2.5).abs() < 1e-12);
    }

    #[test]
    fn flow_target_and_noisy_sample_are_consistent() {
        let x = [1.0, -1.0];
        let e = [0.5, 2.0];
        let v = flow_target(&x, &e);
        // dz/dt = eps - x
        let z0 = noisy_sample(&x, &e, 0.3);
        let z1 = noisy_sample(&x, &e, 0.4);
        for i in 0..2 {
            assert!(((z1[i] - z0[i]) / 0.1 - v[i]).abs() < 1e-9);
        }
        assert_eq!(noisy_sample(&x, &e, 0.0), x.to_vec());
        assert_eq!(noisy_sample(&x, &e, 1.0), e.to_vec());
    }
}
