//! The few layers the Wan models are made of, written as compositions of
//! candle's differentiable ops (candle-nn's fused layer norm, RMS norm and
//! softmax have no backward pass, and the optimize stage trains these
//! models).

use candle_core::{D, DType, Tensor};

use crate::Result;
use crate::weights::Weights;

/// `x W^T + b` over the last axis.
pub(crate) struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    pub(crate) fn new(
        w: &Weights,
        prefix: &str,
        in_dim: usize,
        out_dim: usize,
        dtype: DType,
    ) -> Result<Self> {
        Ok(Linear {
            weight: w.take(&format!("{prefix}.weight"), &[out_dim, in_dim], dtype)?,
            bias: w.take(&format!("{prefix}.bias"), &[out_dim], dtype)?,
        })
    }

    /// A linear layer from its weight [out, in] and bias [out].
    pub(crate) fn from_parts(weight: Tensor, bias: Tensor) -> Self {
        Linear { weight, bias }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.broadcast_matmul(&self.weight.t()?)?
            .broadcast_add(&self.bias)?)
    }
}

/// Layer norm over the last axis without an affine part, in f32.
pub(crate) fn layer_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(centred.broadcast_div(&(var + eps)?.sqrt()?)?)
}

/// An affine layer norm, in f32.
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub(crate) fn new(w: &Weights, prefix: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: w.take(&format!("{prefix}.weight"), &[dim], DType::F32)?,
            bias: w.take(&format!("{prefix}.bias"), &[dim], DType::F32)?,
            eps,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(layer_norm(x, self.eps)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?)
    }
}

/// RMS norm over the last axis with a learned scale (computed in f32,
/// returned in the input's dtype).
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub(crate) fn new(w: &Weights, prefix: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(RmsNorm {
            weight: w.take(&format!("{prefix}.weight"), &[dim], DType::F32)?,
            eps,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let rms = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?;
        Ok(x.broadcast_div(&rms)?
            .broadcast_mul(&self.weight)?
            .to_dtype(dtype)?)
    }
}

/// Softmax over the last axis (max-subtracted), in f32.
pub(crate) fn softmax_last(x: &Tensor) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let e = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

/// Scaled dot-product attention of `q` [B, H, Lq, Dh] over `k`, `v`
/// [B, H, Lk, Dh], with an additive `mask` [Lq, Lk] (0 where a query sees a
/// key, -inf where not).
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
    let mut scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?;
    if let Some(m) = mask {
        scores = scores.to_dtype(DType::F32)?.broadcast_add(m)?;
    }
    let p = softmax_last(&scores)?.to_dtype(v.dtype())?;
    Ok(p.matmul(&v.contiguous()?)?)
}

/// Rotary embedding of consecutive pairs (x[2i], x[2i+1]) of the last axis
/// of `x` [B, H, L, Dh] by the angles whose cosines and sines are `cos`,
/// `sin` [L, Dh / 2].
pub(crate) fn rope_pairs(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, h, l, d) = x.dims4()?;
    let dtype = x.dtype();
    let pairs = x.to_dtype(DType::F32)?.reshape((b, h, l, d / 2, 2))?;
    let x1 = pairs.narrow(4, 0, 1)?.squeeze(4)?;
    let x2 = pairs.narrow(4, 1, 1)?.squeeze(4)?;
    let r1 = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
    let r2 = (x1.broadcast_mul(sin)? + x2.broadcast_mul(cos)?)?;
    Ok(Tensor::stack(&[r1, r2], 4)?
        .reshape((b, h, l, d))?
        .to_dtype(dtype)?)
}

/// `t` [N, ...] repeated along the first axis to `rows` rows (N divides
/// rows): a cache made for one sequence (N = 1, or one row per location)
/// serves a batch of candidates that share it.
pub(crate) fn tile_batch(t: &Tensor, rows: usize) -> Result<Tensor> {
    let n = t.dim(0)?;
    if n == rows {
        return Ok(t.clone());
    }
    if n == 0 || !rows.is_multiple_of(n) {
        return Err(crate::WanError::Input {
            what: "cache".into(),
            reason: format!("a cache of batch {n} cannot serve a batch of {rows}"),
        });
    }
    Ok(Tensor::cat(&vec![t; rows / n], 0)?)
}
