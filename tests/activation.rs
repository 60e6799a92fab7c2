mod common;

use common::{rng, uniform, POISON};
use evenclass::activation::{cpu, cuda};
use evenclass::Error;

#[test]
fn forward_hand_worked() {
    let x = [-2.0, -0.0, 0.0, 0.5, 3.0, f32::NAN, f32::NEG_INFINITY, f32::INFINITY];
    let y = cpu::relu_forward(&x);
    assert_eq!(&y[..5], &[0.0, 0.0, 0.0, 0.5, 3.0]);
    assert!(y[1].is_sign_positive(), "-0 becomes +0");
    assert!(y[5].is_nan(), "NaN passes through, as in PyTorch");
    assert_eq!(&y[6..], &[0.0, f32::INFINITY]);
    let mut z = x.to_vec();
    cpu::relu_forward_inplace(&mut z);
    assert_eq!(z[..5], y[..5]);
    assert!(z[5].is_nan());
    let mut w = vec![POISON; x.len()];
    cpu::relu_forward_into(&x, &mut w).unwrap();
    assert_eq!(w[..5], y[..5]);
}

#[test]
fn backward_hand_worked() {
    // Masked by the forward *output*: zero where y <= 0, dy elsewhere (NaN output passes dy).
    let y = [0.0, 0.5, 3.0, 0.0, f32::NAN];
    let dy = [1.0, 2.0, -3.0, 4.0, 5.0];
    let want = vec![0.0, 2.0, -3.0, 0.0, 5.0];
    assert_eq!(cpu::relu_backward(&y, &dy).unwrap(), want);
    let mut dx = vec![POISON; 5];
    cpu::relu_backward_into(&y, &dy, &mut dx).unwrap();
    assert_eq!(dx, want);
    let mut g = dy.to_vec();
    cpu::relu_backward_inplace(&y, &mut g).unwrap();
    assert_eq!(g, want);
}

#[test]
fn backward_matches_finite_differences() {
    let mut r = rng(3);
    // Values away from the kink, so the differences do not straddle it.
    let x: Vec<f32> =
        uniform(&mut r, 50, -1.0, 1.0).into_iter().map(|v| if v.abs() < 0.1 { v + 0.3 } else { v }).collect();
    let w = uniform(&mut r, 50, -1.0, 1.0);
    let y = cpu::relu_forward(&x);
    let dx = cpu::relu_backward(&y, &w).unwrap();
    let loss = |x: &[f32]| cpu::relu_forward(x).iter().zip(&w).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>();
    let h = 1e-2;
    for i in 0..x.len() {
        let (mut a, mut b) = (x.clone(), x.clone());
        a[i] += h;
        b[i] -= h;
        let num = (loss(&a) - loss(&b)) / (2.0 * h as f64);
        assert!((num as f32 - dx[i]).abs() < 1e-4, "dx[{i}]: {} vs {num}", dx[i]);
    }
}

#[test]
fn bad_lengths_are_errors() {
    assert!(matches!(cpu::relu_forward_into(&[1.0; 3], &mut [0.0; 2]), Err(Error::Shape { .. })));
    assert!(matches!(cpu::relu_backward(&[1.0; 3], &[1.0; 2]), Err(Error::Shape { .. })));
    assert!(matches!(cpu::relu_backward_into(&[1.0; 3], &[1.0; 3], &mut [0.0; 4]), Err(Error::Shape { .. })));
    assert!(matches!(cpu::relu_backward_inplace(&[1.0; 3], &mut [0.0; 4]), Err(Error::Shape { .. })));
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_matches_cpu() {
    let s = common::gpu();
    let mut r = rng(11);
    for n in [1usize, 255, 257, 100_003] {
        let x = uniform(&mut r, n, -1.0, 1.0);
        let dy = uniform(&mut r, n, -1.0, 1.0);
        let y = cpu::relu_forward(&x);
        let dx = cpu::relu_backward(&y, &dy).unwrap();
        let xd = s.clone_htod(&x).unwrap();
        let mut yd = s.clone_htod(&vec![POISON; n]).unwrap();
        cuda::relu_forward(&s, &xd, &mut yd).unwrap();
        assert_eq!(s.clone_dtoh(&yd).unwrap(), y, "forward n={n}");
        let mut xi = s.clone_htod(&x).unwrap();
        cuda::relu_forward_inplace(&s, &mut xi).unwrap();
        assert_eq!(s.clone_dtoh(&xi).unwrap(), y, "forward in place n={n}");
        let (yd, dyd) = (s.clone_htod(&y).unwrap(), s.clone_htod(&dy).unwrap());
        let mut dxd = s.clone_htod(&vec![POISON; n]).unwrap();
        cuda::relu_backward(&s, &yd, &dyd, &mut dxd).unwrap();
        assert_eq!(s.clone_dtoh(&dxd).unwrap(), dx, "backward n={n}");
        let mut g = s.clone_htod(&dy).unwrap();
        cuda::relu_backward_inplace(&s, &yd, &mut g).unwrap();
        assert_eq!(s.clone_dtoh(&g).unwrap(), dx, "backward in place n={n}");
    }
    let xd = s.clone_htod(&[1.0f32; 3]).unwrap();
    let mut yd = s.clone_htod(&[0.0f32; 2]).unwrap();
    assert!(matches!(cuda::relu_forward(&s, &xd, &mut yd), Err(Error::Shape { .. })));
}
