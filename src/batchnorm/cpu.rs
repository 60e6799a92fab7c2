//! CPU version of `kernels/batchnorm.cu`: the reference for the GPU tests and the trainer's CPU
//! path. Slices in NCHW order; every pass over the tensor runs in parallel over (image, channel)
//! planes in memory order, with contiguous inner loops; the reductions keep one partial sum per
//! plane and add each channel's in image order, so results do not depend on the thread count.
//! Nothing is allocated beyond the returned buffers of the allocating forms and a per-thread
//! buffer of partial sums kept between calls.
use std::cell::RefCell;

use rayon::prelude::*;

use super::{BnConfig, BnShape, Grads, TrainOutput};
use crate::cuda::check_len;
use crate::error::{Error, Result};

const OP: &str = "batchnorm (cpu)";
/// Elements per rayon task below which splitting costs more than it gains.
const MIN_TASK: usize = 1 << 14;

/// Training forward: returns `y`, the batch mean and inverse std; updates the running statistics.
pub fn forward_train(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    shape: BnShape,
    cfg: BnConfig,
) -> Result<TrainOutput> {
    train_alloc::<false>(x, gamma, beta, running_mean, running_var, shape, cfg)
}

/// [`forward_train`] into caller buffers: `y` (len `n c hw`), `save_mean`, `save_invstd` (len `c`).
#[allow(clippy::too_many_arguments)]
pub fn forward_train_into(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    y: &mut [f32],
    save_mean: &mut [f32],
    save_invstd: &mut [f32],
    shape: BnShape,
    cfg: BnConfig,
) -> Result<()> {
    train::<false>(x, gamma, beta, running_mean, running_var, y, save_mean, save_invstd, shape, cfg)
}

/// Training forward fused with a ReLU: `y = relu(bn(x))`.
pub fn relu_forward_train(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    shape: BnShape,
    cfg: BnConfig,
) -> Result<TrainOutput> {
    train_alloc::<true>(x, gamma, beta, running_mean, running_var, shape, cfg)
}

/// [`relu_forward_train`] into caller buffers.
#[allow(clippy::too_many_arguments)]
pub fn relu_forward_train_into(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    y: &mut [f32],
    save_mean: &mut [f32],
    save_invstd: &mut [f32],
    shape: BnShape,
    cfg: BnConfig,
) -> Result<()> {
    train::<true>(x, gamma, beta, running_mean, running_var, y, save_mean, save_invstd, shape, cfg)
}

/// Eval forward from the running statistics (nothing is updated).
pub fn forward_eval(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    shape: BnShape,
    cfg: BnConfig,
) -> Result<Vec<f32>> {
    check_tensor("x", x.len(), shape)?;
    let mut y = vec![0.0; shape.len()];
    eval::<false>(x, gamma, beta, running_mean, running_var, &mut y, shape, cfg)?;
    Ok(y)
}

/// [`forward_eval`] into a caller buffer `y`.
#[allow(clippy::too_many_arguments)]
pub fn forward_eval_into(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    y: &mut [f32],
    shape: BnShape,
    cfg: BnConfig,
) -> Result<()> {
    eval::<false>(x, gamma, beta, running_mean, running_var, y, shape, cfg)
}

/// Eval forward fused with a ReLU.
pub fn relu_forward_eval(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    shape: BnShape,
    cfg: BnConfig,
) -> Result<Vec<f32>> {
    check_tensor("x", x.len(), shape)?;
    let mut y = vec![0.0; shape.len()];
    eval::<true>(x, gamma, beta, running_mean, running_var, &mut y, shape, cfg)?;
    Ok(y)
}

/// [`relu_forward_eval`] into a caller buffer `y`.
#[allow(clippy::too_many_arguments)]
pub fn relu_forward_eval_into(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    y: &mut [f32],
    shape: BnShape,
    cfg: BnConfig,
) -> Result<()> {
    eval::<true>(x, gamma, beta, running_mean, running_var, y, shape, cfg)
}

