//! Multi-head attention of the clip transformer, fused for the CPU.
//!
//! The block's attention reads its queries, keys and values straight from
//! the fused projection `qkv` [B, N, 3 d] (q, k, v side by side, heads
//! inside each) and, for the target clip, also the keys and values of the
//! encoded context, the context's own `qkv` [Bc, Nc, 3 d] with Bc 1 (one
//! context shared by every row) or B. Keys are the context's tokens, then
//! the row's own.
//!
//! Written as candle ops, this is a head split with three `contiguous`
//! copies, a broadcast copy of a shared context, a concatenation, the
//! scores' scaling, the softmax, and a transpose copy back, each a pass
//! over memory in the forward and again in the backward, with candle's
//! gradient accumulation on top (issue #26's profile). Here the forward
//! and the backward are one custom op each: per (row, head), small strided
//! matrix products (`gemm`, no copies) and the softmax, (row, head) pairs
//! in parallel. The forward keeps the attention probabilities for the
//! backward (B x heads x N x keys values; a second backward through the
//! same graph recomputes them from q and k).
//!
//! On other devices and dtypes, [`attention`] is the plain candle
//! composition ([`attention_composed`]), which the tests hold the fused op
//! to (1e-5 in value and in both inputs' gradients).

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use crate::fused::{softmax_grad_row, softmax_row, values};
use crate::Result;

/// Attention of the tokens of `qkv` [B, N, 3 d] over the keys of `context`
/// [Bc, Nc, 3 d] (Bc 1 or B; none: self-attention only) and their own,
/// with `heads` heads of width d / heads and scores scaled by
/// 1/sqrt(head width). Returns [B, N, d], heads side by side.
pub fn attention(qkv: &Tensor, context: Option<&Tensor>, heads: usize) -> Result<Tensor> {
    let (b, _, three_d) = qkv.dims3()?;
    let d = three_d / 3;
    if three_d % 3 != 0 || heads == 0 || d % heads != 0 {
        return Err(crate::ModelError::Config(format!("attention: width {three_d} is not 3 x a multiple of {heads} heads")));
    }
    if let Some(c) = context {
        let (bc, _, w) = c.dims3()?;
        if w != three_d || (bc != 1 && bc != b) {
            return Err(crate::ModelError::Config(format!("attention: context {:?} does not fit qkv {:?}", c.dims(), qkv.dims())));
        }
    }
    let fusable = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if !fusable(qkv) || !context.is_none_or(fusable) {
        return attention_composed(qkv, context, heads);
    }
    let context = match context {
        Some(c) => c.contiguous()?,
        None => Tensor::zeros((1, 0, three_d), DType::F32, qkv.device())?,
    };
    Ok(qkv.contiguous()?.apply_op2(&context, Attention { heads, probs: Mutex::new(None) })?)
}

/// [`attention`] as plain candle ops (any device and dtype).
pub fn attention_composed(qkv: &Tensor, context: Option<&Tensor>, heads: usize) -> Result<Tensor> {
    let (b, n, three_d) = qkv.dims3()?;
    let d = three_d / 3;
    let (q, k, v) = split_heads(qkv, heads)?;
    let (keys, values) = match context {
        None => (k, v),
        Some(c) => {
            let (_, ck, cv) = split_heads(c, heads)?;
            let shape = (b, ck.dim(1)?, ck.dim(2)?, ck.dim(3)?);
            let ck = ck.broadcast_as(shape)?.contiguous()?;
            let cv = cv.broadcast_as(shape)?.contiguous()?;
            (Tensor::cat(&[&ck, &k], 2)?, Tensor::cat(&[&cv, &v], 2)?)
        }
    };
    let hd = q.dim(D::Minus1)?;
    let scores = (q.matmul(&keys.t()?)? * (1.0 / (hd as f64).sqrt()))?;
    let att = crate::fused::softmax_last_dim(&scores)?.matmul(&values)?;
    Ok(att.transpose(1, 2)?.reshape((b, n, d))?)
}

/// [B, N, 3 d] -> q, k, v, each [B, heads, N, d / heads].
fn split_heads(qkv: &Tensor, heads: usize) -> Result<(Tensor, Tensor, Tensor)> {
    let (b, n, three_d) = qkv.dims3()?;
    let hd = three_d / 3 / heads;
    let qkv = qkv.reshape((b, n, 3, heads, hd))?.permute((2, 0, 3, 1, 4))?;
    Ok((qkv.get(0)?.contiguous()?, qkv.get(1)?.contiguous()?, qkv.get(2)?.contiguous()?))
}

