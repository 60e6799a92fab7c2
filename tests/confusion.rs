//! Confusion counting (CPU reference on hand-counted cases, metrics on hand-worked matrices, bad
//! input) and the CUDA kernels against the CPU reference (`#[ignore = "needs a CUDA device"]`).
mod common;

use evenclass::confusion::{cpu, cuda, ConfusionMatrix, Metrics, MAX_CLASSES};
use evenclass::cuda::Dtype;
use evenclass::Error;
use half::{bf16, f16};
use ndarray::{arr1, Array2, ArrayView2};
use rand::RngExt;

const NAN: f32 = f32::NAN;
const INF: f32 = f32::INFINITY;

fn cm(classes: usize, counts: &[u64]) -> ConfusionMatrix {
    ConfusionMatrix::from_counts(classes, counts.to_vec()).unwrap()
}

// ---- counting, CPU --------------------------------------------------------------------------------

#[test]
fn labels_hand_counted() {
    // (t, p): (0,0) (1,1) (1,2) (2,2) (0,1) (0,0) (2,0)
    let preds = [0, 1, 2, 2, 1, 0, 0];
    let targets = [0, 1, 1, 2, 0, 0, 2];
    let m = cpu::from_labels(&preds, &targets, 3, None).unwrap();
    assert_eq!(m.counts(), &[2, 1, 0, 0, 1, 1, 1, 0, 1]);
    assert_eq!(m.get(0, 0), Some(2));
    assert_eq!(m.get(2, 0), Some(1));
    assert_eq!(m.get(1, 0), Some(0));
    assert_eq!(m.get(3, 0), None);
    assert_eq!(m.get(0, 3), None);
    assert_eq!(m.total(), 7);
    assert_eq!(m.correct(), 4);
}

/// Rows chosen for torch.argmax's rules, with the argmax of each.
fn tricky_rows() -> (Vec<f32>, Vec<usize>) {
    let rows: [([f32; 4], usize); 7] = [
        ([1.0, 3.0, 3.0, 0.0], 1),     // tie -> lowest index
        ([2.0, 2.0, 2.0, 2.0], 0),     // all equal
        ([-INF, -INF, -INF, -INF], 0), // all -inf
        ([1.0, NAN, 5.0, NAN], 1),     // NaN is the maximum, first NaN wins
        ([NAN, 9.0, NAN, 1.0], 0),     // NaN in column 0
        ([-1.0, 0.0, -0.0, -2.0], 1),  // 0 == -0: a tie
        ([-INF, -5.0, NAN, INF], 2),   // NaN beats +inf
    ];
    (rows.iter().flat_map(|(r, _)| *r).collect(), rows.iter().map(|(_, a)| *a).collect())
}

#[test]
fn argmax_follows_torch() {
    let (x, want) = tricky_rows();
    let x = Array2::from_shape_vec((want.len(), 4), x).unwrap();
    for (i, &w) in want.iter().enumerate() {
        assert_eq!(cpu::argmax(x.row(i)), Some(w), "row {i}");
    }
    assert_eq!(cpu::argmax(arr1::<f32>(&[]).view()), None);
    assert_eq!(cpu::argmax(arr1(&[5.0f32]).view()), Some(0));
}

#[test]
fn argmax_compares_stored_values() {
    // Distinct in f32, equal once rounded to f16 / bf16: then the lower index wins.
    let f = [1.0f32, 1.0001];
    assert_eq!(cpu::argmax(arr1(&f).view()), Some(1));
    assert_eq!(cpu::argmax(arr1(&f.map(f16::from_f32)).view()), Some(0));
    let b = [1.0f32, 1.002];
    assert_eq!(cpu::argmax(arr1(&b.map(f16::from_f32)).view()), Some(1));
    assert_eq!(cpu::argmax(arr1(&b.map(bf16::from_f32)).view()), Some(0));
    let n = [3.0f32, NAN, NAN].map(bf16::from_f32);
    assert_eq!(cpu::argmax(arr1(&n).view()), Some(1));
}

#[test]
fn logits_hand_counted_with_ties_and_nan() {
    let (x, _) = tricky_rows();
    // argmax: 1 0 0 1 0 1 2 -> (t, p): (1,1) (0,0) (3,0) (1,1) (2,0) (2,1) (3,2)
    let targets = [1, 0, 3, 1, 2, 2, 3];
    let x = ArrayView2::from_shape((7, 4), &x).unwrap();
    let m = cpu::from_logits(x, &targets, None).unwrap();
    #[rustfmt::skip]
    let want = [
        1, 0, 0, 0,
        0, 2, 0, 0,
        1, 1, 0, 0,
        1, 0, 1, 0,
    ];
    assert_eq!(m.counts(), &want);
}

