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
    argmax_f32(row.iter().map(|x| x.to_f32()))
}

/// [`argmax`] of `row[c] + bias[c]` (each sum in f32, as the kernel computes it); a NaN logit or
/// bias makes that element a NaN. `None` for an empty row; `bias` must have the row's length.
pub fn argmax_biased<T: Dtype>(row: ArrayView1<'_, T>, bias: &[f32]) -> Option<usize> {
    debug_assert_eq!(row.len(), bias.len());
    argmax_f32(row.iter().zip(bias).map(|(x, b)| x.to_f32() + b))
}

fn argmax_f32(values: impl Iterator<Item = f32>) -> Option<usize> {
    let mut it = values.enumerate();
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
    count_logits_biased(logits, None, targets, counts, ignore_index)
}

/// [`count_logits`] with the predicted class `argmax_c(logit_c + bias[c])` (`bias`: C f32), or the
/// plain argmax with `None`. The reference of `cuda::count_logits_biased`.
pub fn count_logits_biased<T: Dtype>(
    logits: ArrayView2<'_, T>,
    bias: Option<&[f32]>,
    targets: &[i32],
    counts: &mut ConfusionMatrix,
    ignore_index: Option<i32>,
) -> Result<()> {
    let (n, classes) = logits.dim();
    if let Some(b) = bias {
        if b.len() != classes {
            return Err(Error::shape(OP, format!("bias has {} values for {classes} classes", b.len())));
        }
    }
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
    let preds: Vec<usize> = logits
        .axis_iter(Axis(0))
        .into_par_iter()
        .map(|row| match bias {
            Some(b) => argmax_biased(row, b),
            None => argmax(row),
        })
        .map(|p| p.expect("classes >= 1"))
        .collect();
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
    from_logits_biased(logits, None, targets, ignore_index)
}

/// [`from_logits`] with an optional per-class logit bias (see [`count_logits_biased`]).
pub fn from_logits_biased<T: Dtype>(
    logits: ArrayView2<'_, T>,
    bias: Option<&[f32]>,
    targets: &[i32],
    ignore_index: Option<i32>,
) -> Result<ConfusionMatrix> {
    check_classes(OP, logits.ncols())?;
    let mut m = ConfusionMatrix::new(logits.ncols())?;
    count_logits_biased(logits, bias, targets, &mut m, ignore_index)?;
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
