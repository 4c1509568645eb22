//! Named parameters with seeded initialisation.
//!
//! candle's own initialisers draw from a thread-local generator; a run must
//! be reproducible, so every parameter is created here from one seeded
//! generator, in creation order. Parameters are candle `Var`s: the modules
//! hold their tensors, and `Var::set` updates them in place.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use wc_schemas::{Tensor as HostTensor, TensorSet};

use crate::{ModelError, Result};

/// How a parameter starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    /// Normal with this standard deviation.
    Normal(f64),
}

/// The parameters of one model instance.
pub struct Params {
    device: Device,
    /// The dtype every parameter is held in (f32 unless a sampling copy in
    /// bf16, see [`Params::with_dtype`]).
    dtype: DType,
    rng: ChaCha8Rng,
    vars: BTreeMap<String, Var>,
}

impl Params {
    pub fn new(seed: u64, device: &Device) -> Self {
        Self::with_dtype(seed, device, DType::F32)
    }

    /// Parameters held in `dtype` (initial values are drawn in f32, then
    /// cast; loaded values are cast the same way).
    pub fn with_dtype(seed: u64, device: &Device, dtype: DType) -> Self {
        Params {
            device: device.clone(),
            dtype,
            rng: ChaCha8Rng::seed_from_u64(seed),
            vars: BTreeMap::new(),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Create a parameter and return its tensor.
    pub fn get(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        assert!(!self.vars.contains_key(name), "parameter {name} created twice");
        let n: usize = shape.iter().product();
        let values: Vec<f32> = match init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Normal(std) => (0..n)
                .map(|_| {
                    let z: f64 = StandardNormal.sample(&mut self.rng);
                    (z * std) as f32
                })
                .collect(),
        };
        let var = Var::from_tensor(&Tensor::from_vec(values, shape, &self.device)?.to_dtype(self.dtype)?)?;
        let t = var.as_tensor().clone();
        self.vars.insert(name.to_string(), var);
        Ok(t)
    }

    /// All parameters by name.
    pub fn vars(&self) -> &BTreeMap<String, Var> {
        &self.vars
    }

    /// Total number of values.
    pub fn count(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }

    /// Names and shapes (the checkpoint layout).
    pub fn specs(&self) -> Vec<(String, Vec<usize>)> {
        self.vars.iter().map(|(n, v)| (n.clone(), v.dims().to_vec())).collect()
    }

    /// The parameters as host tensors (for a safetensors checkpoint).
    pub fn to_tensor_set(&self) -> Result<TensorSet> {
        let mut out = TensorSet::new();
        for (name, var) in &self.vars {
            let values: Vec<f32> = var.as_tensor().flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
            out.insert(name.clone(), HostTensor::from_f32(var.dims(), &values));
        }
        Ok(out)
    }

    /// Set every parameter from host tensors; names and shapes must match.
    pub fn load(&self, set: &TensorSet) -> Result<()> {
        for (name, var) in &self.vars {
            let t = set.get(name).ok_or_else(|| ModelError::Checkpoint(format!("parameter '{name}' is missing")))?;
            if t.shape != var.dims() {
                return Err(ModelError::Checkpoint(format!(
                    "parameter '{name}' has shape {:?}, the model needs {:?}",
                    t.shape,
                    var.dims()
                )));
            }
            let values = t.to_f32();
            if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                return Err(ModelError::NonFinite(format!("parameter '{name}' holds {} at index {i}", values[i])));
            }
            var.set(&Tensor::from_vec(values, var.dims(), &self.device)?.to_dtype(self.dtype)?)?;
        }
        if let Some(extra) = set.keys().find(|k| !self.vars.contains_key(*k)) {
            return Err(ModelError::Checkpoint(format!("checkpoint has parameter '{extra}' the model does not")));
        }
        Ok(())
    }

    /// Whether every value of every parameter is finite (one reduction per
    /// tensor, on its device).
    pub fn all_finite(&self) -> Result<bool> {
        for var in self.vars.values() {
            if !crate::nn::all_finite(var.as_tensor())? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Copy every value from `other` (same layout), cast to this set's
    /// dtype on the device.
    pub fn copy_from(&self, other: &Params) -> Result<()> {
        for (name, var) in &self.vars {
            var.set(&other.vars[name].as_tensor().to_dtype(self.dtype)?)?;
        }
        Ok(())
    }

    /// The old-policy update: self <- eta * self + (1 - eta) * policy.
    pub fn ema_toward(&self, policy: &Params, eta: f64) -> Result<()> {
        for (name, var) in &self.vars {
            let p = policy.vars[name].as_tensor();
            let next = ((var.as_tensor() * eta)? + (p * (1.0 - eta))?)?;
            var.set(&next)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_seeded_and_roundtrips() {
        let dev = Device::Cpu;
        let mut a = Params::new(5, &dev);
        let mut b = Params::new(5, &dev);
        a.get("w", &[3, 4], Init::Normal(0.5)).unwrap();
        b.get("w", &[3, 4], Init::Normal(0.5)).unwrap();
        let (sa, sb) = (a.to_tensor_set().unwrap(), b.to_tensor_set().unwrap());
        assert_eq!(sa, sb);
        let mut c = Params::new(6, &dev);
        c.get("w", &[3, 4], Init::Normal(0.5)).unwrap();
        assert_ne!(c.to_tensor_set().unwrap(), sa);
        c.load(&sa).unwrap();
        assert_eq!(c.to_tensor_set().unwrap(), sa);
    }

    #[test]
    fn ema_is_a_convex_combination() {
        let dev = Device::Cpu;
        let mut old = Params::new(0, &dev);
        old.get("w", &[2], Init::Ones).unwrap();
        let mut new = Params::new(0, &dev);
        new.get("w", &[2], Init::Zeros).unwrap();
        old.ema_toward(&new, 0.25).unwrap();
        assert_eq!(old.to_tensor_set().unwrap()["w"].to_f32(), vec![0.25, 0.25]);
    }

    #[test]
    fn load_refuses_wrong_shapes_and_names() {
        let dev = Device::Cpu;
        let mut p = Params::new(0, &dev);
        p.get("w", &[2], Init::Ones).unwrap();
        let mut set = TensorSet::new();
        set.insert("w".into(), HostTensor::from_f32(&[3], &[0.0; 3]));
        assert!(p.load(&set).unwrap_err().to_string().contains("shape [3]"));
        set.insert("w".into(), HostTensor::from_f32(&[2], &[0.0; 2]));
        set.insert("extra".into(), HostTensor::from_f32(&[1], &[0.0]));
        assert!(p.load(&set).unwrap_err().to_string().contains("'extra'"));
    }

    #[test]
    fn a_checkpoint_with_nan_or_infinite_weights_is_refused_on_load() {
        let dev = Device::Cpu;
        let mut p = Params::new(0, &dev);
        p.get("w", &[2], Init::Ones).unwrap();
        assert!(p.all_finite().unwrap());
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut set = TensorSet::new();
            set.insert("w".into(), HostTensor::from_f32(&[2], &[0.5, bad]));
            let e = p.load(&set).unwrap_err().to_string();
            assert!(e.contains("non-finite") && e.contains("'w'") && e.contains("index 1"), "{e}");
            assert_eq!(p.to_tensor_set().unwrap()["w"].to_f32(), vec![1.0, 1.0], "a refused load changes nothing");
        }
        p.vars()["w"].set(&Tensor::new(&[1.0f32, f32::NAN], &dev).unwrap()).unwrap();
        assert!(!p.all_finite().unwrap());
    }
}
