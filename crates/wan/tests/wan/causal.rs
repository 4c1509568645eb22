//! Block-causal attention and the key/value cache of the Wan transformer
//! (the causal video models built on it generate block after block): a
//! stream of blocks through the cache equals one forward of the whole clip
//! under the block-causal mask, and no frame's output depends on a later
//! frame. On the fixtures' tiny model (tests/fixtures/wan).

use crate::support::*;

use candle_core::{DType, Device, Tensor};
use wc_wan::{CausalSpec, KvCache, WanTransformer, WanTransformerConfig, Weights};

fn model() -> WanTransformer {
    let bytes = std::fs::read(fixture("transformer_wan.safetensors")).unwrap();
    WanTransformer::new(
        &WanTransformerConfig::tiny(),
        &Weights::from_safetensors(&bytes, &Device::Cpu).unwrap(),
        DType::F32,
    )
    .unwrap()
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
    let spec = CausalSpec {
        frames_per_block: 3,
        local_window_frames: 6,
        sink_frames: 0,
        first_block_frames: 0,
    };
    // Frame 4 (block 1, frames 3-5) sees 0..=5; frame 7 (block 2, ends at 9) sees 3..=8.
    assert!((0..6).all(|k| spec.sees(4, k)) && !spec.sees(4, 6));
    assert!(!spec.sees(7, 2) && (3..9).all(|k| spec.sees(7, k)) && !spec.sees(7, 9));
    let sink = CausalSpec {
        sink_frames: 1,
        first_block_frames: 0,
        ..spec
    };
    assert!(sink.sees(7, 0) && !sink.sees(7, 1));
    let unlimited = CausalSpec {
        local_window_frames: 0,
        ..spec
    };
    assert!(unlimited.sees(100, 0));
}

#[test]
fn per_frame_timesteps_that_agree_equal_one_timestep_per_clip() {
    let m = model();
    let (x, _, ctx) = inputs();
    let one = m
        .forward(&x, &Tensor::new(&[300f32], &Device::Cpu).unwrap(), &ctx)
        .unwrap();
    let per_frame = m
        .forward_block_causal(
            &x,
            &Tensor::full(300f32, (1, 6), &Device::Cpu).unwrap(),
            &ctx,
            None,
            &CausalSpec {
                frames_per_block: 6,
                local_window_frames: 0,
                sink_frames: 0,
                first_block_frames: 0,
            },
        )
        .unwrap();
    assert!(
        max_abs_diff(&one, &per_frame) < 1e-5,
        "{}",
        max_abs_diff(&one, &per_frame)
    );
}

