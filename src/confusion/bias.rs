//! Post-hoc per-class logit bias: fitted on held-out logits so that the worst class's recall is as
//! high as it can be, then applied at prediction (`argmax_c(logit_c + bias[c])`, see
//! [`cpu::count_logits_biased`](super::cpu::count_logits_biased) and its CUDA twin) with no
//! retraining.
//!
//! # The fit
//!
//! The recall of class `w` only grows when `bias[w]` grows (its samples can only gain), and every
//! other class's recall can only shrink. So the fit is a greedy ascent on the worst class: start
//! from zero, and repeatedly raise the bias of the class with the lowest recall by the smallest
//! amount that wins back one more of its misclassified samples (the smallest margin between that
//! sample's best other class and its own logit). Each step is exact in f32: the new bias is the
//! smallest float for which `logit + bias` beats the current winner under the argmax's own order
//! (ties go to the lower index), so the fitted bias reproduces the recalls it reports bit for bit.
//! A step costs O(N) with the per-sample winners kept up to date, since only one bias changes.
//!
//! Every state visited is scored, and the best is returned: highest worst-class recall, then
//! highest balanced accuracy (mean recall), then the earlier (smaller) biases. The ascent stops
//! when the worst class cannot gain (all its samples are right, or its misses are NaN rows), or
//! after `max_steps`.
//!
//! Rows with a NaN logit are predicted as their first NaN whatever the bias (NaN + b is NaN), as
//! the argmax does; they count in the recalls but are never "won back". Biases only grow, so they
//! are all >= 0; only their differences matter.
use ndarray::{ArrayView2, Axis};

use crate::error::{Error, Result};

const OP: &str = "fit_recall_bias";

/// Options of [`fit_recall_bias`].
#[derive(Clone, Copy, Debug)]
pub struct FitOptions {
    /// Upper bound on the greedy steps (each wins back one sample); default 100,000.
    pub max_steps: usize,
    /// Only states whose accuracy on the fitted data is at most this much (a fraction, e.g.
    /// 0.01 for one point) below the unbiased accuracy are eligible: the worst class is raised
    /// as far as that accuracy budget allows. `None` (default): no budget, pure max-min.
    pub max_accuracy_drop: Option<f64>,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self { max_steps: 100_000, max_accuracy_drop: None }
    }
}

/// The fitted bias and what it gives on the data it was fitted on.
#[derive(Clone, Debug, PartialEq)]
pub struct BiasFit {
    /// One additive bias per class (f32, as the kernels add it).
    pub bias: Vec<f32>,
    /// Per-class recall with the bias (classes without samples: 0, and ignored by the objective).
    pub recall: Vec<f64>,
    /// Per-class recall without it.
    pub recall_before: Vec<f64>,
    /// Per-class F1 with the bias (classes without samples: 0, and ignored by the objectives).
    pub f1: Vec<f64>,
    /// Per-class F1 without it.
    pub f1_before: Vec<f64>,
    /// Samples per class in the data it was fitted on.
    pub support: Vec<usize>,
    /// Steps taken: greedy steps of the recall fit, accepted coordinate moves of the F1 fit.
    pub steps: usize,
}

impl BiasFit {
    /// Lowest recall with the bias, over the classes that have samples.
    pub fn worst_recall(&self) -> f64 {
        worst(&self.recall, &self.support)
    }

    /// Lowest recall without the bias, over the classes that have samples.
    pub fn worst_recall_before(&self) -> f64 {
        worst(&self.recall_before, &self.support)
    }

    /// Lowest F1 with the bias, over the classes that have samples.
    pub fn worst_f1(&self) -> f64 {
        worst(&self.f1, &self.support)
    }

    /// Lowest F1 without the bias, over the classes that have samples.
    pub fn worst_f1_before(&self) -> f64 {
        worst(&self.f1_before, &self.support)
    }
}