#[test]
fn ignore_index_skips_samples() {
    let (x, _) = tricky_rows();
    let x = ArrayView2::from_shape((7, 4), &x).unwrap();
    // -100 rows 1 and 4 skipped: (1,1) (3,0) (1,1) (2,1) (3,2)
    let targets = [1, -100, 3, 1, -100, 2, 3];
    let m = cpu::from_logits(x, &targets, Some(-100)).unwrap();
    assert_eq!(m.counts(), &[0, 0, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 1, 0, 1, 0]);
    // Without ignore_index, -100 is a bad target.
    let e = cpu::from_logits(x, &targets, None).unwrap_err();
    assert!(matches!(e, Error::InvalidTarget { index: 1, value: -100, classes: 4, .. }), "{e}");

    // ignore_index may be a class: class 1 is skipped entirely.
    let preds = [0, 1, 1, 2, 1];
    let targets = [0, 1, 2, 1, 1];
    let m = cpu::from_labels(&preds, &targets, 3, Some(1)).unwrap();
    assert_eq!(m.counts(), &[1, 0, 0, 0, 0, 0, 0, 1, 0]);

    // The prediction of an ignored sample is still validated.
    let e = cpu::from_labels(&[0, 7], &[0, -1], 3, Some(-1)).unwrap_err();
    assert!(matches!(e, Error::InvalidPrediction { index: 1, value: 7, classes: 3, .. }), "{e}");
}

#[test]
fn counting_accumulates() {
    let mut m = ConfusionMatrix::new(3).unwrap();
    cpu::count_labels(&[0, 1, 2], &[0, 1, 1], &mut m, None).unwrap();
    cpu::count_labels(&[2, 2], &[1, 0], &mut m, None).unwrap();
    assert_eq!(m.counts(), &[1, 0, 1, 0, 1, 2, 0, 0, 0]);
    let x = [0.0f32, 1.0, 0.0, /**/ 5.0, 0.0, 0.0];
    cpu::count_logits(ArrayView2::from_shape((2, 3), &x).unwrap(), &[1, 2], &mut m, None).unwrap();
    assert_eq!(m.counts(), &[1, 0, 1, 0, 2, 2, 1, 0, 0]);

    // add() sums matrices the same way.
    let mut a = cpu::from_labels(&[0, 1, 2], &[0, 1, 1], 3, None).unwrap();
    a.add(&cpu::from_labels(&[2, 2], &[1, 0], 3, None).unwrap()).unwrap();
    assert_eq!(a.counts(), &[1, 0, 1, 0, 1, 2, 0, 0, 0]);
}

#[test]
fn bad_labels_are_errors_naming_the_first() {
    let check = |preds: &[i32], targets: &[i32], want: &str| {
        let mut m = cm(3, &[9, 8, 7, 6, 5, 4, 3, 2, 1]);
        let before = m.clone();
        let e = cpu::count_labels(preds, targets, &mut m, None).unwrap_err();
        assert_eq!(m, before, "the matrix must be untouched on error");
        let got = match e {
            Error::InvalidTarget { index, value, classes: 3, .. } => format!("target {index} {value}"),
            Error::InvalidPrediction { index, value, classes: 3, .. } => format!("pred {index} {value}"),
            e => panic!("unexpected error {e}"),
        };
        assert_eq!(got, want);
    };
    check(&[0, 0, 0, 0, 0], &[0, 1, 3, 2, -1], "target 2 3");
    check(&[0, 0, 0, 0, 0], &[0, 1, -1, 2, 3], "target 2 -1");
    check(&[0, 3, 0, 0, 0], &[0, 1, 2, 2, 1], "pred 1 3");
    check(&[0, -2, 0, 0, 0], &[0, 1, 2, 7, 1], "pred 1 -2");
    check(&[0, 0, 0, 9, 0], &[0, 1, 2, 7, 1], "target 3 7"); // both bad in one sample
    check(&[0, 0, i32::MIN, 0, 0], &[0, i32::MAX, 0, 0, 0], "target 1 2147483647");
}

#[test]
fn bad_logit_targets_and_shapes_are_errors() {
    let x = [0.0f32; 12];
    let x = ArrayView2::from_shape((4, 3), &x).unwrap();
    let e = cpu::from_logits(x, &[0, 2, 5, 3], None).unwrap_err();
    assert!(matches!(e, Error::InvalidTarget { index: 2, value: 5, classes: 3, .. }), "{e}");

    let mut m = ConfusionMatrix::new(3).unwrap();
    let e = cpu::count_logits(x, &[0, 1, 2], &mut m, None).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let mut m4 = ConfusionMatrix::new(4).unwrap();
    let e = cpu::count_logits(x, &[0, 1, 2, 0], &mut m4, None).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = cpu::count_labels(&[0, 1], &[0], &mut m, None).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    assert_eq!(m, ConfusionMatrix::new(3).unwrap());

    let empty = Array2::<f32>::zeros((2, 0));
    assert!(matches!(cpu::from_logits(empty.view(), &[0, 0], None), Err(Error::Shape { .. })));
    assert!(matches!(cpu::from_labels(&[], &[], 0, None), Err(Error::Shape { .. })));
    assert!(matches!(ConfusionMatrix::new(0), Err(Error::Shape { .. })));
    assert!(matches!(ConfusionMatrix::new(MAX_CLASSES + 1), Err(Error::TooLarge { .. })));
    // No samples: a zero matrix.
    assert_eq!(cpu::from_labels(&[], &[], 2, None).unwrap().counts(), &[0, 0, 0, 0]);
}

// ---- the host matrix and metrics ------------------------------------------------------------------

