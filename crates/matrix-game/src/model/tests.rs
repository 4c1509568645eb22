//! The adapter against the network run a second way: one block-causal
//! forward of the whole sequence (context and target) under the mask.

use candle_core::{DType, Device, Tensor};
use wc_model::config::Prediction;
use wc_model::flow::flow_matching_loss;
use wc_model::params::Params;
use wc_model::velocity::{ContextInput, EncodedContext, VelocityModel};
use wc_world::ActionMask;

use super::*;

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

fn model_of(mut cfg: MatrixGameConfig, prediction: Prediction) -> (MatrixGameModel, Params) {
    cfg.prediction = prediction;
    let mut p = Params::new(7, &Device::Cpu);
    let m = MatrixGameModel::new(&cfg, &mut p).unwrap();
    (m, p)
}

fn model(prediction: Prediction) -> (MatrixGameModel, Params) {
    model_of(MatrixGameConfig::tiny(), prediction)
}

/// Per-frame masks of `b` targets, a different action in each row.
fn target_masks(cfg: &MatrixGameConfig, b: usize, seed: usize) -> Vec<Vec<u8>> {
    (0..b).map(|i| (0..cfg.pixel_frames_per_clip()).map(|j| 1u8 << ((i * 3 + j / 2 + seed) % 8)).collect()).collect()
}

/// A context of batch `b`: random latents with actions in every row (row
/// 0's ignored), a random condition and 5 random image tokens.
fn context(cfg: &MatrixGameConfig, b: usize, seed: u64) -> MatrixGameInput {
    let dev = Device::Cpu;
    let (rows, r) = (cfg.context_frames(), cfg.steps_per_row());
    let lat = Tensor::randn(0f32, 0.5, (b, rows, cfg.frame_len()), &dev).unwrap();
    let masks: Vec<Vec<u8>> = (0..b).map(|i| (0..rows * r).map(|j| if j < r { 0 } else { 1u8 << ((i + j + seed as usize) % 8) }).collect()).collect();
    let acts = action_input(&masks, &vec![false; b], &dev).unwrap().reshape((b, rows, r * ACTION_WIDTH)).unwrap();
    MatrixGameInput {
        rows: Tensor::cat(&[&lat, &acts], 2).unwrap(),
        condition: Tensor::randn(0f32, 0.5, (b, cfg.condition_frames(), cfg.condition_len()), &dev).unwrap(),
        image_tokens: Tensor::randn(0f32, 1.0, (b, 5, cfg.image_token_dim()), &dev).unwrap(),
    }
}

