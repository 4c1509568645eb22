//! Keys and values kept per latent frame, for block-by-block generation:
//! the one cache mechanism of the transformer's self-attention and the
//! action module's mouse and keyboard attentions.

use candle_core::Tensor;

use crate::Result;
use crate::nn::tile_batch;
use crate::transformer::CausalSpec;

/// Latent frames `start..start + count`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FrameRange {
    pub start: usize,
    pub count: usize,
}

/// One latent frame's keys and values [B, H, L_f, Dh].
#[derive(Clone)]
struct CachedFrame {
    frame: usize,
    k: Tensor,
    v: Tensor,
}

/// The keys and values of the frames one attention has committed.
#[derive(Default, Clone)]
pub(crate) struct FrameKv {
    frames: Vec<CachedFrame>,
}

impl FrameKv {
    /// The keys and values [B, H, *, Dh] a chunk's queries see: the held
    /// frames in `visible` (a cache of one sequence tiled to the chunk's
    /// batch), then the chunk's own `k`, `v`. With `commit`, the chunk's
    /// keys and values, split into its frames, are kept.
    pub fn keys_with(
        &mut self,
        visible: &[usize],
        k: Tensor,
        v: Tensor,
        commit: Option<FrameRange>,
    ) -> Result<(Tensor, Tensor)> {
        let rows = k.dim(0)?;
        let mut ks = Vec::new();
        let mut vs = Vec::new();
        for f in self.frames.iter().filter(|f| visible.contains(&f.frame)) {
            ks.push(tile_batch(&f.k, rows)?);
            vs.push(tile_batch(&f.v, rows)?);
        }
        if let Some(range) = commit {
            let per = k.dim(2)? / range.count;
            for i in 0..range.count {
                self.frames.push(CachedFrame {
                    frame: range.start + i,
                    k: k.narrow(2, i * per, per)?.contiguous()?,
                    v: v.narrow(2, i * per, per)?.contiguous()?,
                });
            }
        }
        if ks.is_empty() {
            return Ok((k, v));
        }
        ks.push(k);
        vs.push(v);
        Ok((Tensor::cat(&ks, 2)?, Tensor::cat(&vs, 2)?))
    }

    /// Drop the frames a block starting at frame `next` does not see (no
    /// later block sees them either).
    pub fn evict_unseen(&mut self, spec: &CausalSpec, next: usize) {
        self.frames.retain(|f| spec.sees(next, f.frame));
    }

    /// The same frames with `f` applied to every key and value.
    pub fn map(&self, f: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<FrameKv> {
        let frames = self
            .frames
            .iter()
            .map(|c| -> Result<CachedFrame> {
                Ok(CachedFrame {
                    frame: c.frame,
                    k: f(&c.k)?,
                    v: f(&c.v)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(FrameKv { frames })
    }

    /// The batch of the held keys (None: nothing held).
    pub fn batch(&self) -> Option<usize> {
        self.frames.first().map(|c| c.k.dims()[0])
    }

    /// Frames held.
    pub fn len(&self) -> usize {
        self.frames.len()
    }
}
