//! Fused CPU kernels for the model's elementwise hot spots, as candle custom
//! ops with their backward: GELU (tanh form), SiLU, softmax over the last
//! dimension and RMS normalisation.
//!
//! candle computes these with scalar `tanhf`/`expf` per element and builds
//! their gradients from five to ten separate tensor ops, each a pass over
//! memory and a rayon hand-off (the profile of issue #26). Here each
//! forward and each backward is one pass: `exp` is evaluated branch-free
//! (range reduction to [-ln 2 / 2, ln 2 / 2], a degree-7 polynomial, the
//! power of two built from its exponent bits), so the loops vectorise; an
//! AVX2 build of the same loop is chosen at run time where the CPU has it,
//! with the portable loop as the fallback. Both compute the same bits (no
//! fused multiply-add), so a run gives the same result on either.
//!
//! Each op equals the candle composition it replaces within 1e-5 in value
//! and gradient (tests below, on odd shapes). On other devices or dtypes
//! the public functions fall back to candle's own ops, so CUDA keeps
//! candle's kernels.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use crate::Result;

/// GELU, tanh form: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), as
/// candle's `Tensor::gelu`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if fusable(x) { Ok(x.contiguous()?.apply_op1(Gelu)?) } else { Ok(x.gelu()?) }
}

/// SiLU: x sigmoid(x), as candle's `Tensor::silu`.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    if fusable(x) { Ok(x.contiguous()?.apply_op1(Silu)?) } else { Ok(x.silu()?) }
}

/// RMS normalisation over the last dimension without affine parameters,
/// x / sqrt(mean(x^2) + eps), as `nn::rms_norm`.
pub fn rms_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    if fusable(x) && x.rank() >= 1 && x.dim(D::Minus1)? > 0 {
        Ok(x.contiguous()?.apply_op1(RmsNorm { eps: eps as f32 })?)
    } else {
        crate::nn::rms_norm_composed(x, eps)
    }
}

/// Each row of `v` [B, F, K] repeated `times` times: [B, F * times, K] (a
/// per-frame value for each token of its frame). The backward sums each
/// group of `times` rows, in one pass (candle's broadcast backward reduces
/// over a middle dimension, a slow strided loop).
pub fn repeat_rows(v: &Tensor, times: usize) -> Result<Tensor> {
    let (b, f, k) = v.dims3()?;
    if fusable(v) && times > 0 {
        Ok(v.contiguous()?.apply_op1(RepeatRows { times })?)
    } else {
        Ok(v.unsqueeze(2)?.broadcast_as((b, f, times, k))?.reshape((b, f * times, k))?)
    }
}

/// `y` [rows, n] plus the bias `b` [n] on every row. The bias's gradient,
/// the column sums of the incoming gradient, is one vectorised pass.
pub fn add_bias(y: &Tensor, b: &Tensor) -> Result<Tensor> {
    if fusable(y) && fusable(b) && y.rank() == 2 && b.rank() == 1 && y.dim(1)? == b.dim(0)? {
        Ok(y.contiguous()?.apply_op2(&b.contiguous()?, AddBias)?)
    } else {
        Ok(y.broadcast_add(b)?)
    }
}

/// adaLN's normalise-and-modulate, rms_norm(x) (1 + scale) + shift, with
/// shift and scale the slices `shift` and `scale` (in units of x's width d)
/// of the modulation `mods` [..., k d] (`modulate(rms_norm(x),
/// mods.narrow(shift), mods.narrow(scale))`): one op instead of five, and
/// one pass back.
///
/// `mods` has a row per token (the shape of x but for the width), a row
/// per group of consecutive tokens (x [B, F T, d] and mods [B, F, k d]:
/// one per frame of T tokens), or is one row [k d] for all; its gradient
/// sums each group's tokens in the same pass, so the modulation is never
/// repeated per token.
pub fn norm_modulate(x: &Tensor, mods: &Tensor, shift: usize, scale: usize, eps: f64) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    match grouping(x, mods, shift.max(scale))? {
        Some(gr) => Ok(x.contiguous()?.apply_op2(&mods.contiguous()?, NormModulate { gr, shift, scale, eps: eps as f32 })?),
        None => {
            let m = |i: usize| mods.narrow(D::Minus1, i * d, d);
            crate::nn::modulate(&crate::nn::rms_norm(x, eps)?, &broadcast_rows(&m(shift)?, x)?, &broadcast_rows(&m(scale)?, x)?)
        }
    }
}

/// The gated residual x + y gate, the gate the slice `gate` of the
/// modulation `mods` [..., k d], whose rows may cover groups of tokens as
/// in [`norm_modulate`].
pub fn gated_residual(x: &Tensor, y: &Tensor, mods: &Tensor, gate: usize) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    match grouping(x, mods, gate)? {
        Some(gr) if fusable(y) && y.dims() == x.dims() => {
            Ok(x.contiguous()?.apply_op3(&y.contiguous()?, &mods.contiguous()?, GatedResidual { gr, gate })?)
        }
        _ => Ok((x + y.broadcast_mul(&broadcast_rows(&mods.narrow(D::Minus1, gate * d, d)?, x)?)?)?),
    }
}