/// Backward of the training forward: `dx`, `dgamma`, `dbeta` from the input `x`, the output
/// gradient `dy` and the saved batch statistics.
pub fn backward(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    save_mean: &[f32],
    save_invstd: &[f32],
    shape: BnShape,
) -> Result<Grads> {
    check_tensor("x", x.len(), shape)?;
    let mut g = Grads { dx: vec![0.0; shape.len()], dgamma: vec![0.0; shape.c], dbeta: vec![0.0; shape.c] };
    bwd(x, None, dy, gamma, save_mean, save_invstd, &mut g.dx, &mut g.dgamma, &mut g.dbeta, shape)?;
    Ok(g)
}

/// [`backward`] into caller buffers.
#[allow(clippy::too_many_arguments)]
pub fn backward_into(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    save_mean: &[f32],
    save_invstd: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    shape: BnShape,
) -> Result<()> {
    bwd(x, None, dy, gamma, save_mean, save_invstd, dx, dgamma, dbeta, shape)
}

/// Backward of the fused training forward; `y` is its saved output `relu(bn(x))`.
#[allow(clippy::too_many_arguments)]
pub fn relu_backward(
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    gamma: &[f32],
    save_mean: &[f32],
    save_invstd: &[f32],
    shape: BnShape,
) -> Result<Grads> {
    check_tensor("x", x.len(), shape)?;
    let mut g = Grads { dx: vec![0.0; shape.len()], dgamma: vec![0.0; shape.c], dbeta: vec![0.0; shape.c] };
    bwd(x, Some(y), dy, gamma, save_mean, save_invstd, &mut g.dx, &mut g.dgamma, &mut g.dbeta, shape)?;
    Ok(g)
}

/// [`relu_backward`] into caller buffers.
#[allow(clippy::too_many_arguments)]
pub fn relu_backward_into(
    x: &[f32],
    y: &[f32],
    dy: &[f32],
    gamma: &[f32],
    save_mean: &[f32],
    save_invstd: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    shape: BnShape,
) -> Result<()> {
    bwd(x, Some(y), dy, gamma, save_mean, save_invstd, dx, dgamma, dbeta, shape)
}

// ---- implementation ----------------------------------------------------------------------------

fn train_alloc<const RELU: bool>(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    shape: BnShape,
    cfg: BnConfig,
) -> Result<TrainOutput> {
    check_tensor("x", x.len(), shape)?;
    let mut o =
        TrainOutput { y: vec![0.0; shape.len()], save_mean: vec![0.0; shape.c], save_invstd: vec![0.0; shape.c] };
    train::<RELU>(
        x,
        gamma,
        beta,
        running_mean,
        running_var,
        &mut o.y,
        &mut o.save_mean,
        &mut o.save_invstd,
        shape,
        cfg,
    )?;
    Ok(o)
}

