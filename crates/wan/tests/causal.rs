//! Block-causal attention and the key/value cache of the Wan transformer
//! (the causal video models built on it generate block after block): a
//! stream of blocks through the cache equals one forward of the whole clip
//! under the block-causal mask, and no frame's output depends on a later
//! frame. On the fixtures' tiny model (tests/fixtures/wan).

use candle_core::{DType, Device, Tensor};
use wc_wan::{CausalSpec, KvCache, WanTransformer, WanTransformerConfig, Weights};

fn model() -> WanTransformer {
    let bytes = std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/wan/transformer_wan.safetensors")).unwrap();
    WanTransformer::new(&WanTransformerConfig::tiny(), &Weights::from_safetensors(&bytes, &Device::Cpu).unwrap(), DType::F32).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// 6 latent frames of 8x8, a 5-token context, per-frame timesteps: blocks
/// of 2 frames at 0 (clean), 0 and 700.
fn inputs() -> (Tensor, Tensor, Tensor) {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (1, 4, 6, 8, 8), &dev).unwrap();
    let t = Tensor::new(&[[0f32, 0., 0., 0., 700., 700.]], &dev).unwrap();
    let ctx = Tensor::randn(0f32, 1.0, (1, 5, 32), &dev).unwrap();
    (x, t, ctx)
}

#[test]
fn the_block_causal_rule_sees_its_block_earlier_blocks_the_window_and_the_sink() {
    let spec = CausalSpec { frames_per_block: 3, local_window_frames: 6, sink_frames: 0 };
    // Frame 4 (block 1, frames 3-5) sees 0..=5; frame 7 (block 2, ends at 9) sees 3..=8.
    assert!((0..6).all(|k| spec.sees(4, k)) && !spec.sees(4, 6));
    assert!(!spec.sees(7, 2) && (3..9).all(|k| spec.sees(7, k)) && !spec.sees(7, 9));
    let sink = CausalSpec { sink_frames: 1, ..spec };
    assert!(sink.sees(7, 0) && !sink.sees(7, 1));
    let unlimited = CausalSpec { local_window_frames: 0, ..spec };
    assert!(unlimited.sees(100, 0));
}

#[test]
fn per_frame_timesteps_that_agree_equal_one_timestep_per_clip() {
    let m = model();
    let (x, _, ctx) = inputs();
    let one = m.forward(&x, &Tensor::new(&[300f32], &Device::Cpu).unwrap(), &ctx).unwrap();
    let per_frame = m.forward_block_causal(&x, &Tensor::full(300f32, (1, 6), &Device::Cpu).unwrap(), &ctx, &CausalSpec { frames_per_block: 6, local_window_frames: 0, sink_frames: 0 }).unwrap();
    assert!(max_abs_diff(&one, &per_frame) < 1e-5, "{}", max_abs_diff(&one, &per_frame));
}

#[test]
fn a_stream_of_blocks_through_the_cache_equals_the_block_causal_clip() {
    let m = model();
    let (x, t, ctx) = inputs();
    // Blocks of 2 frames, a window of 4: the third block no longer sees the first.
    let spec = CausalSpec { frames_per_block: 2, local_window_frames: 4, sink_frames: 0 };
    let whole = m.forward_block_causal(&x, &t, &ctx, &spec).unwrap();
    let mut cache = KvCache::new();
    let mut blocks = Vec::new();
    for i in 0..3 {
        let (xb, tb) = (x.narrow(2, 2 * i, 2).unwrap(), t.narrow(1, 2 * i, 2).unwrap());
        // A denoising step without commit leaves the cache as it was...
        let before = (cache.next_frame(), cache.frames_held());
        let probe = m.forward_cached(&xb, &tb, &ctx, &spec, &mut cache, false).unwrap();
        assert_eq!((cache.next_frame(), cache.frames_held()), before);
        // ...and gives what the committing call gives.
        let y = m.forward_cached(&xb, &tb, &ctx, &spec, &mut cache, true).unwrap();
        assert_eq!(max_abs_diff(&probe, &y), 0.0);
        blocks.push(y);
    }
    let streamed = Tensor::cat(&blocks, 2).unwrap();
    let diff = max_abs_diff(&streamed, &whole);
    eprintln!("streamed blocks against the block-causal clip: max |diff| {diff:.2e}");
    assert!(diff < 1e-4, "max |diff| {diff}");
    // After block 3 (frames 4-5) the next block (6-7) sees frames 4.. only.
    assert_eq!((cache.next_frame(), cache.frames_held()), (6, 2));
    // Without the window the third block would see the first: other outputs.
    let unlimited = m.forward_block_causal(&x, &t, &ctx, &CausalSpec { local_window_frames: 0, ..spec }).unwrap();
    assert!(max_abs_diff(&unlimited.narrow(2, 4, 2).unwrap(), &whole.narrow(2, 4, 2).unwrap()) > 1e-3);
    assert_eq!(max_abs_diff(&unlimited.narrow(2, 0, 4).unwrap(), &whole.narrow(2, 0, 4).unwrap()), 0.0);
}

#[test]
fn a_later_frame_never_changes_an_earlier_output() {
    let m = model();
    let (x, t, ctx) = inputs();
    let spec = CausalSpec { frames_per_block: 2, local_window_frames: 0, sink_frames: 0 };
    let a = m.forward_block_causal(&x, &t, &ctx, &spec).unwrap();
    // Change the last block's frames.
    let later = Tensor::cat(&[x.narrow(2, 0, 4).unwrap(), (x.narrow(2, 4, 2).unwrap() * -3.0).unwrap()], 2).unwrap();
    let b = m.forward_block_causal(&later, &t, &ctx, &spec).unwrap();
    assert_eq!(max_abs_diff(&a.narrow(2, 0, 4).unwrap(), &b.narrow(2, 0, 4).unwrap()), 0.0);
    assert!(max_abs_diff(&a.narrow(2, 4, 2).unwrap(), &b.narrow(2, 4, 2).unwrap()) > 1e-3);
    // The bidirectional model is not causal: the same change reaches frame 0.
    let (fa, fb) = (m.forward(&x, &Tensor::new(&[300f32], &Device::Cpu).unwrap(), &ctx).unwrap(), m.forward(&later, &Tensor::new(&[300f32], &Device::Cpu).unwrap(), &ctx).unwrap());
    assert!(max_abs_diff(&fa.narrow(2, 0, 1).unwrap(), &fb.narrow(2, 0, 1).unwrap()) > 1e-4);
}