/// How the rows of a modulation cover the rows (tokens) of `x`.
#[derive(Clone, Copy, Debug)]
struct Grouping {
    /// x's width.
    d: usize,
    /// The modulation's width in units of d.
    parts: usize,
    /// Consecutive rows of x per row of the modulation.
    group: usize,
}

/// The grouping of `mods`'s rows over `x`'s (see [`norm_modulate`]) where
/// the fused op applies: f32 on the CPU, a width of whole slices with
/// `slice` among them.
fn grouping(x: &Tensor, mods: &Tensor, slice: usize) -> Result<Option<Grouping>> {
    let (xd, md) = (x.dims(), mods.dims());
    let (Some(&d), Some(&mw)) = (xd.last(), md.last()) else { return Ok(None) };
    if !fusable(x) || !fusable(mods) || d == 0 || mw % d != 0 || mw / d <= slice {
        return Ok(None);
    }
    let rows = x.elem_count() / d;
    let group = if md.len() == 1 {
        rows
    } else if md.len() == xd.len() && xd.len() >= 2 {
        let k = xd.len() - 2;
        let (xn, mn) = (xd[k], md[k]);
        if xd[..k] != md[..k] || mn == 0 || xn % mn != 0 {
            return Ok(None);
        }
        xn / mn
    } else {
        return Ok(None);
    };
    if rows == 0 || group == 0 {
        return Ok(None);
    }
    Ok(Some(Grouping { d, parts: mw / d, group }))
}

/// A modulation slice [..., R, d] whose rows cover groups of x's rows (see
/// [`norm_modulate`]) repeated to x's shape, for the composed path.
fn broadcast_rows(m: &Tensor, x: &Tensor) -> Result<Tensor> {
    let (xd, md) = (x.dims(), m.dims());
    if md.len() != xd.len() || md.len() < 2 || md == xd {
        return Ok(m.clone());
    }
    let k = xd.len() - 2;
    let times = xd[k] / md[k].max(1);
    if times <= 1 {
        return Ok(m.clone());
    }
    let mut expanded: Vec<usize> = md.to_vec();
    expanded.insert(k + 1, times);
    Ok(m.unsqueeze(k + 1)?.broadcast_as(expanded)?.reshape(xd)?)
}

/// Softmax over the last dimension, as `candle_nn::ops::softmax(x, D::Minus1)`.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if fusable(x) && x.rank() >= 1 && x.dim(D::Minus1)? > 0 {
        Ok(x.contiguous()?.apply_op1(Softmax)?)
    } else {
        Ok(candle_nn::ops::softmax(x, D::Minus1)?)
    }
}

fn fusable(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}

const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;
const GELU_C: f32 = 0.044_715;

/// e^x for x in f32's range, branch-free: x = k ln 2 + r with |r| <= ln 2 / 2,
/// e^r by its Taylor polynomial to degree 7 (relative error below 1e-7 on
/// that interval), 2^k from its exponent bits. Inputs are clamped to
/// [-87, 88] (e^-87 is 1.6e-38, e^88 is 1.7e38).
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let k = (x * LOG2E + ROUND) - ROUND;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    p * f32::from_bits(((k as i32 + 127) << 23) as u32)
}

/// tanh(u) = 1 - 2 / (e^(2u) + 1).
#[inline(always)]
fn tanh(u: f32) -> f32 {
    1.0 - 2.0 / (exp(2.0 * u) + 1.0)
}

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[inline(always)]
fn gelu_f(x: f32) -> f32 {
    0.5 * x * (1.0 + tanh(SQRT_TWO_OVER_PI * x * (1.0 + GELU_C * x * x)))
}

/// d gelu / dx times g.
#[inline(always)]
fn gelu_grad_f(x: f32, g: f32) -> f32 {
    let t = tanh(SQRT_TWO_OVER_PI * x * (1.0 + GELU_C * x * x));
    g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_TWO_OVER_PI * (1.0 + 3.0 * GELU_C * x * x))
}

#[inline(always)]
fn silu_f(x: f32) -> f32 {
    x * sigmoid(x)
}

/// d silu / dx times g: s (1 + x (1 - s)).
#[inline(always)]
fn silu_grad_f(x: f32, g: f32) -> f32 {
    let s = sigmoid(x);
    g * s * (1.0 + x * (1.0 - s))
}

/// Elements per parallel task: large enough that a rayon hand-off is worth it.
const CHUNK: usize = 1 << 15;

