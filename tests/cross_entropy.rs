//! Weighted cross-entropy: hand-worked PyTorch values, finite differences, bad input, GPU vs CPU.
#![allow(clippy::excessive_precision)] // expected values are written as computed, in f64
mod common;

use common::{assert_close, gpu, labels, rng, uniform, POISON};
use evenclass::cross_entropy::{cpu, cuda, weights_from_recall, LogitAdjust, Options, Reduction};
use evenclass::Error;
use ndarray::{arr1, arr2, Array1, Array2};

// Worked from PyTorch's documented formula (LossNLL.cpp, cross_entropy_loss_label_smoothing):
// l_i = (1-eps) w[t] (-logp_t) + eps/C sum_c w_c (-logp_c); mean divides by sum of w[t_i] over
// non-ignored samples. Row 0: lse(1,2,3) = 3.4076059644, so -logp_2 = 0.4076059644.
fn x4() -> Array2<f32> {
    arr2(&[[1.0, 2.0, 3.0], [1.0, -1.0, 0.5], [0.0, 0.25, -2.0], [3.0, 3.0, -1.0]])
}
const W: [f32; 3] = [0.2, 0.7, 1.6];

fn opts(ignore: Option<i32>, eps: f32, reduction: Reduction) -> Options {
    Options { ignore_index: ignore, label_smoothing: eps, reduction }
}

fn rows013(x: &Array2<f32>) -> Array2<f32> {
    x.select(ndarray::Axis(0), &[0, 1, 3])
}

#[test]
fn plain_none_and_mean() {
    let x = rows013(&x4());
    let t = arr1(&[2, 0, 1]);
    let none = cpu::forward(x.view(), t.view(), None, &opts(None, 0.0, Reduction::None)).unwrap();
    assert_close("none", none.as_slice().unwrap(), &[0.40760596, 0.55495692, 0.70226332], 1e-6, 1e-6);
    let mean = cpu::forward(x.view(), t.view(), None, &Options::default()).unwrap();
    assert_close("mean", mean.as_slice().unwrap(), &[0.55494207], 1e-6, 1e-6);
}

#[test]
fn class_weights_mean_divides_by_target_weight() {
    let x = rows013(&x4());
    let t = arr1(&[2, 0, 1]);
    let w = arr1(&W);
    let mean = cpu::forward(x.view(), t.view(), Some(w.view()), &opts(None, 0.0, Reduction::Mean)).unwrap();
    assert_close("weighted mean", mean.as_slice().unwrap(), &[0.50189810], 1e-6, 1e-6);
    let sum = cpu::forward(x.view(), t.view(), Some(w.view()), &opts(None, 0.0, Reduction::Sum)).unwrap();
    assert_close("weighted sum", sum.as_slice().unwrap(), &[1.25474525], 1e-6, 1e-6);
}

#[test]
fn ignore_index_drops_the_sample_from_loss_and_denominator() {
    let w = arr1(&W);
    let t = arr1(&[2, 0, -100, 1]);
    let mean = cpu::forward(x4().view(), t.view(), Some(w.view()), &opts(Some(-100), 0.0, Reduction::Mean)).unwrap();
    // Same as the three-sample case without the ignored row.
    assert_close("ignored", mean.as_slice().unwrap(), &[0.50189810], 1e-6, 1e-6);
}

#[test]
fn label_smoothing_alone() {
    let x = rows013(&x4());
    let t = arr1(&[2, 0, 1]);
    let mean = cpu::forward(x.view(), t.view(), None, &opts(None, 0.1, Reduction::Mean)).unwrap();
    assert_close("smoothing", mean.as_slice().unwrap(), &[0.66049762], 1e-6, 1e-6);
}

#[test]
fn all_options_together() {
    let w = arr1(&W);
    let t = arr1(&[2, 0, -100, 1]);
    let run = |r| cpu::forward(x4().view(), t.view(), Some(w.view()), &opts(Some(-100), 0.1, r)).unwrap();
    assert_close(
        "none",
        run(Reduction::None).as_slice().unwrap(),
        &[0.65758642, 0.21947199, 0.0, 0.71428117],
        1e-6,
        1e-6,
    );
    assert_close("sum", run(Reduction::Sum).as_slice().unwrap(), &[1.59133958], 1e-6, 1e-6);
    assert_close("mean", run(Reduction::Mean).as_slice().unwrap(), &[0.63653583], 1e-6, 1e-6);
}

#[test]
fn all_ignored_mean_is_zero_with_zero_gradient() {
    // PyTorch gives 0/0 = NaN here; we define loss 0 and gradient 0 (see cross_entropy docs).
    let t = arr1(&[-100, -100, -100, -100]);
    let o = opts(Some(-100), 0.1, Reduction::Mean);
    let (loss, grad) = cpu::forward_backward(x4().view(), t.view(), Some(arr1(&W).view()), &o).unwrap();
    assert_eq!(loss[0], 0.0);
    assert!(grad.iter().all(|&g| g == 0.0));
}

#[test]
fn nan_logits_give_nan_loss() {
    let mut x = x4();
    x[[1, 2]] = f32::NAN;
    let t = arr1(&[2, 0, 1, 1]);
    let none = cpu::forward(x.view(), t.view(), None, &opts(None, 0.0, Reduction::None)).unwrap();
    assert!(none[1].is_nan() && !none[0].is_nan());
    let mean = cpu::forward(x.view(), t.view(), None, &Options::default()).unwrap();
    assert!(mean[0].is_nan());
    // An ignored row's NaN does not leak (PyTorch masks it too).
    let t = arr1(&[2, -100, 1, 1]);
    let mean = cpu::forward(x.view(), t.view(), None, &Options::default()).unwrap();
    assert!(mean[0].is_finite());
}

