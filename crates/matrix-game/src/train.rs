//! Pre-training the Matrix-Game world model on ground-truth videos.
//!
//! An example is one target clip with its context rows (the video's first
//! frame, then the clip before the target, with the actions into its
//! frames; `model::context_rows`) and the target frames' actions. Which
//! clip of which video, the noise and the times of a step derive from
//! (seed, step) as in `wc_model::train`, so a resumed run repeats the
//! uninterrupted one exactly.

use candle_core::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wc_model::codec::{encode_frames, VideoCodec};
use wc_model::flow::{flow_matching_loss, seeded_noise};
use wc_model::optim::Optimizer;
use wc_model::params::Params;
use wc_model::train::{apply_loss, training_time, PretrainConfig, StepReport, Video, FRAMES_PER_WINDOW};
use wc_model::velocity::VelocityModel;
use wc_model::{ModelError, Result};

use crate::config::MatrixGameConfig;
use crate::model::{context_rows, MatrixGameInput, MatrixGameModel};
use crate::prompt::PromptEncoder;

/// One example: packed context rows, the target's latent frames, the
/// action mask into each target frame, and the video's first frame (u8
/// HWC), whose conditioning the context reads.
pub struct Example {
    pub context: Vec<f32>,
    pub target: Vec<f32>,
    pub masks: Vec<u8>,
    pub first_frame: Vec<u8>,
}

/// Clips (targets) a video holds.
pub fn clips_in(video: &Video, cfg: &MatrixGameConfig) -> usize {
    video.actions.len() * FRAMES_PER_WINDOW / cfg.frames_per_clip
}

/// The action mask into frame `j` (>= 1) of a video.
fn mask_into(video: &Video, j: usize) -> u8 {
    video.actions[(j - 1) / FRAMES_PER_WINDOW]
}

/// The example for clip `n` (1-based) of a video. Pre-training runs on
/// one latent frame per frame (the pixel codec); Matrix-Game 2.0 at full
/// size comes pre-trained.
pub fn example(video: &Video, n: usize, cfg: &MatrixGameConfig, codec: &dyn VideoCodec) -> Result<Example> {
    if cfg.temporal() != 1 || codec.geometry().temporal != 1 {
        return Err(ModelError::Config("pre-training reads one latent frame per frame (the pixel codec)".into()));
    }
    let s = cfg.frame_size;
    let fsize = s * s * 3;
    if n == 0 || n > clips_in(video, cfg) {
        return Err(ModelError::Config(format!("clip {n} of a video of {} clips", clips_in(video, cfg))));
    }
    let lat = |from: usize, to: usize| encode_frames(codec, &video.frames[from * fsize..to * fsize], s);
    let first_target = 1 + (n - 1) * cfg.frames_per_clip;
    let f = cfg.frames_per_clip;
    let history_from = first_target.saturating_sub(f).max(1);
    let history = if first_target > 1 { lat(history_from, first_target)? } else { Vec::new() };
    let history_masks: Vec<u8> = (history_from..first_target).map(|j| mask_into(video, j)).collect();
    Ok(Example {
        context: context_rows(cfg, &lat(0, 1)?, &history, &history_masks),
        target: lat(first_target, first_target + f)?,
        masks: (first_target..first_target + f).map(|j| mask_into(video, j)).collect(),
        first_frame: video.frames[..fsize].to_vec(),
    })
}

