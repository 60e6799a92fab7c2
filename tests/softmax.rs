//! Softmax / log-softmax: hand-worked values, finite differences, bad input, GPU vs CPU.
#![allow(clippy::excessive_precision)] // expected values are written as computed, in f64
mod common;

use common::{assert_close, gpu, rng, uniform, POISON};
use evenclass::softmax::{cpu, cuda, Kind};
use ndarray::{arr2, Array2};

#[test]
fn hand_worked_values() {
    // softmax(1, 2, 3) = e^(x-3) / (1 + e^-1 + e^-2) = (0.09003057, 0.24472847, 0.66524096)
    let x = arr2(&[[1.0f32, 2.0, 3.0], [1000.0, 1000.0, 1000.0]]);
    let y = cpu::forward(x.view(), Kind::Softmax);
    assert_close(
        "softmax",
        y.as_slice().unwrap(),
        &[0.09003057, 0.24472847, 0.66524096, 1. / 3., 1. / 3., 1. / 3.],
        1e-7,
        1e-6,
    );
    let ly = cpu::forward(x.view(), Kind::LogSoftmax);
    let l3 = -(3.0f32).ln();
    assert_close(
        "log_softmax",
        ly.as_slice().unwrap(),
        &[-2.40760596, -1.40760596, -0.40760596, l3, l3, l3],
        1e-6,
        1e-6,
    );
}

#[test]
fn nan_propagates_to_its_row_only() {
    let x = arr2(&[[1.0f32, f32::NAN, 3.0], [0.0, 1.0, 2.0]]);
    let y = cpu::forward(x.view(), Kind::Softmax);
    assert!(y.row(0).iter().all(|v| v.is_nan()));
    assert!(y.row(1).iter().all(|v| v.is_finite()));
}

fn check_backward(kind: Kind, seed: u64) {
    let (n, c) = (4, 7);
    let mut r = rng(seed);
    let x = Array2::from_shape_vec((n, c), uniform(&mut r, n * c, -2.0, 2.0)).unwrap();
    let dy = Array2::from_shape_vec((n, c), uniform(&mut r, n * c, -1.0, 1.0)).unwrap();
    let y = cpu::forward(x.view(), kind);
    let dx = cpu::backward(y.view(), dy.view(), kind).unwrap();
    // L(x) = sum(dy * f(x)); dL/dx must equal dx.
    let f = |x: &Array2<f32>| -> f64 {
        cpu::forward(x.view(), kind).iter().zip(dy.iter()).map(|(&a, &b)| a as f64 * b as f64).sum()
    };
    let h = 1e-2f32;
    for i in 0..n {
        for k in 0..c {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[[i, k]] += h;
            xm[[i, k]] -= h;
            let fd = ((f(&xp) - f(&xm)) / (2.0 * h as f64)) as f32;
            assert!((dx[[i, k]] - fd).abs() <= 2e-3, "{kind:?} dx[{i},{k}] = {}, finite difference {fd}", dx[[i, k]]);
        }
    }
}

#[test]
fn backward_matches_finite_differences() {
    check_backward(Kind::Softmax, 1);
    check_backward(Kind::LogSoftmax, 2);
}

#[test]
fn bad_shapes_are_errors() {
    let y = Array2::<f32>::zeros((2, 3));
    let dy = Array2::<f32>::zeros((3, 2));
    assert!(cpu::backward(y.view(), dy.view(), Kind::Softmax).is_err());
    let mut out = Array2::<f32>::zeros((2, 2));
    assert!(cpu::forward_into(y.view(), out.view_mut(), Kind::Softmax).is_err());
}

fn gpu_case<T: evenclass::cuda::Dtype>(n: usize, c: usize, kind: Kind, seed: u64, tol: f32) {
    let s = gpu();
    let mut r = rng(seed);
    let xt: Vec<T> = uniform(&mut r, n * c, -8.0, 8.0).into_iter().map(T::from_f32).collect();
    let dyt: Vec<T> = uniform(&mut r, n * c, -1.0, 1.0).into_iter().map(T::from_f32).collect();
    let x = Array2::from_shape_vec((n, c), xt.iter().map(|v| v.to_f32()).collect()).unwrap();
    let want_y = cpu::forward(x.view(), kind);

    let dx_in = s.clone_htod(&xt).unwrap();
    let mut dy_out = s.clone_htod(&vec![T::from_f32(POISON); n * c]).unwrap();
    cuda::forward(&s, &dx_in, &mut dy_out, n, c, kind).unwrap();
    let got_y: Vec<T> = s.clone_dtoh(&dy_out).unwrap();
    let got_yf: Vec<f32> = got_y.iter().map(|v| v.to_f32()).collect();
    let what = format!("{} {kind:?} n={n} c={c}", T::SUFFIX);
    assert_close(&format!("forward {what}"), &got_yf, want_y.as_slice().unwrap(), tol * 1e-2, tol);

    // Backward from the GPU's own (T-rounded) output, so both sides use the same y.
    let y = Array2::from_shape_vec((n, c), got_yf).unwrap();
    let dy = Array2::from_shape_vec((n, c), dyt.iter().map(|v| v.to_f32()).collect()).unwrap();
    let want_dx = cpu::backward(y.view(), dy.view(), kind).unwrap();
    let d_dy = s.clone_htod(&dyt).unwrap();
    let mut d_dx = s.clone_htod(&vec![T::from_f32(POISON); n * c]).unwrap();
    cuda::backward(&s, &dy_out, &d_dy, &mut d_dx, n, c, kind).unwrap();
    let got_dx: Vec<f32> = s.clone_dtoh(&d_dx).unwrap().into_iter().map(|v| v.to_f32()).collect();
    assert_close(&format!("backward {what}"), &got_dx, want_dx.as_slice().unwrap(), tol * 1e-1, tol);
}

const SIZES: [(usize, usize); 9] =
    [(1, 2), (3, 5), (37, 10), (513, 31), (9, 1000), (5, 1025), (4, 3001), (2, 32768), (1, 40000)];

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_matches_cpu_f32() {
    for (i, (n, c)) in SIZES.into_iter().enumerate() {
        gpu_case::<f32>(n, c, Kind::Softmax, 10 + i as u64, 1e-5);
        gpu_case::<f32>(n, c, Kind::LogSoftmax, 50 + i as u64, 1e-5);
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_matches_cpu_f16_bf16() {
    for (i, (n, c)) in SIZES.into_iter().enumerate() {
        for kind in [Kind::Softmax, Kind::LogSoftmax] {
            gpu_case::<half::f16>(n, c, kind, 100 + i as u64, 2e-3);
            gpu_case::<half::bf16>(n, c, kind, 200 + i as u64, 1.6e-2);
        }
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_bad_lengths_are_errors() {
    let s = gpu();
    let x = s.alloc_zeros::<f32>(10).unwrap();
    let mut y = s.alloc_zeros::<f32>(9).unwrap();
    assert!(cuda::forward(&s, &x, &mut y, 2, 5, Kind::Softmax).is_err());
    let mut y = s.alloc_zeros::<f32>(10).unwrap();
    assert!(cuda::forward(&s, &x, &mut y, 2, 0, Kind::Softmax).is_err());
}