/// A strided f32 matrix: element (i, j) at `ptr + i rs + j cs`.
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

impl Mat {
    fn t(self) -> Mat {
        Mat { ptr: self.ptr, rs: self.cs, cs: self.rs }
    }

    /// The matrix starting `cols` columns further right.
    fn right(self, cols: usize) -> Mat {
        // Wrapping: an empty matrix's pointer may not point into anything.
        Mat { ptr: self.ptr.wrapping_offset(cols as isize * self.cs), ..self }
    }
}

/// dst (m x n) = [dst +] beta lhs (m x k) rhs (k x n), single-threaded
/// (the parallelism is over (row, head) pairs). Nothing happens for an
/// empty product.
///
/// # Safety
/// Every element the shapes and strides reach must be inside its
/// allocation, and no other thread may write `dst`'s elements meanwhile.
#[allow(clippy::too_many_arguments)] // the shape of a BLAS call
unsafe fn matmul(m: usize, n: usize, k: usize, dst: Mat, accumulate: bool, lhs: Mat, rhs: Mat, beta: f32) {
    // SAFETY: the caller's contract.
    unsafe {
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            if !accumulate {
                for i in 0..m as isize {
                    for j in 0..n as isize {
                        *(dst.ptr as *mut f32).offset(i * dst.rs + j * dst.cs) = 0.0;
                    }
                }
            }
            return;
        }
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr as *mut f32,
            dst.cs,
            dst.rs,
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            1.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// A pointer that (row, head) tasks share; each writes its own elements.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: the tasks write disjoint elements (see each use).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer (a method, so that closures capture the whole `Shared`,
    /// which is Sync, not its raw pointer field).
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// The problem's sizes and, for task (row, head), where its matrices are.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    n: usize,
    bc: usize,
    nc: usize,
    d: usize,
    heads: usize,
}

impl Dims {
    fn hd(&self) -> usize {
        self.d / self.heads
    }

    fn keys(&self) -> usize {
        self.nc + self.n
    }

    fn scale(&self) -> f32 {
        1.0 / (self.hd() as f32).sqrt()
    }

    /// Part `part` (0 q, 1 k, 2 v) of head `h` of batch row `row` of a
    /// [*, tokens, 3 d] buffer: a tokens x hd matrix.
    fn part(&self, buf: *const f32, tokens: usize, row: usize, part: usize, h: usize) -> Mat {
        let w = 3 * self.d;
        // Wrapping: an empty context's buffer has no elements to point at
        // (and its matrices are never read).
        Mat { ptr: buf.wrapping_add(row * tokens * w + part * self.d + h * self.hd()), rs: w as isize, cs: 1 }
    }

    /// The context row that batch row `row` reads.
    fn context_row(&self, row: usize) -> usize {
        if self.bc == 1 {
            0
        } else {
            row
        }
    }
}

/// Attention probabilities of task (row, h), softmax(scale q K^T), into
/// `p` (N x keys).
///
/// # Safety
/// `qkv` and `ctx` hold [b, n, 3d] and [bc, nc, 3d] values.
unsafe fn probabilities(dm: &Dims, qkv: *const f32, ctx: *const f32, row: usize, h: usize, p: &mut [f32]) {
    // SAFETY: the caller's contract.
    unsafe {
        let (n, nc, keys, hd) = (dm.n, dm.nc, dm.keys(), dm.hd());
        let mut scores = vec![0f32; n * keys];
        let s = Mat { ptr: scores.as_mut_ptr(), rs: keys as isize, cs: 1 };
        let q = dm.part(qkv, n, row, 0, h);
        let cr = dm.context_row(row);
        matmul(n, nc, hd, s, false, q, dm.part(ctx, nc, cr, 1, h).t(), dm.scale());
        matmul(n, n, hd, s.right(nc), false, q, dm.part(qkv, n, row, 1, h).t(), dm.scale());
        if keys > 0 {
            p.chunks_mut(keys).zip(scores.chunks(keys)).for_each(|(p, s)| softmax_row(p, s));
        }
    }
}

