//! Muon for 2-D hidden weight matrices, AdamW for everything else.
//!
//! Muon: momentum m <- mu m + g, then the (Nesterov) update g + mu m is
//! orthogonalised by a quintic Newton-Schulz iteration that drives its
//! singular values toward 1, and scaled by 0.2 sqrt(max(rows, cols)) so its
//! RMS matches AdamW's and both share one learning rate.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use wc_schemas::{Tensor as HostTensor, TensorSet};

use crate::params::Params;
use crate::{ModelError, Result};

/// Coefficients of the quintic Newton-Schulz iteration (Muon's).
pub const NS_COEFFS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);

/// Optimizer settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OptimConfig {
    pub lr: f64,
    pub muon_momentum: f64,
    pub ns_steps: usize,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    pub weight_decay: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 1e-3,
            muon_momentum: 0.95,
            ns_steps: 5,
            adam_beta1: 0.9,
            adam_beta2: 0.95,
            adam_eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// Orthogonalise a matrix by `steps` quintic Newton-Schulz iterations.
pub fn newton_schulz(g: &Tensor, steps: usize) -> Result<Tensor> {
    let (a, b, c) = NS_COEFFS;
    let (rows, cols) = g.dims2()?;
    let transposed = rows > cols;
    let mut x = if transposed { g.t()?.contiguous()? } else { g.clone() };
    let norm = x.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
    x = (x / (norm + 1e-7))?;
    for _ in 0..steps {
        let xx = x.matmul(&x.t()?)?;
        let bm = ((&xx * b)? + (xx.matmul(&xx)? * c)?)?;
        x = ((&x * a)? + bm.matmul(&x)?)?;
    }
    Ok(if transposed { x.t()?.contiguous()? } else { x })
}

/// Whether a parameter is trained with Muon: 2-D weights of the
/// transformer blocks (not embeddings, not the input/output projections).
pub fn uses_muon(name: &str, dims: &[usize]) -> bool {
    dims.len() == 2 && name.starts_with("blocks.") && name.ends_with(".weight")
}

/// Checkpoint name of buffer `i` of a parameter with `len` buffers
/// (1: Muon momentum; 2: AdamW first and second moments).
fn state_key(name: &str, len: usize, i: usize) -> String {
    match (len, i) {
        (1, _) => format!("muon.momentum.{name}"),
        (_, 0) => format!("adam.m.{name}"),
        _ => format!("adam.v.{name}"),
    }
}

/// Muon + AdamW over a model's parameters.
pub struct Optimizer {
    pub cfg: OptimConfig,
    pub step: u64,
    state: BTreeMap<String, Vec<Tensor>>,
}

impl Optimizer {
    pub fn new(cfg: OptimConfig, params: &Params) -> Result<Self> {
        let mut state = BTreeMap::new();
        for (name, var) in params.vars() {
            let zeros = || var.as_tensor().zeros_like();
            let s = if uses_muon(name, var.dims()) { vec![zeros()?] } else { vec![zeros()?, zeros()?] };
            state.insert(name.clone(), s);
        }
        Ok(Optimizer { cfg, step: 0, state })
    }

    /// Global L2 norm of the gradients of `params`.
    pub fn grad_norm(params: &Params, grads: &GradStore) -> Result<f64> {
        let mut total = 0.0f64;
        for var in params.vars().values() {
            if let Some(g) = grads.get(var.as_tensor()) {
                total += g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            }
        }
        Ok(total.sqrt())
    }