/// Fits one additive logit bias per class on `logits` (N x C, f32) and `targets` (N, in `[0, C)`)
/// so that the lowest per-class recall is maximal (see the [module docs](self)).
pub fn fit_recall_bias(logits: ArrayView2<'_, f32>, targets: &[i32], opts: &FitOptions) -> Result<BiasFit> {
    let (n, classes) = logits.dim();
    let (targets, support) = prepare(OP, logits, targets, opts)?;
    let mut bias = vec![0.0f32; classes];
    // Per sample: the current winner (value with bias, index), and whether the row has a NaN.
    let mut best: Vec<(f32, usize)> = Vec::with_capacity(n);
    let mut has_nan = Vec::with_capacity(n);
    for row in logits.axis_iter(Axis(0)) {
        let mut bi = 0;
        let mut bv = row[0];
        for (i, &v) in row.iter().enumerate().skip(1) {
            if !bv.is_nan() && (v.is_nan() || v > bv) {
                bi = i;
                bv = v;
            }
        }
        best.push((bv, bi));
        has_nan.push(bv.is_nan());
    }
    let mut correct = vec![0usize; classes];
    for (&(_, p), &t) in best.iter().zip(&targets) {
        if p == t {
            correct[t] += 1;
        }
    }
    let recall_of = |correct: &[usize]| -> Vec<f64> {
        correct.iter().zip(&support).map(|(&c, &s)| if s == 0 { 0.0 } else { c as f64 / s as f64 }).collect()
    };
    let recall_before = recall_of(&correct);
    let accuracy_of = |correct: &[usize]| correct.iter().sum::<usize>() as f64 / n as f64;
    let floor = opts.max_accuracy_drop.map(|d| accuracy_of(&correct) - d);
    let score = |r: &[f64]| (worst(r, &support), mean_supported(r, &support));
    let mut best_state = (score(&recall_before), bias.clone(), recall_before.clone());
    let mut steps = 0;

    while steps < opts.max_steps {
        let recall = recall_of(&correct);
        // The worst class with samples (lowest index on ties).
        let w = (0..classes)
            .filter(|&c| support[c] > 0)
            .min_by(|&a, &b| recall[a].total_cmp(&recall[b]).then(a.cmp(&b)))
            .expect("some class has samples");
        // The smallest bias for class w that wins back one of its misses.
        let mut need = f32::INFINITY;
        for (i, row) in logits.axis_iter(Axis(0)).enumerate() {
            if targets[i] != w || best[i].1 == w || has_nan[i] {
                continue;
            }
            let b = min_winning_bias(row[w], w, best[i]);
            if b < need {
                need = b;
            }
        }
        if !need.is_finite() {
            break; // nothing to win back (or only by an infinite bias)
        }
        bias[w] = need;
        steps += 1;
        // Only class w's scores changed (upwards): samples can only switch to w.
        for (i, row) in logits.axis_iter(Axis(0)).enumerate() {
            if has_nan[i] {
                continue;
            }
            let v = row[w] + bias[w];
            let (bv, bi) = best[i];
            if bi == w {
                best[i].0 = v;
            } else if beats(v, w, bv, bi) {
                if bi == targets[i] {
                    correct[bi] -= 1;
                }
                if w == targets[i] {
                    correct[w] += 1;
                }
                best[i] = (v, w);
            }
        }
        let recall = recall_of(&correct);
        let s = score(&recall);
        let eligible = floor.is_none_or(|f| accuracy_of(&correct) >= f - 1e-12);
        if eligible && (s.0 > best_state.0 .0 || (s.0 == best_state.0 .0 && s.1 > best_state.0 .1)) {
            best_state = (s, bias.clone(), recall);
        }
    }
    let (_, bias, recall) = best_state;
    let f1_before = predicted_f1(logits, &targets, &support, &vec![0.0; classes]);
    let f1 = predicted_f1(logits, &targets, &support, &bias);
    Ok(BiasFit { bias, recall, recall_before, f1, f1_before, support, steps })
}

