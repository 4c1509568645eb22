//! The few-step sampler of causal video models built on Wan (Matrix-Game
//! 2.0, Self-Forcing): each block of latent frames starts from noise, takes
//! a few flow steps (each predicts the clean latent, then re-noises it with
//! fresh noise to the next step's level), and a last pass of the clean
//! result at t = 0 writes its keys and values into the cache for the
//! blocks after it. `docs/design/matrix-game-2.md`, section 4.

use candle_core::Tensor;

use crate::action_module::Actions;
use crate::transformer::{CausalSpec, KvCache, WanTransformer};
use crate::{Result, WanError};

/// The flow-matching timesteps of a few-step list: the list's values
/// (e.g. [1000, 666, 333]) index a 1000-step table of sigmas 1 - i/1000
/// shifted by `shift` (shift * s / (1 + (shift - 1) s)), at 1000 - value.
/// Returns (timestep, sigma) per step.
pub fn few_step_schedule(steps: &[u32], shift: f64) -> Result<Vec<(f64, f64)>> {
    steps
        .iter()
        .map(|&v| {
            if v == 0 || v > 1000 {
                return Err(WanError::Config(format!(
                    "denoising step {v}: steps are in 1..=1000"
                )));
            }
            let s = 1.0 - (1000 - v) as f64 / 1000.0;
            let shifted = shift * s / (1.0 + (shift - 1.0) * s);
            Ok((1000.0 * shifted, shifted))
        })
        .collect()
}

/// The clean latent a flow prediction `v` (noise - x0) implies at noise
/// level `sigma`: x0 = x_t - sigma v.
pub fn clean_from_flow(x_t: &Tensor, v: &Tensor, sigma: f64) -> Result<Tensor> {
    Ok((x_t - (v * sigma)?)?)
}

/// The latent at noise level `sigma` on the straight path from `x0` to
/// `noise`: (1 - sigma) x0 + sigma noise.
pub fn noised(x0: &Tensor, noise: &Tensor, sigma: f64) -> Result<Tensor> {
    Ok(((x0 * (1.0 - sigma))? + (noise * sigma)?)?)
}

/// Generate the next block of latent frames after those in `cache`:
/// `noises[0]` is its starting noise, `noises[k]` the fresh noise of step
/// k (one per step after the first), all [B, C_out, F_block, H, W]; `cond`
/// the other input channels (mask and image latent, [B, C_in - C_out, ...],
/// or none) joined after the latent. The clean block's keys and values join
/// the cache. Returns the clean block.
#[allow(clippy::too_many_arguments)] // the model's inputs, one per argument, as `forward_cached` takes them, and the schedule and noises
pub fn generate_block(
    model: &WanTransformer,
    schedule: &[(f64, f64)],
    noises: &[Tensor],
    cond: Option<&Tensor>,
    context: &Tensor,
    actions: Option<Actions>,
    spec: &CausalSpec,
    cache: &mut KvCache,
) -> Result<Tensor> {
    if schedule.is_empty() || noises.len() != schedule.len() {
        return Err(WanError::Input {
            what: "sampler".into(),
            reason: format!(
                "{} steps need as many noises ({} given)",
                schedule.len(),
                noises.len()
            ),
        });
    }
    let input = |x: &Tensor| -> Result<Tensor> {
        match cond {
            Some(c) => Ok(Tensor::cat(&[x, c], 1)?),
            None => Ok(x.clone()),
        }
    };
    let (b, f) = (noises[0].dim(0)?, noises[0].dim(2)?);
    let at = |t: f64| Tensor::full(t as f32, (b, f), noises[0].device());
    let mut x = noises[0].clone();
    let mut x0 = x.clone();
    for (k, &(t, sigma)) in schedule.iter().enumerate() {
        let v = model.forward_cached(&input(&x)?, &at(t)?, context, actions, spec, cache)?;
        x0 = clean_from_flow(&x, &v, sigma)?;
        if let Some(&(_, next)) = schedule.get(k + 1) {
            x = noised(&x0, &noises[k + 1], next)?;
        }
    }
    model.forward_and_commit(&input(&x0)?, &at(0.0)?, context, actions, spec, cache)?;
    Ok(x0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_released_few_step_lists_give_the_published_timesteps() {
        // Matrix-Game 2.0 universal: [1000, 666, 333], shift 5.
        let got: Vec<f64> = few_step_schedule(&[1000, 666, 333], 5.0)
            .unwrap()
            .iter()
            .map(|s| s.0)
            .collect();
        for (g, want) in got.iter().zip([1000.0, 908.8427, 713.9794]) {
            assert!((g - want).abs() < 1e-3, "{got:?}");
        }
        // TempleRun: [1000, 750, 500, 250] -> [1000, 937.5, 833.33, 625].
        let got: Vec<f64> = few_step_schedule(&[1000, 750, 500, 250], 5.0)
            .unwrap()
            .iter()
            .map(|s| s.0)
            .collect();
        for (g, want) in got.iter().zip([1000.0, 937.5, 833.333, 625.0]) {
            assert!((g - want).abs() < 1e-2, "{got:?}");
        }
        assert!(few_step_schedule(&[0], 5.0).is_err());
    }

    #[test]
    fn a_flow_prediction_and_renoising_follow_the_straight_path() {
        let dev = Device::Cpu;
        let x0 = Tensor::new(&[1f32, -2.0], &dev).unwrap();
        let noise = Tensor::new(&[0.5f32, 0.5], &dev).unwrap();
        let xt = noised(&x0, &noise, 0.25).unwrap();
        assert_eq!(xt.to_vec1::<f32>().unwrap(), vec![0.875, -1.375]);
        // The exact flow (noise - x0) takes x_t back to x0.
        let v = (&noise - &x0).unwrap();
        assert_eq!(
            clean_from_flow(&xt, &v, 0.25)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            vec![1.0, -2.0]
        );
    }
}