/// Central differences of the scalar sum_i g_i * l_i (or the reduced loss) against `backward`.
fn check_grad(o: Options, weighted: bool, seed: u64) {
    let (n, c) = (6, 5);
    let mut r = rng(seed);
    let x = Array2::from_shape_vec((n, c), uniform(&mut r, n * c, -3.0, 3.0)).unwrap();
    let mut t = Array1::from(labels(&mut r, n, c));
    t[2] = -7; // ignored when o.ignore_index == Some(-7)
    let w = Array1::from(uniform(&mut r, c, 0.1, 2.0));
    let w = weighted.then_some(w.view());
    let go = Array1::from(uniform(&mut r, o.loss_len(n), 0.5, 1.5));
    let grad = cpu::backward(x.view(), t.view(), w, &o, go.view()).unwrap();
    let f = |x: &Array2<f32>| -> f64 {
        let l = cpu::forward(x.view(), t.view(), w, &o).unwrap();
        l.iter().zip(go.iter()).map(|(&a, &b)| a as f64 * b as f64).sum()
    };
    let h = 1e-2f32;
    for i in 0..n {
        for k in 0..c {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[[i, k]] += h;
            xm[[i, k]] -= h;
            let fd = ((f(&xp) - f(&xm)) / (2.0 * h as f64)) as f32;
            let g = grad[[i, k]];
            assert!((g - fd).abs() <= 2e-3 + 1e-2 * fd.abs(), "{o:?} grad[{i},{k}] = {g}, finite difference {fd}");
        }
    }
    // The fused pass gives the same gradient for upstream 1.
    let (_, fused) = cpu::forward_backward(x.view(), t.view(), w, &o).unwrap();
    let ones = Array1::from_elem(o.loss_len(n), 1.0f32);
    let unit = cpu::backward(x.view(), t.view(), w, &o, ones.view()).unwrap();
    assert_close("fused", fused.as_slice().unwrap(), unit.as_slice().unwrap(), 1e-7, 1e-6);
}

#[test]
fn backward_matches_finite_differences() {
    let mut seed = 10;
    for reduction in [Reduction::None, Reduction::Sum, Reduction::Mean] {
        for eps in [0.0, 0.2] {
            for weighted in [false, true] {
                seed += 1;
                check_grad(opts(Some(-7), eps, reduction), weighted, seed);
            }
        }
    }
}

#[test]
fn bad_inputs_are_errors() {
    let x = x4();
    let o = Options::default();
    let e = cpu::forward(x.view(), arr1(&[0, 1, 3, 0]).view(), None, &o).unwrap_err();
    assert!(matches!(e, Error::InvalidTarget { index: 2, value: 3, classes: 3, .. }), "{e}");
    let e = cpu::forward(x.view(), arr1(&[0, -1, 0, 0]).view(), None, &o).unwrap_err();
    assert!(matches!(e, Error::InvalidTarget { index: 1, value: -1, .. }), "{e}");
    let e = cpu::forward(x.view(), arr1(&[0, 1, 2]).view(), None, &o).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = cpu::forward(x.view(), arr1(&[0, 1, 2, 0]).view(), Some(arr1(&[1.0, 2.0]).view()), &o).unwrap_err();
    assert!(e.to_string().contains("weight has 2 elements, expected 3"), "{e}");
    let bad = Options { label_smoothing: 1.5, ..o };
    assert!(cpu::forward(x.view(), arr1(&[0, 1, 2, 0]).view(), None, &bad).is_err());
    let go = arr1(&[1.0f32, 1.0]);
    assert!(cpu::backward(x.view(), arr1(&[0, 1, 2, 0]).view(), None, &o, go.view()).is_err());
}

#[test]
fn practitioner_weights() {
    // The practitioner's example says p = 4, rates [0.956.., 0.736.., 0.780..] give weights
    // [0.7436.., 1.2530.., 1.1150..]. Those weights are what p = 2 gives; p = 4 gives their
    // squares. We reproduce both facts (see README, "The practitioner's numbers").
    let r = [0.9560878243512974, 0.7365384615384616, 0.7807933194154488];
    let want = [0.743631046434835, 1.2530321887900169, 1.1150155156144919];
    let w2 = weights_from_recall(&r, 2.0, 1e-3).unwrap();
    for (a, b) in w2.iter().zip(want) {
        assert!((a - b).abs() < 1e-12, "{w2:?}");
    }
    let w = weights_from_recall(&r, 4.0, 1e-3).unwrap();
    for (a, b) in w.iter().zip(want) {
        assert!((a - b * b).abs() < 1e-12, "{w:?}");
    }
    // Same as the practitioner's own form (1 - (r - mean) / r)^p.
    let mean = r.iter().sum::<f64>() / 3.0;
    for (a, &rc) in w.iter().zip(&r) {
        assert!((a - (1.0 - (rc - mean) / rc).powi(4)).abs() < 1e-12);
    }
    // Recall 0 is clamped, finite, and still the largest weight.
    let w = weights_from_recall(&[0.9, 0.0, 0.6], 4.0, 0.001).unwrap();
    assert!(w.iter().all(|v| v.is_finite()) && w[1] > w[2] && w[2] > w[0]);
    assert!(weights_from_recall(&[0.9, 1.2], 4.0, 0.001).is_err());
    assert!(weights_from_recall(&[0.9], 4.0, 0.0).is_err());
}

// ---- Logit scale and offset (LogitAdjust) ---------------------------------------------------

/// A random case: logits, targets (one ignored), weights, scale in [0.3, 2.5], offset in [-2, 2].
#[allow(clippy::type_complexity)]
fn adjusted_case(n: usize, c: usize, seed: u64) -> (Array2<f32>, Array1<i32>, Array1<f32>, Vec<f32>, Vec<f32>) {
    let mut r = rng(seed);
    let x = Array2::from_shape_vec((n, c), uniform(&mut r, n * c, -3.0, 3.0)).unwrap();
    let mut t = Array1::from(labels(&mut r, n, c));
    t[n / 2] = -7;
    let w = Array1::from(uniform(&mut r, c, 0.1, 2.0));
    let scale = uniform(&mut r, c, 0.3, 2.5);
    let offset = uniform(&mut r, c, -2.0, 2.0);
    (x, t, w, scale, offset)
}

fn all_options() -> Vec<Options> {
    let mut v = vec![];
    for reduction in [Reduction::None, Reduction::Sum, Reduction::Mean] {
        for eps in [0.0, 0.2] {
            v.push(opts(Some(-7), eps, reduction));
        }
    }
    v
}

