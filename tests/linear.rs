mod common;

use common::{assert_close, rng, uniform, POISON};
use evenclass::linear::{cpu, cuda, Gemm, LinearShape};
use evenclass::Error;

const X: [f32; 6] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
const W: [f32; 6] = [1.0, 0.0, -1.0, 0.5, 0.5, 0.5];
const B: [f32; 2] = [0.5, -1.0];
const DY: [f32; 4] = [1.0, 2.0, 3.0, -1.0];
const SHAPE: LinearShape = LinearShape { batch: 2, in_features: 3, out_features: 2 };

#[test]
fn forward_hand_worked() {
    assert_eq!(cpu::forward(&X, &W, &B, SHAPE).unwrap(), vec![-1.5, 2.0, -1.5, 6.5]);
    let mut y = vec![POISON; 4];
    cpu::forward_into(&X, &W, &B, &mut y, SHAPE).unwrap();
    assert_eq!(y, vec![-1.5, 2.0, -1.5, 6.5]);
}

#[test]
fn backward_hand_worked() {
    let g = cpu::backward(&X, &W, &DY, SHAPE).unwrap();
    assert_eq!(g.dx, vec![2.0, 1.0, 0.0, 2.5, -0.5, -3.5]);
    assert_eq!(g.dw, vec![13.0, 17.0, 21.0, -2.0, -1.0, 0.0]);
    assert_eq!(g.db, vec![4.0, 1.0]);
    let (mut dx, mut dw, mut db) = (vec![POISON; 6], vec![POISON; 6], vec![POISON; 2]);
    cpu::backward_into(&X, &W, &DY, &mut dx, &mut dw, &mut db, SHAPE).unwrap();
    assert_eq!((dx, dw, db), (g.dx, g.dw, g.db));
}

#[test]
fn backward_matches_finite_differences() {
    let shape = LinearShape { batch: 3, in_features: 5, out_features: 4 };
    let mut r = rng(17);
    let x = uniform(&mut r, 15, -1.0, 1.0);
    let w = uniform(&mut r, 20, -1.0, 1.0);
    let b = uniform(&mut r, 4, -1.0, 1.0);
    let c = uniform(&mut r, 12, -1.0, 1.0); // dL/dy
    let g = cpu::backward(&x, &w, &c, shape).unwrap();
    let loss = |x: &[f32], w: &[f32], b: &[f32]| {
        let y = cpu::forward(x, w, b, shape).unwrap();
        y.iter().zip(&c).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>()
    };
    let h = 1e-2f32;
    let fd = |v: &[f32], i: usize, f: &dyn Fn(&[f32]) -> f64| {
        let (mut a, mut m) = (v.to_vec(), v.to_vec());
        a[i] += h;
        m[i] -= h;
        ((f(&a) - f(&m)) / (2.0 * h as f64)) as f32
    };
    let num_dx: Vec<f32> = (0..x.len()).map(|i| fd(&x, i, &|v| loss(v, &w, &b))).collect();
    let num_dw: Vec<f32> = (0..w.len()).map(|i| fd(&w, i, &|v| loss(&x, v, &b))).collect();
    let num_db: Vec<f32> = (0..b.len()).map(|i| fd(&b, i, &|v| loss(&x, &w, v))).collect();
    assert_close("dx", &g.dx, &num_dx, 1e-4, 1e-3);
    assert_close("dw", &g.dw, &num_dw, 1e-4, 1e-3);
    assert_close("db", &g.db, &num_db, 1e-4, 1e-3);
}

/// `op(A) op(B)` by definition, in f64.
fn naive_gemm(a: &[f32], b: &[f32], g: Gemm) -> Vec<f32> {
    let at = |i: usize, k: usize| if g.trans_a { a[k * g.m + i] } else { a[i * g.k + k] };
    let bt = |k: usize, j: usize| if g.trans_b { b[j * g.k + k] } else { b[k * g.n + j] };
    let mut c = vec![0.0; g.m * g.n];
    for i in 0..g.m {
        for j in 0..g.n {
            c[i * g.n + j] = (0..g.k).map(|k| at(i, k) as f64 * bt(k, j) as f64).sum::<f64>() as f32;
        }
    }
    c
}

#[test]
fn sgemm_all_transposes() {
    let mut r = rng(23);
    for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
        let g = Gemm { m: 5, n: 7, k: 3, trans_a, trans_b };
        let a = uniform(&mut r, 15, -1.0, 1.0);
        let b = uniform(&mut r, 21, -1.0, 1.0);
        let mut c = vec![POISON; 35];
        cpu::sgemm(&a, &b, &mut c, g).unwrap();
        assert_close(&format!("{g:?}"), &c, &naive_gemm(&a, &b, g), 1e-6, 1e-5);
    }
}

#[test]
fn empty_dimensions() {
    // No input features: y = b on every row; no batch: zero parameter gradients.
    let s = LinearShape { batch: 2, in_features: 0, out_features: 2 };
    assert_eq!(cpu::forward(&[], &[], &B, s).unwrap(), vec![0.5, -1.0, 0.5, -1.0]);
    let s = LinearShape { batch: 0, in_features: 3, out_features: 2 };
    let (mut dw, mut db) = (vec![POISON; 6], vec![POISON; 2]);
    cpu::backward_params_into(&[], &[], &mut dw, &mut db, s).unwrap();
    assert_eq!((dw, db), (vec![0.0; 6], vec![0.0; 2]));
}