#[test]
fn matrix_construction_and_add_errors() {
    assert!(matches!(ConfusionMatrix::from_counts(2, vec![0; 3]), Err(Error::Shape { .. })));
    assert!(matches!(ConfusionMatrix::from_counts(0, vec![]), Err(Error::Shape { .. })));
    let mut a = cm(2, &[1, 2, 3, 4]);
    assert!(matches!(a.add(&cm(3, &[0; 9])), Err(Error::Shape { .. })));
    let e = a.add(&cm(2, &[0, 0, 0, u64::MAX])).unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    assert_eq!(a.counts(), &[1, 2, 3, 4], "untouched on error");
    a.add(&cm(2, &[10, 20, 30, 40])).unwrap();
    assert_eq!(a.clone().into_counts(), vec![11, 22, 33, 44]);
}

#[track_caller]
fn assert_f64s(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-12, "{what}[{k}]: got {g}, want {w}");
    }
}

#[test]
fn metrics_hand_worked_with_zero_divisions() {
    // Class 2 has samples but is never predicted (precision 0/0); class 3 is predicted but has no
    // samples (recall 0/0); class 4 is absent from both (everything 0/0).
    #[rustfmt::skip]
    let m = cm(5, &[
        3, 1, 0, 1, 0,
        2, 2, 0, 0, 0,
        1, 0, 0, 0, 0,
        0, 0, 0, 0, 0,
        0, 0, 0, 0, 0,
    ]);
    assert_eq!(m.support(), vec![5, 4, 1, 0, 0]);
    assert_eq!(m.predicted(), vec![6, 3, 0, 1, 0]);
    assert_eq!(m.true_positives(), vec![3, 2, 0, 0, 0]);
    assert_f64s("recall", &m.recall(), &[0.6, 0.5, 0.0, 0.0, 0.0]);
    assert_f64s("precision", &m.precision(), &[0.5, 2.0 / 3.0, 0.0, 0.0, 0.0]);
    // class 0: tp 3, fp 3, fn 2 -> 6/11; class 1: tp 2, fp 1, fn 2 -> 4/7.
    assert_f64s("f1", &m.f1(), &[6.0 / 11.0, 4.0 / 7.0, 0.0, 0.0, 0.0]);
    assert!((m.accuracy() - 0.5).abs() <= 1e-12);
    // Mean recall over classes 0, 1, 2 (support > 0), as scikit-learn.
    assert!((m.balanced_accuracy() - 1.1 / 3.0).abs() <= 1e-12, "{}", m.balanced_accuracy());

    let all = m.metrics();
    assert_eq!(
        all,
        Metrics {
            accuracy: m.accuracy(),
            balanced_accuracy: m.balanced_accuracy(),
            recall: m.recall(),
            precision: m.precision(),
            f1: m.f1(),
            support: m.support(),
            confusion: m.counts().chunks(5).map(<[u64]>::to_vec).collect(),
        }
    );
    assert_eq!((all.classes(), all.total(), all.correct()), (5, 10, 5));
    assert_eq!(all.predicted(), m.predicted());
    assert_eq!(Metrics::from_confusion(all.confusion.clone()).unwrap(), all);
}

#[test]
fn metrics_of_perfect_and_empty_matrices() {
    let p = cm(3, &[4, 0, 0, 0, 1, 0, 0, 0, 2]);
    assert_f64s("recall", &p.recall(), &[1.0; 3]);
    assert_f64s("precision", &p.precision(), &[1.0; 3]);
    assert_f64s("f1", &p.f1(), &[1.0; 3]);
    assert_eq!((p.accuracy(), p.balanced_accuracy()), (1.0, 1.0));

    // Everything 0/0: defined as 0, never NaN.
    let e = ConfusionMatrix::new(3).unwrap().metrics();
    assert_eq!((e.total(), e.correct(), e.accuracy, e.balanced_accuracy), (0, 0, 0.0, 0.0));
    assert_eq!((e.recall, e.precision, e.f1), (vec![0.0; 3], vec![0.0; 3], vec![0.0; 3]));

    // Balanced accuracy differs from accuracy under imbalance: 9/10 right on class 0, 0/1 on class 1.
    let b = cm(2, &[9, 1, 1, 0]);
    assert!((b.accuracy() - 9.0 / 11.0).abs() <= 1e-12);
    assert!((b.balanced_accuracy() - 0.45).abs() <= 1e-12);
}

// ---- CUDA vs CPU ----------------------------------------------------------------------------------

/// A known non-zero start for the device matrix, with entries above u32::MAX so that the kernels'
/// adds are checked to be 64-bit.
fn poison(classes: usize) -> Vec<u64> {
    (0..classes * classes).map(|i| (1u64 << 33) + 7919 * i as u64 + 3).collect()
}

#[track_caller]
fn assert_added(what: &str, got: &[u64], start: &[u64], added: &ConfusionMatrix) {
    assert_eq!(got.len(), start.len(), "{what}: length");
    for (i, ((&g, &s), &a)) in got.iter().zip(start).zip(added.counts()).enumerate() {
        let c = added.classes();
        assert_eq!(g, s + a, "{what}: entry ({}, {}) is {g}, want {s} + {a}", i / c, i % c);
    }
}

