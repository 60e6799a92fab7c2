//! Per-class confusion counts and the metrics derived from them.
//!
//! - kernel: `kernels/confusion.cu` (`confusion_logits_{f32,f16,bf16}`, `confusion_labels`)
//! - CUDA wrapper: [`cuda`]; CPU reference: [`cpu`]; tests: `tests/confusion.rs`
//! - post-hoc per-class logit bias (fit on held-out logits, applied in the fused argmax):
//!   [`bias`], [`cpu::count_logits_biased`], [`cuda::count_logits_biased`]
//!
//! # Counting
//!
//! The C x C matrix holds `u64` counts, row = true class, column = predicted class (as
//! scikit-learn's `confusion_matrix`). Counting *adds* to the matrix, so batches can be summed
//! across calls; start from [`ConfusionMatrix::new`] (CPU) or a zeroed device buffer (CUDA).
//!
//! The prediction of a sample is either given as a label (`i32`) or is the argmax of its row of
//! N x C logits (f32/f16/bf16, compared in f32), with `torch.argmax` semantics: ties go to the
//! lowest index; NaN counts as the maximum, and the first NaN of a row wins.
//!
//! Targets are `i32`. With `ignore_index: Some(v)`, samples whose target is `v` are skipped (not
//! counted); `v` may be any value, a class index too. Their predicted label is still validated.
//!
//! # Errors
//!
//! Lengths that do not match, `C == 0` and `C > MAX_CLASSES` are reported before any work. A target
//! outside `[0, C)` that is not `ignore_index` gives [`Error::InvalidTarget`](crate::Error), a
//! predicted label outside `[0, C)` [`Error::InvalidPrediction`](crate::Error); either names the
//! first bad sample (smallest index) and its value. When one sample has both, the target is
//! reported. Bad values are never used to index. On such an error the CPU reference leaves the
//! matrix untouched, while the CUDA kernel has already added the valid samples of the launch: treat
//! the device matrix as spoiled.
//!
//! # Metrics
//!
//! From the counts, per class `k` with `tp = m[k][k]`, `support = sum of row k` (samples of class
//! `k`), `predicted = sum of column k`, `fn = support - tp`, `fp = predicted - tp`:
//!
//! - recall (true-positive rate) `tp / support`;
//! - precision `tp / predicted`;
//! - F1 `2 tp / (2 tp + fp + fn)`, the harmonic mean of precision and recall;
//! - accuracy `trace / total`;
//! - balanced accuracy: the mean recall over the classes with `support > 0`, as scikit-learn's
//!   `balanced_accuracy_score` (which drops classes absent from `y_true`).
//!
//! Every 0/0 is defined as **0.0**, as scikit-learn with `zero_division=0`: the recall of a class
//! without samples, the precision of a class never predicted, the F1 of a class absent from both
//! targets and predictions (when only one of precision or recall is 0/0, F1 is 0 anyway, since
//! `tp = 0`), the accuracy of an empty matrix and the balanced accuracy when no class has samples.
//! No metric is ever NaN.
pub mod bias;
pub mod cpu;
pub mod cuda;

use crate::error::{Error, Result};

/// Largest number of classes: the matrix then holds 2^30 counts (8 GiB).
pub const MAX_CLASSES: usize = 1 << 15;

/// Checks `1 <= classes <= MAX_CLASSES`.
pub(crate) fn check_classes(op: &'static str, classes: usize) -> Result<()> {
    if classes == 0 {
        Err(Error::shape(op, "the number of classes must be at least 1"))
    } else if classes > MAX_CLASSES {
        Err(Error::TooLarge { op, msg: format!("{classes} classes, at most {MAX_CLASSES} are supported") })
    } else {
        Ok(())
    }
}

/// A C x C matrix of counts on the host, row-major, row = true class, column = predicted class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfusionMatrix {
    classes: usize,
    counts: Vec<u64>,
}

impl ConfusionMatrix {
    const OP: &'static str = "confusion matrix";

    /// All-zero matrix for `classes` classes (`1..=MAX_CLASSES`).
    pub fn new(classes: usize) -> Result<Self> {
        check_classes(Self::OP, classes)?;
        Ok(Self { classes, counts: vec![0; classes * classes] })
    }

    /// Wraps row-major counts (`classes * classes` of them), e.g. copied back from the device.
    pub fn from_counts(classes: usize, counts: Vec<u64>) -> Result<Self> {
        check_classes(Self::OP, classes)?;
        if counts.len() != classes * classes {
            return Err(Error::shape(
                Self::OP,
                format!("{} counts for {classes} classes, expected {}", counts.len(), classes * classes),
            ));
        }
        Ok(Self { classes, counts })
    }

    /// Number of classes C.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The counts, row-major: `counts()[t * C + p]` samples of true class `t` predicted as `p`.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Mutable counts, row-major (for the CPU reference and for filling from the device).
    pub fn counts_mut(&mut self) -> &mut [u64] {
        &mut self.counts
    }