/// For the pixel codec (one action step a latent frame) and the Wan VAE's
/// layout (two), at both predictions.
#[test]
fn the_cached_velocity_equals_one_block_causal_forward_of_the_whole_sequence() {
    for (cfg, prediction) in [(MatrixGameConfig::tiny(), Prediction::Velocity), (MatrixGameConfig::tiny_wan(), Prediction::Velocity), (MatrixGameConfig::tiny_wan(), Prediction::Clean)] {
        let (m, _) = model_of(cfg, prediction);
        let cfg = &m.cfg;
        let dev = Device::Cpu;
        let (b, f, d, r) = (2, cfg.frames_per_clip, cfg.frame_len(), cfg.steps_per_row());
        let ctx = context(cfg, b, 0);
        let z = Tensor::randn(0f32, 1.0, (b, f, d), &dev).unwrap();
        let t = Tensor::new(&[0.7f32, 0.3], &dev).unwrap();
        let acts = action_input(&target_masks(cfg, b, 1), &[false, false], &dev).unwrap();
        let v = m.velocity(&m.encode_context(&ctx).unwrap(), &z, &t, &acts).unwrap();

        // The same through forward_block_causal: frames [first, clip before, target].
        let lat = ctx.rows.narrow(2, 0, d).unwrap();
        let cond = |from: usize, n: usize| ctx.condition.narrow(1, from, n).unwrap();
        let x = Tensor::cat(
            &[
                m.network_input(&lat.narrow(1, 0, 1).unwrap(), &cond(0, 1)).unwrap(),
                m.network_input(&lat.narrow(1, 1, f).unwrap(), &cond(1, f)).unwrap(),
                m.network_input(&z, &cond(1 + f, f)).unwrap(),
            ],
            2,
        )
        .unwrap();
        let tt: Vec<f32> = [0.7f32, 0.3].iter().flat_map(|t| std::iter::repeat_n(0.0, 1 + f).chain(std::iter::repeat_n(t * 1000.0, f))).collect();
        let tt = Tensor::from_vec(tt, (b, 1 + 2 * f), &dev).unwrap();
        // Steps: those into the frames of context rows 1..=F, the target's, then none.
        let into = ctx.rows.narrow(2, d, r * ACTION_WIDTH).unwrap().narrow(1, 1, f).unwrap().contiguous().unwrap().reshape((b, r * f, ACTION_WIDTH)).unwrap();
        let steps = Tensor::cat(&[&into, &acts, &Tensor::zeros((b, 1, ACTION_WIDTH), DType::F32, &dev).unwrap()], 1).unwrap();
        let (kb, ms) = m.split_steps(&steps).unwrap();
        let whole = m.net.forward_block_causal(&x, &tt, &ctx.image_tokens, Some(Actions { keyboard: &kb, mouse: &ms }), &cfg.spec()).unwrap();
        let whole = whole.narrow(2, 1 + f, f).unwrap().permute((0, 2, 1, 3, 4)).unwrap().reshape((b, f, d)).unwrap();
        let whole = match prediction {
            Prediction::Velocity => whole,
            Prediction::Clean => ((&z - whole).unwrap().broadcast_div(&t.reshape((b, 1, 1)).unwrap())).unwrap(),
        };
        let diff = max_diff(&v, &whole);
        assert!(diff < 1e-4, "{:?} codec: cached velocity against the masked sequence: max |diff| {diff}", cfg.codec);
    }
}

/// The target's condition reaches its velocity, and is all the encoded
/// context keeps of it: the cache of the context's frames never reads it.
#[test]
fn the_target_reads_its_own_condition_and_the_cache_does_not() {
    let (m, _) = model_of(MatrixGameConfig::tiny_wan(), Prediction::Velocity);
    let cfg = &m.cfg;
    let dev = Device::Cpu;
    let (f, d) = (cfg.frames_per_clip, cfg.frame_len());
    let ctx = context(cfg, 1, 4);
    let z = Tensor::randn(0f32, 1.0, (1, f, d), &dev).unwrap();
    let t = Tensor::new(&[0.6f32], &dev).unwrap();
    let acts = action_input(&target_masks(cfg, 1, 0), &[false], &dev).unwrap();
    let a = m.encode_context(&ctx).unwrap();
    let v = m.velocity(&a, &z, &t, &acts).unwrap();
    // Another condition on the target's frames only: another velocity.
    let mut other = ctx.clone();
    other.condition = Tensor::cat(&[&ctx.condition.narrow(1, 0, 1 + f).unwrap(), &(ctx.condition.narrow(1, 1 + f, f).unwrap() + 1.0).unwrap()], 1).unwrap();
    let b = m.encode_context(&other).unwrap();
    let vb = m.velocity(&b, &z, &t, &acts).unwrap();
    assert!(max_diff(&v, &vb) > 1e-6);
    // The first context's cache with the second's target condition gives
    // the second's velocity to the bit.
    let mixed = MatrixGameContext { target_condition: b.target_condition.clone(), ..a.clone() };
    assert_eq!(max_diff(&m.velocity(&mixed, &z, &t, &acts).unwrap(), &vb), 0.0);
}

