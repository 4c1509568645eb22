//! The vendored candle-core's backward pass (vendor/candle-core, patched to
//! store a tensor's first gradient as it is instead of adding it to zeros):
//! gradients that reach a tensor several times are still summed, a single
//! one is kept exactly, a gradient that arrives as a strided view (a
//! transpose's backward) is stored contiguous, and a stored gradient shared
//! by two variables is not changed by updating either variable.

use candle_core::{Device, Tensor, Var};

fn var(v: &[f32], shape: &[usize]) -> Var {
    Var::from_tensor(&Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn gradients_reaching_a_tensor_several_times_are_summed() {
    // y = sum(x a + x b - x c + exp(x)): dy/dx = a + b - c + exp(x).
    let x = var(&[0.5, -1.0, 2.0], &[3]);
    let (a, b, c) = ([1.0f32, 2.0, 3.0], [0.25f32, -4.0, 0.5], [2.0f32, 1.0, -1.0]);
    let t = |v: &[f32; 3]| Tensor::new(v, &Device::Cpu).unwrap();
    let y = ((x.as_tensor() * t(&a)).unwrap() + (x.as_tensor() * t(&b)).unwrap() - (x.as_tensor() * t(&c)).unwrap() + x.as_tensor().exp().unwrap()).unwrap().sum_all().unwrap();
    let g = values(y.backward().unwrap().get(x.as_tensor()).unwrap());
    for i in 0..3 {
        let xi = [0.5f32, -1.0, 2.0][i];
        let want = a[i] + b[i] - c[i] + xi.exp();
        assert!((g[i] - want).abs() < 1e-6, "x[{i}]: {} vs {want}", g[i]);
    }
}

#[test]
fn a_transposed_gradient_is_stored_contiguous_and_exact() {
    // L = sum(x w^T): dL/dw[j, k] = sum_i x[i, k], reached through the
    // transpose's backward (a strided view of the matmul's gradient).
    let x = var(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    let w = var(&[0.5; 12], &[4, 3]);
    let loss = x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let gw = grads.get(w.as_tensor()).unwrap();
    assert!(gw.is_contiguous(), "the stored gradient is contiguous");
    assert_eq!(gw.dims(), &[4, 3]);
    assert_eq!(values(gw), [5.0, 7.0, 9.0].repeat(4));
    // And the input's: dL/dx[i, k] = sum_j w[j, k] = 2.
    assert_eq!(values(grads.get(x.as_tensor()).unwrap()), vec![2.0; 6]);
}

#[test]
fn a_gradient_shared_by_two_variables_survives_updating_one() {
    // y = sum(u + v): u and v receive the same gradient tensor.
    let u = var(&[1.0, 2.0], &[2]);
    let v = var(&[3.0, 4.0], &[2]);
    let y = (u.as_tensor() + v.as_tensor()).unwrap().sum_all().unwrap();
    let grads = y.backward().unwrap();
    u.set(&Tensor::new(&[10.0f32, 20.0], &Device::Cpu).unwrap()).unwrap();
    assert_eq!(values(grads.get(u.as_tensor()).unwrap()), [1.0, 1.0]);
    assert_eq!(values(grads.get(v.as_tensor()).unwrap()), [1.0, 1.0]);
}