/// Random logits in `T`, with NaN in some rows and a duplicated maximum in others; targets with
/// ~5% ignore_index (-100).
fn random_case<T: Dtype>(seed: u64, n: usize, classes: usize) -> (Vec<T>, Vec<i32>) {
    let mut rng = common::rng(seed);
    let mut x: Vec<T> = common::uniform(&mut rng, n * classes, -4.0, 4.0).into_iter().map(T::from_f32).collect();
    for row in x.chunks_exact_mut(classes) {
        let r: f32 = rng.random_range(0.0..1.0);
        let j = rng.random_range(0..classes);
        if r < 0.03 {
            row[j] = T::from_f32(NAN);
        } else if r < 0.10 {
            let m = (0..classes).max_by(|&a, &b| row[a].to_f32().total_cmp(&row[b].to_f32())).unwrap();
            row[j] = row[m];
        }
    }
    let mut targets = common::labels(&mut rng, n, classes);
    for t in targets.iter_mut() {
        if rng.random_range(0.0..1.0f32) < 0.05 {
            *t = -100;
        }
    }
    (x, targets)
}

#[test]
fn random_cases_count_every_kept_sample() {
    // The inputs of the GPU tests, checked on the CPU: every non-ignored sample is counted once,
    // in its target's row.
    fn check<T: Dtype>(seed: u64) {
        let (n, c) = (1_001, 37);
        let (x, targets) = random_case::<T>(seed, n, c);
        let m = cpu::from_logits(ArrayView2::from_shape((n, c), &x).unwrap(), &targets, Some(-100)).unwrap();
        let kept = targets.iter().filter(|&&t| t != -100).count() as u64;
        assert!(kept > 900 && kept < n as u64, "{kept}");
        assert_eq!(m.total(), kept);
        for (k, s) in m.support().into_iter().enumerate() {
            assert_eq!(s, targets.iter().filter(|&&t| t == k as i32).count() as u64);
        }
    }
    check::<f32>(1);
    check::<f16>(2);
    check::<bf16>(3);
}

const GPU_CLASSES: [usize; 6] = [2, 10, 37, 110, 111, 1000];