#[test]
fn adjusted_with_none_is_bit_identical_to_the_plain_loss() {
    let (x, t, w, _, _) = adjusted_case(9, 7, 31);
    for o in all_options() {
        for wt in [None, Some(w.view())] {
            let (l0, g0) = cpu::forward_backward(x.view(), t.view(), wt, &o).unwrap();
            let (l1, g1) = cpu::forward_backward_adjusted(x.view(), t.view(), wt, &LogitAdjust::NONE, &o).unwrap();
            let bits = |a: &[f32]| a.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(l0.as_slice().unwrap()), bits(l1.as_slice().unwrap()), "{o:?}");
            assert_eq!(bits(g0.as_slice().unwrap()), bits(g1.as_slice().unwrap()), "{o:?}");
            // Scale all ones and offset all zeros, given explicitly, are bit-identical too.
            let (ones, zeros) = (vec![1.0f32; 7], vec![0.0f32; 7]);
            let a = LogitAdjust { scale: Some(&ones), offset: Some(&zeros) };
            let (l2, g2) = cpu::forward_backward_adjusted(x.view(), t.view(), wt, &a, &o).unwrap();
            assert_eq!(bits(l0.as_slice().unwrap()), bits(l2.as_slice().unwrap()), "{o:?}");
            assert_eq!(bits(g0.as_slice().unwrap()), bits(g2.as_slice().unwrap()), "{o:?}");
        }
    }
}

#[test]
fn adjusted_equals_the_plain_loss_on_adjusted_logits() {
    // Loss: the same function of u, so only the f32 rounding of u = s*x + o (done here in f32,
    // in f64 inside the reference) differs: |u| <= 2.5*3 + 2 < 16, one f32 ulp there is 1e-6,
    // and the loss is 1-Lipschitz in each u_c per unit weight: 1e-5 relative is ample.
    // Gradient: dL/dx_c = s_c * dL/du_c, so the plain gradient on u times s_c.
    let (x, t, w, scale, offset) = adjusted_case(11, 6, 32);
    let u = Array2::from_shape_fn(x.dim(), |(i, k)| scale[k] * x[[i, k]] + offset[k]);
    for o in all_options() {
        let a = LogitAdjust { scale: Some(&scale), offset: Some(&offset) };
        let (la, ga) = cpu::forward_backward_adjusted(x.view(), t.view(), Some(w.view()), &a, &o).unwrap();
        let (lp, gp) = cpu::forward_backward(u.view(), t.view(), Some(w.view()), &o).unwrap();
        let gp = Array2::from_shape_fn(gp.dim(), |(i, k)| gp[[i, k]] * scale[k]);
        assert_close(&format!("loss {o:?}"), la.as_slice().unwrap(), lp.as_slice().unwrap(), 1e-5, 1e-5);
        assert_close(&format!("grad {o:?}"), ga.as_slice().unwrap(), gp.as_slice().unwrap(), 1e-5, 1e-5);
        // Forward alone gives the fused pass's loss.
        let lf = cpu::forward_adjusted(x.view(), t.view(), Some(w.view()), &a, &o).unwrap();
        assert_eq!(lf, la);
    }
}

#[test]
fn adjusted_backward_matches_finite_differences() {
    let (n, c) = (6, 5);
    let mut seed = 40;
    for o in all_options() {
        for which in 0..3 {
            seed += 1;
            let (x, t, w, scale, offset) = adjusted_case(n, c, seed);
            let a = match which {
                0 => LogitAdjust { scale: Some(&scale), offset: None },
                1 => LogitAdjust { scale: None, offset: Some(&offset) },
                _ => LogitAdjust { scale: Some(&scale), offset: Some(&offset) },
            };
            let go = Array1::from(uniform(&mut rng(seed + 1000), o.loss_len(n), 0.5, 1.5));
            let grad = cpu::backward_adjusted(x.view(), t.view(), Some(w.view()), &a, &o, go.view()).unwrap();
            let f = |x: &Array2<f32>| -> f64 {
                let l = cpu::forward_adjusted(x.view(), t.view(), Some(w.view()), &a, &o).unwrap();
                l.iter().zip(go.iter()).map(|(&a, &b)| a as f64 * b as f64).sum()
            };
            // Step 1e-2 in x is at most 2.5e-2 in u; the central difference's error is O(h^2 *
            // third derivative * s^3), the f32 loss rounding ~1e-7 / h: the same bound as the
            // plain check_grad, widened for scales up to 2.5.
            let h = 1e-2f32;
            for i in 0..n {
                for k in 0..c {
                    let (mut xp, mut xm) = (x.clone(), x.clone());
                    xp[[i, k]] += h;
                    xm[[i, k]] -= h;
                    let fd = ((f(&xp) - f(&xm)) / (2.0 * h as f64)) as f32;
                    let g = grad[[i, k]];
                    assert!((g - fd).abs() <= 3e-3 + 2e-2 * fd.abs(), "{o:?} {a:?} grad[{i},{k}] = {g}, fd {fd}");
                }
            }
            let (_, fused) = cpu::forward_backward_adjusted(x.view(), t.view(), Some(w.view()), &a, &o).unwrap();
            let ones = Array1::from_elem(o.loss_len(n), 1.0f32);
            let unit = cpu::backward_adjusted(x.view(), t.view(), Some(w.view()), &a, &o, ones.view()).unwrap();
            assert_close("fused", fused.as_slice().unwrap(), unit.as_slice().unwrap(), 1e-7, 1e-6);
        }
    }
}