/// The forward: [b, n, d], and the probabilities of every (row, head)
/// task, one N x keys block per task (kept for the backward).
fn forward(dm: Dims, qkv: &[f32], ctx: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (n, nc, keys, hd, d) = (dm.n, dm.nc, dm.keys(), dm.hd(), dm.d);
    let mut out = vec![0f32; dm.b * n * d];
    let mut probs = vec![0f32; dm.b * dm.heads * n * keys];
    let dst = Shared(out.as_mut_ptr());
    probs.par_chunks_mut((n * keys).max(1)).enumerate().for_each(|(task, p)| {
        let (row, h) = (task / dm.heads, task % dm.heads);
        // SAFETY: task (row, h) writes only columns h hd.. of its row's
        // tokens; the input pointers cover [b, n, 3d] and [bc, nc, 3d].
        unsafe {
            probabilities(&dm, qkv.as_ptr(), ctx.as_ptr(), row, h, p);
            let pm = Mat { ptr: p.as_ptr(), rs: keys as isize, cs: 1 };
            let o = Mat { ptr: dst.get().add(row * n * d + h * hd), rs: d as isize, cs: 1 };
            matmul(n, hd, nc, o, false, pm, dm.part(ctx.as_ptr(), nc, dm.context_row(row), 2, h), 1.0);
            matmul(n, hd, n, o, nc > 0, pm.right(nc), dm.part(qkv.as_ptr(), n, row, 2, h), 1.0);
        }
    });
    (out, probs)
}

/// The backward: the gradients of qkv [b, n, 3d] and of the context
/// [bc, nc, 3d], one after the other in one buffer. `probs`: the
/// forward's probabilities, recomputed from q and k where absent.
fn backward(dm: Dims, qkv: &[f32], ctx: &[f32], grad: &[f32], probs: Option<&[f32]>) -> Vec<f32> {
    let (n, nc, keys, hd, d) = (dm.n, dm.nc, dm.keys(), dm.hd(), dm.d);
    let own = dm.b * n * 3 * d;
    let mut out = vec![0f32; own + dm.bc * nc * 3 * d];
    // Each task's context key and value gradients (nc x hd each), summed
    // over the rows that share a context row afterwards, in row order.
    let mut per_task = vec![0f32; dm.b * dm.heads * 2 * nc * hd];
    let dst = Shared(out.as_mut_ptr());
    let tmp = Shared(per_task.as_mut_ptr());
    let scale = dm.scale();
    (0..dm.b * dm.heads).into_par_iter().for_each(|task| {
        let (row, h) = (task / dm.heads, task % dm.heads);
        // SAFETY: task (row, h) writes only columns h hd.. of q, k and v of
        // its row in the qkv gradient, and its own slice of `per_task`.
        unsafe {
            let (qkv, ctx) = (qkv.as_ptr(), ctx.as_ptr());
            let cr = dm.context_row(row);
            let recomputed;
            let p = match probs {
                Some(all) => &all[task * n * keys..][..n * keys],
                None => {
                    let mut p = vec![0f32; n * keys];
                    probabilities(&dm, qkv, ctx, row, h, &mut p);
                    recomputed = p;
                    &recomputed
                }
            };
            let pm = Mat { ptr: p.as_ptr(), rs: keys as isize, cs: 1 };
            let go = Mat { ptr: grad.as_ptr().add(row * n * d + h * hd), rs: d as isize, cs: 1 };
            let (q, k, v) = (dm.part(qkv, n, row, 0, h), dm.part(qkv, n, row, 1, h), dm.part(qkv, n, row, 2, h));
            let (ck, cv) = (dm.part(ctx, nc, cr, 1, h), dm.part(ctx, nc, cr, 2, h));
            // dP = dO V^T, then dS = P (dP - rowsum(P dP)).
            let mut dp = vec![0f32; n * keys];
            let dpm = Mat { ptr: dp.as_mut_ptr(), rs: keys as isize, cs: 1 };
            matmul(n, nc, hd, dpm, false, go, cv.t(), 1.0);
            matmul(n, n, hd, dpm.right(nc), false, go, v.t(), 1.0);
            let mut ds = vec![0f32; n * keys];
            if keys > 0 {
                ds.chunks_mut(keys).zip(p.chunks(keys)).zip(dp.chunks(keys)).for_each(|((o, p), g)| softmax_grad_row(o, p, g));
            }
            let dsm = Mat { ptr: ds.as_ptr(), rs: keys as isize, cs: 1 };
            // dQ = scale dS K; dK = scale dS^T Q; dV = P^T dO.
            let g = dst.get() as *const f32;
            let gq = dm.part(g, n, row, 0, h);
            matmul(n, hd, nc, gq, false, dsm, ck, scale);
            matmul(n, hd, n, gq, nc > 0, dsm.right(nc), k, scale);
            matmul(n, hd, n, dm.part(g, n, row, 1, h), false, dsm.right(nc).t(), q, scale);
            matmul(n, hd, n, dm.part(g, n, row, 2, h), false, pm.right(nc).t(), go, 1.0);
            let t = tmp.get().add(task * 2 * nc * hd);
            let gck = Mat { ptr: t, rs: hd as isize, cs: 1 };
            let gcv = Mat { ptr: t.add(nc * hd), rs: hd as isize, cs: 1 };
            matmul(nc, hd, n, gck, false, dsm.t(), q, scale);
            matmul(nc, hd, n, gcv, false, pm.t(), go, 1.0);
        }
    });
    // The context's gradient: its q part stays zero.
    let (ctx_grad, block) = (&mut out[own..], nc * hd);
    for row in 0..dm.b {
        let cr = dm.context_row(row);
        for h in 0..dm.heads {
            let t = &per_task[(row * dm.heads + h) * 2 * block..][..2 * block];
            for part in 1..3 {
                let src = &t[(part - 1) * block..part * block];
                for (j, src_row) in src.chunks(hd.max(1)).enumerate().take(nc) {
                    let at = (cr * nc + j) * 3 * d + part * d + h * hd;
                    ctx_grad[at..at + hd].iter_mut().zip(src_row).for_each(|(o, s)| *o += s);
                }
            }
        }
    }
    out
}

