//! The CLIP vision tower against transformers' `CLIPVisionModel` (its
//! hidden state after all but the last block, Wan's `use_31_block`) and
//! its preprocessing against PyTorch's bicubic interpolation, at the tiny
//! configuration of the fixtures.

use candle_core::DType;
use wc_wan::clip_vision::{preprocess, ClipVision, ClipVisionConfig};
use wc_wan::{WanError, Weights};

use crate::support::{load, max_abs, max_abs_diff};

/// The fixture's weights that the tower reads (the file, like Wan's, also
/// has the last block and the post-norm).
fn tower_weights(drop: Option<&str>) -> Weights {
    let cfg = ClipVisionConfig::tiny();
    Weights::from_tensors(load("clip_vision_wan.safetensors").into_iter().filter(|(k, _)| cfg.reads(k) && Some(k.as_str()) != drop))
}

#[test]
fn the_tower_equals_transformers_clip_vision_model() {
    let io = load("clip_vision_io.safetensors");
    let w = tower_weights(None);
    let tower = ClipVision::new(&ClipVisionConfig::tiny(), &w, DType::F32).unwrap();
    w.finish().unwrap();
    let tokens = tower.forward(&io["pixels"]).unwrap();
    assert_eq!(tokens.dims(), &[2, 10, 32]);
    let (diff, scale) = (max_abs_diff(&tokens, &io["tokens"]), max_abs(&io["tokens"]));
    eprintln!("CLIP tokens: max |diff| {diff:.2e} of values up to {scale:.2}");
    assert!(diff < 1e-4, "tokens differ by {diff} (largest value {scale})");
    // bf16 matrices: within bf16's precision of the f32 reference.
    let w = tower_weights(None);
    let bf16 = ClipVision::new(&ClipVisionConfig::tiny(), &w, DType::BF16).unwrap().forward(&io["pixels"]).unwrap();
    let diff = max_abs_diff(&bf16, &io["tokens"]);
    eprintln!("CLIP tokens in bf16: max |diff| {diff:.2e}");
    assert!(diff < 0.05 * scale, "bf16 tokens differ by {diff} (largest value {scale})");
}

#[test]
fn preprocessing_equals_pytorchs_bicubic_resize_and_clip_normalisation() {
    let io = load("clip_vision_io.safetensors");
    // Frames of 30x60 to 42x42: taller (upsampled) and narrower (downsampled).
    let pixels = preprocess(&io["frames"], 42).unwrap();
    let diff = max_abs_diff(&pixels, &io["pixels"]);
    eprintln!("CLIP pixels: max |diff| {diff:.2e}");
    assert!(diff < 1e-5, "pixels differ by {diff}");
}

#[test]
fn a_missing_tower_key_is_named_and_unused_keys_are_refused() {
    let err = ClipVision::new(&ClipVisionConfig::tiny(), &tower_weights(Some("visual.transformer.1.attn.to_qkv.weight")), DType::F32).err().unwrap();
    match err {
        WanError::MissingKey { key, expected, .. } => {
            assert_eq!(key, "visual.transformer.1.attn.to_qkv.weight");
            assert_eq!(expected, vec![96, 32]);
        }
        e => panic!("expected a missing key, got {e}"),
    }
    // Unfiltered, the last block and the post-norm are left over.
    let all = Weights::from_tensors(load("clip_vision_wan.safetensors"));
    ClipVision::new(&ClipVisionConfig::tiny(), &all, DType::F32).unwrap();
    let left = all.finish().unwrap_err().to_string();
    assert!(left.contains("visual.transformer.2.norm1.weight") && left.contains("visual.post_norm.weight"), "{left}");
}