#[test]
fn a_stream_of_blocks_through_the_cache_equals_the_block_causal_clip() {
    let m = model();
    let (x, t, ctx) = inputs();
    // Blocks of 2 frames, a window of 4: the third block no longer sees the first.
    let spec = CausalSpec {
        frames_per_block: 2,
        local_window_frames: 4,
        sink_frames: 0,
        first_block_frames: 0,
    };
    let whole = m.forward_block_causal(&x, &t, &ctx, None, &spec).unwrap();
    let mut cache = KvCache::new();
    let mut blocks = Vec::new();
    for i in 0..3 {
        let (xb, tb) = (
            x.narrow(2, 2 * i, 2).unwrap(),
            t.narrow(1, 2 * i, 2).unwrap(),
        );
        // A denoising step without commit leaves the cache as it was...
        let before = (cache.next_frame(), cache.frames_held());
        let probe = m
            .forward_cached(&xb, &tb, &ctx, None, &spec, &mut cache)
            .unwrap();
        assert_eq!((cache.next_frame(), cache.frames_held()), before);
        // ...and gives what the committing call gives.
        let y = m
            .forward_and_commit(&xb, &tb, &ctx, None, &spec, &mut cache)
            .unwrap();
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
    let unlimited = m
        .forward_block_causal(
            &x,
            &t,
            &ctx,
            None,
            &CausalSpec {
                local_window_frames: 0,
                ..spec
            },
        )
        .unwrap();
    assert!(
        max_abs_diff(
            &unlimited.narrow(2, 4, 2).unwrap(),
            &whole.narrow(2, 4, 2).unwrap()
        ) > 1e-3
    );
    assert_eq!(
        max_abs_diff(
            &unlimited.narrow(2, 0, 4).unwrap(),
            &whole.narrow(2, 0, 4).unwrap()
        ),
        0.0
    );
}

#[test]
fn a_later_frame_never_changes_an_earlier_output() {
    let m = model();
    let (x, t, ctx) = inputs();
    let spec = CausalSpec {
        frames_per_block: 2,
        local_window_frames: 0,
        sink_frames: 0,
        first_block_frames: 0,
    };
    let a = m.forward_block_causal(&x, &t, &ctx, None, &spec).unwrap();
    // Change the last block's frames.
    let later = Tensor::cat(
        &[
            x.narrow(2, 0, 4).unwrap(),
            (x.narrow(2, 4, 2).unwrap() * -3.0).unwrap(),
        ],
        2,
    )
    .unwrap();
    let b = m
        .forward_block_causal(&later, &t, &ctx, None, &spec)
        .unwrap();
    assert_eq!(
        max_abs_diff(&a.narrow(2, 0, 4).unwrap(), &b.narrow(2, 0, 4).unwrap()),
        0.0
    );
    assert!(max_abs_diff(&a.narrow(2, 4, 2).unwrap(), &b.narrow(2, 4, 2).unwrap()) > 1e-3);
    // The bidirectional model is not causal: the same change reaches frame 0.
    let (fa, fb) = (
        m.forward(&x, &Tensor::new(&[300f32], &Device::Cpu).unwrap(), &ctx)
            .unwrap(),
        m.forward(&later, &Tensor::new(&[300f32], &Device::Cpu).unwrap(), &ctx)
            .unwrap(),
    );
    assert!(max_abs_diff(&fa.narrow(2, 0, 1).unwrap(), &fb.narrow(2, 0, 1).unwrap()) > 1e-4);
}

/// Matrix-Game 2.0's architecture at a tiny size, random weights: 12 input
/// channels (noisy latent, mask, image latent), CLIP-like image tokens as
/// the context, the action module in block 0.
fn matrix_game() -> (WanTransformer, WanTransformerConfig) {
    let cfg = WanTransformerConfig::tiny_matrix_game();
    let w = Weights::random(&Device::Cpu);
    let m = WanTransformer::new(&cfg, &w, DType::F32).unwrap();
    assert_eq!(
        w.elements_taken(),
        cfg.parameter_count(),
        "the analytic count is the built model's"
    );
    (m, cfg)
}

fn actions(n_pix: usize, seed: f32) -> (Tensor, Tensor) {
    let dev = Device::Cpu;
    let k: Vec<f32> = (0..n_pix * 4)
        .map(|i| (((i as f32 + seed) * 0.37).sin() > 0.3) as u8 as f32)
        .collect();
    let m: Vec<f32> = (0..n_pix * 2)
        .map(|i| (((i as f32 + seed) * 0.71).cos() * 1.5).round() * 0.1)
        .collect();
    (
        Tensor::from_vec(k, (1, n_pix, 4), &dev).unwrap(),
        Tensor::from_vec(m, (1, n_pix, 2), &dev).unwrap(),
    )
}

#[test]
fn matrix_game_blocks_streamed_with_their_actions_equal_the_whole_clip() {
    let (m, cfg) = matrix_game();
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (1, cfg.in_channels, 6, 4, 4), &dev).unwrap();
    let t = Tensor::new(&[[0f32, 0., 0., 500., 500., 500.]], &dev).unwrap();
    let ctx = Tensor::randn(0f32, 1.0, (1, 9, cfg.text_dim), &dev).unwrap();
    let (kb, mo) = actions(1 + 4 * 5, 0.0);
    let spec = CausalSpec {
        frames_per_block: 3,
        local_window_frames: 6,
        sink_frames: 0,
        first_block_frames: 0,
    };
    let all = wc_wan::Actions {
        keyboard: &kb,
        mouse: &mo,
    };
    let whole = m
        .forward_block_causal(&x, &t, &ctx, Some(all), &spec)
        .unwrap();
    let mut cache = KvCache::new();
    let mut parts = Vec::new();
    for i in 0..2 {
        let n = 1 + 4 * (3 * i + 2);
        let (kbi, moi) = (kb.narrow(1, 0, n).unwrap(), mo.narrow(1, 0, n).unwrap());
        let acts = wc_wan::Actions {
            keyboard: &kbi,
            mouse: &moi,
        };
        parts.push(
            m.forward_and_commit(
                &x.narrow(2, 3 * i, 3).unwrap(),
                &t.narrow(1, 3 * i, 3).unwrap(),
                &ctx,
                Some(acts),
                &spec,
                &mut cache,
            )
            .unwrap(),
        );
    }
    let diff = max_abs_diff(&Tensor::cat(&parts, 2).unwrap(), &whole);
    eprintln!("Matrix-Game blocks streamed against the whole clip: max |diff| {diff:.2e}");
    assert!(diff < 1e-4, "{diff}");
    // The actions matter, and only from the block that reads them on.
    let (kb2, mo2) = actions(1 + 4 * 5, 7.0);
    let late = |a: &Tensor, b: &Tensor| {
        Tensor::cat(
            &[a.narrow(1, 0, 12).unwrap(), b.narrow(1, 12, 9).unwrap()],
            1,
        )
        .unwrap()
    };
    let (kb3, mo3) = (late(&kb, &kb2), late(&mo, &mo2));
    let other = m
        .forward_block_causal(
            &x,
            &t,
            &ctx,
            Some(wc_wan::Actions {
                keyboard: &kb3,
                mouse: &mo3,
            }),
            &spec,
        )
        .unwrap();
    assert_eq!(
        max_abs_diff(
            &whole.narrow(2, 0, 3).unwrap(),
            &other.narrow(2, 0, 3).unwrap()
        ),
        0.0
    );
    // (Random weights of scale 0.02 make the actions' effect small, not nil.)
    let effect = max_abs_diff(
        &whole.narrow(2, 3, 3).unwrap(),
        &other.narrow(2, 3, 3).unwrap(),
    );
    eprintln!("the second block's change with its actions: {effect:.2e}");
    assert!(effect > 0.0);
    // A model with action modules refuses to run without actions.
    assert!(
        m.forward_block_causal(&x, &t, &ctx, None, &spec)
            .unwrap_err()
            .to_string()
            .contains("keyboard and mouse")
    );
}