#[test]
fn one_encoded_context_serves_candidates_with_their_own_actions() {
    let (m, _) = model(Prediction::Clean);
    let cfg = &m.cfg;
    let dev = Device::Cpu;
    let (f, d) = (cfg.frames_per_clip, cfg.frame_len());
    let ctx = context(cfg, 1, 3);
    let z = Tensor::randn(0f32, 1.0, (3, f, d), &dev).unwrap();
    let t = Tensor::new(&[0.9f32, 0.5, 0.2], &dev).unwrap();
    let masks = vec![vec![1u8; 4], vec![8u8; 4], vec![64u8, 64, 0, 0]];
    let acts = action_input(&masks, &[false; 3], &dev).unwrap();
    let shared = m.velocity(&m.encode_context(&ctx).unwrap(), &z, &t, &acts).unwrap();
    let own = m.velocity(&m.encode_context(&ContextInput::concat(&[&ctx, &ctx, &ctx]).unwrap()).unwrap(), &z, &t, &acts).unwrap();
    assert!(max_diff(&shared, &own) < 1e-5, "{}", max_diff(&shared, &own));
    // The actions matter: the same noise under other actions moves elsewhere.
    let other = m.velocity(&m.encode_context(&ctx).unwrap(), &z, &t, &action_input(&[vec![2u8; 4], vec![4u8; 4], vec![0u8; 4]], &[false; 3], &dev).unwrap()).unwrap();
    // (small at initialisation, weights of 0.02; the same inputs give the same bits)
    assert!(max_diff(&shared, &other) > 1e-6, "{}", max_diff(&shared, &other));
    // A doubled batch-1 context stays batch 1; a detached one computes the same.
    let c = m.encode_context(&ctx).unwrap();
    assert_eq!(c.doubled().unwrap().batch(), 1);
    assert_eq!(max_diff(&m.velocity(&c.detach(), &z, &t, &acts).unwrap(), &shared), 0.0);
}

/// The sampler's velocity in parts of 4 rows (here 4 + 1) against one
/// batch, with a context per row and with one shared by all: each part
/// reads its own rows (a part's products may sum in other blocks, so within
/// 1e-5, not to the bit), and the thread count never changes the bits.
#[test]
fn the_samplers_velocity_in_parts_equals_one_batch() {
    let (m, _) = model(Prediction::Clean);
    let cfg = &m.cfg;
    let dev = Device::Cpu;
    let (b, f, d) = (5, cfg.frames_per_clip, cfg.frame_len());
    let z = Tensor::randn(0f32, 1.0, (b, f, d), &dev).unwrap();
    let t = Tensor::new(&[0.9f32, 0.7, 0.5, 0.3, 0.1], &dev).unwrap();
    let acts = action_input(&(0..b).map(|i| vec![1u8 << i; f]).collect::<Vec<_>>(), &[false; 5], &dev).unwrap();
    let pools: Vec<_> = [1, 3].iter().map(|n| rayon::ThreadPoolBuilder::new().num_threads(*n).build().unwrap()).collect();
    for rows in [1, b] {
        let c = m.encode_context(&context(cfg, rows, 2)).unwrap().detach();
        let whole = m.velocity(&c, &z, &t, &acts).unwrap();
        let parts: Vec<Tensor> = pools.iter().map(|pool| pool.install(|| wc_model::flow::sampler_velocity(&m, &c, &z, &t, &acts)).unwrap()).collect();
        assert_eq!(max_diff(&parts[0], &parts[1]), 0.0, "context batch {rows}: the thread count changed the bits");
        let diff = max_diff(&whole, &parts[0]);
        assert!(diff < 1e-5, "context batch {rows}: the parts differ from one batch by {diff}");
        // A part's context holds its own rows.
        assert_eq!(c.rows(1, 2).unwrap().batch(), if rows == 1 { 1 } else { 2 });
    }
}