/// Checks the inputs of a fit: the targets as indices and the samples per class.
fn prepare(
    op: &'static str,
    logits: ArrayView2<'_, f32>,
    targets: &[i32],
    opts: &FitOptions,
) -> Result<(Vec<usize>, Vec<usize>)> {
    let (n, classes) = logits.dim();
    if classes == 0 {
        return Err(Error::shape(op, "logits need at least one class"));
    }
    if targets.len() != n {
        return Err(Error::shape(op, format!("{} targets for {n} rows of logits", targets.len())));
    }
    if let Some(i) = targets.iter().position(|&t| t < 0 || t as usize >= classes) {
        return Err(Error::InvalidTarget { op, index: i, value: targets[i] as i64, classes });
    }
    if let Some(d) = opts.max_accuracy_drop {
        if !(d.is_finite() && d >= 0.0) {
            return Err(Error::shape(op, format!("max_accuracy_drop must be finite and >= 0, got {d}")));
        }
    }
    let targets: Vec<usize> = targets.iter().map(|&t| t as usize).collect();
    let mut support = vec![0usize; classes];
    for &t in &targets {
        support[t] += 1;
    }
    if support.iter().all(|&s| s == 0) {
        return Err(Error::shape(op, "no samples to fit on"));
    }
    Ok((targets, support))
}

/// The prediction of one row with `bias` as the fused kernel makes it: `argmax_c(logit_c +
/// bias[c])` in f32, ties to the lower index, the first NaN when there is one.
fn predict(row: ndarray::ArrayView1<'_, f32>, bias: &[f32]) -> usize {
    let mut bi = 0;
    let mut bv = row[0] + bias[0];
    for (i, (&v, &b)) in row.iter().zip(bias).enumerate().skip(1) {
        let v = v + b;
        if !bv.is_nan() && (v.is_nan() || v > bv) {
            bi = i;
            bv = v;
        }
    }
    bi
}

/// Per-class F1 of the predictions with `bias`.
fn predicted_f1(logits: ArrayView2<'_, f32>, targets: &[usize], support: &[usize], bias: &[f32]) -> Vec<f64> {
    let classes = support.len();
    let (mut tp, mut predicted) = (vec![0usize; classes], vec![0usize; classes]);
    for (row, &t) in logits.axis_iter(Axis(0)).zip(targets) {
        let p = predict(row, bias);
        predicted[p] += 1;
        tp[p] += usize::from(p == t);
    }
    f1_of(&tp, &predicted, support)
}

/// F1 per class, `2 tp / (support + predicted)`, 0 where both are 0.
fn f1_of(tp: &[usize], predicted: &[usize], support: &[usize]) -> Vec<f64> {
    (0..tp.len())
        .map(|k| {
            let den = support[k] + predicted[k];
            if den == 0 {
                0.0
            } else {
                2.0 * tp[k] as f64 / den as f64
            }
        })
        .collect()
}

const OP_F1: &str = "fit_f1_bias";