#[test]
fn a_generated_block_leaves_its_clean_self_in_the_cache() {
    use wc_wan::causal_sampler::{few_step_schedule, generate_block};
    let (m, cfg) = matrix_game();
    let dev = Device::Cpu;
    let spec = CausalSpec {
        frames_per_block: 3,
        local_window_frames: 6,
        sink_frames: 0,
        first_block_frames: 0,
    };
    let schedule = few_step_schedule(&[1000, 666, 333], 5.0).unwrap();
    let latent =
        |seed: f64| Tensor::randn(seed as f32, 1.0, (1, cfg.out_channels, 3, 4, 4), &dev).unwrap();
    let cond = Tensor::randn(
        0f32,
        1.0,
        (1, cfg.in_channels - cfg.out_channels, 3, 4, 4),
        &dev,
    )
    .unwrap();
    let ctx = Tensor::randn(0f32, 1.0, (1, 9, cfg.text_dim), &dev).unwrap();
    let (kb, mo) = actions(1 + 4 * 5, 0.0);
    let (kb1, mo1) = (kb.narrow(1, 0, 9).unwrap(), mo.narrow(1, 0, 9).unwrap());
    let mut cache = KvCache::new();
    let noises = [latent(0.0), latent(0.1), latent(0.2)];
    let x0 = generate_block(
        &m,
        &schedule,
        &noises,
        Some(&cond),
        &ctx,
        Some(wc_wan::Actions {
            keyboard: &kb1,
            mouse: &mo1,
        }),
        &spec,
        &mut cache,
    )
    .unwrap();
    assert_eq!(x0.dims(), [1, cfg.out_channels, 3, 4, 4]);
    assert_eq!(cache.next_frame(), 3);
    // The next block's first step through the cache equals the whole clip
    // [clean block at t = 0, next block's noise at t = 1000] under the mask.
    let z = latent(0.3);
    let t2 = Tensor::full(1000f32, (1, 3), &dev).unwrap();
    let acts = wc_wan::Actions {
        keyboard: &kb,
        mouse: &mo,
    };
    let step = m
        .forward_cached(
            &Tensor::cat(&[&z, &cond], 1).unwrap(),
            &t2,
            &ctx,
            Some(acts),
            &spec,
            &mut cache,
        )
        .unwrap();
    let clip = Tensor::cat(
        &[
            Tensor::cat(&[&x0, &cond], 1).unwrap(),
            Tensor::cat(&[&z, &cond], 1).unwrap(),
        ],
        2,
    )
    .unwrap();
    let t = Tensor::new(&[[0f32, 0., 0., 1000., 1000., 1000.]], &dev).unwrap();
    let whole = m
        .forward_block_causal(&clip, &t, &ctx, Some(acts), &spec)
        .unwrap();
    let diff = max_abs_diff(&step, &whole.narrow(2, 3, 3).unwrap());
    assert!(diff < 1e-4, "{diff}");
    // Different noise makes a different block.
    let mut other = KvCache::new();
    let y0 = generate_block(
        &m,
        &schedule,
        &[latent(1.0), latent(1.1), latent(1.2)],
        Some(&cond),
        &ctx,
        Some(wc_wan::Actions {
            keyboard: &kb1,
            mouse: &mo1,
        }),
        &spec,
        &mut other,
    )
    .unwrap();
    assert!(max_abs_diff(&x0, &y0) > 1e-3);
}