#[allow(clippy::too_many_arguments)]
fn train<const RELU: bool>(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &mut [f32],
    running_var: &mut [f32],
    y: &mut [f32],
    save_mean: &mut [f32],
    save_invstd: &mut [f32],
    shape: BnShape,
    cfg: BnConfig,
) -> Result<()> {
    let c = shape.c;
    check_tensor("x", x.len(), shape)?;
    check_tensor("y", y.len(), shape)?;
    for (what, len) in [
        ("gamma", gamma.len()),
        ("beta", beta.len()),
        ("running_mean", running_mean.len()),
        ("running_var", running_var.len()),
        ("save_mean", save_mean.len()),
        ("save_invstd", save_invstd.len()),
    ] {
        check_len(OP, what, len, c)?;
    }
    check_training_batch(shape)?;
    if shape.is_empty() {
        return Ok(());
    }
    let m = shape.per_channel();
    let (mf, mf1) = (m as f32, (m - 1) as f32);
    let BnConfig { eps, momentum } = cfg;
    // Two-pass statistics: each pass sums every plane in parallel over the planes in memory order
    // (the reads stream), then adds each channel's plane sums in image order, so the result does
    // not depend on how rayon splits the work.
    let hw = shape.hw;
    let per_task = planes_per_task(hw);
    with_partials(shape.n * c, |parts| {
        parts.par_iter_mut().zip(x.par_chunks(hw)).with_min_len(per_task).for_each(|(pt, plane)| {
            pt[0] = sum_map(plane, |v| v);
        });
        save_mean.par_iter_mut().enumerate().for_each(|(ch, sm)| {
            *sm = parts[ch..].iter().step_by(c).fold(0.0f32, |s, p| s + p[0]) / mf;
        });
        let mean = &*save_mean;
        parts.par_iter_mut().zip(x.par_chunks(hw)).enumerate().with_min_len(per_task).for_each(|(p, (pt, plane))| {
            let mu = mean[p % c];
            pt[1] = sum_map(plane, |v| (v - mu) * (v - mu));
        });
        let parts = &*parts;
        save_invstd
            .par_iter_mut()
            .zip(running_mean.par_iter_mut().zip(running_var.par_iter_mut()))
            .enumerate()
            .for_each(|(ch, (si, (rm, rv)))| {
                let q = parts[ch..].iter().step_by(c).fold(0.0f32, |s, p| s + p[1]);
                *si = 1.0 / (q / mf + eps).sqrt();
                *rm = (1.0 - momentum) * *rm + momentum * mean[ch];
                *rv = (1.0 - momentum) * *rv + momentum * (q / mf1);
            });
    });
    apply::<RELU>(x, y, shape, |ch| affine(gamma[ch], beta[ch], save_mean[ch], save_invstd[ch]));
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn eval<const RELU: bool>(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    y: &mut [f32],
    shape: BnShape,
    cfg: BnConfig,
) -> Result<()> {
    check_tensor("x", x.len(), shape)?;
    check_tensor("y", y.len(), shape)?;
    for (what, len) in [
        ("gamma", gamma.len()),
        ("beta", beta.len()),
        ("running_mean", running_mean.len()),
        ("running_var", running_var.len()),
    ] {
        check_len(OP, what, len, shape.c)?;
    }
    if shape.is_empty() {
        return Ok(());
    }
    apply::<RELU>(x, y, shape, |ch| {
        affine(gamma[ch], beta[ch], running_mean[ch], 1.0 / (running_var[ch] + cfg.eps).sqrt())
    });
    Ok(())
}

/// `(scale, shift)` of the per-channel affine map, in the same operation order as the kernel.
fn affine(gamma: f32, beta: f32, mean: f32, invstd: f32) -> (f32, f32) {
    let scale = gamma * invstd;
    (scale, beta - mean * scale)
}

/// `y = x * scale + shift` (then ReLU) plane by plane, in parallel.
fn apply<const RELU: bool>(x: &[f32], y: &mut [f32], shape: BnShape, coef: impl Fn(usize) -> (f32, f32) + Sync) {
    let hw = shape.hw;
    y.par_chunks_mut(hw).zip(x.par_chunks(hw)).enumerate().with_min_len(planes_per_task(hw)).for_each(
        |(p, (yp, xp))| {
            let (scale, shift) = coef(p % shape.c);
            for (o, &v) in yp.iter_mut().zip(xp) {
                let t = v * scale + shift;
                *o = if RELU { relu(t) } else { t };
            }
        },
    );
}

#[allow(clippy::too_many_arguments)]
fn bwd(
    x: &[f32],
    y: Option<&[f32]>,
    dy: &[f32],
    gamma: &[f32],
    save_mean: &[f32],
    save_invstd: &[f32],
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    shape: BnShape,
) -> Result<()> {
    check_tensor("x", x.len(), shape)?;
    if let Some(y) = y {
        check_tensor("y", y.len(), shape)?;
    }
    check_tensor("dy", dy.len(), shape)?;
    check_tensor("dx", dx.len(), shape)?;
    for (what, len) in [
        ("gamma", gamma.len()),
        ("save_mean", save_mean.len()),
        ("save_invstd", save_invstd.len()),
        ("dgamma", dgamma.len()),
        ("dbeta", dbeta.len()),
    ] {
        check_len(OP, what, len, shape.c)?;
    }
    check_training_batch(shape)?;
    if shape.is_empty() {
        return Ok(());
    }
    let hw = shape.hw;
    let c = shape.c;
    // Per-channel sums: dbeta = sum g, dgamma = invstd * sum g (x - mean); each plane's share in
    // parallel over the planes in memory order (the reads stream), then per channel in image order
    // (the result does not depend on how rayon splits the work).
    with_partials(shape.n * c, |parts| {
        let chunks = x.par_chunks(hw).zip(dy.par_chunks(hw));
        let parts_iter = parts.par_iter_mut().enumerate().zip(chunks).with_min_len(planes_per_task(hw));
        parts_iter.for_each(|((p, pt), (xp, dyp))| {
            let mu = save_mean[p % c];
            let (a, b) = match y {
                Some(y) => grad_sums::<true>(xp, &y[p * hw..][..hw], dyp, mu),
                None => grad_sums::<false>(xp, xp, dyp, mu),
            };
            *pt = [a, b];
        });
        let parts = &*parts;
        dgamma.par_iter_mut().zip(dbeta.par_iter_mut()).enumerate().for_each(|(ch, (dg, db))| {
            let (sg, sgx) = parts[ch..].iter().step_by(c).fold((0.0f32, 0.0f32), |(a, b), p| (a + p[0], b + p[1]));
            *db = sg;
            *dg = sgx * save_invstd[ch];
        });
    });
    // dx plane by plane, with the kernel's operation order.
    let inv_m = 1.0 / shape.per_channel() as f32;
    let (dgamma, dbeta) = (&*dgamma, &*dbeta);
    dx.par_chunks_mut(hw).enumerate().with_min_len(planes_per_task(hw)).for_each(|(p, dxp)| {
        let ch = p % shape.c;
        let off = p * hw;
        let is = save_invstd[ch];
        let k = gamma[ch] * is;
        let mean_g = dbeta[ch] * inv_m;
        let proj = dgamma[ch] * is * inv_m;
        let mu = save_mean[ch];
        let (xp, dyp) = (&x[off..off + hw], &dy[off..off + hw]);
        match y {
            Some(y) => {
                for (((o, &xv), &g), &yv) in dxp.iter_mut().zip(xp).zip(dyp).zip(&y[off..off + hw]) {
                    let g = relu_mask(g, yv);
                    *o = (g - mean_g - (xv - mu) * proj) * k;
                }
            }
            None => {
                for ((o, &xv), &g) in dxp.iter_mut().zip(xp).zip(dyp) {
                    *o = (g - mean_g - (xv - mu) * proj) * k;
                }
            }
        }
    });
    Ok(())
}

thread_local! {
    /// Per-plane partial sums of the statistics and the backward's reductions, kept between calls
    /// on this thread (it grows to the largest `n * c` seen) so that a step allocates nothing.
    static PARTIALS: RefCell<Vec<[f32; 2]>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` partial-sum slots: this thread's kept buffer, or a fresh one if that is in use
/// (a batch norm called from inside another's parallel section on the same thread).
fn with_partials<R>(len: usize, f: impl FnOnce(&mut [[f32; 2]]) -> R) -> R {
    PARTIALS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut kept) => {
            if kept.len() < len {
                kept.resize(len, [0.0; 2]);
            }
            f(&mut kept[..len])
        }
        Err(_) => f(&mut vec![[0.0; 2]; len]),
    })
}

/// `(sum g, sum g (x - mu))` over one plane, `g = dy` masked by `y > 0` when `MASK`.
fn grad_sums<const MASK: bool>(x: &[f32], y: &[f32], dy: &[f32], mu: f32) -> (f32, f32) {
    let len = x.len().min(y.len()).min(dy.len());
    let body = len / 8 * 8;
    let (a, b) = grad_lanes::<MASK>(&x[..body], &y[..body], &dy[..body], mu);
    let (mut sa, mut sb) = (fold8(a), fold8(b));
    for ((&xv, &yv), &g) in x[body..len].iter().zip(&y[body..len]).zip(&dy[body..len]) {
        let g = if MASK { relu_mask(g, yv) } else { g };
        sa += g;
        sb += g * (xv - mu);
    }
    (sa, sb)
}

/// [`grad_sums`] over a multiple of 8 values, element `i` added into lane `i % 8`: SSE on x86-64
/// (part of the base instruction set). Written with intrinsics because the compiler turns the
/// masked two-sum loop of the portable form into scalar code with a branch per element, 10x slower
/// (measured); both forms add the same values in the same order, so the results are the same bits.
#[cfg(target_arch = "x86_64")]
fn grad_lanes<const MASK: bool>(x: &[f32], y: &[f32], dy: &[f32], mu: f32) -> ([f32; 8], [f32; 8]) {
    use std::arch::x86_64::*;
    let n = x.len().min(y.len()).min(dy.len()) / 8 * 8;
    let (mut a, mut b) = ([0.0f32; 8], [0.0f32; 8]);
    // SAFETY: SSE is in every x86-64 CPU; every load reads 4 values at `i` or `i + 4` with
    // `i + 8 <= n`, inside all three slices; the stores write the two 8-value local arrays.
    unsafe {
        let (zero, m) = (_mm_setzero_ps(), _mm_set1_ps(mu));
        let (mut a0, mut a1, mut b0, mut b1) = (zero, zero, zero, zero);
        for i in (0..n).step_by(8) {
            let (px, py, pd) = (x.as_ptr().add(i), y.as_ptr().add(i), dy.as_ptr().add(i));
            let (mut g0, mut g1) = (_mm_loadu_ps(pd), _mm_loadu_ps(pd.add(4)));
            if MASK {
                // `y <= 0` is false for NaN, so NaN outputs keep their gradient.
                g0 = _mm_andnot_ps(_mm_cmple_ps(_mm_loadu_ps(py), zero), g0);
                g1 = _mm_andnot_ps(_mm_cmple_ps(_mm_loadu_ps(py.add(4)), zero), g1);
            }
            a0 = _mm_add_ps(a0, g0);
            a1 = _mm_add_ps(a1, g1);
            b0 = _mm_add_ps(b0, _mm_mul_ps(g0, _mm_sub_ps(_mm_loadu_ps(px), m)));
            b1 = _mm_add_ps(b1, _mm_mul_ps(g1, _mm_sub_ps(_mm_loadu_ps(px.add(4)), m)));
        }
        _mm_storeu_ps(a.as_mut_ptr(), a0);
        _mm_storeu_ps(a.as_mut_ptr().add(4), a1);
        _mm_storeu_ps(b.as_mut_ptr(), b0);
        _mm_storeu_ps(b.as_mut_ptr().add(4), b1);
    }
    (a, b)
}

/// Portable [`grad_lanes`].
#[cfg(not(target_arch = "x86_64"))]
fn grad_lanes<const MASK: bool>(x: &[f32], y: &[f32], dy: &[f32], mu: f32) -> ([f32; 8], [f32; 8]) {
    let (mut a, mut b) = ([0.0f32; 8], [0.0f32; 8]);
    for ((xs, ys), ds) in x.chunks_exact(8).zip(y.chunks_exact(8)).zip(dy.chunks_exact(8)) {
        for k in 0..8 {
            let g = if MASK { relu_mask(ds[k], ys[k]) } else { ds[k] };
            a[k] += g;
            b[k] += g * (xs[k] - mu);
        }
    }
    (a, b)
}

/// Sum of `f(v)` over `v` with 8 independent accumulators: vectorizes, and rounds less than a
/// single running sum.
#[inline(always)]
pub(crate) fn sum_map(v: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = v.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f(x);
        }
    }
    let mut s = fold8(acc);
    for &x in rest {
        s += f(x);
    }
    s
}

#[inline(always)]
fn fold8(a: [f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
}

/// ReLU as PyTorch (and the kernels): NaN passes through, `<= 0` becomes 0.
#[inline(always)]
fn relu(v: f32) -> f32 {
    if v <= 0.0 {
        0.0
    } else {
        v
    }
}

/// `g` where the ReLU output `y` is positive (or NaN), else 0: PyTorch's `y <= 0 ? 0 : g`. Written
/// as a select, which the compiler vectorizes into a compare and a mask in every loop here (random
/// signs would defeat a branch).
#[inline(always)]
fn relu_mask(g: f32, y: f32) -> f32 {
    if y <= 0.0 {
        0.0
    } else {
        g
    }
}

fn planes_per_task(hw: usize) -> usize {
    MIN_TASK.div_ceil(hw.max(1))
}

fn check_tensor(what: &str, len: usize, shape: BnShape) -> Result<()> {
    let want = shape.n.checked_mul(shape.c).and_then(|v| v.checked_mul(shape.hw));
    match want {
        Some(w) => check_len(OP, what, len, w),
        None => Err(Error::TooLarge { op: OP, msg: format!("{shape:?} overflows usize") }),
    }
}

fn check_training_batch(shape: BnShape) -> Result<()> {
    if shape.c > 0 && shape.per_channel() < 2 {
        return Err(Error::shape(
            OP,
            format!("training needs more than one value per channel, got n * hw = {}", shape.per_channel()),
        ));
    }
    Ok(())
}