    /// Takes the counts out.
    pub fn into_counts(self) -> Vec<u64> {
        self.counts
    }

    /// Samples of true class `truth` predicted as `pred`; `None` when either is not below C.
    pub fn get(&self, truth: usize, pred: usize) -> Option<u64> {
        (truth < self.classes && pred < self.classes).then(|| self.counts[truth * self.classes + pred])
    }

    /// Adds `other`'s counts to these (e.g. to sum batches). Errors when the class counts differ
    /// or a count would overflow u64; on error `self` is unchanged.
    pub fn add(&mut self, other: &ConfusionMatrix) -> Result<()> {
        if other.classes != self.classes {
            return Err(Error::shape(
                Self::OP,
                format!("adding a matrix of {} classes to one of {}", other.classes, self.classes),
            ));
        }
        if self.counts.iter().zip(&other.counts).any(|(a, b)| a.checked_add(*b).is_none()) {
            return Err(Error::TooLarge { op: Self::OP, msg: "a count overflows u64".into() });
        }
        self.counts.iter_mut().zip(&other.counts).for_each(|(a, b)| *a += b);
        Ok(())
    }

    /// Total number of counted samples.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Correctly classified samples (the trace).
    pub fn correct(&self) -> u64 {
        (0..self.classes).map(|k| self.counts[k * self.classes + k]).sum()
    }

    /// Per class: samples whose true class it is (row sums).
    pub fn support(&self) -> Vec<u64> {
        self.counts.chunks_exact(self.classes).map(|row| row.iter().sum()).collect()
    }

    /// Per class: samples predicted as it (column sums).
    pub fn predicted(&self) -> Vec<u64> {
        let mut cols = vec![0u64; self.classes];
        for row in self.counts.chunks_exact(self.classes) {
            cols.iter_mut().zip(row).for_each(|(c, v)| *c += v);
        }
        cols
    }

    /// Per class: true positives (the diagonal).
    pub fn true_positives(&self) -> Vec<u64> {
        (0..self.classes).map(|k| self.counts[k * self.classes + k]).collect()
    }

    /// Per-class recall `tp / support`; 0.0 for a class without samples.
    pub fn recall(&self) -> Vec<f64> {
        self.true_positives().iter().zip(self.support()).map(|(&tp, s)| ratio(tp, s)).collect()
    }

    /// Per-class precision `tp / predicted`; 0.0 for a class never predicted.
    pub fn precision(&self) -> Vec<f64> {
        self.true_positives().iter().zip(self.predicted()).map(|(&tp, p)| ratio(tp, p)).collect()
    }

    /// Per-class F1 `2 tp / (2 tp + fp + fn)`; 0.0 for a class absent from targets and predictions.
    pub fn f1(&self) -> Vec<f64> {
        let (tp, support, predicted) = (self.true_positives(), self.support(), self.predicted());
        (0..self.classes).map(|k| f1(tp[k], support[k], predicted[k])).collect()
    }

    /// Fraction of samples classified correctly; 0.0 for an empty matrix.
    pub fn accuracy(&self) -> f64 {
        ratio(self.correct(), self.total())
    }

    /// Mean recall over the classes with at least one sample (scikit-learn's
    /// `balanced_accuracy_score`); 0.0 when no class has samples.
    pub fn balanced_accuracy(&self) -> f64 {
        balanced(&self.recall(), &self.support())
    }

    /// Every metric at once.
    pub fn metrics(&self) -> Metrics {
        let (tp, support, predicted) = (self.true_positives(), self.support(), self.predicted());
        let recall: Vec<f64> = tp.iter().zip(&support).map(|(&t, &s)| ratio(t, s)).collect();
        let precision = tp.iter().zip(&predicted).map(|(&t, &p)| ratio(t, p)).collect();
        let f1 = (0..self.classes).map(|k| f1(tp[k], support[k], predicted[k])).collect();
        Metrics {
            accuracy: ratio(tp.iter().sum(), self.total()),
            balanced_accuracy: balanced(&recall, &support),
            recall,
            precision,
            f1,
            support,
            confusion: self.counts.chunks_exact(self.classes).map(<[u64]>::to_vec).collect(),
        }
    }
}