fn gpu_logits_vs_cpu<T: Dtype>(seed: u64) {
    let stream = common::gpu();
    for (k, &c) in GPU_CLASSES.iter().enumerate() {
        // Odd, not a multiple of 8 rows per block, and past one grid-stride step.
        let n = if c >= 1000 { 9_001 } else { 10_007 };
        let (x, targets) = random_case::<T>(seed + k as u64, n, c);
        let want = cpu::from_logits(ArrayView2::from_shape((n, c), &x).unwrap(), &targets, Some(-100)).unwrap();
        let start = poison(c);
        let dx = stream.clone_htod(&x).unwrap();
        let dt = stream.clone_htod(&targets).unwrap();
        let mut dc = stream.clone_htod(&start).unwrap();
        cuda::count_logits(&stream, &dx, &dt.as_view(), &mut dc, c, Some(-100)).unwrap();
        let got = stream.clone_dtoh(&dc).unwrap();
        assert_added(&format!("logits_{} C={c}", T::SUFFIX), &got, &start, &want);
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_logits_f32_matches_cpu() {
    gpu_logits_vs_cpu::<f32>(100);
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_logits_f16_matches_cpu() {
    gpu_logits_vs_cpu::<f16>(200);
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_logits_bf16_matches_cpu() {
    gpu_logits_vs_cpu::<bf16>(300);
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_tricky_rows_match_cpu() {
    let stream = common::gpu();
    let (x, _) = tricky_rows();
    let targets = [1, 0, 3, 1, 2, 2, 3];
    let want = cpu::from_logits(ArrayView2::from_shape((7, 4), &x).unwrap(), &targets, None).unwrap();
    let dx = stream.clone_htod(&x).unwrap();
    let dt = stream.clone_htod(&targets).unwrap();
    let got = cuda::from_logits::<f32>(&stream, &dx, &dt.as_view(), 4, None).unwrap();
    assert_eq!(got, want);
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_labels_match_cpu() {
    let stream = common::gpu();
    for (k, &c) in GPU_CLASSES.iter().enumerate() {
        let n = 300_001;
        let mut rng = common::rng(400 + k as u64);
        let preds = common::labels(&mut rng, n, c);
        let mut targets = common::labels(&mut rng, n, c);
        targets.iter_mut().step_by(19).for_each(|t| *t = -1);
        let want = cpu::from_labels(&preds, &targets, c, Some(-1)).unwrap();
        let start = poison(c);
        let dp = stream.clone_htod(&preds).unwrap();
        let dt = stream.clone_htod(&targets).unwrap();
        let mut dc = stream.clone_htod(&start).unwrap();
        cuda::count_labels(&stream, &dp.as_view(), &dt.as_view(), &mut dc, c, Some(-1)).unwrap();
        let got = stream.clone_dtoh(&dc).unwrap();
        assert_added(&format!("labels C={c}"), &got, &start, &want);
        // The convenience allocates from zero.
        assert_eq!(cuda::from_labels(&stream, &dp.as_view(), &dt.as_view(), c, Some(-1)).unwrap(), want);
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_accumulates_across_calls() {
    let stream = common::gpu();
    for c in [10, 200] {
        let (x1, t1) = random_case::<f32>(500, 1_001, c);
        let (x2, t2) = random_case::<f32>(501, 777, c);
        let mut want = cpu::from_logits(ArrayView2::from_shape((1_001, c), &x1).unwrap(), &t1, Some(-100)).unwrap();
        cpu::count_logits(ArrayView2::from_shape((777, c), &x2).unwrap(), &t2, &mut want, Some(-100)).unwrap();
        let mut dc = stream.alloc_zeros::<u64>(c * c).unwrap();
        for (x, t) in [(&x1, &t1), (&x2, &t2)] {
            let dx = stream.clone_htod(x).unwrap();
            let dt = stream.clone_htod(t).unwrap();
            cuda::count_logits(&stream, &dx, &dt.as_view(), &mut dc, c, Some(-100)).unwrap();
        }
        let got = ConfusionMatrix::from_counts(c, stream.clone_dtoh(&dc).unwrap()).unwrap();
        assert_eq!(got, want, "C={c}");
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_bad_targets_and_predictions() {
    let stream = common::gpu();
    for c in [10usize, 200] {
        let n = 50_001;
        let mut rng = common::rng(600);
        let x: Vec<f32> = common::uniform(&mut rng, n * c, -1.0, 1.0);
        let preds = common::labels(&mut rng, n, c);
        let targets = common::labels(&mut rng, n, c);
        let dx = stream.clone_htod(&x).unwrap();
        let mut dc = stream.alloc_zeros::<u64>(c * c).unwrap();

        // Logits: two bad targets in different blocks; the first is named.
        let mut t = targets.clone();
        t[40_000] = c as i32;
        t[777] = -5;
        t[5] = -100; // ignored, fine
        let dt = stream.clone_htod(&t).unwrap();
        let e = cuda::count_logits(&stream, &dx, &dt.as_view(), &mut dc, c, Some(-100)).unwrap_err();
        assert!(matches!(e, Error::InvalidTarget { index: 777, value: -5, .. }), "C={c}: {e}");

        // Labels: the first bad sample wins across both kinds; the target when one sample has both.
        let run = |p: &[i32], t: &[i32]| {
            let dp = stream.clone_htod(p).unwrap();
            let dt = stream.clone_htod(t).unwrap();
            let mut dc = stream.alloc_zeros::<u64>(c * c).unwrap();
            cuda::count_labels(&stream, &dp.as_view(), &dt.as_view(), &mut dc, c, Some(-100)).unwrap_err()
        };
        let (mut p, mut t) = (preds.clone(), targets.clone());
        p[30_000] = c as i32;
        t[45_000] = -1;
        let e = run(&p, &t);
        assert!(matches!(e, Error::InvalidPrediction { index: 30_000, .. }), "C={c}: {e}");
        assert!(matches!(&e, Error::InvalidPrediction { value, .. } if *value == c as i64), "C={c}: {e}");
        t[12_345] = i32::MAX;
        let e = run(&p, &t);
        assert!(matches!(e, Error::InvalidTarget { index: 12_345, value: 2147483647, .. }), "C={c}: {e}");
        p[12_345] = -3;
        let e = run(&p, &t);
        assert!(matches!(e, Error::InvalidTarget { index: 12_345, .. }), "C={c}: {e}");
        // An ignored sample's prediction is still checked.
        let (mut p, mut t) = (preds.clone(), targets.clone());
        t[9] = -100;
        p[9] = -7;
        let e = run(&p, &t);
        assert!(matches!(e, Error::InvalidPrediction { index: 9, value: -7, .. }), "C={c}: {e}");
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_shape_errors_before_launch() {
    let stream = common::gpu();
    let x = stream.clone_htod(&[0.5f32; 30]).unwrap();
    let t = stream.clone_htod(&[0i32; 10]).unwrap();
    let p = stream.clone_htod(&[0i32; 9]).unwrap();
    let mut counts = stream.alloc_zeros::<u64>(9).unwrap();
    let shape = |r: evenclass::Result<()>| matches!(r, Err(Error::Shape { .. }));
    assert!(shape(cuda::count_logits::<f32>(&stream, &x, &t.slice(..9), &mut counts, 3, None)));
    assert!(shape(cuda::count_logits::<f32>(&stream, &x.slice(..29), &t.as_view(), &mut counts, 3, None)));
    assert!(shape(cuda::count_logits::<f32>(&stream, &x, &t.as_view(), &mut counts, 0, None)));
    let mut c4 = stream.alloc_zeros::<u64>(16).unwrap();
    assert!(shape(cuda::count_logits::<f32>(&stream, &x, &t.as_view(), &mut c4, 3, None)));
    assert!(shape(cuda::count_labels(&stream, &p.as_view(), &t.as_view(), &mut counts, 3, None)));
    // The same buffers with matching lengths: logits all equal -> argmax 0, targets 0.
    cuda::count_logits::<f32>(&stream, &x, &t.as_view(), &mut counts, 3, None).unwrap();
    cuda::count_labels(&stream, &p.as_view(), &t.slice(..9), &mut counts, 3, None).unwrap();
    assert_eq!(stream.clone_dtoh(&counts).unwrap(), vec![19, 0, 0, 0, 0, 0, 0, 0, 0]);
}

// ---- per-class logit bias ------------------------------------------------------------------------

/// The argmax of `x + bias` by brute force, in f32, ties to the lowest index, NaN the maximum.
fn brute_biased_argmax(row: &[f32], bias: &[f32]) -> usize {
    let v: Vec<f32> = row.iter().zip(bias).map(|(x, b)| x + b).collect();
    if let Some(i) = v.iter().position(|x| x.is_nan()) {
        return i;
    }
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    v.iter().position(|&x| x == m).unwrap()
}

#[test]
fn biased_counts_match_brute_force() {
    let (n, c) = (503, 7);
    let mut r = common::rng(41);
    let mut x = common::uniform(&mut r, n * c, -3.0, 3.0);
    x[5] = NAN; // row 0
    x[3 * c + 2] = INF;
    // Ties after the bias: row 4 has x = [1, 0, ...] and bias[1] = 1.
    x[4 * c] = 1.0;
    x[4 * c + 1] = 0.0;
    let targets = common::labels(&mut r, n, c);
    let bias: Vec<f32> = vec![0.0, 1.0, -0.5, 0.25, 2.0, -1.0, 0.0];
    let m = cpu::from_logits_biased(ArrayView2::from_shape((n, c), &x).unwrap(), Some(&bias), &targets, None).unwrap();
    let mut want = vec![0u64; c * c];
    for i in 0..n {
        want[targets[i] as usize * c + brute_biased_argmax(&x[i * c..(i + 1) * c], &bias)] += 1;
    }
    assert_eq!(m.counts(), &want[..]);
    // No bias and a zero bias agree with the plain argmax.
    let plain = cpu::from_logits(ArrayView2::from_shape((n, c), &x).unwrap(), &targets, None).unwrap();
    let none = cpu::from_logits_biased(ArrayView2::from_shape((n, c), &x).unwrap(), None, &targets, None).unwrap();
    assert_eq!(plain, none);
    // A bias of the wrong length is an error.
    let e = cpu::from_logits_biased(ArrayView2::from_shape((n, c), &x).unwrap(), Some(&bias[..6]), &targets, None);
    assert!(matches!(e, Err(Error::Shape { .. })), "{e:?}");
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_biased_logits_match_cpu() {
    let stream = common::gpu();
    for (k, &c) in [3usize, 10, 37, 111].iter().enumerate() {
        let n = 2_003;
        let (x, targets) = random_case::<f32>(300 + k as u64, n, c);
        let bias = common::uniform(&mut common::rng(400 + k as u64), c, -2.0, 2.0);
        let want =
            cpu::from_logits_biased(ArrayView2::from_shape((n, c), &x).unwrap(), Some(&bias), &targets, Some(-100))
                .unwrap();
        let start = poison(c);
        let (dx, dt, db) =
            (stream.clone_htod(&x).unwrap(), stream.clone_htod(&targets).unwrap(), stream.clone_htod(&bias).unwrap());
        let mut dc = stream.clone_htod(&start).unwrap();
        cuda::count_logits_biased(&stream, &dx, Some(&db.as_view()), &dt.as_view(), &mut dc, c, Some(-100)).unwrap();
        let got = stream.clone_dtoh(&dc).unwrap();
        assert_added(&format!("biased C={c}"), &got, &start, &want);
        // A bias of the wrong length is refused before any launch.
        let short = stream.clone_htod(&bias[..c - 1]).unwrap();
        let e = cuda::count_logits_biased(&stream, &dx, Some(&short.as_view()), &dt.as_view(), &mut dc, c, None);
        assert!(matches!(e, Err(Error::Shape { .. })), "{e:?}");
    }
}

/// Logits of a 4-class problem where class 2 is hard: its samples' own logit is pulled down, so
/// with the plain argmax its recall is far below the others'.
fn hard_class_case(seed: u64, n: usize) -> (Vec<f32>, Vec<i32>) {
    let c = 4;
    let mut r = common::rng(seed);
    let targets = common::labels(&mut r, n, c);
    let mut x = common::uniform(&mut r, n * c, -1.0, 1.0);
    for (i, &t) in targets.iter().enumerate() {
        x[i * c + t as usize] += if t == 2 { 0.3 } else { 1.5 };
    }
    (x, targets)
}

#[test]
fn bias_fit_raises_the_hard_class_and_evens_recall() {
    use evenclass::confusion::bias::{fit_recall_bias, FitOptions};
    let (n, c) = (4_000, 4);
    let (x, targets) = hard_class_case(7, n);
    let view = ArrayView2::from_shape((n, c), &x).unwrap();
    let fit = fit_recall_bias(view, &targets, &FitOptions::default()).unwrap();
    let before = cpu::from_logits(view, &targets, None).unwrap().metrics();
    assert!(before.recall[2] < 0.6 && before.recall.iter().enumerate().all(|(k, &r)| k == 2 || r > 0.8));
    assert_eq!(fit.recall_before, before.recall);
    // The fit's own recalls are exactly what the biased argmax gives (bit-exact f32 steps).
    let after = cpu::from_logits_biased(view, Some(&fit.bias), &targets, None).unwrap().metrics();
    assert_eq!(fit.recall, after.recall);
    // The hard class got the largest bias, the worst recall rose a lot, and recalls are even.
    let top = (0..c).max_by(|&a, &b| fit.bias[a].total_cmp(&fit.bias[b])).unwrap();
    assert_eq!(top, 2, "bias {:?}", fit.bias);
    assert!(fit.worst_recall() > before.recall[2] + 0.15, "{} vs {}", fit.worst_recall(), before.recall[2]);
    let spread = |r: &[f64]| r.iter().copied().fold(f64::MIN, f64::max) - r.iter().copied().fold(f64::MAX, f64::min);
    assert!(spread(&after.recall) < 0.05, "recall {:?}", after.recall);
    assert!(spread(&after.recall) < spread(&before.recall) / 4.0);
    // On fresh data from the same distribution the bias still helps the hard class.
    let (x2, t2) = hard_class_case(8, n);
    let v2 = ArrayView2::from_shape((n, c), &x2).unwrap();
    let held_before = cpu::from_logits(v2, &t2, None).unwrap().metrics();
    let held_after = cpu::from_logits_biased(v2, Some(&fit.bias), &t2, None).unwrap().metrics();
    assert!(held_after.recall[2] > held_before.recall[2] + 0.1);
    assert!(spread(&held_after.recall) < spread(&held_before.recall) / 2.0);
}

/// With an accuracy budget the fit raises the worst class only as far as the budget allows: the
/// accuracy on the fitted data stays within it, the worst recall still rises, and less than
/// without a budget; a budget of 0 never lowers the accuracy; a bad budget is an error.
#[test]
fn bias_fit_with_an_accuracy_budget_stays_within_it() {
    use evenclass::confusion::bias::{fit_recall_bias, FitOptions};
    let (n, c) = (4_000, 4);
    let (x, targets) = hard_class_case(9, n);
    let view = ArrayView2::from_shape((n, c), &x).unwrap();
    let before = cpu::from_logits(view, &targets, None).unwrap().metrics();
    let free = fit_recall_bias(view, &targets, &FitOptions::default()).unwrap();
    let acc = |b: &[f32]| cpu::from_logits_biased(view, Some(b), &targets, None).unwrap().metrics().accuracy;
    let free_drop = before.accuracy - acc(&free.bias);
    assert!(free_drop > 0.004, "the unconstrained fit must cost accuracy for this test: {free_drop}");
    for budget in [0.0, free_drop / 4.0, free_drop / 2.0] {
        let fit =
            fit_recall_bias(view, &targets, &FitOptions { max_accuracy_drop: Some(budget), ..Default::default() })
                .unwrap();
        let a = acc(&fit.bias);
        assert!(a >= before.accuracy - budget - 1e-12, "budget {budget}: accuracy {a} from {}", before.accuracy);
        assert!(fit.worst_recall() >= before.recall[2], "budget {budget}");
        assert!(fit.worst_recall() <= free.worst_recall());
        if budget > 0.0 {
            assert!(fit.worst_recall() > before.recall[2] + 0.01, "budget {budget}: {}", fit.worst_recall());
            assert!(fit.worst_recall() < free.worst_recall(), "budget {budget}");
        }
    }
    for bad in [-0.1, f64::NAN, f64::INFINITY] {
        let opts = FitOptions { max_accuracy_drop: Some(bad), ..Default::default() };
        assert!(fit_recall_bias(view, &targets, &opts).is_err(), "{bad}");
    }
}

#[test]
fn bias_fit_edge_cases_and_bad_input() {
    use evenclass::confusion::bias::{fit_recall_bias, FitOptions};
    let opts = FitOptions::default();
    // Already perfect: no step, zero bias.
    let x = [2.0f32, 0.0, 0.0, 3.0];
    let fit = fit_recall_bias(ArrayView2::from_shape((2, 2), &x).unwrap(), &[0, 1], &opts).unwrap();
    assert_eq!((fit.steps, fit.bias.clone(), fit.recall.clone()), (0, vec![0.0, 0.0], vec![1.0, 1.0]));
    // A class without samples is ignored by the objective; NaN rows are never "won back".
    let x = [0.0f32, 1.0, 0.0, NAN, 0.0, 0.0, 1.0, 0.0, 0.0];
    let fit = fit_recall_bias(ArrayView2::from_shape((3, 3), &x).unwrap(), &[0, 1, 1], &opts).unwrap();
    assert_eq!(fit.support, vec![1, 2, 0]);
    assert_eq!(fit.recall[0], 1.0);
    assert!(fit.bias.iter().all(|b| b.is_finite() && *b >= 0.0));
    // The step limit is honoured.
    let (x, t) = hard_class_case(9, 500);
    let fit = fit_recall_bias(
        ArrayView2::from_shape((500, 4), &x).unwrap(),
        &t,
        &FitOptions { max_steps: 3, ..Default::default() },
    )
    .unwrap();
    assert!(fit.steps <= 3);
    // Bad input.
    let x = [0.0f32; 6];
    let v = ArrayView2::from_shape((3, 2), &x).unwrap();
    assert!(matches!(fit_recall_bias(v, &[0, 1], &opts), Err(Error::Shape { .. })));
    assert!(matches!(fit_recall_bias(v, &[0, 2, 1], &opts), Err(Error::InvalidTarget { index: 1, value: 2, .. })));
    assert!(matches!(fit_recall_bias(v, &[0, -1, 1], &opts), Err(Error::InvalidTarget { index: 1, .. })));
    let empty = Array2::<f32>::zeros((0, 2));
    assert!(matches!(fit_recall_bias(empty.view(), &[], &opts), Err(Error::Shape { .. })));
}

/// The F1 fit raises the worst class's F1 on the fitted data, its reported recalls and F1s are
/// exactly what the biased argmax gives, it beats the recall fit on the F1 objective it targets,
/// and it is deterministic.
#[test]
fn f1_bias_fit_raises_the_worst_f1() {
    use evenclass::confusion::bias::{fit_f1_bias, fit_recall_bias, FitOptions};
    let (n, c) = (4_000, 4);
    let (x, targets) = hard_class_case(11, n);
    let view = ArrayView2::from_shape((n, c), &x).unwrap();
    let fit = fit_f1_bias(view, &targets, &FitOptions::default()).unwrap();
    let before = cpu::from_logits(view, &targets, None).unwrap().metrics();
    let after = cpu::from_logits_biased(view, Some(&fit.bias), &targets, None).unwrap().metrics();
    assert_eq!((fit.recall_before.clone(), fit.f1_before.clone()), (before.recall.clone(), before.f1.clone()));
    assert_eq!((fit.recall.clone(), fit.f1.clone()), (after.recall.clone(), after.f1.clone()));
    let worst = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    assert!(worst(&after.f1) > worst(&before.f1) + 0.05, "{:?} -> {:?}", before.f1, after.f1);
    assert!(fit.steps > 0);
    let recall_fit = fit_recall_bias(view, &targets, &FitOptions::default()).unwrap();
    assert!(fit.worst_f1() >= recall_fit.worst_f1(), "{} < {}", fit.worst_f1(), recall_fit.worst_f1());
    assert_eq!(fit, fit_f1_bias(view, &targets, &FitOptions::default()).unwrap());
    // Within an accuracy budget of 0, the accuracy never drops and the worst F1 never falls.
    let opts = FitOptions { max_accuracy_drop: Some(0.0), ..Default::default() };
    let held = fit_f1_bias(view, &targets, &opts).unwrap();
    let a = cpu::from_logits_biased(view, Some(&held.bias), &targets, None).unwrap().metrics().accuracy;
    assert!(a >= before.accuracy && held.worst_f1() >= held.worst_f1_before());
    assert!(held.worst_f1() <= fit.worst_f1());
}

/// With two classes only the difference of the biases matters, so coordinate ascent reaches the
/// global optimum: on random continuous logits (margins far apart compared with f32 rounding) it
/// must match a brute force over every prediction state, the midpoints between sorted margins.
/// On any input (ties, NaN rows, 1 to 5 classes) the reported F1s are the kernel's and the fit
/// never lowers the worst F1 of the fitted data.
#[test]
fn f1_bias_fit_is_optimal_for_two_classes_and_never_worse() {
    use evenclass::confusion::bias::{fit_f1_bias, FitOptions};
    let mut rng = rand::rng();
    for case in 0..300 {
        let c = if case < 150 { 2 } else { rng.random_range(1..6usize) };
        let n = rng.random_range(1..60usize);
        let mut x: Vec<f32> = if case < 150 {
            (0..n * c).map(|_| rng.random_range(-4.0..4.0f32)).collect()
        } else {
            (0..n * c).map(|_| (rng.random_range(-8..8i32) as f32) * 0.25).collect()
        };
        if case >= 150 && case % 7 == 0 {
            x[rng.random_range(0..n * c)] = f32::NAN;
        }
        let targets: Vec<i32> = (0..n).map(|_| rng.random_range(0..c as i32)).collect();
        let view = ArrayView2::from_shape((n, c), &x).unwrap();
        let fit = fit_f1_bias(view, &targets, &FitOptions::default()).unwrap();
        let m = cpu::from_logits_biased(view, Some(&fit.bias), &targets, None).unwrap().metrics();
        assert_eq!(fit.f1, m.f1, "case {case}");
        assert!(fit.worst_f1() >= fit.worst_f1_before(), "case {case}");
        if case < 150 {
            let support: Vec<usize> = (0..2).map(|k| targets.iter().filter(|&&t| t == k).count()).collect();
            let mut margins: Vec<f32> = (0..n).map(|i| x[2 * i] - x[2 * i + 1]).collect();
            margins.sort_by(f32::total_cmp);
            let mut ds = vec![margins[0] - 1.0, margins[n - 1] + 1.0];
            ds.extend(margins.windows(2).map(|w| (w[0] + w[1]) / 2.0));
            let mut best = f64::NEG_INFINITY;
            for d in ds {
                let f1 = cpu::from_logits_biased(view, Some(&[0.0, d]), &targets, None).unwrap().metrics().f1;
                let w = (0..2).filter(|&k| support[k] > 0).map(|k| f1[k]).fold(f64::INFINITY, f64::min);
                best = best.max(w);
            }
            assert_eq!(fit.worst_f1(), best, "case {case}: bias {:?}", fit.bias);
        }
    }
}