/// The loops, compiled twice: portably and with AVX2 (chosen at run time).
macro_rules! simd_loops {
    ($($name:ident($($a:ident),*) => $f:expr;)*) => {
        $(
            #[inline(always)]
            fn $name(out: &mut [f32], $($a: &[f32]),*) {
                #[inline(always)]
                fn body(out: &mut [f32], $($a: &[f32]),*) {
                    for (i, o) in out.iter_mut().enumerate() {
                        *o = $f($($a[i]),*);
                    }
                }
                #[cfg(target_arch = "x86_64")]
                {
                    #[target_feature(enable = "avx2")]
                    unsafe fn avx2(out: &mut [f32], $($a: &[f32]),*) {
                        body(out, $($a),*)
                    }
                    if std::arch::is_x86_feature_detected!("avx2") {
                        // SAFETY: the CPU has AVX2 (checked just above).
                        return unsafe { avx2(out, $($a),*) };
                    }
                }
                body(out, $($a),*)
            }
        )*
    };
}

simd_loops! {
    gelu_loop(x) => gelu_f;
    gelu_grad_loop(x, g) => gelu_grad_f;
    silu_loop(x) => silu_f;
    silu_grad_loop(x, g) => silu_grad_f;
}

/// `f` over `x` in parallel chunks (one task for small tensors).
fn map1(x: &[f32], f: fn(&mut [f32], &[f32])) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    if x.len() <= CHUNK {
        f(&mut out, x);
    } else {
        out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(o, x)| f(o, x));
    }
    out
}

fn map2(x: &[f32], g: &[f32], f: fn(&mut [f32], &[f32], &[f32])) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    if x.len() <= CHUNK {
        f(&mut out, x, g);
    } else {
        out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).zip(g.par_chunks(CHUNK)).for_each(|((o, x), g)| f(o, x, g));
    }
    out
}

/// The f32 values of a contiguous tensor's storage.
pub(crate) fn values<'a>(s: &'a CpuStorage, l: &Layout, op: &'static str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else { return Err(candle_core::Error::Msg(format!("{op}: f32 only"))) };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => Err(candle_core::Error::Msg(format!("{op}: a contiguous input is expected"))),
    }
}

macro_rules! elementwise_op {
    ($op:ident, $grad:ident, $name:literal, $fwd:ident, $bwd:ident) => {
        struct $op;
        struct $grad;

        impl CustomOp1 for $op {
            fn name(&self) -> &'static str {
                $name
            }

            fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
                Ok((CpuStorage::F32(map1(values(s, l, $name)?, $fwd)), l.shape().clone()))
            }

            fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
                Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &$grad)?))
            }
        }

        impl CustomOp2 for $grad {
            fn name(&self) -> &'static str {
                concat!($name, "-grad")
            }

            fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
                Ok((CpuStorage::F32(map2(values(s1, l1, $name)?, values(s2, l2, $name)?, $bwd)), l1.shape().clone()))
            }
        }
    };
}

elementwise_op!(Gelu, GeluGrad, "fused-gelu", gelu_loop, gelu_grad_loop);
elementwise_op!(Silu, SiluGrad, "fused-silu", silu_loop, silu_grad_loop);

/// Softmax of each row: max, exp, sum, scale: one pass over the row's
/// memory per step, rows in parallel.
pub(crate) fn softmax_row(out: &mut [f32], x: &[f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
    exp_shifted(out, x, max);
    let sum: f32 = out.iter().sum();
    let inv = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= inv);
}