/// Every metric of one model on one split (test, train, validation), per class and overall, with
/// the confusion matrix they come from (see the [module docs](self) for the definitions and the
/// 0/0 convention). Per-class vectors have one entry per class; `confusion[t][p]` counts samples
/// of true class `t` predicted as `p`. Ratios are in `[0, 1]`.
///
/// With the `trainer` feature it is (de)serializable: the split metrics of `report.json`, where a
/// NaN is written as `null` and read back as NaN.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "trainer", derive(serde::Serialize, serde::Deserialize))]
pub struct Metrics {
    /// `correct / total`.
    #[cfg_attr(feature = "trainer", serde(deserialize_with = "crate::json::nan::f64_or_nan"))]
    pub accuracy: f64,
    /// Mean recall over classes with `support > 0`.
    #[cfg_attr(feature = "trainer", serde(deserialize_with = "crate::json::nan::f64_or_nan"))]
    pub balanced_accuracy: f64,
    /// Per-class recall (true-positive rate): `confusion[c][c] / support[c]`.
    #[cfg_attr(feature = "trainer", serde(deserialize_with = "crate::json::nan::vec_f64_or_nan"))]
    pub recall: Vec<f64>,
    /// Per-class precision: `confusion[c][c] / (column sum c)`.
    #[cfg_attr(feature = "trainer", serde(deserialize_with = "crate::json::nan::vec_f64_or_nan"))]
    pub precision: Vec<f64>,
    /// Per-class F1.
    #[cfg_attr(feature = "trainer", serde(deserialize_with = "crate::json::nan::vec_f64_or_nan"))]
    pub f1: Vec<f64>,
    /// Samples per true class (row sums of `confusion`).
    pub support: Vec<u64>,
    /// `C x C`, row = true class, column = predicted class.
    pub confusion: Vec<Vec<u64>>,
}

impl Metrics {
    /// Every metric of a [`ConfusionMatrix`] (same as [`ConfusionMatrix::metrics`]).
    pub fn from_matrix(m: &ConfusionMatrix) -> Self {
        m.metrics()
    }

    /// Every metric of a `C x C` matrix of raw counts given as rows (row = true class, column =
    /// predicted). A matrix that is empty, not square or has more than [`MAX_CLASSES`] classes
    /// is an error.
    pub fn from_confusion(rows: Vec<Vec<u64>>) -> Result<Self> {
        let c = rows.len();
        if let Some((t, row)) = rows.iter().enumerate().find(|(_, row)| row.len() != c) {
            return Err(Error::shape(
                ConfusionMatrix::OP,
                format!("not square: row {t} has {} entries, expected {c}", row.len()),
            ));
        }
        Ok(ConfusionMatrix::from_counts(c, rows.concat())?.metrics())
    }

    /// Number of classes (length of the per-class vectors).
    pub fn classes(&self) -> usize {
        self.recall.len()
    }

    /// Counted samples (the sum of `support`).
    pub fn total(&self) -> u64 {
        self.support.iter().sum()
    }

    /// Correctly classified samples (the trace of `confusion`).
    pub fn correct(&self) -> u64 {
        self.confusion.iter().enumerate().filter_map(|(k, row)| row.get(k)).sum()
    }

    /// Samples per predicted class (column sums of `confusion`).
    pub fn predicted(&self) -> Vec<u64> {
        (0..self.confusion.len()).map(|k| self.confusion.iter().filter_map(|row| row.get(k)).sum()).collect()
    }

    /// The lowest per-class recall (NaN entries ignored; NaN if there is none).
    pub fn worst_recall(&self) -> f64 {
        self.worst_class().map_or(f64::NAN, |k| self.recall[k])
    }

    /// The class with the lowest recall (first one on ties; NaN entries ignored).
    pub fn worst_class(&self) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (k, &r) in self.recall.iter().enumerate() {
            if !r.is_nan() && best.is_none_or(|b| r < self.recall[b]) {
                best = Some(k);
            }
        }
        best
    }

    /// Highest minus lowest per-class recall ([`spread`] of `recall`).
    pub fn recall_spread(&self) -> f64 {
        spread(&self.recall)
    }

    /// Unweighted mean of the per-class recalls (NaN entries ignored; NaN if there is none).
    pub fn mean_recall(&self) -> f64 {
        mean_ignoring_nan(&self.recall)
    }
}

/// Highest minus lowest of `values`, NaN entries ignored; NaN when there is no other entry. The
/// one definition of a per-class spread (recall, precision, F1) in tables, JSON and charts.
pub fn spread(values: &[f64]) -> f64 {
    let finite = values.iter().copied().filter(|v| !v.is_nan());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo <= hi {
        hi - lo
    } else {
        f64::NAN
    }
}

/// Unweighted mean of `values`, NaN entries ignored; NaN when there is no other entry.
pub fn mean_ignoring_nan(values: &[f64]) -> f64 {
    let (sum, n) = values.iter().filter(|v| !v.is_nan()).fold((0.0, 0usize), |(s, n), &v| (s + v, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        sum / n as f64
    }
}

/// `num / den`, with 0/0 = 0.0 (scikit-learn's `zero_division=0`).
fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

fn f1(tp: u64, support: u64, predicted: u64) -> f64 {
    // 2 tp + fp + fn = support + predicted; in f64 so no sum can overflow.
    let den = support as f64 + predicted as f64;
    if den == 0.0 {
        0.0
    } else {
        2.0 * tp as f64 / den
    }
}

fn balanced(recall: &[f64], support: &[u64]) -> f64 {
    let (sum, n) =
        recall.iter().zip(support).filter(|(_, &s)| s > 0).fold((0.0, 0u64), |(a, n), (r, _)| (a + r, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}