fn dims(qkv: &Layout, ctx: &Layout, heads: usize) -> candle_core::Result<Dims> {
    let (b, n, three_d) = qkv.shape().dims3()?;
    let (bc, nc, _) = ctx.shape().dims3()?;
    Ok(Dims { b, n, bc, nc, d: three_d / 3, heads })
}

/// The fused forward: inputs qkv [B, N, 3d] and context [Bc, Nc, 3d].
struct Attention {
    heads: usize,
    /// The forward's probabilities, taken by the first backward (a second
    /// backward through the same graph recomputes them).
    probs: Mutex<Option<Vec<f32>>>,
}

/// The fused backward: inputs qkv, context and the output's gradient.
struct AttentionGrad {
    heads: usize,
    probs: Option<Vec<f32>>,
}

impl CustomOp2 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dm = dims(l1, l2, self.heads)?;
        let (out, probs) = forward(dm, values(s1, l1, "fused-attention")?, values(s2, l2, "fused-attention")?);
        *self.probs.lock().unwrap_or_else(|e| e.into_inner()) = Some(probs);
        Ok((CpuStorage::F32(out), Shape::from((dm.b, dm.n, dm.d))))
    }

    fn bwd(&self, qkv: &Tensor, ctx: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let probs = self.probs.lock().unwrap_or_else(|e| e.into_inner()).take();
        let both = qkv.apply_op3_no_bwd(ctx, &grad.contiguous()?, &AttentionGrad { heads: self.heads, probs })?;
        let own = qkv.elem_count();
        let g_qkv = both.narrow(0, 0, own)?.reshape(qkv.shape())?;
        let g_ctx = both.narrow(0, own, ctx.elem_count())?.reshape(ctx.shape())?;
        Ok((Some(g_qkv), Some(g_ctx)))
    }
}

