//! The Wan2.1 VAE against diffusers' `AutoencoderKLWan`, from the fixtures
//! of `tests/fixtures/wan/make_fixtures.py` (a tiny random configuration
//! with a spatial-only and a spatial-and-temporal level): encode and decode
//! from both weight layouts, and streams of chunks equal to whole clips.

use crate::support::*;

use candle_core::{DType, Device, Tensor};
use wc_wan::{KeyLayout, WanVae, WanVaeConfig, Weights};

fn vae(file: &str) -> (WanVae, KeyLayout) {
    let cfg =
        WanVaeConfig::from_json(&std::fs::read_to_string(fixture("vae_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg, WanVaeConfig::tiny());
    let tensors = candle_core::safetensors::load(fixture(file), &Device::Cpu).unwrap();
    let w = Weights::vae_from_tensors(tensors, cfg.num_res_blocks);
    let layout = w.layout();
    (WanVae::new(&cfg, &w).unwrap(), layout)
}

#[test]
fn encode_and_decode_equal_diffusers_from_both_weight_layouts() {
    let io = candle_core::safetensors::load(fixture("vae_io.safetensors"), &Device::Cpu).unwrap();
    for (file, layout) in [
        ("vae_wan.safetensors", KeyLayout::Wan),
        ("vae_diffusers.safetensors", KeyLayout::Diffusers),
    ] {
        let (vae, found) = vae(file);
        assert_eq!(found, layout);
        let (mean, logvar) = vae.encode(&io["video"]).unwrap();
        let (dm, dl) = (
            max_abs_diff(&mean, &io["mean"]),
            max_abs_diff(&logvar, &io["logvar"]),
        );
        let decoded = vae.decode(&io["z"]).unwrap();
        let dd = max_abs_diff(&decoded, &io["decoded"]);
        eprintln!("{file}: encode mean {dm:.2e}, logvar {dl:.2e}; decode {dd:.2e}");
        assert!(
            dm < 1e-4 && dl < 1e-4,
            "{file}: encode differs by {dm} (mean), {dl} (logvar)"
        );
        assert!(dd < 1e-4, "{file}: decode differs by {dd}");
        // 9 frames of 16x16 -> 1 + 9/4... : 1 + 2 x 2 latent frames of 4x4.
        assert_eq!(mean.dims(), [1, 4, 5, 4, 4]);
        assert_eq!(decoded.dims(), [1, 3, 5, 16, 16]);
    }
}

#[test]
fn a_stream_of_chunks_equals_the_whole_clip() {
    let io = candle_core::safetensors::load(fixture("vae_io.safetensors"), &Device::Cpu).unwrap();
    let (vae, _) = vae("vae_wan.safetensors");
    // Decode: latent frames 0..1, then 1..3, in one stream.
    let whole = vae.decode(&io["z"]).unwrap();
    let mut s = vae.decode_stream();
    let a = vae
        .decode_chunk(&mut s, &io["z"].narrow(2, 0, 1).unwrap())
        .unwrap();
    let b = vae
        .decode_chunk(&mut s, &io["z"].narrow(2, 1, 2).unwrap())
        .unwrap();
    assert_eq!(max_abs_diff(&Tensor::cat(&[a, b], 2).unwrap(), &whole), 0.0);
    // Encode: frames 0..5, then 5..9.
    let (whole_mean, _) = vae.encode(&io["video"]).unwrap();
    let mut s = vae.encode_stream();
    let (a, _) = vae
        .encode_chunk(&mut s, &io["video"].narrow(2, 0, 5).unwrap())
        .unwrap();
    let (b, _) = vae
        .encode_chunk(&mut s, &io["video"].narrow(2, 5, 4).unwrap())
        .unwrap();
    assert_eq!(
        max_abs_diff(&Tensor::cat(&[a, b], 2).unwrap(), &whole_mean),
        0.0
    );
    // A later chunk depends on the earlier ones (the cache is used): decoding
    // the last latent frames alone gives other frames.
    let alone = vae.decode(&io["z"].narrow(2, 1, 2).unwrap()).unwrap();
    assert_ne!(
        alone.dims(),
        whole.narrow(2, 1, 4).unwrap().dims(),
        "a fresh stream's first latent frame makes one frame"
    );
    // A stream refuses chunks of the wrong length.
    let mut s = vae.encode_stream();
    assert!(
        vae.encode_chunk(&mut s, &io["video"].narrow(2, 0, 4).unwrap())
            .unwrap_err()
            .to_string()
            .contains("1 + 4k")
    );
}

#[test]
fn latent_normalisation_round_trips() {
    let (vae, _) = vae("vae_wan.safetensors");
    let z = Tensor::randn(0f32, 1.0, (1, 4, 2, 3, 3), &Device::Cpu).unwrap();
    let n = vae.normalize(&z).unwrap();
    // Channel 1: mean -0.2, std 0.5.
    let c1 = (z.narrow(1, 1, 1).unwrap() + 0.2).unwrap() / 0.5;
    assert!(max_abs_diff(&n.narrow(1, 1, 1).unwrap(), &c1.unwrap()) < 1e-6);
    assert!(max_abs_diff(&vae.denormalize(&n).unwrap(), &z) < 1e-6);
    assert_eq!(n.dtype(), DType::F32);
}

#[test]
fn the_released_vae_builds_with_diffusers_parameter_count() {
    // AutoencoderKLWan() in diffusers 0.42.1: 126,892,531 parameters.
    let w = Weights::random(&Device::Cpu);
    let vae = WanVae::new(&WanVaeConfig::wan2_1(), &w).unwrap();
    assert_eq!(w.elements_taken(), 126_892_531);
    assert_eq!(
        (
            vae.config().spatial_factor(),
            vae.config().temporal_factor()
        ),
        (8, 4)
    );
}

/// The image-to-video condition (mask channels, then the normalised latent
/// of the image followed by zero frames) against diffusers'
/// `WanImageToVideoPipeline.prepare_latents` on the same VAE.
#[test]
fn the_image_condition_equals_diffusers_image_to_video_pipeline() {
    let io = candle_core::safetensors::load(fixture("vae_condition.safetensors"), &Device::Cpu).unwrap();
    let (vae, _) = vae("vae_wan.safetensors");
    let image = io["image"].repeat((2, 1, 1, 1)).unwrap();
    let got = vae.image_condition(&image, 5).unwrap();
    assert_eq!(got.dims(), &[2, 2 + 4, 5, 4, 4]);
    let diff = max_abs_diff(&got, &io["condition"]);
    eprintln!("image condition: max |diff| {diff:.2e}");
    assert!(diff < 1e-4, "condition differs by {diff}");
    // The mask: both channels 1 on latent frame 0 only.
    let mask: Vec<f32> = got.narrow(1, 0, 2).unwrap().mean((0, 1, 3, 4)).unwrap().to_vec1().unwrap();
    assert_eq!(mask, vec![1.0, 0.0, 0.0, 0.0, 0.0]);
    // Later latent frames encode grey frames after the image: not zeros.
    assert!(max_abs(&got.narrow(1, 2, 4).unwrap().narrow(2, 1, 4).unwrap()) > 0.1);
}