#[test]
fn a_context_cached_once_serves_a_batch_of_candidates() {
    let (m, cfg) = matrix_game();
    let dev = Device::Cpu;
    let spec = CausalSpec {
        frames_per_block: 3,
        local_window_frames: 6,
        sink_frames: 0,
        first_block_frames: 0,
    };
    let ctx = Tensor::randn(0f32, 1.0, (1, 9, cfg.text_dim), &dev).unwrap();
    let context_block = Tensor::randn(0f32, 1.0, (1, cfg.in_channels, 3, 4, 4), &dev).unwrap();
    let (kb, mo) = actions(1 + 4 * 5, 0.0);
    let (kb1, mo1) = (kb.narrow(1, 0, 9).unwrap(), mo.narrow(1, 0, 9).unwrap());
    let committed = |cache: &mut KvCache| {
        m.forward_and_commit(
            &context_block,
            &Tensor::zeros((1, 3), DType::F32, &dev).unwrap(),
            &ctx,
            Some(wc_wan::Actions {
                keyboard: &kb1,
                mouse: &mo1,
            }),
            &spec,
            cache,
        )
        .unwrap();
    };
    // Three candidates of the next block, each with its own actions, in one batch.
    let g = 3;
    let z = Tensor::randn(0f32, 1.0, (g, cfg.in_channels, 3, 4, 4), &dev).unwrap();
    let t = Tensor::full(700f32, (g, 3), &dev).unwrap();
    let per: Vec<(Tensor, Tensor)> = (0..g).map(|i| actions(1 + 4 * 5, i as f32 * 3.0)).collect();
    let kbs = Tensor::cat(&per.iter().map(|p| p.0.clone()).collect::<Vec<_>>(), 0).unwrap();
    let mos = Tensor::cat(&per.iter().map(|p| p.1.clone()).collect::<Vec<_>>(), 0).unwrap();
    let ctxs = Tensor::cat(&vec![&ctx; g], 0).unwrap();
    let mut shared = KvCache::new();
    committed(&mut shared);
    let batch = m
        .forward_cached(
            &z,
            &t,
            &ctxs,
            Some(wc_wan::Actions {
                keyboard: &kbs,
                mouse: &mos,
            }),
            &spec,
            &mut shared,
        )
        .unwrap();
    for (i, (kbi, moi)) in per.iter().enumerate() {
        let mut own = KvCache::new();
        committed(&mut own);
        let one = m
            .forward_cached(
                &z.narrow(0, i, 1).unwrap(),
                &t.narrow(0, i, 1).unwrap(),
                &ctx,
                Some(wc_wan::Actions {
                    keyboard: kbi,
                    mouse: moi,
                }),
                &spec,
                &mut own,
            )
            .unwrap();
        let diff = max_abs_diff(&batch.narrow(0, i, 1).unwrap(), &one);
        assert!(diff < 1e-5, "candidate {i}: {diff}");
    }
}

