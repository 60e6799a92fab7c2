//! The candle custom ops (feature `candle`): values and gradients through a candle graph
//! (`loss.backward()`) against this crate's own API, the PyTorch-derived numbers of
//! tests/cross_entropy.rs, and candle-nn's own cross-entropy and softmax; bad input is a candle
//! error. CUDA-device tests (feature `candle-cuda`) are ignored without a GPU.
#![allow(clippy::excessive_precision)] // expected values are written as computed, in f64
mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{assert_close, labels, rng, uniform};
use evenclass::candle as ec;
use evenclass::cross_entropy::{cpu, LogitAdjust, Options, Reduction};
use evenclass::softmax::{cpu as sm_cpu, Kind};
use ndarray::{arr1, Array1, Array2};

const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

// The inputs of tests/cross_entropy.rs (every value is exact in f16 and bf16 too).
fn x4() -> Vec<f32> {
    vec![1.0, 2.0, 3.0, 1.0, -1.0, 0.5, 0.0, 0.25, -2.0, 3.0, 3.0, -1.0]
}
fn x3() -> Vec<f32> {
    // rows 0, 1, 3 of x4
    vec![1.0, 2.0, 3.0, 1.0, -1.0, 0.5, 3.0, 3.0, -1.0]
}
const W: [f32; 3] = [0.2, 0.7, 1.6];

fn opts(ignore: Option<i32>, eps: f32, reduction: Reduction) -> Options {
    Options { ignore_index: ignore, label_smoothing: eps, reduction }
}

fn t(v: &[f32], rows: usize, dtype: DType) -> Tensor {
    Tensor::from_vec(v.to_vec(), (rows, v.len() / rows), &Device::Cpu).unwrap().to_dtype(dtype).unwrap()
}

fn var(v: &[f32], rows: usize, dtype: DType) -> Var {
    Var::from_tensor(&t(v, rows, dtype)).unwrap()
}

fn targets_i64(v: &[i64]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap()
}

fn weight() -> Tensor {
    Tensor::new(&W, &Device::Cpu).unwrap()
}