#[test]
fn bad_lengths_are_errors() {
    let shape_err = |r: Result<(), Error>| assert!(matches!(r, Err(Error::Shape { .. })), "expected a shape error");
    shape_err(cpu::forward_into(&X[1..], &W, &B, &mut [0.0; 4], SHAPE));
    shape_err(cpu::forward_into(&X, &W, &B[..1], &mut [0.0; 4], SHAPE));
    shape_err(cpu::forward_into(&X, &W, &B, &mut [0.0; 5], SHAPE));
    shape_err(cpu::backward_data_into(&W, &DY[1..], &mut [0.0; 6], SHAPE));
    shape_err(cpu::backward_params_into(&X, &DY, &mut [0.0; 6], &mut [0.0; 3], SHAPE));
    shape_err(cpu::sgemm(
        &[0.0; 6],
        &[0.0; 6],
        &mut [0.0; 4],
        Gemm { m: 2, n: 2, k: 4, trans_a: false, trans_b: false },
    ));
    let huge = LinearShape { batch: usize::MAX, in_features: 2, out_features: 1 };
    assert!(matches!(cpu::forward(&X, &W, &B, huge), Err(Error::TooLarge { .. })));
}

// ---- GPU vs CPU ----------------------------------------------------------------------------------

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_sgemm_matches_cpu() {
    let s = common::gpu();
    let mut r = rng(31);
    for (m, n, k) in [(1, 1, 1), (67, 130, 33), (5, 3, 100), (129, 65, 257), (64, 64, 16), (3, 70, 1)] {
        for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
            let g = Gemm { m, n, k, trans_a, trans_b };
            let a = uniform(&mut r, m * k, -1.0, 1.0);
            let b = uniform(&mut r, k * n, -1.0, 1.0);
            let mut want = vec![0.0; m * n];
            cpu::sgemm(&a, &b, &mut want, g).unwrap();
            let (ad, bd) = (s.clone_htod(&a).unwrap(), s.clone_htod(&b).unwrap());
            let mut cd = s.clone_htod(&vec![POISON; m * n]).unwrap();
            cuda::sgemm(&s, &ad, &bd, &mut cd, g).unwrap();
            assert_close(&format!("{g:?}"), &s.clone_dtoh(&cd).unwrap(), &want, 2e-6 * k as f32 + 1e-6, 1e-5);
        }
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_linear_matches_cpu() {
    let s = common::gpu();
    let mut r = rng(37);
    for shape in [
        LinearShape { batch: 3, in_features: 5, out_features: 4 },
        LinearShape { batch: 129, in_features: 515, out_features: 10 },
        LinearShape { batch: 1, in_features: 1, out_features: 1 },
        LinearShape { batch: 70, in_features: 3, out_features: 65 },
    ] {
        let (bn, fin, fout) = (shape.batch, shape.in_features, shape.out_features);
        let x = uniform(&mut r, bn * fin, -1.0, 1.0);
        let w = uniform(&mut r, fout * fin, -1.0, 1.0);
        let b = uniform(&mut r, fout, -1.0, 1.0);
        let dy = uniform(&mut r, bn * fout, -1.0, 1.0);
        let y = cpu::forward(&x, &w, &b, shape).unwrap();
        let g = cpu::backward(&x, &w, &dy, shape).unwrap();
        let up = |v: &[f32]| s.clone_htod(v).unwrap();
        let poison = |n: usize| s.clone_htod(&vec![POISON; n]).unwrap();
        let (xd, wd, bd, dyd) = (up(&x), up(&w), up(&b), up(&dy));
        let mut yd = poison(bn * fout);
        cuda::forward(&s, &xd, &wd, &bd, &mut yd, shape).unwrap();
        let tol = |k: usize| 2e-6 * k as f32 + 1e-6;
        assert_close(&format!("y {shape:?}"), &s.clone_dtoh(&yd).unwrap(), &y, tol(fin), 1e-5);
        let (mut dxd, mut dwd, mut dbd) = (poison(bn * fin), poison(fout * fin), poison(fout));
        cuda::backward(&s, &xd, &wd, &dyd, &mut dxd, &mut dwd, &mut dbd, shape).unwrap();
        assert_close(&format!("dx {shape:?}"), &s.clone_dtoh(&dxd).unwrap(), &g.dx, tol(fout), 1e-5);
        assert_close(&format!("dw {shape:?}"), &s.clone_dtoh(&dwd).unwrap(), &g.dw, tol(bn), 1e-5);
        // The bias gradient sums the rows in the same order on both sides.
        assert_eq!(s.clone_dtoh(&dbd).unwrap(), g.db, "db {shape:?}");
    }
    let xd = s.clone_htod(&[0.0f32; 5]).unwrap();
    let mut yd = s.clone_htod(&[0.0f32; 4]).unwrap();
    let r = cuda::forward(&s, &xd, &s.clone_htod(&W).unwrap(), &s.clone_htod(&B).unwrap(), &mut yd, SHAPE);
    assert!(matches!(r, Err(Error::Shape { .. })));
}
