//! CPU reference of `kernels/cross_entropy.cu` (f64 accumulation within a row).
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis, Zip};

use super::{LogitAdjust, Options, Reduction};
use crate::error::{Error, Result};

const OP: &str = "cross_entropy (cpu)";

/// Per-sample losses (`reduction = None`) or the reduced loss (a single element).
pub fn forward(
    logits: ArrayView2<'_, f32>,
    targets: ArrayView1<'_, i32>,
    weight: Option<ArrayView1<'_, f32>>,
    opts: &Options,
) -> Result<Array1<f32>> {
    forward_adjusted(logits, targets, weight, &LogitAdjust::NONE, opts)
}

/// [`forward`] on the adjusted logits `u_c = scale_c * x_c + offset_c` (see [`LogitAdjust`]).
pub fn forward_adjusted(
    logits: ArrayView2<'_, f32>,
    targets: ArrayView1<'_, i32>,
    weight: Option<ArrayView1<'_, f32>>,
    adjust: &LogitAdjust<'_>,
    opts: &Options,
) -> Result<Array1<f32>> {
    Ok(run(logits, targets, weight, adjust, opts, None, false)?.0)
}

/// Gradient with respect to the logits. `grad_output` is the upstream gradient: one element per
/// sample for `reduction = None`, a single element otherwise.
pub fn backward(
    logits: ArrayView2<'_, f32>,
    targets: ArrayView1<'_, i32>,
    weight: Option<ArrayView1<'_, f32>>,
    opts: &Options,
    grad_output: ArrayView1<'_, f32>,
) -> Result<Array2<f32>> {
    backward_adjusted(logits, targets, weight, &LogitAdjust::NONE, opts, grad_output)
}

/// [`backward`] of the adjusted loss: the gradient with respect to the unadjusted logits `x`,
/// `scale_c * dL/du_c`.
pub fn backward_adjusted(
    logits: ArrayView2<'_, f32>,
    targets: ArrayView1<'_, i32>,
    weight: Option<ArrayView1<'_, f32>>,
    adjust: &LogitAdjust<'_>,
    opts: &Options,
    grad_output: ArrayView1<'_, f32>,
) -> Result<Array2<f32>> {
    let want = opts.loss_len(logits.nrows());
    if grad_output.len() != want {
        return Err(Error::shape(OP, format!("grad_output has {} elements, expected {want}", grad_output.len())));
    }
    Ok(run(logits, targets, weight, adjust, opts, Some(grad_output), true)?.1.expect("grad requested"))
}

/// Loss and gradient in one pass, with upstream gradient 1 (what a training step needs).
pub fn forward_backward(
    logits: ArrayView2<'_, f32>,
    targets: ArrayView1<'_, i32>,
    weight: Option<ArrayView1<'_, f32>>,
    opts: &Options,
) -> Result<(Array1<f32>, Array2<f32>)> {
    forward_backward_adjusted(logits, targets, weight, &LogitAdjust::NONE, opts)
}

/// [`forward_backward`] of the adjusted loss (see [`LogitAdjust`]): what a training step with
/// VS-loss, class-dependent temperature or logit adjustment needs.
pub fn forward_backward_adjusted(
    logits: ArrayView2<'_, f32>,
    targets: ArrayView1<'_, i32>,
    weight: Option<ArrayView1<'_, f32>>,
    adjust: &LogitAdjust<'_>,
    opts: &Options,
) -> Result<(Array1<f32>, Array2<f32>)> {
    let (loss, grad) = run(logits, targets, weight, adjust, opts, None, true)?;
    Ok((loss, grad.expect("grad requested")))
}