/// Fits one additive logit bias per class on `logits` (N x C, f32) and `targets` so that the
/// lowest per-class F1 is as high as coordinate ascent finds it (ties: the higher macro F1).
///
/// F1 is not monotone in a class's bias (raising it wins back the class's misses but also takes
/// other classes' samples, which are false positives), so the greedy ascent of
/// [`fit_recall_bias`] does not apply. Instead, for one class `c` at a time with the others
/// fixed, every row has a threshold: the smallest f32 bias at which `c` wins its argmax (exact,
/// as the kernel adds). Sorting the thresholds and sweeping them visits every distinct prediction
/// state `bias[c]` can produce, so each coordinate step takes the exact best value for that
/// class (the smallest on ties); a step is taken only when it strictly improves (worst F1, macro
/// F1), so the ascent ends, at a coordinate-wise optimum, when a round over all classes changes
/// nothing or after `max_steps` moves. With `max_accuracy_drop`, states below the budget are
/// skipped. Deterministic: integer counts, a fixed class order. O(rounds x C x N (C + log N)).
pub fn fit_f1_bias(logits: ArrayView2<'_, f32>, targets: &[i32], opts: &FitOptions) -> Result<BiasFit> {
    let (n, classes) = logits.dim();
    let (targets, support) = prepare(OP_F1, logits, targets, opts)?;
    let mut bias = vec![0.0f32; classes];
    let (mut tp, mut predicted) = (vec![0usize; classes], vec![0usize; classes]);
    let has_nan: Vec<bool> = logits.axis_iter(Axis(0)).map(|r| r.iter().any(|v| v.is_nan())).collect();
    for (row, &t) in logits.axis_iter(Axis(0)).zip(&targets) {
        let p = predict(row, &bias);
        predicted[p] += 1;
        tp[p] += usize::from(p == t);
    }
    let recall_of = |tp: &[usize]| -> Vec<f64> {
        tp.iter().zip(&support).map(|(&c, &s)| if s == 0 { 0.0 } else { c as f64 / s as f64 }).collect()
    };
    let recall_before = recall_of(&tp);
    let f1_before = f1_of(&tp, &predicted, &support);
    let floor = opts.max_accuracy_drop.map(|d| tp.iter().sum::<usize>() as f64 / n as f64 - d);
    let score = |tp: &[usize], predicted: &[usize]| {
        let f1 = f1_of(tp, predicted, &support);
        (worst(&f1, &support), mean_supported(&f1, &support))
    };
    let mut current = score(&tp, &predicted);
    let mut steps = 0;
    let mut rows: Vec<(f32, usize)> = Vec::with_capacity(n);
    'rounds: loop {
        let mut moved = false;
        for c in 0..classes {
            if classes < 2 || steps >= opts.max_steps {
                break 'rounds;
            }
            // Counts with class c predicted nowhere (but on its NaN rows), and the threshold
            // of every other row.
            let (mut base_tp, mut base_pred) = (vec![0usize; classes], vec![0usize; classes]);
            let mut other = vec![0usize; n];
            rows.clear();
            for (i, row) in logits.axis_iter(Axis(0)).enumerate() {
                if has_nan[i] {
                    let p = predict(row, &bias);
                    base_pred[p] += 1;
                    base_tp[p] += usize::from(p == targets[i]);
                    continue;
                }
                let (mut oi, mut ov) = (usize::MAX, f32::NEG_INFINITY);
                for (j, (&v, &b)) in row.iter().zip(&bias).enumerate() {
                    let v = v + b;
                    if j != c && (oi == usize::MAX || v > ov) {
                        (oi, ov) = (j, v);
                    }
                }
                other[i] = oi;
                base_pred[oi] += 1;
                base_tp[oi] += usize::from(oi == targets[i]);
                let t = min_winning_bias(row[c], c, (ov, oi));
                if t.is_finite() {
                    rows.push((t, i));
                }
            }
            rows.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            let (mut tp_c, mut pred_c) = (base_tp, base_pred);
            let mut best: Option<(f32, (f64, f64))> = None;
            let mut k = 0;
            while k < rows.len() {
                let value = rows[k].0;
                while k < rows.len() && rows[k].0 == value {
                    let i = rows[k].1;
                    let o = other[i];
                    pred_c[o] -= 1;
                    tp_c[o] -= usize::from(o == targets[i]);
                    pred_c[c] += 1;
                    tp_c[c] += usize::from(c == targets[i]);
                    k += 1;
                }
                let eligible = floor.is_none_or(|f| tp_c.iter().sum::<usize>() as f64 / n as f64 >= f - 1e-12);
                let s = score(&tp_c, &pred_c);
                if eligible && best.is_none_or(|(_, b)| better(s, b)) {
                    best = Some((value, s));
                }
            }
            if let Some((value, s)) = best {
                if better(s, current) && value != bias[c] {
                    bias[c] = value;
                    current = s;
                    steps += 1;
                    moved = true;
                }
            }
        }
        if !moved {
            break;
        }
    }
    let (mut tp, mut predicted) = (vec![0usize; classes], vec![0usize; classes]);
    for (row, &t) in logits.axis_iter(Axis(0)).zip(&targets) {
        let p = predict(row, &bias);
        predicted[p] += 1;
        tp[p] += usize::from(p == t);
    }
    let f1 = f1_of(&tp, &predicted, &support);
    Ok(BiasFit { recall: recall_of(&tp), recall_before, f1, f1_before, support, steps, bias })
}