/// out = e^(x - shift); a fully masked row (every x -inf) gives NaN, as the
/// plain composition does.
fn exp_shifted(out: &mut [f32], x: &[f32], shift: f32) {
    #[inline(always)]
    fn body(out: &mut [f32], x: &[f32], shift: f32) {
        for (o, v) in out.iter_mut().zip(x) {
            // exp clamps at -87: a masked score (-inf) must still give 0.
            let d = *v - shift;
            *o = if d < -87.0 { 0.0 } else { exp(d) };
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(out: &mut [f32], x: &[f32], shift: f32) {
            body(out, x, shift)
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { avx2(out, x, shift) };
        }
    }
    body(out, x, shift)
}

/// The softmax's gradient per row: y (g - sum(y g)).
pub(crate) fn softmax_grad_row(out: &mut [f32], y: &[f32], g: &[f32]) {
    let dot: f32 = y.iter().zip(g).map(|(a, b)| a * b).sum();
    for ((o, y), g) in out.iter_mut().zip(y).zip(g) {
        *o = y * (g - dot);
    }
}

/// Rows per parallel task for rows of `n` values.
fn rows_per_task(n: usize) -> usize {
    (CHUNK / n.max(1)).max(1)
}

/// `f(out_row, x_row)` for every row of `n` values, rows in parallel tasks.
fn map_rows(x: &[f32], n: usize, f: impl Fn(&mut [f32], &[f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    let per = rows_per_task(n) * n;
    out.par_chunks_mut(per).zip(x.par_chunks(per)).for_each(|(o, x)| o.chunks_mut(n).zip(x.chunks(n)).for_each(|(o, x)| f(o, x)));
    out
}

/// `f(out_row, a_row, b_row)` for every row of `n` values.
fn map_rows2(a: &[f32], b: &[f32], n: usize, f: impl Fn(&mut [f32], &[f32], &[f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; a.len()];
    let per = rows_per_task(n) * n;
    out.par_chunks_mut(per).zip(a.par_chunks(per)).zip(b.par_chunks(per)).for_each(|((o, a), b)| {
        o.chunks_mut(n).zip(a.chunks(n)).zip(b.chunks(n)).for_each(|((o, a), b)| f(o, a, b))
    });
    out
}

struct Softmax;
struct SoftmaxGrad;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = values(s, l, "fused-softmax")?;
        let n = *l.dims().last().expect("rank >= 1");
        Ok((CpuStorage::F32(map_rows(x, n, softmax_row)), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(res.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?))
    }
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-softmax-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (y, g) = (values(s1, l1, "fused-softmax-grad")?, values(s2, l2, "fused-softmax-grad")?);
        let n = *l1.dims().last().expect("rank >= 1");
        Ok((CpuStorage::F32(map_rows2(y, g, n, softmax_grad_row)), l1.shape().clone()))
    }
}

/// x / rms(x) per row; the backward needs the row's rms, which the op
/// recomputes from its input (one extra pass, no stored state).
struct RmsNorm {
    eps: f32,
}

struct RmsNormGrad {
    eps: f32,
}

fn inverse_rms(x: &[f32], eps: f32) -> f32 {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    1.0 / (ms + eps).sqrt()
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = values(s, l, "fused-rms-norm")?;
        let n = *l.dims().last().expect("rank >= 1");
        let out = map_rows(x, n, |o, x| {
            let inv = inverse_rms(x, self.eps);
            o.iter_mut().zip(x).for_each(|(o, x)| *o = x * inv);
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&grad.contiguous()?, &RmsNormGrad { eps: self.eps })?))
    }
}