    /// Apply one update with learning rate `lr`, all or nothing: the new
    /// weights and state are computed first and set only if every value is
    /// finite. Returns whether it was applied (a non-finite update, from a
    /// NaN gradient, state or learning rate, changes nothing).
    pub fn apply(&mut self, params: &Params, grads: &GradStore, lr: f64) -> Result<bool> {
        let step = self.step + 1;
        let c = self.cfg;
        let (bc1, bc2) = (1.0 - c.adam_beta1.powi(step as i32), 1.0 - c.adam_beta2.powi(step as i32));
        let mut staged: Vec<(&candle_core::Var, Tensor, &String, Vec<Tensor>)> = Vec::new();
        for (name, var) in params.vars() {
            let Some(g) = grads.get(var.as_tensor()) else { continue };
            let mut st = self.state.get(name).expect("state for every parameter").clone();
            let w = var.as_tensor();
            let decayed = if c.weight_decay > 0.0 { (w * (1.0 - lr * c.weight_decay))? } else { w.clone() };
            let next = if st.len() == 1 {
                let m = ((&st[0] * c.muon_momentum)? + g)?;
                let u = newton_schulz(&(g + (&m * c.muon_momentum)?)?, c.ns_steps)?;
                let dims = w.dims();
                let scale = 0.2 * (dims[0].max(dims[1]) as f64).sqrt();
                st[0] = m;
                (decayed - (u * (lr * scale))?)?
            } else {
                let m = ((&st[0] * c.adam_beta1)? + (g * (1.0 - c.adam_beta1))?)?;
                let v = ((&st[1] * c.adam_beta2)? + (g.sqr()? * (1.0 - c.adam_beta2))?)?;
                let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + c.adam_eps)?)?;
                st[0] = m;
                st[1] = v;
                (decayed - (update * lr)?)?
            };
            staged.push((var, next, name, st));
        }
        for (_, next, _, st) in &staged {
            if !crate::nn::all_finite(next)? || !st.iter().try_fold(true, |ok, t| Ok::<_, ModelError>(ok && crate::nn::all_finite(t)?))? {
                return Ok(false);
            }
        }
        for (var, next, name, st) in staged {
            var.set(&next)?;
            self.state.insert(name.clone(), st);
        }
        self.step = step;
        Ok(true)
    }

    /// Optimizer state as host tensors (for the checkpoint).
    pub fn to_tensor_set(&self) -> Result<TensorSet> {
        let mut out = TensorSet::new();
        for (name, st) in &self.state {
            for (i, t) in st.iter().enumerate() {
                let key = state_key(name, st.len(), i);
                let values: Vec<f32> = t.flatten_all()?.to_vec1()?;
                out.insert(key, HostTensor::from_f32(t.dims(), &values));
            }
        }
        out.insert("step".into(), HostTensor::from_f32(&[1], &[self.step as f32]));
        Ok(out)
    }

    /// Restore the state saved by [`Optimizer::to_tensor_set`].
    pub fn load(&mut self, set: &TensorSet) -> Result<()> {
        for (name, st) in self.state.iter_mut() {
            let len = st.len();
            for (i, t) in st.iter_mut().enumerate() {
                let key = state_key(name, len, i);
                let h = set.get(&key).ok_or_else(|| ModelError::Checkpoint(format!("optimizer state '{key}' is missing")))?;
                if h.shape != t.dims() {
                    return Err(ModelError::Checkpoint(format!("optimizer state '{key}' has shape {:?}, expected {:?}", h.shape, t.dims())));
                }
                let values = h.to_f32();
                if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                    return Err(ModelError::NonFinite(format!("optimizer state '{key}' holds {} at index {i}", values[i])));
                }
                *t = Tensor::from_vec(values, t.dims(), t.device())?;
            }
        }
        let step = set.get("step").ok_or_else(|| ModelError::Checkpoint("optimizer step is missing".into()))?;
        self.step = step.to_f32()[0] as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Newton-Schulz in f64, written with plain loops: the reference.
    fn ns_reference(g: &[f64], rows: usize, cols: usize, steps: usize) -> Vec<f64> {
        assert!(rows <= cols);
        let (a, b, c) = NS_COEFFS;
        let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
        let mut x: Vec<f64> = g.iter().map(|v| v / (norm + 1e-7)).collect();
        let mm = |p: &[f64], q: &[f64], n: usize, k: usize, m: usize| -> Vec<f64> {
            let mut o = vec![0.0; n * m];
            for i in 0..n {
                for l in 0..k {
                    for j in 0..m {
                        o[i * m + j] += p[i * k + l] * q[l * m + j];
                    }
                }
            }
            o
        };
        for _ in 0..steps {
            let mut xt = vec![0.0; cols * rows];
            for i in 0..rows {
                for j in 0..cols {
                    xt[j * rows + i] = x[i * cols + j];
                }
            }
            let xx = mm(&x, &xt, rows, cols, rows);
            let xx2 = mm(&xx, &xx, rows, rows, rows);
            let bm: Vec<f64> = xx.iter().zip(&xx2).map(|(p, q)| b * p + c * q).collect();
            let bx = mm(&bm, &x, rows, rows, cols);
            x = x.iter().zip(&bx).map(|(p, q)| a * p + q).collect();
        }
        x
    }

    /// Eigenvalues of a symmetric matrix by cyclic Jacobi rotations (f64).
    fn sym_eigenvalues(mut m: Vec<f64>, n: usize) -> Vec<f64> {
        for _ in 0..100 {
            for p in 0..n {
                for q in p + 1..n {
                    let apq = m[p * n + q];
                    if apq.abs() < 1e-15 {
                        continue;
                    }
                    let theta = (m[q * n + q] - m[p * n + p]) / (2.0 * apq);
                    let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                    let t = if theta == 0.0 { 1.0 } else { t };
                    let (c, s) = (1.0 / (t * t + 1.0).sqrt(), t / (t * t + 1.0).sqrt());
                    for k in 0..n {
                        let (mkp, mkq) = (m[k * n + p], m[k * n + q]);
                        m[k * n + p] = c * mkp - s * mkq;
                        m[k * n + q] = s * mkp + c * mkq;
                    }
                    for k in 0..n {
                        let (mpk, mqk) = (m[p * n + k], m[q * n + k]);
                        m[p * n + k] = c * mpk - s * mqk;
                        m[q * n + k] = s * mpk + c * mqk;
                    }
                }
            }
        }
        (0..n).map(|i| m[i * n + i]).collect()
    }

    fn singular_values(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
        let mut xxt = vec![0.0; rows * rows];
        for i in 0..rows {
            for j in 0..rows {
                xxt[i * rows + j] = (0..cols).map(|k| x[i * cols + k] * x[j * cols + k]).sum();
            }
        }
        sym_eigenvalues(xxt, rows).into_iter().map(|e| e.max(0.0).sqrt()).collect()
    }

    #[test]
    fn newton_schulz_matches_f64_reference_and_drives_singular_values_toward_one() {
        let (rows, cols) = (12, 20);
        // A badly conditioned matrix: singular values spread over 3 decades.
        let mut rng = wc_rl::seeds::SplitMix64::new(42);
        let g: Vec<f64> = (0..rows * cols)
            .map(|i| {
                let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                u * 10f64.powf(-((i / cols) as f64) / 4.0)
            })
            .collect();
        let before = singular_values(&g, rows, cols);
        let spread = before.iter().cloned().fold(0.0, f64::max) / before.iter().cloned().fold(f64::INFINITY, f64::min);
        assert!(spread > 100.0, "test matrix should be ill-conditioned ({spread})");
        let reference = ns_reference(&g, rows, cols, 5);
        let gt = Tensor::from_vec(g.iter().map(|v| *v as f32).collect::<Vec<_>>(), (rows, cols), &Device::Cpu).unwrap();
        let ours: Vec<f32> = newton_schulz(&gt, 5).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        for (o, r) in ours.iter().zip(&reference) {
            assert!((*o as f64 - r).abs() < 1e-4, "{o} vs {r}");
        }
        let after = singular_values(&reference, rows, cols);
        // The quintic iteration maps the spectrum into roughly [0.3, 1.2]
        // after 5 steps (it trades exactness for speed); the largest ones to ~1.
        let max = after.iter().cloned().fold(0.0, f64::max);
        assert!((0.6..1.3).contains(&max), "{after:?}");
        let min_before = before.iter().cloned().fold(f64::INFINITY, f64::min) / before.iter().cloned().fold(0.0, f64::max);
        let min_after = after.iter().cloned().fold(f64::INFINITY, f64::min) / max;
        assert!(min_after > 20.0 * min_before, "conditioning did not improve: {min_before} -> {min_after}");
        // Tall matrices are handled by transposition.
        let tall = newton_schulz(&gt.t().unwrap().contiguous().unwrap(), 5).unwrap();
        let tall: Vec<f32> = tall.t().unwrap().flatten_all().unwrap().to_vec1().unwrap();
        for (o, r) in tall.iter().zip(&reference) {
            assert!((*o as f64 - r).abs() < 1e-4);
        }
    }

    #[test]
    fn adam_and_muon_minimise_a_quadratic() {
        use crate::params::{Init, Params};
        let dev = Device::Cpu;
        let mut p = Params::new(1, &dev);
        let w = p.get("blocks.0.x.weight", &[4, 6], Init::Normal(1.0)).unwrap();
        let b = p.get("bias", &[6], Init::Normal(1.0)).unwrap();
        let mut opt = Optimizer::new(OptimConfig { lr: 0.02, ..Default::default() }, &p).unwrap();
        let loss = |w: &Tensor, b: &Tensor| (w.sqr().unwrap().sum_all().unwrap() + b.sqr().unwrap().sum_all().unwrap()).unwrap();
        let l0 = loss(&w, &b).to_scalar::<f32>().unwrap();
        for k in 0..150 {
            let g = loss(&w, &b).backward().unwrap();
            opt.apply(&p, &g, 0.2 * (1.0 - k as f64 / 150.0)).unwrap();
        }
        let l1 = loss(&w, &b).to_scalar::<f32>().unwrap();
        assert!(l1 < 0.05 * l0, "{l0} -> {l1}");
        // State round-trips.
        let saved = opt.to_tensor_set().unwrap();
        let mut again = Optimizer::new(OptimConfig::default(), &p).unwrap();
        again.load(&saved).unwrap();
        assert_eq!(again.to_tensor_set().unwrap(), saved);
        assert_eq!(again.step, 150);
    }

    #[test]
    fn a_non_finite_update_from_a_nan_state_or_learning_rate_changes_nothing() {
        use crate::params::{Init, Params};
        let dev = Device::Cpu;
        let mut p = Params::new(1, &dev);
        let w = p.get("blocks.0.x.weight", &[4, 6], Init::Normal(1.0)).unwrap();
        let b = p.get("bias", &[6], Init::Normal(1.0)).unwrap();
        let loss = || (w.sqr().unwrap().sum_all().unwrap() + b.sqr().unwrap().sum_all().unwrap()).unwrap();
        let mut opt = Optimizer::new(OptimConfig::default(), &p).unwrap();
        assert!(opt.apply(&p, &loss().backward().unwrap(), 0.01).unwrap());
        let (weights, state) = (p.to_tensor_set().unwrap(), opt.to_tensor_set().unwrap());
        // An infinite learning rate (finite as f64, not as f32: 1e39).
        assert!(!opt.apply(&p, &loss().backward().unwrap(), 1e39).unwrap());
        assert_eq!((p.to_tensor_set().unwrap(), opt.to_tensor_set().unwrap()), (weights.clone(), state.clone()));
        // A NaN in one parameter's state (the Muon momentum of the matrix).
        let mut poisoned = state.clone();
        let key = "muon.momentum.blocks.0.x.weight";
        let mut m = poisoned[key].to_f32();
        m[3] = f32::NAN;
        poisoned.insert(key.into(), HostTensor::from_f32(&[4, 6], &m));
        let mut bad = Optimizer::new(OptimConfig::default(), &p).unwrap();
        assert!(bad.load(&poisoned).unwrap_err().to_string().contains(key), "a NaN state is refused on load");
        bad.state.get_mut("blocks.0.x.weight").unwrap()[0] = Tensor::from_vec(m, (4, 6), &dev).unwrap();
        assert!(!bad.apply(&p, &loss().backward().unwrap(), 0.01).unwrap());
        assert_eq!(p.to_tensor_set().unwrap(), weights, "neither parameter moved: all or nothing");
        assert_eq!(bad.step, 0);
    }
}