#[test]
fn adjusted_pytorch_values() {
    // From scripts/pytorch_logit_adjust.py (PyTorch, f64, autograd through u = s * x + o, then
    // F.cross_entropy(u, t, weight, ignore_index=-100, ...)); the gradient is of the summed loss.
    // Tolerance 1e-6: the reference accumulates in f64 but rounds its outputs to f32 (|v| < 4).
    let (s, o) = ([1.5f32, 0.5, 2.0], [0.25f32, -1.0, 0.75]);
    let a = LogitAdjust { scale: Some(&s), offset: Some(&o) };
    let t = arr1(&[2, 0, -100, 1]);
    let w = arr1(&W);
    let (l, g) =
        cpu::forward_backward_adjusted(x4().view(), t.view(), Some(w.view()), &a, &Options::default()).unwrap();
    assert_close("mean loss", l.as_slice().unwrap(), &[1.25667886], 1e-6, 1e-6);
    let want = [
        0.00641767286,
        0.00037174144,
        -0.0100438629,
        -0.0611411035,
        0.000760735695,
        0.0784785286,
        0.0,
        0.0,
        0.0,
        0.413083745,
        -0.138035892,
        0.00136524297,
    ];
    assert_close("mean grad", g.as_slice().unwrap(), &want, 1e-6, 1e-6);
    let o2 = opts(Some(-100), 0.1, Reduction::None);
    let (l, g) = cpu::forward_backward_adjusted(x4().view(), t.view(), Some(w.view()), &a, &o2).unwrap();
    assert_close("none loss", l.as_slice().unwrap(), &[0.20283372, 0.263418504, 0.0, 3.10851112], 1e-6, 1e-6);
    let want = [
        0.00527539842,
        -0.0107818446,
        0.0360935138,
        -0.0862561325,
        -0.00916257834,
        0.15165849,
        0.0,
        0.0,
        0.0,
        1.04238002,
        -0.321662868,
        -0.103188548,
    ];
    assert_close("none grad", g.as_slice().unwrap(), &want, 1e-6, 1e-6);
}

#[test]
fn adjusted_lengths_are_checked() {
    let (x, t, _, scale, offset) = adjusted_case(4, 3, 33);
    let o = opts(Some(-7), 0.0, Reduction::Mean);
    let short = &scale[..2];
    let a = LogitAdjust { scale: Some(short), offset: None };
    let e = cpu::forward_adjusted(x.view(), t.view(), None, &a, &o).unwrap_err();
    assert!(
        matches!(e, Error::Shape { .. }) && e.to_string().contains("logit scale has 2 elements, expected 3"),
        "{e}"
    );
    let long = [offset.clone(), vec![0.0]].concat();
    let a = LogitAdjust { scale: Some(&scale), offset: Some(&long) };
    let e = cpu::forward_backward_adjusted(x.view(), t.view(), None, &a, &o).unwrap_err();
    assert!(e.to_string().contains("logit offset has 4 elements, expected 3"), "{e}");
    assert!(LogitAdjust::NONE.is_none() && LogitAdjust::default() == LogitAdjust::NONE);
    assert!(LogitAdjust::NONE.check("x", 3).is_ok());
}

// ---- GPU against the CPU reference -----------------------------------------------------------

fn gpu_case<T: evenclass::cuda::Dtype>(n: usize, c: usize, o: Options, weighted: bool, seed: u64, tol: f32) {
    let s = gpu();
    let mut r = rng(seed);
    // Round the inputs through T so both sides see the same logits.
    let xt: Vec<T> = uniform(&mut r, n * c, -6.0, 6.0).into_iter().map(T::from_f32).collect();
    let x = Array2::from_shape_vec((n, c), xt.iter().map(|v| v.to_f32()).collect()).unwrap();
    let mut t = labels(&mut r, n, c);
    if n > 3 {
        t[n / 2] = -100;
    }
    let w: Vec<f32> = uniform(&mut r, c, 0.2, 3.0);
    let wa = Array1::from(w.clone());
    let ta = Array1::from(t.clone());
    let (want_loss, want_grad) = cpu::forward_backward(x.view(), ta.view(), weighted.then_some(wa.view()), &o).unwrap();

    let dx = s.clone_htod(&xt).unwrap();
    let dt = s.clone_htod(&t).unwrap();
    let dw = s.clone_htod(&w).unwrap();
    let mut loss = s.clone_htod(&vec![POISON; o.loss_len(n)]).unwrap();
    let mut grad = s.clone_htod(&vec![T::from_f32(POISON); n * c]).unwrap();
    let mut ws = cuda::Workspace::new(&s).unwrap();
    let wv = dw.as_view();
    cuda::forward_backward(
        &s,
        &mut ws,
        &dx.as_view(),
        &dt.as_view(),
        weighted.then_some(&wv),
        c,
        &o,
        &mut loss,
        &mut grad,
    )
    .unwrap();
    let got_loss = s.clone_dtoh(&loss).unwrap();
    let got_grad: Vec<f32> = s.clone_dtoh(&grad).unwrap().into_iter().map(|v| v.to_f32()).collect();
    let what = format!("{} n={n} c={c} {o:?} weighted={weighted}", T::SUFFIX);
    assert_close(&format!("loss {what}"), &got_loss, want_loss.as_slice().unwrap(), tol, tol);
    // Gradients are stored in T: allow its rounding.
    assert_close(&format!("grad {what}"), &got_grad, want_grad.as_slice().unwrap(), tol * 1e-2, tol);

    // Forward alone and backward alone agree with the fused pass.
    let mut loss2 = s.clone_htod(&vec![POISON; o.loss_len(n)]).unwrap();
    cuda::forward(&s, &mut ws, &dx.as_view(), &dt.as_view(), weighted.then_some(&wv), c, &o, &mut loss2).unwrap();
    assert_close(&format!("forward {what}"), &s.clone_dtoh(&loss2).unwrap(), &got_loss, 1e-6, 1e-6);
    let go = s.clone_htod(&vec![1.0f32; o.loss_len(n)]).unwrap();
    let mut grad2 = s.clone_htod(&vec![T::from_f32(POISON); n * c]).unwrap();
    cuda::backward(
        &s,
        &mut ws,
        &dx.as_view(),
        &dt.as_view(),
        weighted.then_some(&wv),
        c,
        &o,
        &go.as_view(),
        &mut grad2,
    )
    .unwrap();
    let g2: Vec<f32> = s.clone_dtoh(&grad2).unwrap().into_iter().map(|v| v.to_f32()).collect();
    assert_close(&format!("backward {what}"), &g2, &got_grad, 1e-6, 1e-6);
}

