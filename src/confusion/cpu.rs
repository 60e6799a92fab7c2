//! CPU reference of `kernels/confusion.cu`: same counts, same argmax, same errors (see the
//! [module docs](super)). Unlike the kernel, it validates every sample before counting, so on an
//! error the matrix is left untouched.
use ndarray::parallel::prelude::*;
use ndarray::{ArrayView1, ArrayView2, Axis};

use super::{check_classes, ConfusionMatrix};
use crate::cuda::Dtype;
use crate::error::{Error, Result};

const OP: &str = "confusion (cpu)";

/// Index of the largest element of `row` (compared in f32) with `torch.argmax` semantics: ties go
/// to the lowest index; NaN counts as the maximum and the first NaN wins. `None` for an empty row.
pub fn argmax<T: Dtype>(row: ArrayView1<'_, T>) -> Option<usize> {
    let mut it = row.iter().map(|x| x.to_f32()).enumerate();
    let (mut bi, mut bv) = it.next()?;
    for (i, v) in it {
        // Later indices win only strictly: a NaN over a number, or a larger number.
        if !bv.is_nan() && (v.is_nan() || v > bv) {
            bi = i;
            bv = v;
        }
    }
    Some(bi)
}

/// Adds the confusion counts of `logits` (N x C, predicted class = row argmax) against `targets`
/// (N) to `counts` (C classes). Samples whose target is `ignore_index` are skipped.
pub fn count_logits<T: Dtype>(
    logits: ArrayView2<'_, T>,
    targets: &[i32],
    counts: &mut ConfusionMatrix,
    ignore_index: Option<i32>,
) -> Result<()> {
    let (n, classes) = logits.dim();
    if classes != counts.classes() {
        return Err(Error::shape(
            OP,
            format!("logits have {classes} columns, the matrix {} classes", counts.classes()),
        ));
    }
    if targets.len() != n {
        return Err(Error::shape(OP, format!("{} targets for {n} rows of logits", targets.len())));
    }
    if let Some(i) = targets.iter().position(|&t| !ignored(t, ignore_index) && !in_range(t, classes)) {
        return Err(Error::InvalidTarget { op: OP, index: i, value: targets[i] as i64, classes });
    }
    let preds: Vec<usize> =
        logits.axis_iter(Axis(0)).into_par_iter().map(|row| argmax(row).expect("classes >= 1")).collect();
    let m = counts.counts_mut();
    for (&t, &p) in targets.iter().zip(&preds) {
        if !ignored(t, ignore_index) {
            m[t as usize * classes + p] += 1;
        }
    }
    Ok(())
}

/// Confusion matrix of `logits` (N x C, C >= 1) against `targets`, from zero.
pub fn from_logits<T: Dtype>(
    logits: ArrayView2<'_, T>,
    targets: &[i32],
    ignore_index: Option<i32>,
) -> Result<ConfusionMatrix> {
    check_classes(OP, logits.ncols())?;
    let mut m = ConfusionMatrix::new(logits.ncols())?;
    count_logits(logits, targets, &mut m, ignore_index)?;
    Ok(m)
}

/// Adds the confusion counts of predicted labels `preds` against `targets` (same length) to
/// `counts`. Samples whose target is `ignore_index` are skipped, but their prediction must still
/// be in `[0, C)`.
pub fn count_labels(
    preds: &[i32],
    targets: &[i32],
    counts: &mut ConfusionMatrix,
    ignore_index: Option<i32>,
) -> Result<()> {
    let classes = counts.classes();
    if preds.len() != targets.len() {
        return Err(Error::shape(OP, format!("{} predictions for {} targets", preds.len(), targets.len())));
    }
    // First bad sample; within one sample the target is checked first (as the CUDA wrapper does).
    for (i, (&p, &t)) in preds.iter().zip(targets).enumerate() {
        if !ignored(t, ignore_index) && !in_range(t, classes) {
            return Err(Error::InvalidTarget { op: OP, index: i, value: t as i64, classes });
        }
        if !in_range(p, classes) {
            return Err(Error::InvalidPrediction { op: OP, index: i, value: p as i64, classes });
        }
    }
    let m = counts.counts_mut();
    for (&p, &t) in preds.iter().zip(targets) {
        if !ignored(t, ignore_index) {
            m[t as usize * classes + p as usize] += 1;
        }
    }
    Ok(())
}

/// Confusion matrix of predicted labels against targets for `classes` classes, from zero.
pub fn from_labels(
    preds: &[i32],
    targets: &[i32],
    classes: usize,
    ignore_index: Option<i32>,
) -> Result<ConfusionMatrix> {
    check_classes(OP, classes)?;
    let mut m = ConfusionMatrix::new(classes)?;
    count_labels(preds, targets, &mut m, ignore_index)?;
    Ok(m)
}

fn ignored(t: i32, ignore_index: Option<i32>) -> bool {
    ignore_index == Some(t)
}

fn in_range(v: i32, classes: usize) -> bool {
    v >= 0 && (v as usize) < classes
}
