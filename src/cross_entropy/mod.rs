//! Weighted cross-entropy over class-index targets, fused with log-softmax: forward, backward, and
//! a single forward+backward pass (what training uses).
//!
//! - kernel: `kernels/cross_entropy.cu`; CUDA wrapper: [`cuda`]; CPU reference: [`cpu`];
//!   tests: `tests/cross_entropy.rs`
//!
//! Semantics are those of PyTorch's `nn.CrossEntropyLoss(weight, ignore_index, reduction,
//! label_smoothing)` for class-index targets (`aten/src/ATen/native/LossNLL.cpp`):
//!
//! ```text
//! logp_c = x_c - logsumexp(x)
//! l_i    = (1 - eps) * w[t_i] * (-logp[t_i]) + (eps / C) * sum_c w[c] * (-logp_c)   (0 if t_i == ignore_index)
//! none: l       sum: sum_i l_i       mean: sum_i l_i / sum_{i: t_i != ignore_index} w[t_i]
//! ```
//!
//! The smoothing term is weighted by every class's weight, and under `mean` it is divided by the
//! same total target weight, exactly as PyTorch does. NaN in the logits of a sample that is not
//! ignored gives a NaN loss (and gradient), as in PyTorch.
//!
//! **One deliberate difference:** when the total target weight under `mean` is zero (every sample
//! is ignored, or every target's class weight is 0), PyTorch returns 0/0 = NaN. Here the loss is
//! **0 and the gradient 0**, so a batch without a usable target cannot poison training. The CPU
//! reference and the kernels agree on this, and `tests/cross_entropy.rs` checks it.
//!
//! Targets are `i32` (PyTorch uses `i64`; convert before the call). A target outside `[0, C)` that
//! is not `ignore_index` is an error naming the first such sample; on the GPU the kernel flags it
//! without reading or writing out of bounds, and the wrapper reports it after the launch.
//!
//! **Logit adjustment** ([`LogitAdjust`], the `*_adjusted` functions): an optional per-class
//! scale `s_c` and offset `o_c` applied to the logits inside the loss, `u_c = s_c * x_c + o_c`,
//! and the loss above taken on `u`; the gradient with respect to `x_c` is `s_c * dL/du_c`. With
//! [`LogitAdjust::NONE`] the result is bit-identical to the plain functions.
pub mod cpu;
pub mod cuda;
pub mod weights;

/// How per-sample losses are combined, as PyTorch's `reduction`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reduction {
    /// One loss per sample (ignored samples give 0).
    None,
    /// Sum of the per-sample losses.
    Sum,
    /// Sum divided by the total class weight of the non-ignored targets (PyTorch's weighted mean).
    #[default]
    Mean,
}

/// Options of the loss, with PyTorch's defaults (`ignore_index = -100`, no smoothing, mean).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Options {
    /// Samples whose target equals this are skipped; `None` disables ignoring.
    pub ignore_index: Option<i32>,
    /// Label smoothing `eps` in `[0, 1]`.
    pub label_smoothing: f32,
    pub reduction: Reduction,
}

impl Default for Options {
    fn default() -> Self {
        Options { ignore_index: Some(-100), label_smoothing: 0.0, reduction: Reduction::Mean }
    }
}

impl Options {
    /// Number of loss values the forward produces for `rows` samples: `rows` for `None`, else 1.
    pub fn loss_len(&self, rows: usize) -> usize {
        match self.reduction {
            Reduction::None => rows,
            Reduction::Sum | Reduction::Mean => 1,
        }
    }

    pub(crate) fn validate(&self, op: &'static str) -> crate::Result<()> {
        let eps = self.label_smoothing;
        if !(0.0..=1.0).contains(&eps) {
            return Err(crate::Error::shape(op, format!("label_smoothing must be in [0, 1], got {eps}")));
        }
        Ok(())
    }

    pub(crate) fn is_ignored(&self, t: i32) -> bool {
        self.ignore_index == Some(t)
    }
}

/// Per-class scale and offset applied to the logits inside the loss: `u_c = s_c * x_c + o_c`.
///
/// `None` means scale 1 / offset 0 for every class. Uses: VS-loss (Kini et al. 2021: both),
/// class-dependent temperature (Ye et al. 2020: scale), logit adjustment (Menon et al. 2021:
/// offset). Each slice, when given, must hold one value per class.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LogitAdjust<'a> {
    /// Multiplier `s_c` of each class's logit.
    pub scale: Option<&'a [f32]>,
    /// Addend `o_c` of each class's (scaled) logit.
    pub offset: Option<&'a [f32]>,
}

impl LogitAdjust<'_> {
    /// No adjustment: the plain loss.
    pub const NONE: LogitAdjust<'static> = LogitAdjust { scale: None, offset: None };

    /// True when neither a scale nor an offset is given.
    pub fn is_none(&self) -> bool {
        self.scale.is_none() && self.offset.is_none()
    }

    /// Errors unless every given slice holds `classes` values.
    pub fn check(&self, op: &'static str, classes: usize) -> crate::Result<()> {
        for (name, v) in [("scale", self.scale), ("offset", self.offset)] {
            if let Some(v) = v {
                if v.len() != classes {
                    let msg = format!("logit {name} has {} elements, expected {classes} (classes)", v.len());
                    return Err(crate::Error::shape(op, msg));
                }
            }
        }
        Ok(())
    }
}

/// The practitioner's class weights from per-class recall: `w_c = (mean(r) / r_c)^p`, which is
/// the same as their `(1 - (r_c - mean(r)) / r_c)^p`.
///
/// Recall 0 would divide by zero, so the denominator is `max(r_c, min_recall)` (the mean uses the
/// raw recalls). The trainer passes `min_recall = 1 / n` (n: evaluated samples per class), i.e. it treats a class nobody
/// recognised as if one of its samples had been: the weight is then large but finite, and the
/// ordering of the weights is kept. `min_recall` must be in `(0, 1]`.
pub fn weights_from_recall(recall: &[f64], exponent: f64, min_recall: f64) -> crate::Result<Vec<f64>> {
    const OP: &str = "weights_from_recall";
    if recall.is_empty() {
        return Err(crate::Error::shape(OP, "no classes"));
    }
    if !(min_recall > 0.0 && min_recall <= 1.0) {
        return Err(crate::Error::shape(OP, format!("min_recall must be in (0, 1], got {min_recall}")));
    }
    if let Some((c, r)) = recall.iter().enumerate().find(|(_, r)| !(0.0..=1.0).contains(*r)) {
        return Err(crate::Error::shape(OP, format!("recall of class {c} is {r}, outside [0, 1]")));
    }
    let mean = recall.iter().sum::<f64>() / recall.len() as f64;
    Ok(recall.iter().map(|&r| (mean / r.max(min_recall)).powf(exponent)).collect())
}