impl CustomOp2 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "fused-rms-norm-grad"
    }

    /// dx = inv (g - y mean(g y)), y = x inv.
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, g) = (values(s1, l1, "fused-rms-norm-grad")?, values(s2, l2, "fused-rms-norm-grad")?);
        let n = *l1.dims().last().expect("rank >= 1");
        let out = map_rows2(x, g, n, |o, x, g| {
            let inv = inverse_rms(x, self.eps);
            let mean_gy = x.iter().zip(g).map(|(x, g)| x * inv * g).sum::<f32>() / n as f32;
            o.iter_mut().zip(x).zip(g).for_each(|((o, x), g)| *o = inv * (g - x * inv * mean_gy));
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

impl Grouping {
    fn width(&self) -> usize {
        self.parts * self.d
    }

    /// `f(first_row, out_rows, x_rows)` over blocks of whole rows of x
    /// (width d) and of the output (width `out_width`), in parallel.
    fn for_rows(&self, out: &mut [f32], out_width: usize, x: &[f32], f: impl Fn(usize, &mut [f32], &[f32]) + Sync) {
        let per = rows_per_task(self.d);
        out.par_chunks_mut(per * out_width).zip(x.par_chunks(per * self.d)).enumerate().for_each(|(i, (o, x))| f(i * per, o, x));
    }

    /// The modulation's gradient [R, k d]: for each modulation row, `f(row
    /// of x, out_row)` adds each of its group's rows in order, groups in
    /// parallel.
    fn sum_groups(&self, rows: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
        let w = self.width();
        let mut out = vec![0f32; rows / self.group * w];
        let per = (rows_per_task(self.d) / self.group).max(1);
        out.par_chunks_mut(per * w).enumerate().for_each(|(i, block)| {
            for (j, o) in block.chunks_mut(w).enumerate() {
                let first = (i * per + j) * self.group;
                for row in first..first + self.group {
                    f(row, o);
                }
            }
        });
        out
    }
}

struct NormModulate {
    gr: Grouping,
    shift: usize,
    scale: usize,
    eps: f32,
}

struct NormModulateGrad {
    gr: Grouping,
    shift: usize,
    scale: usize,
    eps: f32,
    /// Which gradient: of x (false) or of the modulation (true).
    of_mods: bool,
}

impl CustomOp2 for NormModulate {
    fn name(&self) -> &'static str {
        "fused-norm-modulate"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, m) = (values(s1, l1, "fused-norm-modulate")?, values(s2, l2, "fused-norm-modulate")?);
        let (gr, d) = (self.gr, self.gr.d);
        let mut out = vec![0f32; x.len()];
        gr.for_rows(&mut out, d, x, |first, o, x| {
            for (r, (o, x)) in o.chunks_mut(d).zip(x.chunks(d)).enumerate() {
                let m = &m[(first + r) / gr.group * gr.width()..][..gr.width()];
                let inv = inverse_rms(x, self.eps);
                let (shift, scale) = (&m[self.shift * d..][..d], &m[self.scale * d..][..d]);
                for j in 0..d {
                    o[j] = x[j] * inv * (1.0 + scale[j]) + shift[j];
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, mods: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, m, g) = (x.contiguous()?, mods.contiguous()?, grad.contiguous()?);
        let of = |of_mods| NormModulateGrad { gr: self.gr, shift: self.shift, scale: self.scale, eps: self.eps, of_mods };
        Ok((Some(x.apply_op3_no_bwd(&m, &g, &of(false))?), Some(x.apply_op3_no_bwd(&m, &g, &of(true))?)))
    }
}

impl CustomOp3 for NormModulateGrad {
    fn name(&self) -> &'static str {
        "fused-norm-modulate-grad"
    }

    /// With n = x inv: d shift = g, d scale = g n (summed over each
    /// modulation row's tokens), and the norm's backward of g (1 + scale):
    /// inv (h - n mean(h n)).
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = "fused-norm-modulate-grad";
        let (x, m, g) = (values(s1, l1, name)?, values(s2, l2, name)?, values(s3, l3, name)?);
        let (gr, d) = (self.gr, self.gr.d);
        if self.of_mods {
            let out = gr.sum_groups(x.len() / d, |row, o| {
                let (x, g) = (&x[row * d..][..d], &g[row * d..][..d]);
                let inv = inverse_rms(x, self.eps);
                o[self.shift * d..][..d].iter_mut().zip(g).for_each(|(o, g)| *o += g);
                for j in 0..d {
                    o[self.scale * d + j] += g[j] * x[j] * inv;
                }
            });
            return Ok((CpuStorage::F32(out), l2.shape().clone()));
        }
        let mut out = vec![0f32; x.len()];
        gr.for_rows(&mut out, d, x, |first, o, x| {
            for (r, (o, x)) in o.chunks_mut(d).zip(x.chunks(d)).enumerate() {
                let row = first + r;
                let (m, g) = (&m[row / gr.group * gr.width()..][..gr.width()], &g[row * d..][..d]);
                let inv = inverse_rms(x, self.eps);
                let scale = &m[self.scale * d..][..d];
                let mut mean_hn = 0f32;
                for j in 0..d {
                    mean_hn += g[j] * (1.0 + scale[j]) * x[j] * inv;
                }
                mean_hn /= d as f32;
                for j in 0..d {
                    o[j] = inv * (g[j] * (1.0 + scale[j]) - x[j] * inv * mean_hn);
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

struct GatedResidual {
    gr: Grouping,
    gate: usize,
}

/// The gradient of y (`of_mods` false: g gate) or of the modulation (g y
/// in the gate's slice, summed over each modulation row's tokens).
struct GatedResidualGrad {
    gr: Grouping,
    gate: usize,
    of_mods: bool,
}

impl CustomOp3 for GatedResidual {
    fn name(&self) -> &'static str {
        "fused-gated-residual"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = "fused-gated-residual";
        let (x, y, m) = (values(s1, l1, name)?, values(s2, l2, name)?, values(s3, l3, name)?);
        let (gr, d) = (self.gr, self.gr.d);
        let mut out = vec![0f32; x.len()];
        gr.for_rows(&mut out, d, x, |first, o, x| {
            for (r, (o, x)) in o.chunks_mut(d).zip(x.chunks(d)).enumerate() {
                let row = first + r;
                let (y, gate) = (&y[row * d..][..d], &m[row / gr.group * gr.width() + self.gate * d..][..d]);
                for j in 0..d {
                    o[j] = x[j] + y[j] * gate[j];
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, mods: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (y, m, g) = (y.contiguous()?, mods.contiguous()?, grad.contiguous()?);
        let of = |of_mods| GatedResidualGrad { gr: self.gr, gate: self.gate, of_mods };
        Ok((Some(g.clone()), Some(y.apply_op3_no_bwd(&m, &g, &of(false))?), Some(y.apply_op3_no_bwd(&m, &g, &of(true))?)))
    }
}

impl CustomOp3 for GatedResidualGrad {
    fn name(&self) -> &'static str {
        "fused-gated-residual-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let name = "fused-gated-residual-grad";
        let (y, m, g) = (values(s1, l1, name)?, values(s2, l2, name)?, values(s3, l3, name)?);
        let (gr, d) = (self.gr, self.gr.d);
        if self.of_mods {
            let out = gr.sum_groups(y.len() / d, |row, o| {
                let (y, g) = (&y[row * d..][..d], &g[row * d..][..d]);
                for j in 0..d {
                    o[self.gate * d + j] += g[j] * y[j];
                }
            });
            return Ok((CpuStorage::F32(out), l2.shape().clone()));
        }
        let mut out = vec![0f32; y.len()];
        gr.for_rows(&mut out, d, y, |first, o, _| {
            for (r, o) in o.chunks_mut(d).enumerate() {
                let (g, gate) = (&g[(first + r) * d..][..d], &m[(first + r) / gr.group * gr.width() + self.gate * d..][..d]);
                for j in 0..d {
                    o[j] = g[j] * gate[j];
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

struct RepeatRows {
    times: usize,
}

/// Sums of each group of `times` rows of `g` [rows * times, k].
struct SumRowGroups {
    times: usize,
}

impl CustomOp1 for RepeatRows {
    fn name(&self) -> &'static str {
        "fused-repeat-rows"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let v = values(s, l, "fused-repeat-rows")?;
        let (b, f, k) = l.shape().dims3()?;
        let mut out = Vec::with_capacity(v.len() * self.times);
        for row in v.chunks(k.max(1)) {
            for _ in 0..self.times {
                out.extend_from_slice(row);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((b, f * self.times, k))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&SumRowGroups { times: self.times })?))
    }
}

impl CustomOp1 for SumRowGroups {
    fn name(&self) -> &'static str {
        "fused-sum-row-groups"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = values(s, l, "fused-sum-row-groups")?;
        let (b, ft, k) = l.shape().dims3()?;
        let group = self.times * k;
        let mut out = vec![0f32; g.len() / self.times];
        if k > 0 {
            out.par_chunks_mut(k).zip(g.par_chunks(group)).for_each(|(o, g)| {
                for row in g.chunks(k) {
                    o.iter_mut().zip(row).for_each(|(o, v)| *o += v);
                }
            });
        }
        Ok((CpuStorage::F32(out), Shape::from((b, ft / self.times, k))))
    }
}

struct AddBias;

/// Column sums of `g` [rows, n].
struct ColumnSums;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "fused-add-bias"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (y, b) = (values(s1, l1, "fused-add-bias")?, values(s2, l2, "fused-add-bias")?);
        let n = b.len();
        let mut out = y.to_vec();
        if n > 0 {
            let per = rows_per_task(n) * n;
            out.par_chunks_mut(per).for_each(|o| o.chunks_mut(n).for_each(|row| row.iter_mut().zip(b).for_each(|(o, b)| *o += b)));
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, _y: &Tensor, _b: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad.clone()), Some(grad.contiguous()?.apply_op1_no_bwd(&ColumnSums)?)))
    }
}

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "fused-column-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = values(s, l, "fused-column-sums")?;
        let (_, n) = l.shape().dims2()?;
        // Per task a block of rows summed into its own partial row, then the
        // partial rows added.
        let per = rows_per_task(n).max(64) * n.max(1);
        let partials: Vec<Vec<f32>> = if n == 0 {
            Vec::new()
        } else {
            g.par_chunks(per)
                .map(|block| {
                    let mut acc = vec![0f32; n];
                    for row in block.chunks(n) {
                        acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
                    }
                    acc
                })
                .collect()
        };
        let mut out = vec![0f32; n];
        for p in &partials {
            out.iter_mut().zip(p).for_each(|(o, v)| *o += v);
        }
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// Values that cover the activations' ranges, odd sizes (not a multiple
    /// of 8, one above the parallel chunk).
    fn inputs(shape: &[usize], scale: f32) -> Var {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| scale * (((i * 7919) % 2003) as f32 / 1001.0 - 1.0)).collect();
        Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
    }

    /// The fused op against the composition: values, and the gradient of a
    /// weighted sum (weights break the symmetry a plain sum would have),
    /// within 1e-5 of the larger of 1 and the reference's largest magnitude
    /// (f32 rounding of gradients of size 700 is 6e-5).
    fn check(fused: fn(&Tensor) -> Result<Tensor>, plain: fn(&Tensor) -> Tensor, shape: &[usize], scale: f32) {
        let x = inputs(shape, scale);
        let w = inputs(shape, 1.0).as_tensor().detach().cos().unwrap();
        let tol = |r: &Tensor| 1e-5 * r.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1.0);
        let (yf, yp) = (fused(x.as_tensor()).unwrap(), plain(x.as_tensor()));
        let dv = max_diff(&yf, &yp);
        assert!(dv < tol(&yp), "{shape:?} x{scale}: value differs by {dv}");
        let gf = (&yf * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = (&yp * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let (gf, gp) = (gf.get(x.as_tensor()).unwrap(), gp.get(x.as_tensor()).unwrap());
        let dg = max_diff(gf, gp);
        assert!(dg < tol(gp), "{shape:?} x{scale}: gradient differs by {dg} (largest {})", tol(gp) / 1e-5);
    }

    #[test]
    fn gelu_equals_candles_in_value_and_gradient() {
        for (shape, scale) in [(&[3usize, 5, 7][..], 4.0), (&[1, 33_001][..], 8.0), (&[2, 3][..], 30.0)] {
            check(gelu, |x| x.gelu().unwrap(), shape, scale);
        }
    }

    #[test]
    fn silu_equals_candles_in_value_and_gradient() {
        for (shape, scale) in [(&[3usize, 5, 7][..], 4.0), (&[1, 33_001][..], 8.0), (&[2, 3][..], 90.0)] {
            check(silu, |x| x.silu().unwrap(), shape, scale);
        }
    }

    #[test]
    fn softmax_equals_candles_in_value_and_gradient() {
        for (shape, scale) in [(&[3usize, 5, 7][..], 4.0), (&[2, 5, 3001][..], 10.0), (&[1, 1][..], 1.0), (&[4, 9][..], 60.0)] {
            check(softmax_last_dim, |x| candle_nn::ops::softmax(x, D::Minus1).unwrap(), shape, scale);
        }
    }

    #[test]
    fn rms_norm_equals_the_composition_in_value_and_gradient() {
        for (shape, scale) in [(&[3usize, 5, 7][..], 4.0), (&[2, 40, 193][..], 10.0), (&[1, 1][..], 1.0), (&[4, 9][..], 1e-3)] {
            check(|x| rms_norm(x, 1e-6), |x| crate::nn::rms_norm_composed(x, 1e-6).unwrap(), shape, scale);
        }
    }

    #[test]
    fn repeated_rows_and_their_gradient_equal_the_broadcast() {
        for (shape, times) in [([2usize, 3, 5], 4usize), ([3, 7, 193], 16), ([1, 1, 1], 1)] {
            let v = inputs(&shape, 2.0);
            let w = inputs(&[shape[0], shape[1] * times, shape[2]], 1.0).as_tensor().detach().cos().unwrap();
            let plain = v.as_tensor().unsqueeze(2).unwrap().broadcast_as((shape[0], shape[1], times, shape[2])).unwrap().reshape((shape[0], shape[1] * times, shape[2])).unwrap();
            let fused = repeat_rows(v.as_tensor(), times).unwrap();
            assert_eq!(max_diff(&fused, &plain), 0.0);
            let gf = (&fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gp = (&plain * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let dg = max_diff(gf.get(v.as_tensor()).unwrap(), gp.get(v.as_tensor()).unwrap());
            assert!(dg < 1e-5, "{shape:?} x{times}: {dg}");
        }
    }

    #[test]
    fn a_bias_and_its_gradient_equal_the_broadcast_add() {
        for (rows, n) in [(5usize, 7usize), (3001, 33), (1, 1)] {
            let y = inputs(&[rows, n], 3.0);
            let b = inputs(&[n], 1.5);
            let w = inputs(&[rows, n], 1.0).as_tensor().detach().sin().unwrap();
            let fused = add_bias(y.as_tensor(), b.as_tensor()).unwrap();
            let plain = y.as_tensor().broadcast_add(b.as_tensor()).unwrap();
            assert_eq!(max_diff(&fused, &plain), 0.0);
            let gf = (&fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gp = (&plain * &w).unwrap().sum_all().unwrap().backward().unwrap();
            for var in [&y, &b] {
                let (f, p) = (gf.get(var.as_tensor()).unwrap(), gp.get(var.as_tensor()).unwrap());
                let tol = 1e-5 * p.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0);
                assert!(max_diff(f, p) < tol, "{rows}x{n}: {}", max_diff(f, p));
            }
        }
    }

    /// norm_modulate and gated_residual against their compositions, with
    /// `repeated` turning a modulation slice into one row per token: values
    /// and the gradient of every input.
    fn assert_adaln_ops_match(x: &Var, y: &Var, mods: &Var, repeated: impl Fn(&Tensor) -> Tensor, case: &str) {
        let d = x.as_tensor().dim(D::Minus1).unwrap();
        let w = inputs(x.as_tensor().dims(), 1.0).as_tensor().detach().cos().unwrap();
        let m = |i: usize| repeated(&mods.as_tensor().narrow(D::Minus1, i * d, d).unwrap());
        let cases: [(Tensor, Tensor); 2] = [
            (norm_modulate(x.as_tensor(), mods.as_tensor(), 3, 4, 1e-6).unwrap(), crate::nn::modulate(&crate::nn::rms_norm_composed(x.as_tensor(), 1e-6).unwrap(), &m(3), &m(4)).unwrap()),
            (gated_residual(x.as_tensor(), y.as_tensor(), mods.as_tensor(), 5).unwrap(), (x.as_tensor() + y.as_tensor().mul(&m(5)).unwrap()).unwrap()),
        ];
        for (k, (fused, plain)) in cases.iter().enumerate() {
            assert!(max_diff(fused, plain) < 1e-5, "op {k}, {case}: value {}", max_diff(fused, plain));
            let gf = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gp = (plain * &w).unwrap().sum_all().unwrap().backward().unwrap();
            for (name, var) in [("x", x), ("y", y), ("mods", mods)] {
                match (gf.get(var.as_tensor()), gp.get(var.as_tensor())) {
                    (Some(f), Some(p)) => {
                        let tol = 1e-5 * p.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0);
                        assert!(max_diff(f, p) < tol, "op {k}, {case}: gradient of {name} differs by {}", max_diff(f, p));
                    }
                    (None, None) => {}
                    (f, p) => panic!("op {k}, {case}: gradient of {name}: fused {} plain {}", f.is_some(), p.is_some()),
                }
            }
        }
    }

    /// The adaLN ops against their compositions on per-token modulations
    /// of odd widths.
    #[test]
    fn norm_modulate_and_gated_residual_equal_the_compositions() {
        for (rows, d) in [(5usize, 7usize), (2 * 241, 33), (1, 1)] {
            let (x, y, mods) = (inputs(&[1, rows, d], 3.0), inputs(&[1, rows, d], 2.0), inputs(&[1, rows, 6 * d], 0.7));
            assert_adaln_ops_match(&x, &y, &mods, |m| m.clone(), &format!("{rows}x{d}"));
        }
    }

    /// A modulation row per group of tokens (per frame, or one for all)
    /// against the composition with the modulation repeated per token (the
    /// modulation's gradient sums its group's tokens).
    #[test]
    fn grouped_modulations_equal_the_composition_with_rows_repeated() {
        // (batch, frames, tokens per frame, d, a row per frame or one for all).
        for (b, f, t, d, per_frame) in [(2usize, 3usize, 4usize, 7usize, true), (3, 4, 16, 33, true), (2, 5, 3, 9, false), (1, 1, 1, 1, false)] {
            let (x, y) = (inputs(&[b, f * t, d], 3.0), inputs(&[b, f * t, d], 2.0));
            let mods = if per_frame { inputs(&[b, f, 6 * d], 0.7) } else { inputs(&[6 * d], 0.7) };
            let repeated = |m: &Tensor| -> Tensor {
                if per_frame {
                    m.unsqueeze(2).unwrap().broadcast_as((b, f, t, d)).unwrap().reshape((b, f * t, d)).unwrap()
                } else {
                    m.broadcast_as((b, f * t, d)).unwrap()
                }
            };
            assert_adaln_ops_match(&x, &y, &mods, repeated, &format!("b {b} f {f} t {t} d {d} per frame {per_frame}"));
        }
        // A modulation whose rows do not divide the tokens is not grouped:
        // the composition's own shape error, not a wrong answer.
        let x = inputs(&[1, 5, 4], 1.0);
        let mods = inputs(&[1, 2, 24], 1.0);
        assert!(norm_modulate(x.as_tensor(), mods.as_tensor(), 0, 1, 1e-6).is_err());
    }

    #[test]
    fn masked_scores_get_zero_weight() {
        let x = Tensor::new(&[[0f32, f32::NEG_INFINITY, 1.0], [f32::NEG_INFINITY, 2.0, f32::NEG_INFINITY]], &Device::Cpu).unwrap();
        let y: Vec<Vec<f32>> = softmax_last_dim(&x).unwrap().to_vec2().unwrap();
        let e = 1f32.exp();
        assert!((y[0][0] - 1.0 / (1.0 + e)).abs() < 1e-7 && y[0][1] == 0.0 && (y[0][2] - e / (1.0 + e)).abs() < 1e-7, "{y:?}");
        assert_eq!(y[1], vec![0.0, 1.0, 0.0]);
    }

    #[test]
    fn exp_is_within_two_ulps_of_the_library_exp() {
        for i in 0..=20_000 {
            let x = -87.0 + 175.0 * i as f32 / 20_000.0;
            let (a, b) = (exp(x), x.exp());
            assert!(((a - b) / b).abs() < 2.5e-7, "exp({x}) = {a}, libm {b}");
        }
    }

    #[test]
    fn other_devices_and_dtypes_fall_back_to_candle() {
        let x = Tensor::new(&[[0.5f64, -1.0]], &Device::Cpu).unwrap();
        assert_eq!(gelu(&x).unwrap().to_vec2::<f64>().unwrap(), x.gelu().unwrap().to_vec2::<f64>().unwrap());
        // A non-contiguous f32 input is made contiguous first.
        let t = inputs(&[4, 6], 3.0).as_tensor().t().unwrap();
        assert!(max_diff(&softmax_last_dim(&t).unwrap(), &candle_nn::ops::softmax(&t, D::Minus1).unwrap()) < 1e-6);
    }
}