/// Whether score `a` (worst F1, macro F1) is strictly better than `b`.
fn better(a: (f64, f64), b: (f64, f64)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 > b.1)
}

/// The argmax's order: a larger value wins, ties go to the lower index (no NaN here).
fn beats(v: f32, i: usize, bv: f32, bi: usize) -> bool {
    v > bv || (v == bv && i < bi)
}

/// Smallest `b` (f32) with `beats(x + b, w, winner)`, computed as the kernel adds: `x + b` in f32.
/// `beats(x + b, ..)` only turns from false to true as `b` grows (f32 addition is monotone), so
/// the answer is found by bracketing `bv - x` (steps that double from the size of one unit in the
/// last place of the sum) and bisecting the f32 values in between by their order. Stepping one
/// float at a time would take millions of steps where `|b|` is far below `|x|`.
fn min_winning_bias(x: f32, w: usize, (bv, bi): (f32, usize)) -> f32 {
    let b0 = bv - x;
    if !b0.is_finite() {
        return f32::INFINITY;
    }
    let wins = |b: f32| beats(x + b, w, bv, bi);
    let first_step = (b0.abs().max(x.abs()) * f32::EPSILON).max(f32::MIN_POSITIVE);
    let (mut hi, mut step) = (b0, first_step);
    while !wins(hi) {
        hi = (hi + step).max(next_up(hi));
        step *= 2.0;
        if !hi.is_finite() {
            return f32::INFINITY;
        }
    }
    let (mut lo, mut step) = (hi, first_step);
    while wins(lo) {
        lo = (lo - step).min(next_down(lo));
        step *= 2.0;
        if !lo.is_finite() {
            return lo; // every finite bias wins (cannot happen with finite logits)
        }
    }
    // Invariant: lo loses, hi wins; bisect the floats in between by their order.
    while order_key(hi) - order_key(lo) > 1 {
        let mid = from_order_key(order_key(lo) + (order_key(hi) - order_key(lo)) / 2);
        if wins(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// The position of a (non-NaN) f32 in the order of the floats, -0.0 and 0.0 both 0.
fn order_key(x: f32) -> i64 {
    let bits = x.to_bits();
    if bits & 0x8000_0000 != 0 {
        -i64::from(bits & 0x7fff_ffff)
    } else {
        i64::from(bits)
    }
}

fn from_order_key(k: i64) -> f32 {
    if k < 0 {
        f32::from_bits((-k) as u32 | 0x8000_0000)
    } else {
        f32::from_bits(k as u32)
    }
}

fn next_up(x: f32) -> f32 {
    if x.is_nan() || x == f32::INFINITY {
        return x;
    }
    if x == 0.0 {
        return f32::from_bits(1);
    }
    let bits = x.to_bits();
    f32::from_bits(if x > 0.0 { bits + 1 } else { bits - 1 })
}

fn next_down(x: f32) -> f32 {
    -next_up(-x)
}

fn worst(recall: &[f64], support: &[usize]) -> f64 {
    recall.iter().zip(support).filter(|(_, &s)| s > 0).map(|(&r, _)| r).fold(f64::INFINITY, f64::min)
}

fn mean_supported(recall: &[f64], support: &[usize]) -> f64 {
    let (sum, k) =
        recall.iter().zip(support).filter(|(_, &s)| s > 0).fold((0.0, 0usize), |(a, k), (&r, _)| (a + r, k + 1));
    if k == 0 {
        0.0
    } else {
        sum / k as f64
    }
}
