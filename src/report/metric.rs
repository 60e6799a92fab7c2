//! The comparison's metrics of one split, by key (one definition for every table).
use crate::confusion::{mean_ignoring_nan, spread, Metrics};

/// One metric of one split by its key: those of the comparison table (`compare::METRICS`) and
/// of the headline (`intervals::HEADLINE`, but for the change of recall, which needs a baseline);
/// NaN for an unknown key.
pub fn metric(m: &Metrics, key: &str) -> f64 {
    match key {
        "accuracy" => m.accuracy,
        "balanced_accuracy" => m.balanced_accuracy,
        "worst_recall" => m.worst_recall(),
        "recall_spread" => m.recall_spread(),
        "recall_sd" => {
            let mean = m.mean_recall();
            let v: Vec<f64> = m.recall.iter().copied().filter(|x| !x.is_nan()).collect();
            if v.is_empty() {
                f64::NAN
            } else {
                (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
            }
        }
        "macro_f1" => mean_ignoring_nan(&m.f1),
        "precision_spread" => spread(&m.precision),
        "f1_spread" => spread(&m.f1),
        "worst_f1" => lowest(&m.f1),
        "worst_precision" => lowest(&m.precision),
        _ => f64::NAN,
    }
}

/// The lowest of `values`, NaN entries ignored; NaN when there is no other entry.
fn lowest(values: &[f64]) -> f64 {
    values.iter().copied().filter(|v| !v.is_nan()).fold(f64::NAN, f64::min)
}

/// The count, mean and sample standard deviation (n - 1) of `values`, NaN entries left out; the
/// mean is NaN with no value, the sd with fewer than two.
pub(super) fn mean_sd(values: &[f64]) -> (usize, f64, f64) {
    let v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    let n = v.len();
    if n == 0 {
        return (0, f64::NAN, f64::NAN);
    }
    let mean = v.iter().sum::<f64>() / n as f64;
    let sd = if n > 1 { (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() } else { f64::NAN };
    (n, mean, sd)
}