fn run(
    logits: ArrayView2<'_, f32>,
    targets: ArrayView1<'_, i32>,
    weight: Option<ArrayView1<'_, f32>>,
    adjust: &LogitAdjust<'_>,
    opts: &Options,
    grad_output: Option<ArrayView1<'_, f32>>,
    want_grad: bool,
) -> Result<(Array1<f32>, Option<Array2<f32>>)> {
    opts.validate(OP)?;
    let (n, c) = logits.dim();
    if c == 0 {
        return Err(Error::shape(OP, "logits need at least one class"));
    }
    if targets.len() != n {
        return Err(Error::shape(OP, format!("targets has {} elements, expected {n} (rows of logits)", targets.len())));
    }
    if let Some(w) = &weight {
        if w.len() != c {
            return Err(Error::shape(OP, format!("weight has {} elements, expected {c} (classes)", w.len())));
        }
    }
    adjust.check(OP, c)?;
    if let Some((i, &t)) = targets.iter().enumerate().find(|(_, &t)| !opts.is_ignored(t) && !(0..c as i32).contains(&t))
    {
        return Err(Error::InvalidTarget { op: OP, index: i, value: t as i64, classes: c });
    }
    let w = |k: usize| weight.as_ref().map_or(1.0, |w| w[k] as f64);
    let scale = |k: usize| adjust.scale.map_or(1.0, |s| s[k] as f64);
    let offset = |k: usize| adjust.offset.map_or(0.0, |o| o[k] as f64);
    let eps = opts.label_smoothing as f64;
    let weight_sum: f64 = (0..c).map(w).sum();
    let total_weight: f64 = targets.iter().filter(|&&t| !opts.is_ignored(t)).map(|&t| w(t as usize)).sum();

    let mut row_loss = Array1::<f64>::zeros(n);
    let mut grad = want_grad.then(|| Array2::<f32>::zeros((n, c)));
    // Upstream gradient of each row's loss, before the mean's division.
    let g_of = |i: usize| -> f64 {
        let g = grad_output.as_ref().map_or(1.0, |g| if g.len() == 1 { g[0] as f64 } else { g[i] as f64 });
        match opts.reduction {
            Reduction::Mean if total_weight != 0.0 => g / total_weight,
            Reduction::Mean => 0.0,
            _ => g,
        }
    };
    let body = |i: usize, x: ArrayView1<'_, f32>, loss: &mut f64, grow: Option<ndarray::ArrayViewMut1<'_, f32>>| {
        let t = targets[i];
        if opts.is_ignored(t) {
            return; // loss 0, gradient row stays 0
        }
        let t = t as usize;
        // The adjusted logits u_k = s_k * x_k + o_k in f64. With s = 1 and o = 0 both operations
        // are exact, so the plain loss is bit-identical to the unadjusted code it replaced.
        let u: Vec<f64> = x.iter().enumerate().map(|(k, &v)| scale(k) * v as f64 + offset(k)).collect();
        let m = u.iter().copied().fold(f64::NEG_INFINITY, nan_max);
        let s: f64 = u.iter().map(|&v| (v - m).exp()).sum();
        let lse = m + s.ln();
        let nll = -(u[t] - lse) * w(t);
        let smooth: f64 = if eps > 0.0 { (0..c).map(|k| -(u[k] - lse) * w(k)).sum() } else { 0.0 };
        *loss = (1.0 - eps) * nll + eps / c as f64 * smooth;
        if let Some(mut grow) = grow {
            let g = g_of(i);
            for (k, o) in grow.iter_mut().enumerate() {
                let p = (u[k] - lse).exp();
                let onehot = if k == t { 1.0 } else { 0.0 };
                let d = (1.0 - eps) * w(t) * (p - onehot) + eps / c as f64 * (weight_sum * p - w(k));
                // Chain rule through u_k = s_k * x_k + o_k.
                *o = (g * d * scale(k)) as f32;
            }
        }
    };
    match grad.as_mut() {
        Some(gr) => Zip::indexed(logits.axis_iter(Axis(0)))
            .and(&mut row_loss)
            .and(gr.axis_iter_mut(Axis(0)))
            .for_each(|i, x, l, grow| body(i, x, l, Some(grow))),
        None => Zip::indexed(logits.axis_iter(Axis(0))).and(&mut row_loss).for_each(|i, x, l| body(i, x, l, None)),
    }

    let loss = match opts.reduction {
        Reduction::None => row_loss.mapv(|v| v as f32),
        Reduction::Sum => Array1::from_elem(1, row_loss.sum() as f32),
        Reduction::Mean => {
            let s = row_loss.sum();
            Array1::from_elem(1, if total_weight != 0.0 { (s / total_weight) as f32 } else { 0.0 })
        }
    };
    Ok((loss, grad))
}

/// Maximum that propagates NaN (as `softmax::cpu::nan_max`, in f64).
fn nan_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || a > b {
        a
    } else {
        b
    }
}

/// CPU reference of [`super::cuda::class_sums`]: adds the batch's per-class statistics to `sums`
/// (`3 * classes`: per class the summed unweighted cross-entropy with label smoothing `smoothing`
/// on the plain logits, the summed gradient norms at the logits `||softmax(x) - q||_2` and the
/// sample count), in f64, rows in order. Rows whose target is not in `[0, classes)` are skipped.
pub fn class_sums(
    logits: ArrayView2<'_, f32>,
    targets: ArrayView1<'_, i32>,
    smoothing: f32,
    sums: &mut [f64],
) -> Result<()> {
    let c = logits.ncols();
    if targets.len() != logits.nrows() || sums.len() != 3 * c || c == 0 {
        return Err(Error::shape(
            OP,
            format!("{} x {c} logits, {} targets, {} sums", logits.nrows(), targets.len(), sums.len()),
        ));
    }
    let eps = smoothing as f64;
    for (row, &y) in logits.rows().into_iter().zip(targets) {
        let Some(y) = usize::try_from(y).ok().filter(|&y| y < c) else { continue };
        let top = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let z: f64 = row.iter().map(|&v| (v as f64 - top).exp()).sum();
        let log_z = z.ln();
        let (mut loss, mut g2) = (0.0, 0.0);
        for (k, &v) in row.iter().enumerate() {
            let logp = v as f64 - top - log_z;
            let target = eps / c as f64 + if k == y { 1.0 - eps } else { 0.0 };
            loss -= target * logp;
            let g = logp.exp() - target;
            g2 += g * g;
        }
        sums[y] += loss;
        sums[c + y] += g2.sqrt();
        sums[2 * c + y] += 1.0;
    }
    Ok(())
}