fn f32s(x: &Tensor) -> Vec<f32> {
    x.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn loss_of(x: &Tensor, tg: &Tensor, w: Option<&Tensor>, o: Options) -> Vec<f32> {
    f32s(&ec::cross_entropy(x, tg, w, &o).unwrap())
}

// ---- values: the PyTorch-derived numbers of tests/cross_entropy.rs ---------------------------

#[test]
fn pytorch_values_every_option_and_dtype() {
    for dt in DTYPES {
        let x = t(&x3(), 3, dt);
        let tg = Tensor::new(&[2u32, 0, 1], &Device::Cpu).unwrap();
        let w = weight();
        let none = loss_of(&x, &tg, None, opts(None, 0.0, Reduction::None));
        assert_close(&format!("{dt:?} none"), &none, &[0.40760596, 0.55495692, 0.70226332], 1e-6, 1e-6);
        assert_close(&format!("{dt:?} mean"), &loss_of(&x, &tg, None, Options::default()), &[0.55494207], 1e-6, 1e-6);
        let m = loss_of(&x, &tg, Some(&w), opts(None, 0.0, Reduction::Mean));
        assert_close(&format!("{dt:?} weighted mean"), &m, &[0.50189810], 1e-6, 1e-6);
        let s = loss_of(&x, &tg, Some(&w), opts(None, 0.0, Reduction::Sum));
        assert_close(&format!("{dt:?} weighted sum"), &s, &[1.25474525], 1e-6, 1e-6);
        let ls = loss_of(&x, &tg, None, opts(None, 0.1, Reduction::Mean));
        assert_close(&format!("{dt:?} smoothing"), &ls, &[0.66049762], 1e-6, 1e-6);

        // ignore_index with i64 targets (PyTorch's dtype) and i32 targets.
        let x = t(&x4(), 4, dt);
        for tg in [targets_i64(&[2, 0, -100, 1]), Tensor::new(&[2i32, 0, -100, 1], &Device::Cpu).unwrap()] {
            let m = loss_of(&x, &tg, Some(&w), opts(Some(-100), 0.0, Reduction::Mean));
            assert_close(&format!("{dt:?} ignored"), &m, &[0.50189810], 1e-6, 1e-6);
            let all = |r| loss_of(&x, &tg, Some(&w), opts(Some(-100), 0.1, r));
            let want_none = [0.65758642, 0.21947199, 0.0, 0.71428117];
            assert_close(&format!("{dt:?} all none"), &all(Reduction::None), &want_none, 1e-6, 1e-6);
            assert_close(&format!("{dt:?} all sum"), &all(Reduction::Sum), &[1.59133958], 1e-6, 1e-6);
            assert_close(&format!("{dt:?} all mean"), &all(Reduction::Mean), &[0.63653583], 1e-6, 1e-6);
        }
    }
}

#[test]
fn loss_shape_and_dtype() {
    let x = t(&x3(), 3, DType::BF16);
    let tg = Tensor::new(&[2u32, 0, 1], &Device::Cpu).unwrap();
    let mean = ec::cross_entropy(&x, &tg, None, &Options::default()).unwrap();
    assert_eq!((mean.dims(), mean.dtype()), (&[][..], DType::F32));
    let none = ec::cross_entropy(&x, &tg, None, &opts(None, 0.0, Reduction::None)).unwrap();
    assert_eq!((none.dims(), none.dtype()), (&[3][..], DType::F32));
}

// ---- gradients through the candle graph -----------------------------------------------------

/// Random N x C logits and targets with one ignored sample (target -7).
fn random_case(seed: u64, n: usize, c: usize) -> (Vec<f32>, Vec<i32>, Vec<f32>) {
    let mut r = rng(seed);
    let x = uniform(&mut r, n * c, -3.0, 3.0);
    let mut tg = labels(&mut r, n, c);
    tg[2] = -7;
    let w = uniform(&mut r, c, 0.1, 2.0);
    (x, tg, w)
}

/// Every reduction, smoothing on/off, weights on/off, f32/f16/bf16: `loss.backward()` gives the
/// crate's fused gradient (upstream 1) and, for an upstream gradient != 1, the crate's backward
/// with that upstream gradient.
#[test]
fn backward_equals_the_crates_gradient() {
    let (n, c) = (7, 5);
    let mut seed = 100;
    for dt in DTYPES {
        for reduction in [Reduction::None, Reduction::Sum, Reduction::Mean] {
            for eps in [0.0, 0.2] {
                for weighted in [false, true] {
                    seed += 1;
                    let o = opts(Some(-7), eps, reduction);
                    let (x, tg, w) = random_case(seed, n, c);
                    let xv = var(&x, n, dt);
                    // The reference sees exactly the values candle holds (rounded to dt).
                    let xr = Array2::from_shape_vec((n, c), f32s(xv.as_tensor())).unwrap();
                    let tt = Tensor::new(tg.as_slice(), &Device::Cpu).unwrap();
                    let wt = Tensor::new(w.as_slice(), &Device::Cpu).unwrap();
                    let (wa, ta) = (Array1::from(w.clone()), Array1::from(tg.clone()));
                    let wr = weighted.then_some(wa.view());
                    let wc = weighted.then_some(&wt);
                    let what = format!("{dt:?} {o:?} weighted={weighted}");

                    // Upstream 1: sum of the loss (for None, the sum over samples has upstream 1 each).
                    let loss = ec::cross_entropy(xv.as_tensor(), &tt, wc, &o).unwrap();
                    let (want_loss, want_grad) = cpu::forward_backward(xr.view(), ta.view(), wr, &o).unwrap();
                    assert_eq!(f32s(&loss), want_loss.to_vec(), "{what}: loss");
                    let grads = loss.sum_all().unwrap().backward().unwrap();
                    let g = grads.get(xv.as_tensor()).expect("gradient of the logits");
                    assert_eq!(g.dtype(), dt, "{what}: gradient dtype");
                    assert_eq!(g.dims(), &[n, c]);
                    let want: Vec<f32> = round_to(want_grad.iter().copied().collect(), dt);
                    assert_eq!(f32s(g), want, "{what}: gradient, upstream 1");

                    // Upstream gradient != 1: the crate's backward with it.
                    let loss = ec::cross_entropy(xv.as_tensor(), &tt, wc, &o).unwrap();
                    let up: Vec<f32> = (0..o.loss_len(n)).map(|i| 0.5 + 0.25 * i as f32).collect();
                    let upt = Tensor::from_vec(up.clone(), loss.shape(), &Device::Cpu).unwrap();
                    let grads = (loss * &upt).unwrap().sum_all().unwrap().backward().unwrap();
                    let g = grads.get(xv.as_tensor()).unwrap();
                    let want = cpu::backward(xr.view(), ta.view(), wr, &o, arr1(&up).view()).unwrap();
                    assert_eq!(
                        f32s(g),
                        round_to(want.iter().copied().collect(), dt),
                        "{what}: gradient, upstream {up:?}"
                    );
                }
            }
        }
    }
}

fn round_to(v: Vec<f32>, dt: DType) -> Vec<f32> {
    f32s(&Tensor::from_vec(v.clone(), v.len(), &Device::Cpu).unwrap().to_dtype(dt).unwrap())
}

/// The plain mean's gradient is (softmax - onehot) / N (PyTorch), computed here in f64 from the
/// formula; and candle-nn's own cross-entropy gives the same loss and gradient.
#[test]
fn plain_gradient_matches_formula_and_candle_nn() {
    let x = x3();
    let tg = [2usize, 0, 1];
    let mut want = vec![0f32; 9];
    for i in 0..3 {
        let row = &x[i * 3..i * 3 + 3];
        let m = row.iter().fold(f64::MIN, |a, &b| a.max(b as f64));
        let s: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
        for k in 0..3 {
            let p = (row[k] as f64 - m).exp() / s;
            want[i * 3 + k] = ((p - if k == tg[i] { 1.0 } else { 0.0 }) / 3.0) as f32;
        }
    }
    let tt = Tensor::new(&[2u32, 0, 1], &Device::Cpu).unwrap();
    let xv = var(&x, 3, DType::F32);
    let ours = ec::cross_entropy(xv.as_tensor(), &tt, None, &Options::default()).unwrap();
    let g_ours = f32s(ours.backward().unwrap().get(xv.as_tensor()).unwrap());
    assert_close("formula", &g_ours, &want, 1e-7, 1e-6);

    let theirs = candle_nn::loss::cross_entropy(xv.as_tensor(), &tt).unwrap();
    let g_theirs = f32s(theirs.backward().unwrap().get(xv.as_tensor()).unwrap());
    assert_close("candle-nn loss", &f32s(&ours), &f32s(&theirs), 1e-6, 1e-6);
    assert_close("candle-nn gradient", &g_ours, &g_theirs, 1e-7, 1e-5);
}

/// A second backward over the same graph (the fused gradient is used once) and a loss whose
/// logits come from other ops give the same gradients; logits that are not tracked work too.
#[test]
fn repeated_backward_composed_graph_and_untracked_logits() {
    let (x, tg, w) = random_case(7, 6, 4);
    let tt = Tensor::new(tg.as_slice(), &Device::Cpu).unwrap();
    let wt = Tensor::new(w.as_slice(), &Device::Cpu).unwrap();
    let o = opts(Some(-7), 0.1, Reduction::Mean);
    let xv = var(&x, 6, DType::F32);
    // logits = 2 * x: the gradient of x is twice the loss's gradient of the logits.
    let logits = (xv.as_tensor() * 2.0).unwrap();
    let loss = ec::cross_entropy(&logits, &tt, Some(&wt), &o).unwrap();
    let g1 = f32s(loss.backward().unwrap().get(xv.as_tensor()).unwrap());
    let g2 = f32s(loss.backward().unwrap().get(xv.as_tensor()).unwrap());
    assert_eq!(g1, g2, "second backward");
    let l2 = Array2::from_shape_vec((6, 4), f32s(&logits)).unwrap();
    let (_, want) =
        cpu::forward_backward(l2.view(), Array1::from(tg.clone()).view(), Some(arr1(&w).view()), &o).unwrap();
    let want: Vec<f32> = want.iter().map(|g| 2.0 * g).collect();
    assert_close("chain rule", &g1, &want, 1e-7, 1e-6);

    // Untracked logits: forward only, same value.
    let plain = Tensor::from_vec(x.clone(), (6, 4), &Device::Cpu).unwrap();
    let l = loss_of(&plain, &tt, Some(&wt), o);
    let xa = Array2::from_shape_vec((6, 4), x).unwrap();
    let want = cpu::forward(xa.view(), Array1::from(tg).view(), Some(arr1(&w).view()), &o).unwrap();
    assert_eq!(l, want.to_vec());
}

#[test]
fn with_grad_equals_the_graph() {
    for dt in DTYPES {
        let (x, tg, w) = random_case(3, 9, 6);
        let tt = Tensor::new(tg.as_slice(), &Device::Cpu).unwrap();
        let wt = Tensor::new(w.as_slice(), &Device::Cpu).unwrap();
        let o = opts(Some(-7), 0.05, Reduction::Mean);
        let xv = var(&x, 9, dt);
        let (loss, grad) = ec::cross_entropy_with_grad(xv.as_tensor(), &tt, Some(&wt), &o).unwrap();
        assert_eq!((grad.dtype(), grad.dims()), (dt, &[9, 6][..]));
        let l2 = ec::cross_entropy(xv.as_tensor(), &tt, Some(&wt), &o).unwrap();
        let g2 = l2.backward().unwrap();
        assert_eq!(f32s(&loss), f32s(&l2));
        assert_eq!(f32s(&grad), f32s(g2.get(xv.as_tensor()).unwrap()));
    }
}

#[test]
fn all_ignored_mean_is_zero_with_zero_gradient() {
    let xv = var(&x4(), 4, DType::F32);
    let tg = targets_i64(&[-100, -100, -100, -100]);
    let loss =
        ec::cross_entropy(xv.as_tensor(), &tg, Some(&weight()), &opts(Some(-100), 0.1, Reduction::Mean)).unwrap();
    assert_eq!(f32s(&loss), [0.0]);
    let g = f32s(loss.backward().unwrap().get(xv.as_tensor()).unwrap());
    assert!(g.iter().all(|&v| v == 0.0), "{g:?}");
}

/// Transposed (non-contiguous) logits and a narrowed target tensor are made contiguous and give
/// the same loss and gradient as contiguous copies.
#[test]
fn non_contiguous_inputs_are_made_contiguous() {
    let (x, tg, w) = random_case(11, 5, 3);
    let tt = Tensor::new(tg.as_slice(), &Device::Cpu).unwrap();
    let wt = Tensor::new(w.as_slice(), &Device::Cpu).unwrap();
    let o = opts(Some(-7), 0.0, Reduction::Sum);
    // Stored as C x N, used transposed.
    let xa = Array2::from_shape_vec((5, 3), x.clone()).unwrap();
    let xt: Vec<f32> = xa.t().iter().copied().collect();
    let v = var(&xt, 3, DType::F32);
    let logits = v.as_tensor().t().unwrap();
    assert!(!logits.is_contiguous());
    let long = Tensor::cat(&[&tt, &tt], 0).unwrap();
    let targets = long.narrow(0, 5, 5).unwrap();
    let loss = ec::cross_entropy(&logits, &targets, Some(&wt), &o).unwrap();
    let g = loss.backward().unwrap();
    let (want_l, want_g) =
        cpu::forward_backward(xa.view(), Array1::from(tg).view(), Some(arr1(&w).view()), &o).unwrap();
    assert_close("loss", &f32s(&loss), want_l.as_slice().unwrap(), 1e-6, 1e-6);
    let got = f32s(&g.get(v.as_tensor()).unwrap().t().unwrap());
    assert_close("gradient", &got, &want_g.iter().copied().collect::<Vec<_>>(), 1e-7, 1e-6);
}

// ---- bad input -------------------------------------------------------------------------------

fn err(r: candle_core::Result<Tensor>) -> String {
    match r {
        Ok(t) => panic!("expected an error, got a tensor of shape {:?}", t.dims()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_input_is_a_candle_error() {
    let x = t(&x4(), 4, DType::F32);
    let o = Options::default();
    let ok_t = Tensor::new(&[0u32, 1, 2, 0], &Device::Cpu).unwrap();
    let ce = |x: &Tensor, tg: &Tensor, w: Option<&Tensor>, o: &Options| err(ec::cross_entropy(x, tg, w, o));

    let e = ce(&x, &Tensor::new(&[0u32, 1, 3, 0], &Device::Cpu).unwrap(), None, &o);
    assert!(e.contains("target 3 of sample 2 is outside [0, 3)"), "{e}");
    let e = ce(&x, &targets_i64(&[0, -1, 0, 0]), None, &o);
    assert!(e.contains("target -1 of sample 1"), "{e}");
    let e = ce(&x, &targets_i64(&[0, 1, 1 << 40, 0]), None, &o);
    assert!(e.contains("target 1099511627776 of sample 2"), "{e}");
    let e = ce(&x, &Tensor::new(&[0u32, u32::MAX, 0, 0], &Device::Cpu).unwrap(), None, &o);
    assert!(e.contains("target 4294967295 of sample 1"), "{e}");
    let e = ce(&x, &Tensor::new(&[0u32, 1, 2], &Device::Cpu).unwrap(), None, &o);
    assert!(e.contains("targets must have shape [4]"), "{e}");
    let e = ce(&x, &Tensor::new(&[0f32, 1., 2., 0.], &Device::Cpu).unwrap(), None, &o);
    assert!(e.contains("integer dtype"), "{e}");
    let e = ce(&x, &ok_t, Some(&Tensor::new(&[1f32, 2.], &Device::Cpu).unwrap()), &o);
    assert!(e.contains("weight must have shape [3]"), "{e}");
    let e = ce(&x, &ok_t, Some(&Tensor::new(&[1u32, 2, 3], &Device::Cpu).unwrap()), &o);
    assert!(e.contains("weight has dtype U32"), "{e}");
    let e = ce(&x, &ok_t, None, &Options { label_smoothing: 1.5, ..o });
    assert!(e.contains("label_smoothing must be in [0, 1]"), "{e}");
    let e = ce(&x.to_dtype(DType::F64).unwrap(), &ok_t, None, &o);
    assert!(e.contains("logits has dtype F64; supported: f32, f16, bf16"), "{e}");
    let e = ce(&x.flatten_all().unwrap(), &ok_t, None, &o);
    assert!(e.contains("rank 2"), "{e}");
    let e = ce(&Tensor::zeros((4, 0), DType::F32, &Device::Cpu).unwrap(), &ok_t, None, &o);
    assert!(e.contains("at least one class"), "{e}");
    // The graph-free variant checks the same way.
    let e = ec::cross_entropy_with_grad(&x, &Tensor::new(&[0u32, 1, 3, 0], &Device::Cpu).unwrap(), None, &o)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("target 3 of sample 2"), "{e}");

    // softmax and confusion
    assert!(err(ec::softmax(&Tensor::new(3f32, &Device::Cpu).unwrap())).contains("at least one dimension"));
    assert!(err(ec::log_softmax(&x.to_dtype(DType::U8).unwrap())).contains("dtype U8"));
    let e = ec::confusion(&x, &ok_t, 4).unwrap_err().to_string();
    assert!(e.contains("logits must have shape [N, 4]"), "{e}");
    let e = ec::confusion(&x, &Tensor::new(&[0u32, 1, 7, 0], &Device::Cpu).unwrap(), 3).unwrap_err().to_string();
    assert!(e.contains("target 7 of sample 2"), "{e}");
}

// ---- softmax / log-softmax -------------------------------------------------------------------

/// The adjusted op: loss and graph gradient are the crate's adjusted CPU reference exactly (the
/// op runs it), for upstream 1 and != 1, each adjustment kind and dtype; a scale of the wrong
/// length is a candle error.
#[test]
fn adjusted_op_equals_the_crates_adjusted_reference() {
    let (n, c) = (7, 5);
    let mut seed = 700;
    for dt in DTYPES {
        for o in [opts(Some(-7), 0.0, Reduction::Mean), opts(Some(-7), 0.2, Reduction::None)] {
            for which in 0..3 {
                seed += 1;
                let (x, tg, w) = random_case(seed, n, c);
                let mut r = rng(seed + 1);
                let (scale, offset) = (uniform(&mut r, c, 0.3, 2.0), uniform(&mut r, c, -2.0, 2.0));
                let (use_s, use_o) = [(true, false), (false, true), (true, true)][which];
                let a = LogitAdjust { scale: use_s.then_some(&scale[..]), offset: use_o.then_some(&offset[..]) };
                let xv = var(&x, n, dt);
                let xr = Array2::from_shape_vec((n, c), f32s(xv.as_tensor())).unwrap();
                let tt = Tensor::new(tg.as_slice(), &Device::Cpu).unwrap();
                let wt = Tensor::new(w.as_slice(), &Device::Cpu).unwrap();
                let (wa, ta) = (Array1::from(w.clone()), Array1::from(tg.clone()));
                let what = format!("{dt:?} {o:?} {a:?}");

                let loss = ec::cross_entropy_adjusted(xv.as_tensor(), &tt, Some(&wt), &a, &o).unwrap();
                let (wl, wg) = cpu::forward_backward_adjusted(xr.view(), ta.view(), Some(wa.view()), &a, &o).unwrap();
                assert_eq!(f32s(&loss), wl.to_vec(), "{what}: loss");
                let grads = loss.sum_all().unwrap().backward().unwrap();
                let g = grads.get(xv.as_tensor()).unwrap();
                assert_eq!(f32s(g), round_to(wg.iter().copied().collect(), dt), "{what}: gradient, upstream 1");

                let loss = ec::cross_entropy_adjusted(xv.as_tensor(), &tt, Some(&wt), &a, &o).unwrap();
                let up: Vec<f32> = (0..o.loss_len(n)).map(|i| 0.5 + 0.25 * i as f32).collect();
                let upt = Tensor::from_vec(up.clone(), loss.shape(), &Device::Cpu).unwrap();
                let grads = (loss * &upt).unwrap().sum_all().unwrap().backward().unwrap();
                let g = grads.get(xv.as_tensor()).unwrap();
                let want =
                    cpu::backward_adjusted(xr.view(), ta.view(), Some(wa.view()), &a, &o, arr1(&up).view()).unwrap();
                assert_eq!(f32s(g), round_to(want.iter().copied().collect(), dt), "{what}: gradient, upstream");
            }
        }
    }
    let (x, tg, _) = random_case(1, n, c);
    let short = [1.0f32; 4];
    let a = LogitAdjust { scale: Some(&short), offset: None };
    let tt = Tensor::new(tg.as_slice(), &Device::Cpu).unwrap();
    let e =
        err(ec::cross_entropy_adjusted(&t(&x, n, DType::F32), &tt, None, &a, &opts(Some(-7), 0.0, Reduction::Mean)));
    assert!(e.contains("logit scale has 4 elements, expected 5"), "{e}");
    // NONE is the plain op, bit for bit.
    let plain = ec::cross_entropy(&t(&x, n, DType::F32), &tt, None, &opts(Some(-7), 0.0, Reduction::Mean)).unwrap();
    let none = ec::cross_entropy_adjusted(
        &t(&x, n, DType::F32),
        &tt,
        None,
        &LogitAdjust::NONE,
        &opts(Some(-7), 0.0, Reduction::Mean),
    )
    .unwrap();
    assert_eq!(f32s(&plain)[0].to_bits(), f32s(&none)[0].to_bits());
}

#[test]
fn softmax_values_and_gradients() {
    let (n, c) = (6, 9);
    for dt in DTYPES {
        for kind in [Kind::Softmax, Kind::LogSoftmax] {
            let mut r = rng(42);
            let x = uniform(&mut r, n * c, -4.0, 4.0);
            let dy = uniform(&mut r, n * c, -1.0, 1.0);
            let xv = var(&x, n, dt);
            let xr = Array2::from_shape_vec((n, c), f32s(xv.as_tensor())).unwrap();
            let y = match kind {
                Kind::Softmax => ec::softmax(xv.as_tensor()),
                Kind::LogSoftmax => ec::log_softmax(xv.as_tensor()),
            }
            .unwrap();
            assert_eq!(y.dtype(), dt);
            let want_y = sm_cpu::forward(xr.view(), kind);
            assert_eq!(f32s(&y), round_to(want_y.iter().copied().collect(), dt), "{dt:?} {kind:?} forward");

            // d/dx sum(y * dy) = backward(y, dy); the reference sees y and dy in dt as the op does.
            let dyt = t(&dy, n, dt);
            let g = (&y * &dyt).unwrap().sum_all().unwrap().backward().unwrap();
            let g = g.get(xv.as_tensor()).unwrap();
            assert_eq!(g.dtype(), dt);
            let yr = Array2::from_shape_vec((n, c), f32s(&y)).unwrap();
            let dyr = Array2::from_shape_vec((n, c), f32s(&dyt)).unwrap();
            let want = sm_cpu::backward(yr.view(), dyr.view(), kind).unwrap();
            assert_eq!(f32s(g), round_to(want.iter().copied().collect(), dt), "{dt:?} {kind:?} backward");

            // candle-nn agrees (f32 only: its half-precision ops round differently).
            if dt == DType::F32 {
                let (y2, _) = match kind {
                    Kind::Softmax => (candle_nn::ops::softmax(xv.as_tensor(), 1).unwrap(), ()),
                    Kind::LogSoftmax => (candle_nn::ops::log_softmax(xv.as_tensor(), 1).unwrap(), ()),
                };
                assert_close("candle-nn forward", &f32s(&y), &f32s(&y2), 1e-6, 1e-5);
                let g2 = (&y2 * &dyt).unwrap().sum_all().unwrap().backward().unwrap();
                assert_close("candle-nn backward", &f32s(g), &f32s(g2.get(xv.as_tensor()).unwrap()), 1e-6, 1e-4);
            }
        }
    }
}

#[test]
fn softmax_over_the_last_dimension_of_any_rank() {
    let mut r = rng(5);
    let x = uniform(&mut r, 2 * 3 * 4, -2.0, 2.0);
    let x3 = Tensor::from_vec(x.clone(), (2, 3, 4), &Device::Cpu).unwrap();
    let y = ec::softmax(&x3).unwrap();
    assert_eq!(y.dims(), &[2, 3, 4]);
    let want = sm_cpu::forward(Array2::from_shape_vec((6, 4), x).unwrap().view(), Kind::Softmax);
    assert_eq!(f32s(&y), want.iter().copied().collect::<Vec<_>>());
    // Softmax over a transposed view: made contiguous first.
    let yt = ec::softmax(&x3.transpose(1, 2).unwrap()).unwrap();
    let want = candle_nn::ops::softmax(&x3.transpose(1, 2).unwrap(), 2).unwrap();
    assert_close("transposed", &f32s(&yt), &f32s(&want), 1e-6, 1e-5);
    // Empty is empty.
    let e = ec::log_softmax(&Tensor::zeros((0, 5), DType::F32, &Device::Cpu).unwrap()).unwrap();
    assert_eq!(e.dims(), &[0, 5]);
}

// ---- confusion -------------------------------------------------------------------------------

#[test]
fn confusion_counts_and_metrics() {
    let (n, c) = (50, 4);
    let mut r = rng(9);
    let x = uniform(&mut r, n * c, -1.0, 1.0);
    let mut tg = labels(&mut r, n, c);
    tg[3] = -1;
    for dt in DTYPES {
        let xt = t(&x, n, dt);
        let xa = Array2::from_shape_vec((n, c), f32s(&xt)).unwrap();
        let tt = Tensor::new(tg.as_slice(), &Device::Cpu).unwrap();
        let m = ec::confusion_ignoring(&xt, &tt, c, Some(-1)).unwrap();
        let want = evenclass::confusion::cpu::from_logits(xa.view(), &tg, Some(-1)).unwrap();
        assert_eq!(m, want, "{dt:?}");
        assert_eq!(m.total(), 49);
        assert_eq!(m.metrics(), want.metrics());
    }
    // u32 targets, no ignore: a perfect classifier.
    let tg: Vec<u32> = (0..8).map(|i| i % 3).collect();
    let mut x = vec![0f32; 8 * 3];
    for (i, &k) in tg.iter().enumerate() {
        x[i * 3 + k as usize] = 1.0;
    }
    let m = ec::confusion(&t(&x, 8, DType::F32), &Tensor::new(tg.as_slice(), &Device::Cpu).unwrap(), 3).unwrap();
    assert_eq!(m.correct(), 8);
    assert_eq!(m.recall(), vec![1.0; 3]);
}

// ---- CUDA device (feature `candle-cuda`) -----------------------------------------------------
//
// These create tensors with host-to-device copies and read them back with device-to-host copies,
// so apart from `backward()`'s seed (candle's fill kernel, only in the graph test) the only
// kernels that run are this crate's.

#[cfg(feature = "candle-cuda")]
mod gpu {
    use super::*;

    fn dev() -> Device {
        Device::new_cuda(0).unwrap_or_else(|e| panic!("GPU test without a usable device: {e}"))
    }

    fn on(dev: &Device, x: &[f32], shape: (usize, usize), dt: DType) -> Tensor {
        // Convert on the host, then copy: no candle kernel.
        let h = Tensor::from_vec(x.to_vec(), shape, &Device::Cpu).unwrap().to_dtype(dt).unwrap();
        h.to_device(dev).unwrap()
    }

    #[test]
    #[ignore = "needs a CUDA device"]
    fn gpu_loss_and_gradient_match_cpu() {
        let d = dev();
        let (n, c) = (37, 11);
        let mut seed = 500;
        for dt in DTYPES {
            for reduction in [Reduction::None, Reduction::Sum, Reduction::Mean] {
                for weighted in [false, true] {
                    seed += 1;
                    let o = opts(Some(-7), 0.1, reduction);
                    let (x, tg, w) = random_case(seed, n, c);
                    let xc = on(&d, &x, (n, c), dt);
                    let xh = xc.to_device(&Device::Cpu).unwrap();
                    let tc = Tensor::new(tg.as_slice(), &d).unwrap();
                    let th = Tensor::new(tg.as_slice(), &Device::Cpu).unwrap();
                    let wc = Tensor::new(w.as_slice(), &d).unwrap();
                    let wh = Tensor::new(w.as_slice(), &Device::Cpu).unwrap();
                    let (gl, gg) = ec::cross_entropy_with_grad(&xc, &tc, weighted.then_some(&wc), &o).unwrap();
                    let (hl, hg) = ec::cross_entropy_with_grad(&xh, &th, weighted.then_some(&wh), &o).unwrap();
                    let what = format!("{dt:?} {o:?} weighted={weighted}");
                    let tol = if dt == DType::F32 { 1e-5 } else { 2e-2 };
                    assert_close(&format!("{what} loss"), &f32s(&gl), &f32s(&hl), 1e-5, 1e-5);
                    assert_close(&format!("{what} grad"), &f32s(&gg), &f32s(&hg), tol * 1e-2, tol);
                }
            }
        }
    }

    /// The adjusted op on the device against the adjusted CPU reference, through a graph: loss and
    /// gradient within the tolerances of gpu_loss_and_gradient_match_cpu (f32: the kernel's f32
    /// reductions vs the reference's f64; f16/bf16: gradient storage rounding).
    #[test]
    #[ignore = "needs a CUDA device"]
    fn gpu_adjusted_matches_cpu() {
        let d = dev();
        let (n, c) = (37, 11);
        let mut seed = 800;
        for dt in DTYPES {
            for reduction in [Reduction::None, Reduction::Mean] {
                seed += 1;
                let o = opts(Some(-7), 0.1, reduction);
                let (x, tg, w) = random_case(seed, n, c);
                let mut r = rng(seed + 1);
                let (scale, offset) = (uniform(&mut r, c, 0.3, 2.0), uniform(&mut r, c, -2.0, 2.0));
                let a = LogitAdjust { scale: Some(&scale), offset: Some(&offset) };
                let xv = Var::from_tensor(&on(&d, &x, (n, c), dt)).unwrap();
                let xh = xv.as_tensor().to_device(&Device::Cpu).unwrap();
                let xr = Array2::from_shape_vec((n, c), f32s(&xh)).unwrap();
                let tc = Tensor::new(tg.as_slice(), &d).unwrap();
                let wc = Tensor::new(w.as_slice(), &d).unwrap();
                let loss = ec::cross_entropy_adjusted(xv.as_tensor(), &tc, Some(&wc), &a, &o).unwrap();
                let g = loss.sum_all().unwrap().backward().unwrap();
                let (wl, wg) =
                    cpu::forward_backward_adjusted(xr.view(), Array1::from(tg).view(), Some(arr1(&w).view()), &a, &o)
                        .unwrap();
                let what = format!("{dt:?} {o:?}");
                let tol = if dt == DType::F32 { 1e-5 } else { 2e-2 };
                assert_close(&format!("{what} loss"), &f32s(&loss), wl.as_slice().unwrap(), 1e-5, 1e-5);
                let gx = f32s(g.get(xv.as_tensor()).unwrap());
                assert_close(&format!("{what} grad"), &gx, &wg.iter().copied().collect::<Vec<_>>(), tol * 1e-2, tol);
            }
        }
    }

    #[test]
    #[ignore = "needs a CUDA device"]
    fn gpu_backward_in_a_graph() {
        let d = dev();
        let (x, tg, w) = random_case(77, 64, 10);
        let o = opts(Some(-7), 0.0, Reduction::Mean);
        let xv = Var::from_tensor(&on(&d, &x, (64, 10), DType::F32)).unwrap();
        let tc = Tensor::new(tg.as_slice(), &d).unwrap();
        let wc = Tensor::new(w.as_slice(), &d).unwrap();
        let loss = ec::cross_entropy(xv.as_tensor(), &tc, Some(&wc), &o).unwrap();
        let g = loss.backward().unwrap();
        let xa = Array2::from_shape_vec((64, 10), x).unwrap();
        let (wl, wg) = cpu::forward_backward(xa.view(), Array1::from(tg).view(), Some(arr1(&w).view()), &o).unwrap();
        assert_close("loss", &f32s(&loss), wl.as_slice().unwrap(), 1e-5, 1e-5);
        assert_close(
            "grad",
            &f32s(g.get(xv.as_tensor()).unwrap()),
            &wg.iter().copied().collect::<Vec<_>>(),
            1e-6,
            1e-4,
        );
    }

    #[test]
    #[ignore = "needs a CUDA device"]
    fn gpu_softmax_confusion_and_bad_targets() {
        let d = dev();
        let (n, c) = (33, 1500);
        let mut r = rng(3);
        let x = uniform(&mut r, n * c, -5.0, 5.0);
        let xc = on(&d, &x, (n, c), DType::F32);
        let xa = Array2::from_shape_vec((n, c), x).unwrap();
        let y = ec::log_softmax(&xc).unwrap();
        let want = sm_cpu::forward(xa.view(), Kind::LogSoftmax);
        assert_close("log_softmax", &f32s(&y), &want.iter().copied().collect::<Vec<_>>(), 1e-5, 1e-5);
        let tg = labels(&mut r, n, c);
        let m = ec::confusion(&xc, &Tensor::new(tg.as_slice(), &d).unwrap(), c).unwrap();
        assert_eq!(m, evenclass::confusion::cpu::from_logits(xa.view(), &tg, None).unwrap());
        let mut bad = tg.clone();
        bad[5] = c as i32;
        let e = err(ec::cross_entropy(&xc, &Tensor::new(bad.as_slice(), &d).unwrap(), None, &Options::default()));
        assert!(e.contains(&format!("target {c} of sample 5")), "{e}");
    }
}

/// Random shapes (empty, mismatched, rank 1 to 3), dtypes, target values (in and out of range,
/// the ignore index) and logits (with NaN and infinities) through every candle op: a value or a
/// candle error, never a panic; a loss that computes is one value, and its gradient has the
/// logits' shape. `PROPTEST_CASES` sets the count (64 here; `scripts/fuzz.sh` runs more).
mod random_inputs {
    use super::*;
    use proptest::prelude::*;

    fn config() -> ProptestConfig {
        let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
        ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
    }

    fn value() -> impl Strategy<Value = f32> {
        prop_oneof![8 => -20.0f32..20.0, 1 => Just(f32::NAN), 1 => Just(f32::INFINITY), 1 => Just(f32::NEG_INFINITY)]
    }

    proptest! {
        #![proptest_config(config())]
        #[test]
        fn candle_ops_never_panic(
            dims in prop_oneof![3 => proptest::collection::vec(0usize..6, 2..=2), 1 => proptest::collection::vec(0usize..6, 1..4)],
            values in proptest::collection::vec(value(), 0..80),
            targets in proptest::collection::vec(-101i64..8, 0..8),
            weight in proptest::option::of(proptest::collection::vec(-1.0f32..3.0, 0..7)),
            dtype in prop_oneof![Just(DType::F32), Just(DType::F16), Just(DType::BF16), Just(DType::F64)],
            smoothing in -0.2f32..1.2,
            classes in 0usize..7,
            matching in proptest::bool::weighted(0.8),
        ) {
            let dev = Device::Cpu;
            // Mostly one target per row, so that most cases reach the kernels, not only the checks.
            let mut targets = targets;
            let mut weight = weight;
            if matching {
                // In range (or the ignore index), and a weight per class.
                let c = dims.get(1).copied().unwrap_or(1).max(1) as i64;
                targets = (0..dims[0]).map(|i| targets.get(i).map_or(0, |&v| if v == -100 { v } else { v.rem_euclid(c) })).collect();
                weight = weight.map(|w| (0..c as usize).map(|i| w.get(i).copied().unwrap_or(1.0)).collect());
            }
            let n: usize = dims.iter().product();
            let data: Vec<f32> = (0..n).map(|i| values.get(i % values.len().max(1)).copied().unwrap_or(0.5)).collect();
            let Ok(x) = Tensor::from_vec(data, dims.as_slice(), &dev).and_then(|t| t.to_dtype(dtype)) else { return Ok(()) };
            let t = Tensor::new(targets.as_slice(), &dev).unwrap();
            let w = weight.map(|w| Tensor::new(w.as_slice(), &dev).unwrap());
            let opts = Options { ignore_index: Some(-100), label_smoothing: smoothing, reduction: Reduction::Mean };
            let var = Var::from_tensor(&x).unwrap();
            if let Ok(loss) = ec::cross_entropy(var.as_tensor(), &t, w.as_ref(), &opts) {
                prop_assert_eq!(loss.elem_count(), 1);
                if let Ok(grads) = loss.backward() {
                    if let Some(g) = grads.get(var.as_tensor()) {
                        prop_assert_eq!(g.dims(), x.dims());
                    }
                }
            }
            if let Ok((loss, grad)) = ec::cross_entropy_with_grad(&x, &t, w.as_ref(), &opts) {
                prop_assert_eq!(loss.elem_count(), 1);
                prop_assert_eq!(grad.dims(), x.dims());
            }
            for y in [ec::softmax(&x), ec::log_softmax(&x)].into_iter().flatten() {
                prop_assert_eq!(y.dims(), x.dims());
            }
            if let Ok(t32) = t.to_dtype(DType::I64) {
                let _ = ec::confusion(&x, &t32, classes);
                let _ = ec::confusion_ignoring(&x, &t32, classes, Some(-100));
            }
        }
    }
}