const SIZES: [(usize, usize); 9] =
    [(1, 2), (7, 3), (33, 10), (257, 10), (100, 37), (5, 1000), (9, 1025), (3, 4097), (2, 32768)];

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_matches_cpu_f32() {
    let mut seed = 100;
    for (n, c) in SIZES {
        for o in [
            Options::default(),
            opts(Some(-100), 0.1, Reduction::Mean),
            opts(Some(-100), 0.0, Reduction::Sum),
            opts(Some(-100), 0.25, Reduction::None),
        ] {
            for weighted in [false, true] {
                seed += 1;
                gpu_case::<f32>(n, c, o, weighted, seed, 1e-4);
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_matches_cpu_f16_bf16() {
    let mut seed = 500;
    for (n, c) in SIZES {
        let o = opts(Some(-100), 0.1, Reduction::Mean);
        seed += 1;
        gpu_case::<half::f16>(n, c, o, true, seed, 1e-2);
        gpu_case::<half::bf16>(n, c, o, true, seed, 2e-2);
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_all_ignored_and_nan() {
    let s = gpu();
    let (n, c) = (5, 4);
    let mut r = rng(7);
    let mut x = uniform(&mut r, n * c, -1.0, 1.0);
    let dt = s.clone_htod(&vec![-100i32; n]).unwrap();
    let mut ws = cuda::Workspace::new(&s).unwrap();
    let dx = s.clone_htod(&x).unwrap();
    let mut loss = s.clone_htod(&[POISON]).unwrap();
    let mut grad = s.clone_htod(&vec![POISON; n * c]).unwrap();
    let o = opts(Some(-100), 0.1, Reduction::Mean);
    cuda::forward_backward(&s, &mut ws, &dx.as_view(), &dt.as_view(), None, c, &o, &mut loss, &mut grad).unwrap();
    assert_eq!(s.clone_dtoh(&loss).unwrap(), vec![0.0]);
    assert!(s.clone_dtoh(&grad).unwrap().iter().all(|&g| g == 0.0));

    x[c + 1] = f32::NAN;
    let dx = s.clone_htod(&x).unwrap();
    let dt = s.clone_htod(&[0i32, 1, 2, 3, 0]).unwrap();
    cuda::forward_backward(&s, &mut ws, &dx.as_view(), &dt.as_view(), None, c, &o, &mut loss, &mut grad).unwrap();
    assert!(s.clone_dtoh(&loss).unwrap()[0].is_nan());
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_bad_targets_and_shapes_are_errors() {
    let s = gpu();
    let (n, c) = (300, 10);
    let mut r = rng(8);
    let dx = s.clone_htod(&uniform(&mut r, n * c, -1.0, 1.0)).unwrap();
    let mut t = labels(&mut r, n, c);
    t[201] = -3;
    t[77] = c as i32;
    let dt = s.clone_htod(&t).unwrap();
    let mut ws = cuda::Workspace::new(&s).unwrap();
    let mut loss = s.alloc_zeros::<f32>(1).unwrap();
    let mut grad = s.alloc_zeros::<f32>(n * c).unwrap();
    let o = Options::default();
    let e = cuda::forward_backward(&s, &mut ws, &dx.as_view(), &dt.as_view(), None, c, &o, &mut loss, &mut grad)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidTarget { index: 77, value: 10, classes: 10, .. }), "{e}");
    // The flag was cleared: a valid call afterwards succeeds.
    let good = s.clone_htod(&labels(&mut r, n, c)).unwrap();
    cuda::forward_backward(&s, &mut ws, &dx.as_view(), &good.as_view(), None, c, &o, &mut loss, &mut grad).unwrap();
    // Wrong lengths are caught before any launch.
    let short = s.alloc_zeros::<f32>(n * c - 1).unwrap();
    let e = cuda::forward(&s, &mut ws, &short.as_view(), &good.as_view(), None, c, &o, &mut loss).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let w = s.alloc_zeros::<f32>(c + 1).unwrap();
    let e =
        cuda::forward(&s, &mut ws, &dx.as_view(), &good.as_view(), Some(&w.as_view()), c, &o, &mut loss).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
}

// ---- online class-weight rules -------------------------------------------------------------------

#[test]
fn eg_update_moves_weight_to_the_worse_class_and_keeps_mean_one() {
    use evenclass::cross_entropy::weights::eg_update;
    let w = eg_update(&[1.0, 1.0, 1.0], &[0.1, 0.5, 0.1], 2.0).unwrap();
    // exp(2 * 0.4) = 2.2255 times the others, mean 1.
    let e = (0.8f64).exp();
    let want = [3.0 / (2.0 + e), 3.0 * e / (2.0 + e), 3.0 / (2.0 + e)];
    for (g, w) in w.iter().zip(want) {
        assert!((g - w).abs() < 1e-12, "{g} vs {w}");
    }
    // Steps compose multiplicatively, and step 0 only renormalizes.
    let twice = eg_update(&eg_update(&[1.0, 2.0], &[1.0, 0.0], 0.5).unwrap(), &[1.0, 0.0], 0.5).unwrap();
    let once = eg_update(&[1.0, 2.0], &[1.0, 0.0], 1.0).unwrap();
    assert!(twice.iter().zip(&once).all(|(a, b)| (a - b).abs() < 1e-12));
    let w = eg_update(&[2.0, 6.0], &[9.0, -9.0], 0.0).unwrap();
    assert!((w[0] - 0.5).abs() < 1e-12 && (w[1] - 1.5).abs() < 1e-12, "{w:?}");
    // Huge steps saturate instead of overflowing.
    let w = eg_update(&[1.0, 1.0], &[1.0, 0.0], 1e6).unwrap();
    assert!((w[0] - 2.0).abs() < 1e-12 && w[1] >= 0.0, "{w:?}");
    // Bad input.
    assert!(eg_update(&[], &[], 1.0).is_err());
    assert!(eg_update(&[1.0], &[1.0, 2.0], 1.0).is_err());
    assert!(eg_update(&[1.0, 0.0], &[1.0, 2.0], 1.0).is_err());
    assert!(eg_update(&[1.0, 1.0], &[f64::NAN, 2.0], 1.0).is_err());
    assert!(eg_update(&[1.0, 1.0], &[1.0, 2.0], -1.0).is_err());
}

#[test]
fn difficulty_weights_follow_one_minus_accuracy_to_the_tau() {
    use evenclass::cross_entropy::weights::difficulty_weights;
    // (1 - acc) = [0.5, 0.25] -> tau 1: [2, 1] / 1.5.
    let w = difficulty_weights(&[0.5, 0.75], 1.0, 1e-3).unwrap();
    assert!((w[0] - 4.0 / 3.0).abs() < 1e-12 && (w[1] - 2.0 / 3.0).abs() < 1e-12, "{w:?}");
    // tau 0: uniform; tau 2: squares.
    assert_eq!(difficulty_weights(&[0.1, 0.9, 0.5], 0.0, 1e-3).unwrap(), vec![1.0; 3]);
    let w = difficulty_weights(&[0.5, 0.75], 2.0, 1e-3).unwrap();
    assert!((w[0] / w[1] - 4.0).abs() < 1e-12);
    // A perfect class keeps a small positive weight (the floor).
    let w = difficulty_weights(&[1.0, 0.5], 1.0, 0.01).unwrap();
    assert!(w[0] > 0.0 && (w[1] / w[0] - 50.0).abs() < 1e-9, "{w:?}");
    // Bad input.
    assert!(difficulty_weights(&[], 1.0, 0.01).is_err());
    assert!(difficulty_weights(&[1.2], 1.0, 0.01).is_err());
    assert!(difficulty_weights(&[0.5], -1.0, 0.01).is_err());
    assert!(difficulty_weights(&[0.5], 1.0, 0.0).is_err());
}

/// The adjusted kernel against the adjusted CPU reference, each adjustment kind, fused and split
/// passes, on poisoned outputs.
fn gpu_adjusted_case<T: evenclass::cuda::Dtype>(n: usize, c: usize, o: Options, which: usize, seed: u64, tol: f32) {
    let s = gpu();
    let mut r = rng(seed);
    let xt: Vec<T> = uniform(&mut r, n * c, -4.0, 4.0).into_iter().map(T::from_f32).collect();
    let x = Array2::from_shape_vec((n, c), xt.iter().map(|v| v.to_f32()).collect()).unwrap();
    let mut t = labels(&mut r, n, c);
    if n > 3 {
        t[n / 2] = -100;
    }
    let w: Vec<f32> = uniform(&mut r, c, 0.2, 3.0);
    let scale: Vec<f32> = uniform(&mut r, c, 0.3, 2.0);
    let offset: Vec<f32> = uniform(&mut r, c, -2.0, 2.0);
    let (use_s, use_o) = [(true, false), (false, true), (true, true)][which];
    let host = LogitAdjust { scale: use_s.then_some(&scale[..]), offset: use_o.then_some(&offset[..]) };
    let (wa, ta) = (Array1::from(w.clone()), Array1::from(t.clone()));
    let (want_loss, want_grad) =
        cpu::forward_backward_adjusted(x.view(), ta.view(), Some(wa.view()), &host, &o).unwrap();

    let (dx, dt, dw) = (s.clone_htod(&xt).unwrap(), s.clone_htod(&t).unwrap(), s.clone_htod(&w).unwrap());
    let (ds, doff) = (s.clone_htod(&scale).unwrap(), s.clone_htod(&offset).unwrap());
    let (sv, ov, wv) = (ds.as_view(), doff.as_view(), dw.as_view());
    let dev = cuda::LogitAdjust { scale: use_s.then_some(&sv), offset: use_o.then_some(&ov) };
    let mut loss = s.clone_htod(&vec![POISON; o.loss_len(n)]).unwrap();
    let mut grad = s.clone_htod(&vec![T::from_f32(POISON); n * c]).unwrap();
    let mut ws = cuda::Workspace::new(&s).unwrap();
    let (xv, tv) = (dx.as_view(), dt.as_view());
    cuda::forward_backward_adjusted(&s, &mut ws, &xv, &tv, Some(&wv), &dev, c, &o, &mut loss, &mut grad).unwrap();
    let got_loss = s.clone_dtoh(&loss).unwrap();
    let got_grad: Vec<f32> = s.clone_dtoh(&grad).unwrap().into_iter().map(|v| v.to_f32()).collect();
    let what = format!("{} n={n} c={c} {o:?} scale={use_s} offset={use_o}", T::SUFFIX);
    assert_close(&format!("loss {what}"), &got_loss, want_loss.as_slice().unwrap(), tol, tol);
    assert_close(&format!("grad {what}"), &got_grad, want_grad.as_slice().unwrap(), tol * 1e-2, tol);

    let mut loss2 = s.clone_htod(&vec![POISON; o.loss_len(n)]).unwrap();
    cuda::forward_adjusted(&s, &mut ws, &xv, &tv, Some(&wv), &dev, c, &o, &mut loss2).unwrap();
    assert_close(&format!("forward {what}"), &s.clone_dtoh(&loss2).unwrap(), &got_loss, 1e-6, 1e-6);
    let go = s.clone_htod(&vec![1.0f32; o.loss_len(n)]).unwrap();
    let mut grad2 = s.clone_htod(&vec![T::from_f32(POISON); n * c]).unwrap();
    cuda::backward_adjusted(&s, &mut ws, &xv, &tv, Some(&wv), &dev, c, &o, &go.as_view(), &mut grad2).unwrap();
    let g2: Vec<f32> = s.clone_dtoh(&grad2).unwrap().into_iter().map(|v| v.to_f32()).collect();
    assert_close(&format!("backward {what}"), &g2, &got_grad, 1e-6, 1e-6);
}

// Tolerances are those of the plain GPU tests (gpu_case): the adjustment adds one f32 multiply
// and add per logit (relative error 2^-23 each, |u| <= 10 here) ahead of the same f32 reductions,
// far below 1e-4; f16/bf16 tolerances cover the storage rounding of the gradient.
#[test]
#[ignore = "needs a CUDA device"]
fn gpu_adjusted_matches_cpu() {
    let mut seed = 900;
    for (n, c) in SIZES {
        for o in [Options::default(), opts(Some(-100), 0.1, Reduction::None), opts(Some(-100), 0.0, Reduction::Sum)] {
            for which in 0..3 {
                seed += 1;
                gpu_adjusted_case::<f32>(n, c, o, which, seed, 1e-4);
            }
        }
        seed += 1;
        let o = opts(Some(-100), 0.1, Reduction::Mean);
        gpu_adjusted_case::<half::f16>(n, c, o, 2, seed, 1e-2);
        gpu_adjusted_case::<half::bf16>(n, c, o, 2, seed, 2e-2);
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_adjusted_lengths_are_checked() {
    let s = gpu();
    let (n, c) = (4, 3);
    let dx = s.clone_htod(&vec![0.5f32; n * c]).unwrap();
    let dt = s.clone_htod(&vec![1i32; n]).unwrap();
    let short = s.clone_htod(&[1.0f32, 2.0]).unwrap();
    let sv = short.as_view();
    let mut loss = s.clone_htod(&[POISON]).unwrap();
    let mut grad = s.clone_htod(&vec![POISON; n * c]).unwrap();
    let mut ws = cuda::Workspace::new(&s).unwrap();
    for dev in
        [cuda::LogitAdjust { scale: Some(&sv), offset: None }, cuda::LogitAdjust { scale: None, offset: Some(&sv) }]
    {
        let (xv, tv) = (dx.as_view(), dt.as_view());
        let o = Options::default();
        let e = cuda::forward_backward_adjusted(&s, &mut ws, &xv, &tv, None, &dev, c, &o, &mut loss, &mut grad)
            .unwrap_err();
        assert!(matches!(e, Error::Shape { .. }) && e.to_string().contains("logit"), "{e}");
    }
    // Nothing was written on the error.
    assert_eq!(s.clone_dtoh(&loss).unwrap(), vec![POISON]);
}

/// VS-loss and CDT from per-class recall read as frequency: equal recalls give scale 1 and a
/// constant offset, which leaves the loss, its gradient and every argmax as they were; a
/// harder class gets a smaller scale and a smaller (more negative) offset.
#[test]
fn vs_loss_and_cdt_rules_follow_recall() {
    use evenclass::cross_entropy::weights::{cdt_scale, vs_loss_adjust};
    // Equal recall: scale exactly 1 ((r/r)^gamma = 1^gamma), offset tau ln(1/4) for every class.
    let (s, o) = vs_loss_adjust(&[0.6; 4], 0.15, 1.25, 0.01).unwrap();
    assert_eq!(s, [1.0; 4]);
    let want = 1.25 * 0.25f64.ln();
    assert!(o.iter().all(|&x| x == o[0]) && (o[0] - want).abs() < 1e-12, "{o:?}");
    assert_eq!(cdt_scale(&[0.6; 4], 0.2, 0.01).unwrap(), [1.0; 4]);
    // The constant offset changes neither loss nor gradient: softmax is shift-invariant. Fresh
    // random logits (16 x 4); tolerance 1e-6 relative: the shift moves f32 rounding of the
    // log-sum-exp by a few ulps of values around 1-3.
    let mut r = rng(22);
    let x = Array2::from_shape_vec((16, 4), uniform(&mut r, 64, -3.0, 3.0)).unwrap();
    let t = Array1::from(labels(&mut r, 16, 4));
    let (s32, o32): (Vec<f32>, Vec<f32>) =
        (s.iter().map(|&v| v as f32).collect(), o.iter().map(|&v| v as f32).collect());
    let adjust = LogitAdjust { scale: Some(&s32), offset: Some(&o32) };
    let mean = opts(None, 0.0, Reduction::Mean);
    let (l0, g0) = cpu::forward_backward(x.view(), t.view(), None, &mean).unwrap();
    let (l1, g1) = cpu::forward_backward_adjusted(x.view(), t.view(), None, &adjust, &mean).unwrap();
    assert_close("loss", l1.as_slice().unwrap(), l0.as_slice().unwrap(), 1e-6, 1e-6);
    assert_close("gradient", g1.as_slice().unwrap(), g0.as_slice().unwrap(), 1e-6, 1e-6);
    // Same argmax of the adjusted logits as of the plain ones, row by row.
    for row in x.rows() {
        let argmax = |v: Vec<f32>| (0..4).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
        let adj: Vec<f32> = row.iter().zip(&s32).zip(&o32).map(|((x, s), o)| s * x + o).collect();
        assert_eq!(argmax(adj), argmax(row.to_vec()));
    }
    // Class 1 is the hardest, class 2 the easiest: smallest scale and offset for class 1,
    // scale 1 for the easiest; scale (0.3/0.9)^0.5 by hand, offset 2 ln(0.3/2.1).
    let rec = [0.5, 0.3, 0.9, 0.4];
    let (s, o) = vs_loss_adjust(&rec, 0.5, 2.0, 0.01).unwrap();
    let by = |v: &[f64]| {
        let mut i: Vec<usize> = (0..4).collect();
        i.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
        i
    };
    assert_eq!(by(&s), [1, 3, 0, 2]);
    assert_eq!(by(&o), [1, 3, 0, 2]);
    assert_eq!(s[2], 1.0);
    assert!((s[1] - (1.0f64 / 3.0).sqrt()).abs() < 1e-12 && (o[1] - 2.0 * (0.3f64 / 2.1).ln()).abs() < 1e-12);
    assert_eq!(cdt_scale(&rec, 0.5, 0.01).unwrap(), s, "CDT's scale is VS-loss's");
    // gamma 0 and tau 0: no adjustment at all.
    let (s0, o0) = vs_loss_adjust(&rec, 0.0, 0.0, 0.01).unwrap();
    assert!(s0.iter().all(|&v| v == 1.0) && o0.iter().all(|&v| v == 0.0), "{s0:?} {o0:?}");
    // A class at recall 0 is floored: positive scale, finite offset.
    let (s, o) = vs_loss_adjust(&[0.0, 1.0], 1.0, 1.0, 0.1).unwrap();
    assert!((s[0] - 0.1).abs() < 1e-12 && o[0].is_finite(), "{s:?} {o:?}");
    // Bad input is an error, never a panic or a NaN.
    for (rec, g, t, f) in [
        (&[0.5, 1.5][..], 0.1, 1.0, 0.01),
        (&[0.5, f64::NAN][..], 0.1, 1.0, 0.01),
        (&[][..], 0.1, 1.0, 0.01),
        (&[0.5, 0.5][..], -0.1, 1.0, 0.01),
        (&[0.5, 0.5][..], 0.1, f64::INFINITY, 0.01),
        (&[0.5, 0.5][..], 0.1, 1.0, 0.0),
    ] {
        assert!(vs_loss_adjust(rec, g, t, f).is_err(), "{rec:?} {g} {t} {f}");
    }
}

/// The training log's per-class sums, worked by hand: row [0, 0] with target 0 has loss ln 2 and
/// gradient (-0.5, 0.5) (norm sqrt(1/2)); with smoothing 0.2 the target is (0.9, 0.1), the loss
/// still ln 2 and the gradient (-0.4, 0.4); row [ln 3, 0] with target 1 has p = (0.75, 0.25),
/// loss ln 4 and gradient (0.75, -0.75). Rows with a target out of range are skipped; the sums
/// are added to what `sums` held.
#[test]
fn class_sums_hand_worked() {
    let x = arr2(&[[0.0f32, 0.0], [3.0f32.ln(), 0.0], [1.0, 2.0], [5.0, -5.0]]);
    let t = arr1(&[0, 1, 2, -1]);
    let mut sums = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    cpu::class_sums(x.view(), t.view(), 0.0, &mut sums).unwrap();
    let l2 = 2f64.ln();
    let want = [1.0 + l2, 2.0 + 4f64.ln(), 3.0 + 0.5f64.sqrt(), 4.0 + 0.75 * 2f64.sqrt(), 6.0, 7.0];
    for (g, w) in sums.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{sums:?} vs {want:?}"); // ln 3 is rounded to f32 in x
    }
    let mut sums = vec![0.0; 6];
    cpu::class_sums(x.slice(ndarray::s![..1, ..]), t.slice(ndarray::s![..1]), 0.2, &mut sums).unwrap();
    let want = [l2, 0.0, 0.4 * 2f64.sqrt(), 0.0, 1.0, 0.0];
    for (g, w) in sums.iter().zip(want) {
        // 0.2 is rounded to f32 (off by 3e-9), which moves the gradient norm by about 4e-9.
        assert!((g - w).abs() < 1e-8, "{sums:?} vs {want:?}");
    }
    // Shapes that do not fit are errors.
    assert!(cpu::class_sums(x.view(), t.slice(ndarray::s![..3]), 0.0, &mut [0.0; 6]).is_err());
    assert!(cpu::class_sums(x.view(), t.view(), 0.0, &mut [0.0; 5]).is_err());
}

fn gpu_class_sums_case<T: evenclass::cuda::Dtype>(n: usize, c: usize, eps: f32, seed: u64) {
    let s = gpu();
    let mut r = rng(seed);
    let xt: Vec<T> = uniform(&mut r, n * c, -8.0, 8.0).into_iter().map(T::from_f32).collect();
    let x = Array2::from_shape_vec((n, c), xt.iter().map(|v| v.to_f32()).collect()).unwrap();
    let mut t = labels(&mut r, n, c);
    if n > 4 {
        (t[1], t[n - 2]) = (-1, c as i32); // skipped on both sides
    }
    // Earlier batches' sums: the call adds to them.
    let before: Vec<f64> = uniform(&mut r, 3 * c, 0.0, 50.0).into_iter().map(f64::from).collect();
    let mut want = before.clone();
    let ta = Array1::from(t.clone());
    cpu::class_sums(x.view(), ta.view(), eps, &mut want).unwrap();
    cpu::class_sums(x.view(), ta.view(), eps, &mut want).unwrap();

    let (dx, dt) = (s.clone_htod(&xt).unwrap(), s.clone_htod(&t).unwrap());
    let mut sums = s.clone_htod(&before).unwrap();
    let mut rows = s.clone_htod(&vec![POISON as f64; 2 * n + 3]).unwrap(); // longer than needed
    for _ in 0..2 {
        cuda::class_sums(&s, &dx.as_view(), &dt.as_view(), c, eps, &mut rows, &mut sums).unwrap();
    }
    let got = s.clone_dtoh(&sums).unwrap();
    // Both sides compute in f64 from the same logits and add the rows in the same order; only
    // exp and log may differ by an ulp or two between libm and CUDA's: 1e-12 relative is
    // thousands of times that, and far below any wrong term (>= 1e-3 here).
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= 1e-12 * w.abs().max(1.0), "{} n={n} c={c} eps={eps}: sums[{k}] {g} vs {w}", T::SUFFIX);
    }
    // Too small a scratch, or sums of another class count, are errors before any launch.
    let mut small = s.clone_htod(&vec![0.0f64; 2 * n - 1]).unwrap();
    assert!(cuda::class_sums(&s, &dx.as_view(), &dt.as_view(), c, eps, &mut small, &mut sums).is_err());
    let mut short = s.clone_htod(&vec![0.0f64; 3 * c - 1]).unwrap();
    assert!(cuda::class_sums(&s, &dx.as_view(), &dt.as_view(), c, eps, &mut rows, &mut short).is_err());
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_class_sums_match_cpu() {
    let mut seed = 900;
    for (n, c) in [(1, 2), (7, 3), (33, 10), (257, 10), (300, 37), (5, 1025)] {
        for eps in [0.0, 0.1] {
            seed += 1;
            gpu_class_sums_case::<f32>(n, c, eps, seed);
        }
        gpu_class_sums_case::<half::f16>(n, c, 0.1, seed + 1000);
        gpu_class_sums_case::<half::bf16>(n, c, 0.1, seed + 2000);
    }
}