/// One pre-training step on a batch drawn for `step`: the flow-matching
/// loss of `model` on clips of `videos`, then `wc_model::train::apply_loss`.
pub fn pretrain_step(
    model: &MatrixGameModel,
    params: &Params,
    opt: &mut Optimizer,
    videos: &[Video],
    codec: &dyn VideoCodec,
    cfg: &PretrainConfig,
    step: u64,
) -> Result<StepReport> {
    let mc = &model.cfg;
    let dev = params.device().clone();
    let mut rng = ChaCha8Rng::seed_from_u64(wc_rl::seeds::derive_seed(cfg.seed, step, wc_rl::seeds::SeedDomain::Optimize, 0, 0));
    let (mut ctx, mut tgt, mut masks, mut dropped, mut times, mut firsts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..cfg.batch {
        let v = &videos[rng.random_range(0..videos.len())];
        let n = rng.random_range(1..=clips_in(v, mc));
        let ex = example(v, n, mc, codec)?;
        ctx.extend(ex.context);
        tgt.extend(ex.target);
        masks.push(ex.masks);
        firsts.extend(ex.first_frame);
        dropped.push(rng.random::<f64>() < cfg.action_dropout);
        times.push(training_time(rng.random(), cfg.time_shift));
    }
    let (b, f, d) = (cfg.batch, mc.frames_per_clip, mc.frame_len());
    let s = mc.frame_size;
    let prompts = PromptEncoder::without_weights(mc)?.encode(&Tensor::from_vec(firsts, (b, s, s, 3), &candle_core::Device::Cpu)?)?;
    let context = MatrixGameInput {
        rows: Tensor::from_vec(ctx, (b, mc.context_frames(), mc.row_len()), &dev)?,
        condition: prompts.condition.to_device(&dev)?,
        image_tokens: prompts.image_tokens.to_device(&dev)?,
    };
    let x = Tensor::from_vec(tgt, (b, f, d), &dev)?;
    let eps = seeded_noise(rng.random(), &[b, f, d], &dev)?;
    let actions = model.action_input(&masks, &dropped, &dev)?;
    let loss = flow_matching_loss(model, &context, &x, &eps, &times, &actions)?;
    apply_loss(params, opt, &loss, cfg, step)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use wc_model::codec::PixelCodec;
    use wc_model::optim::OptimConfig;

    use super::*;

    fn video(cfg: &MatrixGameConfig, windows: usize, seed: u8) -> Video {
        wc_model::train::synthetic_video(cfg.frame_size, windows, seed)
    }

    #[test]
    fn an_example_is_the_first_frame_the_clip_before_and_the_target() {
        let cfg = MatrixGameConfig::tiny();
        let v = video(&cfg, 3, 0);
        let d = cfg.frame_len();
        let row = d + crate::config::ACTION_WIDTH;
        // frame i has every byte = 20 i; latent = 20 i / 127.5 - 1
        let lat = |i: usize| (20 * i) as f32 / 127.5 - 1.0;
        let ex = example(&v, 1, &cfg, &PixelCodec).unwrap();
        assert!((0..5).all(|r| ex.context[r * row] == lat(0)));
        assert_eq!((ex.target[0], ex.masks.clone()), (lat(1), vec![1, 1, 1, 1]));
        let ex = example(&v, 3, &cfg, &PixelCodec).unwrap();
        assert_eq!((ex.context[0], ex.context[row], ex.context[4 * row]), (lat(0), lat(5), lat(8)));
        // Row 1 holds frame 5, reached by window 2's action (bit 1: backward = S).
        assert_eq!(&ex.context[row + d..2 * row], &[0., 1., 0., 0., 0., 0.]);
        assert_eq!((ex.target[0], ex.masks.clone()), (lat(9), vec![4, 4, 4, 4]));
        assert!(example(&v, 4, &cfg, &PixelCodec).is_err());
    }

    #[test]
    fn steps_lower_the_loss_and_are_reproducible() {
        let cfg = MatrixGameConfig::tiny();
        let videos: Vec<Video> = (0..4).map(|s| video(&cfg, 2, s * 7)).collect();
        let pc = PretrainConfig { batch: 4, lr: 3e-3, warmup_steps: 1, ..Default::default() };
        let run = |steps: u64| -> (Vec<f64>, wc_schemas::TensorSet) {
            let mut p = Params::new(1, &Device::Cpu);
            let m = MatrixGameModel::new(&cfg, &mut p).unwrap();
            let mut opt = Optimizer::new(OptimConfig::default(), &p).unwrap();
            let losses = (0..steps).map(|s| pretrain_step(&m, &p, &mut opt, &videos, &PixelCodec, &pc, s).unwrap().loss).collect();
            (losses, p.to_tensor_set().unwrap())
        };
        let (losses, w1) = run(30);
        let first: f64 = losses[..5].iter().sum::<f64>() / 5.0;
        let last: f64 = losses[25..].iter().sum::<f64>() / 5.0;
        assert!(last < 0.7 * first, "loss {first} -> {last}");
        let (_, w2) = run(30);
        assert_eq!(w1, w2, "same seed, same steps, same bytes");
    }
}
