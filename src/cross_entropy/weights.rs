//! Class-weight rules beyond the practitioner's one-shot [`weights_from_recall`](super::weights_from_recall):
//! the online updates that reweighting studies use, as pure functions of per-class statistics
//! measured on held-out data. Every rule returns weights normalized to mean 1, so the loss keeps
//! its scale and the learning rate its meaning.
use crate::error::{Error, Result};

const OP: &str = "class weights";

/// One exponentiated-gradient step of group distributionally robust optimization (Sagawa et al.,
/// 2020): `w_c <- w_c * exp(step * signal_c)`, renormalized to mean 1. `signal` is a per-class
/// "badness" (validation loss, or `1 - recall`); classes doing worse gain weight geometrically.
/// `weights` must be positive and finite, `signal` finite, `step >= 0`.
pub fn eg_update(weights: &[f64], signal: &[f64], step: f64) -> Result<Vec<f64>> {
    check_nonempty(weights.len())?;
    if signal.len() != weights.len() {
        return Err(Error::shape(OP, format!("{} signals for {} weights", signal.len(), weights.len())));
    }
    if !(step >= 0.0 && step.is_finite()) {
        return Err(Error::shape(OP, format!("step must be finite and >= 0, got {step}")));
    }
    if let Some((c, w)) = weights.iter().enumerate().find(|(_, w)| !(w.is_finite() && **w > 0.0)) {
        return Err(Error::shape(OP, format!("weight of class {c} is {w}; weights must be positive and finite")));
    }
    check_finite("signal", signal)?;
    // In log space, shifted by the largest exponent, so no step size overflows.
    let logs: Vec<f64> = weights.iter().zip(signal).map(|(w, s)| w.ln() + step * s).collect();
    let top = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    normalized(logs.iter().map(|l| (l - top).exp()).collect())
}

/// Class-wise difficulty-balanced weights (Sinha et al., 2020): `w_c ∝ (1 - acc_c)^tau`,
/// normalized to mean 1. `acc` is per-class accuracy (recall) in `[0, 1]`; a class at 1 would get
/// weight 0 and drop out of the loss, so `1 - acc_c` is floored at `floor` (in `(0, 1]`).
/// `tau = 0` gives uniform weights.
pub fn difficulty_weights(acc: &[f64], tau: f64, floor: f64) -> Result<Vec<f64>> {
    check_nonempty(acc.len())?;
    if !(tau >= 0.0 && tau.is_finite()) {
        return Err(Error::shape(OP, format!("tau must be finite and >= 0, got {tau}")));
    }
    if !(floor > 0.0 && floor <= 1.0) {
        return Err(Error::shape(OP, format!("floor must be in (0, 1], got {floor}")));
    }
    if let Some((c, a)) = acc.iter().enumerate().find(|(_, a)| !(0.0..=1.0).contains(*a)) {
        return Err(Error::shape(OP, format!("accuracy of class {c} is {a}, outside [0, 1]")));
    }
    // Relative to the hardest class, so a large tau underflows towards 0 rather than overflowing.
    let d: Vec<f64> = acc.iter().map(|a| (1.0 - a).max(floor)).collect();
    let top = d.iter().copied().fold(0.0, f64::max);
    normalized(d.iter().map(|x| (x / top).powf(tau)).collect())
}

/// Scales `w` to mean 1. Refuses an all-zero (fully underflowed) result rather than dividing by 0.
fn normalized(w: Vec<f64>) -> Result<Vec<f64>> {
    let mean = w.iter().sum::<f64>() / w.len() as f64;
    if !(mean > 0.0 && mean.is_finite()) {
        return Err(Error::shape(OP, "the weights under- or overflowed; use a smaller step or exponent"));
    }
    Ok(w.into_iter().map(|x| x / mean).collect())
}

fn check_nonempty(len: usize) -> Result<()> {
    if len == 0 {
        Err(Error::shape(OP, "no classes"))
    } else {
        Ok(())
    }
}

fn check_finite(what: &str, v: &[f64]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(c) => Err(Error::shape(OP, format!("{what} of class {c} is {}", v[c]))),
        None => Ok(()),
    }
}

/// VS-loss's per-class logit scale and offset (Kini et al., NeurIPS 2021): the loss sees
/// `u_c = scale_c * x_c + offset_c` with `scale_c = (f_c / max(f))^gamma` (their `1 / Delta_c`,
/// `Delta_c = (n_max / n_c)^gamma`) and `offset_c = tau * ln(f_c / sum(f))` (their
/// `iota_c = tau * ln(pi_c)`). `freq` is each class's frequency, or any quantity read as one:
/// the trainer passes validation recall, so that a hard class is treated as a rare one (on a
/// balanced set the counts are equal and the paper's recipe would do nothing). Frequencies are
/// in `[0, 1]` and floored at `floor` (in `(0, 1]`), so a class at 0 keeps a finite offset.
/// Equal frequencies give scale 1 and a constant offset, which changes neither the loss nor its
/// gradient. `gamma` and `tau` must be finite and >= 0.
pub fn vs_loss_adjust(freq: &[f64], gamma: f64, tau: f64, floor: f64) -> Result<(Vec<f64>, Vec<f64>)> {
    let f = floored_freq(freq, floor)?;
    check_param("gamma", gamma)?;
    check_param("tau", tau)?;
    let top = f.iter().copied().fold(0.0, f64::max);
    let sum: f64 = f.iter().sum();
    let scale = f.iter().map(|x| (x / top).powf(gamma)).collect();
    let offset = f.iter().map(|x| tau * (x / sum).ln()).collect();
    Ok((scale, offset))
}

/// Class-dependent temperature's logit scale (Ye et al., 2020): the training loss sees
/// `x_c / a_c` with `a_c = (n_max / n_c)^gamma`, i.e. `scale_c = (f_c / max(f))^gamma`, the same
/// multiplier as VS-loss's without its offset. `freq`, `floor` and `gamma` as in
/// [`vs_loss_adjust`].
pub fn cdt_scale(freq: &[f64], gamma: f64, floor: f64) -> Result<Vec<f64>> {
    Ok(vs_loss_adjust(freq, gamma, 0.0, floor)?.0)
}

/// `freq` checked (non-empty, each in `[0, 1]`) and floored at `floor` (in `(0, 1]`).
fn floored_freq(freq: &[f64], floor: f64) -> Result<Vec<f64>> {
    check_nonempty(freq.len())?;
    if !(floor > 0.0 && floor <= 1.0) {
        return Err(Error::shape(OP, format!("floor must be in (0, 1], got {floor}")));
    }
    if let Some((c, f)) = freq.iter().enumerate().find(|(_, f)| !(0.0..=1.0).contains(*f)) {
        return Err(Error::shape(OP, format!("frequency of class {c} is {f}, outside [0, 1]")));
    }
    Ok(freq.iter().map(|f| f.max(floor)).collect())
}

fn check_param(name: &str, v: f64) -> Result<()> {
    if v >= 0.0 && v.is_finite() {
        Ok(())
    } else {
        Err(Error::shape(OP, format!("{name} must be finite and >= 0, got {v}")))
    }
}
