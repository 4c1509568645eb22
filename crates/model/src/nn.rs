//! Small building blocks written with candle ops that carry gradients.
//!
//! candle-nn 0.11's fused layer-norm, RMS-norm and `softmax_last_dim` have
//! no backward pass, so gradients silently stop there. The norm here is
//! written from primitive ops; attention, GELU and SiLU use the fused ops of
//! [`crate::fused`] (one pass each, forward and backward).

use candle_core::{Tensor, D};

use crate::params::{Init, Params};
use crate::Result;

/// A dense layer y = x W^T + b over the last dimension.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Weight [out, in] ~ N(0, std^2) (default 1/sqrt(in)), bias zero.
    pub fn new(p: &mut Params, name: &str, inp: usize, out: usize, init: Option<Init>, bias: bool) -> Result<Self> {
        let init = init.unwrap_or(Init::Normal(1.0 / (inp as f64).sqrt()));
        let weight = p.get(&format!("{name}.weight"), &[out, inp], init)?;
        let bias = if bias { Some(p.get(&format!("{name}.bias"), &[out], Init::Zeros)?) } else { None };
        Ok(Linear { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // One large 2-D matmul over all leading dimensions (a broadcast
        // batched matmul against the weight is several times slower in candle).
        let dims = x.dims().to_vec();
        let inp = *dims.last().expect("at least 1-D input");
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let y = x.reshape((rows, inp))?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => crate::fused::add_bias(&y, b)?,
            None => y,
        };
        let mut out = dims;
        *out.last_mut().expect("non-empty") = self.weight.dim(0)?;
        Ok(y.reshape(out)?)
    }
}

/// RMS normalisation over the last dimension, without affine parameters
/// (adaLN supplies scale and shift): one fused pass on the CPU
/// ([`crate::fused::rms_norm`]), [`rms_norm_composed`] elsewhere.
pub fn rms_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    crate::fused::rms_norm(x, eps)
}

/// [`rms_norm`] from primitive candle ops (any device, any dtype).
pub fn rms_norm_composed(x: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(x.broadcast_div(&(ms + eps)?.sqrt()?)?)
}

/// x * (1 + scale) + shift.
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)?)
}

/// Sinusoidal embedding of times t in [0, 1]: [B] -> [B, dim].
pub fn timestep_embedding(t: &Tensor, dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> = (0..half).map(|i| (-(10_000f64.ln()) * i as f64 / half as f64).exp() as f32).collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?.to_dtype(t.dtype())?;
    let args = (t.unsqueeze(1)? * 1000.0)?.broadcast_mul(&freqs)?;
    Ok(Tensor::cat(&[args.cos()?, args.sin()?], 1)?)
}

/// Whether every value of `t` is finite: x - x is 0 for a finite x and NaN
/// for NaN or an infinity, so the sum is 0 exactly when all are finite.
pub fn all_finite(t: &Tensor) -> Result<bool> {
    let s = (t - t)?.sum_all()?.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
    Ok(s == 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn rms_norm_matches_hand_computation_and_carries_gradients() {
        let x = Var::from_tensor(&Tensor::new(&[[3.0f32, 4.0]], &Device::Cpu).unwrap()).unwrap();
        let y = rms_norm(x.as_tensor(), 0.0).unwrap();
        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        let r = (12.5f32).sqrt();
        assert!((v[0] - 3.0 / r).abs() < 1e-6 && (v[1] - 4.0 / r).abs() < 1e-6);
        let g = (y.narrow(1, 0, 1).unwrap().sum_all().unwrap()).backward().unwrap();
        let gx: Vec<f32> = g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        // d(x0/r)/dx0 = 1/r - x0^2/(2 r^3), d(x0/r)/dx1 = -x0 x1 / (2 r^3)
        assert!((gx[0] - (1.0 / r - 9.0 / (2.0 * r.powi(3)))).abs() < 1e-5, "{gx:?}");
        assert!((gx[1] + 12.0 / (2.0 * r.powi(3))).abs() < 1e-5, "{gx:?}");
    }

    #[test]
    fn timestep_embedding_shape_and_values() {
        let t = Tensor::new(&[0.0f32, 0.5], &Device::Cpu).unwrap();
        let e = timestep_embedding(&t, 8).unwrap();
        assert_eq!(e.dims(), &[2, 8]);
        let row0: Vec<f32> = e.get(0).unwrap().to_vec1().unwrap();
        assert_eq!(&row0[..4], &[1.0; 4]); // cos(0)
        assert_eq!(&row0[4..], &[0.0; 4]); // sin(0)
    }
}