/// A world prompt's first frame as a block of its own, kept as a sink,
/// before blocks of 2 frames (the embedded Matrix-Game configuration's
/// shape): the rule, and a stream through the cache against the mask.
#[test]
fn a_short_first_block_kept_as_a_sink_streams_like_the_masked_clip() {
    let spec = CausalSpec {
        frames_per_block: 2,
        local_window_frames: 2,
        sink_frames: 1,
        first_block_frames: 1,
    };
    // Blocks: [0], [1, 2], [3, 4]. Frame 3 sees its block and the sink only.
    assert_eq!(
        (spec.block_end(0), spec.block_end(1), spec.block_end(4)),
        (1, 3, 5)
    );
    assert_eq!(
        (
            spec.block_at(0),
            spec.block_at(1),
            spec.block_at(2),
            spec.block_at(3)
        ),
        (Some(1), Some(2), None, Some(2))
    );
    assert!(spec.sees(3, 0) && !spec.sees(3, 1) && !spec.sees(3, 2) && spec.sees(3, 4));
    assert!(spec.sees(1, 0) && spec.sees(1, 2) && !spec.sees(0, 1));
    let m = model();
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (1, 4, 5, 8, 8), &dev).unwrap();
    let t = Tensor::new(&[[0f32, 0., 0., 600., 600.]], &dev).unwrap();
    let ctx = Tensor::randn(0f32, 1.0, (1, 5, 32), &dev).unwrap();
    let whole = m.forward_block_causal(&x, &t, &ctx, None, &spec).unwrap();
    let mut cache = KvCache::new();
    let mut blocks = Vec::new();
    for (start, len) in [(0, 1), (1, 2), (3, 2)] {
        let (xb, tb) = (
            x.narrow(2, start, len).unwrap(),
            t.narrow(1, start, len).unwrap(),
        );
        // A block of the wrong length is refused, naming the frame.
        let wrong = x.narrow(2, 0, 3 - len).unwrap();
        let err = m
            .forward_cached(
                &wrong,
                &t.narrow(1, 0, 3 - len).unwrap(),
                &ctx,
                None,
                &spec,
                &mut cache,
            )
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("at frame {start}")), "{err}");
        blocks.push(
            m.forward_and_commit(&xb, &tb, &ctx, None, &spec, &mut cache)
                .unwrap(),
        );
    }
    let diff = max_abs_diff(&Tensor::cat(&blocks, 2).unwrap(), &whole);
    assert!(diff < 1e-4, "max |diff| {diff}");
    // The next block (frames 5-6) sees itself and the sink: only frame 0 stays.
    assert_eq!((cache.next_frame(), cache.frames_held()), (5, 1));
}

