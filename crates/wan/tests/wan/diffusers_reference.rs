//! The Wan2.1 transformer against diffusers' `WanTransformer3DModel`, from
//! the fixtures of `tests/fixtures/wan/make_fixtures.py` (a tiny random
//! configuration; diffusers 0.42.1 and PyTorch 2.15, versions.json): the
//! same outputs from both weight layouts, in f32 and bf16, and the same
//! gradients of the flow-matching loss as PyTorch autograd.

use crate::support::*;

use std::collections::HashMap;

use candle_core::{DType, Device, Var};
use wc_wan::{KeyLayout, WanTransformer, WanTransformerConfig, Weights};

fn model(file: &str, dtype: DType) -> WanTransformer {
    let bytes = std::fs::read(fixture(file)).unwrap();
    let w = Weights::from_safetensors(&bytes, &Device::Cpu).unwrap();
    WanTransformer::new(&WanTransformerConfig::tiny(), &w, dtype).unwrap()
}

#[test]
fn the_transformer_equals_diffusers_in_f32_from_both_weight_layouts() {
    let io = load("transformer_io.safetensors");
    for (file, layout) in [
        ("transformer_wan.safetensors", KeyLayout::Wan),
        ("transformer_diffusers.safetensors", KeyLayout::Diffusers),
    ] {
        let bytes = std::fs::read(fixture(file)).unwrap();
        assert_eq!(
            Weights::from_safetensors(&bytes, &Device::Cpu)
                .unwrap()
                .layout(),
            layout
        );
        let out = model(file, DType::F32)
            .forward(&io["x"], &io["timestep"], &io["context"])
            .unwrap();
        let diff = max_abs_diff(&out, &io["out"]);
        eprintln!(
            "{file}: max |diff| {diff:.2e}, outputs up to {}",
            max_abs(&io["out"])
        );
        assert!(
            diff < 1e-4,
            "{file}: max |diff| {diff} (outputs up to {})",
            max_abs(&io["out"])
        );
    }
}

#[test]
fn the_transformer_in_bf16_stays_near_the_f32_reference() {
    let io = load("transformer_io.safetensors");
    let out = model("transformer_wan.safetensors", DType::BF16)
        .forward(&io["x"], &io["timestep"], &io["context"])
        .unwrap();
    assert_eq!(out.dtype(), DType::BF16);
    // bf16 keeps 8 bits of mantissa: a relative error of a few 1e-3 per
    // op, through 2 blocks; 5% of the output's scale is the stated bound.
    let (diff, scale) = (max_abs_diff(&out, &io["out"]), max_abs(&io["out"]));
    eprintln!("bf16: max |diff| {diff:.2e}, outputs up to {scale}");
    assert!(
        diff < 0.05 * scale,
        "bf16: max |diff| {diff} against outputs up to {scale}"
    );
    assert!(diff > 0.0, "bf16 cannot equal f32 exactly");
}

#[test]
fn flow_matching_gradients_equal_pytorch_autograd() {
    let g = load("transformer_grad.safetensors");
    let bytes = std::fs::read(fixture("transformer_wan.safetensors")).unwrap();
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    let vars: HashMap<String, Var> = tensors
        .into_iter()
        .map(|(k, t)| (k, Var::from_tensor(&t).unwrap()))
        .collect();
    let w = Weights::from_tensors(vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())));
    let m = WanTransformer::new(&WanTransformerConfig::tiny(), &w, DType::F32).unwrap();
    let (x0, eps, t) = (&g["x0"], &g["eps"], &g["t"]);
    let tt = t.reshape((2, 1, 1, 1, 1)).unwrap();
    let xt = (x0.broadcast_mul(&(1.0 - &tt).unwrap()).unwrap() + eps.broadcast_mul(&tt).unwrap())
        .unwrap();
    let v = m
        .forward(&xt, &(t * 1000.0).unwrap(), &g["context"])
        .unwrap();
    let loss = (v - (eps - x0).unwrap())
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap();
    let l = loss.to_scalar::<f32>().unwrap();
    let l_ref = g["loss"].to_vec1::<f32>().unwrap()[0];
    assert!(
        (l - l_ref).abs() < 1e-5 * l_ref.abs().max(1.0),
        "loss {l} against PyTorch's {l_ref}"
    );
    let grads = loss.backward().unwrap();
    let mut checked = 0;
    for (name, reference) in g
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("grad.").map(|n| (n, v)))
    {
        let grad = grads
            .get(vars[name].as_tensor())
            .unwrap_or_else(|| panic!("no gradient reached {name}"));
        let diff = max_abs_diff(grad, reference);
        eprintln!(
            "{name}: max |diff| {diff:.2e}, gradient up to {:.3e}",
            max_abs(reference)
        );
        assert!(
            diff < 1e-4,
            "{name}: max |diff| {diff} (gradient up to {})",
            max_abs(reference)
        );
        assert!(
            max_abs(reference) > 1e-3,
            "{name}: a vanishing reference gradient checks nothing"
        );
        checked += 1;
    }
    assert_eq!(checked, 11);
}
