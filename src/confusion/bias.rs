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
    /// Samples per class in the data it was fitted on.
    pub support: Vec<usize>,
    /// Greedy steps taken.
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
}

/// Fits one additive logit bias per class on `logits` (N x C, f32) and `targets` (N, in `[0, C)`)
/// so that the lowest per-class recall is maximal (see the [module docs](self)).
pub fn fit_recall_bias(logits: ArrayView2<'_, f32>, targets: &[i32], opts: &FitOptions) -> Result<BiasFit> {
    let (n, classes) = logits.dim();
    if classes == 0 {
        return Err(Error::shape(OP, "logits need at least one class"));
    }
    if targets.len() != n {
        return Err(Error::shape(OP, format!("{} targets for {n} rows of logits", targets.len())));
    }
    if let Some(i) = targets.iter().position(|&t| t < 0 || t as usize >= classes) {
        return Err(Error::InvalidTarget { op: OP, index: i, value: targets[i] as i64, classes });
    }
    let targets: Vec<usize> = targets.iter().map(|&t| t as usize).collect();
    let mut support = vec![0usize; classes];
    for &t in &targets {
        support[t] += 1;
    }
    if support.iter().all(|&s| s == 0) {
        return Err(Error::shape(OP, "no samples to fit on"));
    }

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
    if let Some(d) = opts.max_accuracy_drop {
        if !(d.is_finite() && d >= 0.0) {
            return Err(Error::shape(OP, format!("max_accuracy_drop must be finite and >= 0, got {d}")));
        }
    }
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
    Ok(BiasFit { bias, recall, recall_before, support, steps })
}

/// The argmax's order: a larger value wins, ties go to the lower index (no NaN here).
fn beats(v: f32, i: usize, bv: f32, bi: usize) -> bool {
    v > bv || (v == bv && i < bi)
}

/// Smallest `b` (f32) with `beats(x + b, w, winner)`, computed as the kernel adds: `x + b` in f32.
fn min_winning_bias(x: f32, w: usize, (bv, bi): (f32, usize)) -> f32 {
    let mut b = bv - x;
    if !b.is_finite() {
        return f32::INFINITY;
    }
    // Rounding may leave x + b a hair short (or past): settle on the smallest float that wins.
    while !beats(x + b, w, bv, bi) {
        b = next_up(b);
        if !b.is_finite() {
            return f32::INFINITY;
        }
    }
    loop {
        let lower = next_down(b);
        if beats(x + lower, w, bv, bi) {
            b = lower;
        } else {
            return b;
        }
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