/// The keys of Matrix-Game 2.0's released checkpoint (docs/design/matrix-game-2.md,
/// section 6: every key under `model.`), as the network asks for them: the
/// non-block tensors, one block with the action module, and a checkpoint
/// written under those names loads, runs like the network it came from and
/// names a missing action tensor as the file would spell it.
#[test]
fn a_checkpoint_in_the_released_layout_loads_with_its_model_prefix() {
    let cfg = WanTransformerConfig::tiny_matrix_game();
    let w = Weights::random(&Device::Cpu);
    WanTransformer::new(&cfg, &w, DType::F32).unwrap();
    let shapes = w.shapes_taken();
    let names: std::collections::BTreeSet<&str> = shapes.iter().map(|(k, _)| k.as_str()).collect();
    let mut released: Vec<String> = [
        "patch_embedding.weight", "patch_embedding.bias", "time_embedding.0.weight", "time_embedding.0.bias", "time_embedding.2.weight",
        "time_embedding.2.bias", "time_projection.1.weight", "time_projection.1.bias", "img_emb.proj.0.weight", "img_emb.proj.0.bias",
        "img_emb.proj.1.weight", "img_emb.proj.1.bias", "img_emb.proj.3.weight", "img_emb.proj.3.bias", "img_emb.proj.4.weight",
        "img_emb.proj.4.bias", "head.head.weight", "head.head.bias", "head.modulation",
    ]
    .map(String::from)
    .to_vec();
    let block = [
        "modulation", "self_attn.q.weight", "self_attn.q.bias", "self_attn.k.weight", "self_attn.k.bias", "self_attn.v.weight",
        "self_attn.v.bias", "self_attn.o.weight", "self_attn.o.bias", "self_attn.norm_q.weight", "self_attn.norm_k.weight", "norm3.weight",
        "norm3.bias", "cross_attn.q.weight", "cross_attn.q.bias", "cross_attn.k.weight", "cross_attn.k.bias", "cross_attn.v.weight",
        "cross_attn.v.bias", "cross_attn.o.weight", "cross_attn.o.bias", "cross_attn.norm_q.weight", "cross_attn.norm_k.weight",
        "ffn.0.weight", "ffn.0.bias", "ffn.2.weight", "ffn.2.bias",
        "action_model.mouse_mlp.0.weight", "action_model.mouse_mlp.0.bias", "action_model.mouse_mlp.2.weight",
        "action_model.mouse_mlp.2.bias", "action_model.mouse_mlp.3.weight", "action_model.mouse_mlp.3.bias",
        "action_model.t_qkv.weight", "action_model.img_attn_q_norm.weight", "action_model.img_attn_k_norm.weight",
        "action_model.proj_mouse.weight", "action_model.keyboard_embed.0.weight", "action_model.keyboard_embed.0.bias",
        "action_model.keyboard_embed.2.weight", "action_model.keyboard_embed.2.bias", "action_model.mouse_attn_q.weight",
        "action_model.keyboard_attn_kv.weight", "action_model.key_attn_q_norm.weight", "action_model.key_attn_k_norm.weight",
        "action_model.proj_keyboard.weight",
    ];
    released.extend(block.iter().map(|k| format!("blocks.0.{k}")));
    for k in &released {
        assert!(names.contains(k.as_str()), "the network does not read the released key {k}");
    }
    let ours_block0: Vec<&&str> = names.iter().filter(|k| k.starts_with("blocks.0.")).collect();
    assert_eq!(ours_block0.len(), block.len(), "block 0 reads exactly the released keys: {ours_block0:?}");

    // A checkpoint under `model.` + those names.
    let tensors: std::collections::HashMap<String, Tensor> = shapes
        .iter()
        .enumerate()
        .map(|(i, (k, s))| (k.clone(), (Tensor::randn(0f32, 0.1, s.as_slice(), &Device::Cpu).unwrap() + (i as f64 * 1e-3)).unwrap()))
        .collect();
    let released_file: std::collections::HashMap<String, Tensor> = tensors.iter().map(|(k, t)| (format!("model.{k}"), t.clone())).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("base_distill.safetensors");
    candle_core::safetensors::save(&released_file, &path).unwrap();
    let from_file = Weights::from_safetensors(&std::fs::read(&path).unwrap(), &Device::Cpu).unwrap();
    let a = WanTransformer::new(&cfg, &from_file, DType::F32).unwrap();
    from_file.finish().unwrap();
    let b = WanTransformer::new(&cfg, &Weights::from_tensors(tensors.clone()), DType::F32).unwrap();
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (1, cfg.in_channels, 3, 4, 4), &dev).unwrap();
    let t = Tensor::new(&[[500f32, 500., 500.]], &dev).unwrap();
    let ctx = Tensor::randn(0f32, 1.0, (1, 9, cfg.text_dim), &dev).unwrap();
    let (kb, mo) = actions(1 + 4 * 2, 1.0);
    let spec = CausalSpec::blocks_of(3);
    let run = |m: &WanTransformer| m.forward_block_causal(&x, &t, &ctx, Some(wc_wan::Actions { keyboard: &kb, mouse: &mo }), &spec).unwrap();
    assert_eq!(max_abs_diff(&run(&a), &run(&b)), 0.0);

    let mut missing = released_file.clone();
    missing.remove("model.blocks.0.action_model.keyboard_attn_kv.weight");
    let err = WanTransformer::new(&cfg, &Weights::from_tensors(missing), DType::F32).err().unwrap().to_string();
    assert!(err.contains("no tensor `model.blocks.0.action_model.keyboard_attn_kv.weight`"), "{err}");
}