impl CustomOp3 for AttentionGrad {
    fn name(&self) -> &'static str {
        "fused-attention-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dm = dims(l1, l2, self.heads)?;
        let name = "fused-attention-grad";
        let probs = self.probs.as_deref().filter(|p| p.len() == dm.b * dm.heads * dm.n * dm.keys());
        let out = backward(dm, values(s1, l1, name)?, values(s2, l2, name)?, values(s3, l3, name)?, probs);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn values(shape: &[usize], seed: usize, scale: f32) -> Var {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| scale * ((((i + seed * 131) * 7919) % 2003) as f32 / 1001.0 - 1.0)).collect();
        Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// The fused op against the composition: the value, and the gradients
    /// of a weighted sum of it with respect to qkv and the context, within
    /// 1e-5 of the larger of 1 and the reference's largest magnitude.
    fn check(b: usize, n: usize, bc: usize, nc: Option<usize>, heads: usize, hd: usize, scale: f32) {
        let d = heads * hd;
        let qkv = values(&[b, n, 3 * d], 1, scale);
        let ctx = nc.map(|nc| values(&[bc, nc, 3 * d], 2, scale));
        let w = values(&[b, n, d], 3, 1.0).as_tensor().cos().unwrap();
        let ctx_t = ctx.as_ref().map(|c| c.as_tensor());
        let fused = attention(qkv.as_tensor(), ctx_t, heads).unwrap();
        let plain = attention_composed(qkv.as_tensor(), ctx_t, heads).unwrap();
        let case = format!("b {b} n {n} bc {bc} nc {nc:?} heads {heads} hd {hd} x{scale}");
        let tol = |r: &Tensor| 1e-5 * max_abs(r).max(1.0);
        let dv = max_abs(&(&fused - &plain).unwrap());
        assert!(dv < tol(&plain), "{case}: value differs by {dv}");
        let gf = (&fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = (&plain * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let mut inputs = vec![("qkv", qkv.as_tensor())];
        if let Some(c) = &ctx {
            inputs.push(("context", c.as_tensor()));
        }
        for (name, x) in inputs {
            let (f, p) = (gf.get(x).unwrap(), gp.get(x).unwrap());
            let dg = max_abs(&(f - p).unwrap());
            assert!(dg < tol(p), "{case}: {name} gradient differs by {dg} (largest {})", max_abs(p));
            assert!(max_abs(p) > 0.0, "{case}: {name} gradient is zero, the check would be empty");
        }
    }

    #[test]
    fn fused_attention_equals_the_composition_in_value_and_gradients() {
        // Self-attention only; a context per row; one context shared by
        // every row (its gradient sums over them); odd sizes; one head.
        check(3, 7, 1, None, 2, 3, 1.0);
        check(3, 7, 3, Some(5), 2, 3, 1.0);
        check(4, 5, 1, Some(9), 3, 5, 2.0);
        check(1, 1, 1, Some(1), 1, 1, 1.0);
        check(2, 16, 1, Some(32), 6, 32, 3.0);
    }

    #[test]
    fn a_second_backward_recomputes_the_kept_probabilities_exactly() {
        // The first backward takes the forward's probabilities; a second
        // through the same graph recomputes them, to the same bits.
        let qkv = values(&[3, 6, 12], 7, 1.5);
        let ctx = values(&[1, 4, 12], 8, 1.5);
        let w = values(&[3, 6, 4], 9, 1.0).as_tensor().cos().unwrap();
        let loss = (attention(qkv.as_tensor(), Some(ctx.as_tensor()), 2).unwrap() * &w).unwrap().sum_all().unwrap();
        let (first, second) = (loss.backward().unwrap(), loss.backward().unwrap());
        for x in [qkv.as_tensor(), ctx.as_tensor()] {
            let (a, b) = (first.get(x).unwrap(), second.get(x).unwrap());
            assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
    }

    #[test]
    fn an_empty_context_is_self_attention() {
        let qkv = values(&[2, 5, 12], 4, 1.0);
        let empty = Tensor::zeros((1, 0, 12), DType::F32, &Device::Cpu).unwrap();
        let a = attention(qkv.as_tensor(), None, 2).unwrap();
        let b = attention(qkv.as_tensor(), Some(&empty), 2).unwrap();
        assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }

    #[test]
    fn changing_one_rows_tokens_never_changes_another_rows_output() {
        // Rows attend to the shared context and their own tokens only:
        // changing row 1's tokens leaves row 0's output as it was.
        let qkv = values(&[2, 4, 12], 5, 1.0).as_tensor().clone();
        let ctx = values(&[1, 3, 12], 6, 1.0).as_tensor().clone();
        let before: Vec<f32> = attention(&qkv, Some(&ctx), 2).unwrap().get(0).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let changed = Tensor::cat(&[&qkv.narrow(0, 0, 1).unwrap(), &(qkv.narrow(0, 1, 1).unwrap() * 3.0).unwrap()], 0).unwrap();
        let after: Vec<f32> = attention(&changed, Some(&ctx), 2).unwrap().get(0).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(before, after);
    }

    #[test]
    fn shapes_that_do_not_fit_are_refused_with_the_reason() {
        let qkv = Tensor::zeros((2, 3, 12), DType::F32, &Device::Cpu).unwrap();
        let err = attention(&qkv, None, 5).unwrap_err().to_string();
        assert!(err.contains("5 heads"), "{err}");
        let ctx = Tensor::zeros((3, 3, 12), DType::F32, &Device::Cpu).unwrap();
        let err = attention(&qkv, Some(&ctx), 2).unwrap_err().to_string();
        assert!(err.contains("does not fit"), "{err}");
    }
}