#[test]
fn the_flow_matching_loss_reaches_every_parameter() {
    let (m, p) = model(Prediction::Clean);
    let cfg = &m.cfg;
    let dev = Device::Cpu;
    let (f, d) = (cfg.frames_per_clip, cfg.frame_len());
    let ctx = context(cfg, 2, 1);
    let x = Tensor::randn(0f32, 0.5, (2, f, d), &dev).unwrap();
    let eps = Tensor::randn(0f32, 1.0, (2, f, d), &dev).unwrap();
    let acts = action_input(&[vec![1u8; 4], vec![32u8; 4]], &[false, false], &dev).unwrap();
    let loss = flow_matching_loss(&m, &ctx, &x, &eps, &[0.8, 0.4], &acts).unwrap();
    let grads = loss.backward().unwrap();
    let missing: Vec<&String> = p.vars().iter().filter(|(_, v)| grads.get(v.as_tensor()).is_none()).map(|(n, _)| n).collect();
    // Wan's action module holds four norm scales its forward never reads
    // (the checkpoint has them); everything else is trained.
    assert!(missing.iter().all(|n| n.contains("action_model") && n.contains("norm")), "no gradient: {missing:?}");
    assert!(missing.len() <= 4 * cfg.transformer.action_blocks, "{missing:?}");
}

#[test]
fn the_parameters_are_the_networks_layout_under_wan_names() {
    let (m, p) = model(Prediction::Clean);
    let layout = parameter_layout(&m.cfg).unwrap();
    assert_eq!(layout.len(), p.vars().len());
    assert!(p.vars().contains_key("blocks.0.action_model.keyboard_embed.0.weight") || p.vars().keys().any(|k| k.starts_with("blocks.0.action_model.")));
    assert!(p.vars().contains_key("img_emb.proj.1.weight") && p.vars().contains_key("head.head.weight"), "{:?}", p.vars().keys().take(8).collect::<Vec<_>>());
    let n: usize = layout.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(n, p.count());
    // The embedded configuration's size.
    let mut q = Params::new(0, &Device::Cpu);
    MatrixGameModel::new(&MatrixGameConfig::embedded(), &mut q).unwrap();
    eprintln!("embedded Matrix-Game parameters: {}", q.count());
    assert!((1_000_000..2_000_000).contains(&q.count()), "{}", q.count());
}

#[test]
fn actions_map_to_keys_and_mouse_and_a_dropped_row_is_zeros() {
    let a = action_input(&[vec![ActionMask::FORWARD.0, ActionMask::TURN_RIGHT.0]], &[false], &Device::Cpu).unwrap();
    assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![1., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0., 0.1]);
    let dropped = action_input(&[vec![ActionMask::FORWARD.0]], &[true], &Device::Cpu).unwrap();
    assert_eq!(dropped.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![0.0; 6]);
}

#[test]
fn context_rows_are_the_first_frame_then_the_last_clip_with_its_actions() {
    let cfg = MatrixGameConfig::tiny();
    let d = cfg.frame_len();
    let frame = |v: f32| vec![v; d];
    let first = frame(-1.0);
    // Before clip 1: the first frame five times, no action.
    let rows = context_rows(&cfg, &first, &[], &[]);
    assert_eq!(rows.len(), 5 * (d + ACTION_WIDTH));
    assert!(rows.chunks(d + ACTION_WIDTH).all(|r| r[..d].iter().all(|x| *x == -1.0) && r[d..].iter().all(|x| *x == 0.0)));
    // After two clips (frames valued 1..=8): frames 5..=8 with their actions.
    let history: Vec<f32> = (1..=8).flat_map(|i| frame(i as f32)).collect();
    let masks = [1u8, 1, 1, 1, 4, 4, 8, 8];
    let rows = context_rows(&cfg, &first, &history, &masks);
    let r: Vec<&[f32]> = rows.chunks(d + ACTION_WIDTH).collect();
    assert_eq!((r[1][0], r[4][0]), (5.0, 8.0));
    assert_eq!(&r[1][d..], &[0., 0., 1., 0., 0., 0.]); // left = A
    assert_eq!(&r[4][d..], &[0., 0., 0., 1., 0., 0.]); // right = D
}
