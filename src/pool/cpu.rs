//! CPU version of `kernels/pool.cu`, parallel over (image, channel) planes.
use rayon::prelude::*;

use super::PoolShape;
use crate::batchnorm::cpu::sum_map;
use crate::cuda::check_len;
use crate::error::{Error, Result};

const OP: &str = "pool (cpu)";
/// Elements per rayon task below which splitting costs more than it gains.
const MIN_TASK: usize = 1 << 14;

/// 2x2 stride-2 max-pool: returns `(y, argmax)`, each of `shape.pooled_len()` elements.
pub fn max_pool_forward(x: &[f32], shape: PoolShape) -> Result<(Vec<f32>, Vec<u8>)> {
    check_max_pool(shape)?;
    check_len(OP, "x", x.len(), shape.len())?;
    let mut y = vec![0.0; shape.pooled_len()];
    let mut argmax = vec![0u8; shape.pooled_len()];
    max_pool_forward_into(x, &mut y, &mut argmax, shape)?;
    Ok((y, argmax))
}

/// [`max_pool_forward`] into caller buffers.
pub fn max_pool_forward_into(x: &[f32], y: &mut [f32], argmax: &mut [u8], shape: PoolShape) -> Result<()> {
    check_max_pool(shape)?;
    check_len(OP, "x", x.len(), shape.len())?;
    check_len(OP, "y", y.len(), shape.pooled_len())?;
    check_len(OP, "argmax", argmax.len(), shape.pooled_len())?;
    if shape.planes() == 0 {
        return Ok(());
    }
    let (w, ow, opl) = (shape.w, shape.pooled_w(), shape.pooled_h() * shape.pooled_w());
    y.par_chunks_mut(opl)
        .zip(argmax.par_chunks_mut(opl))
        .zip(x.par_chunks(shape.h * w))
        .with_min_len(MIN_TASK.div_ceil(shape.h * w))
        .for_each(|((yp, ap), xp)| {
            for ((yr, ar), rows) in yp.chunks_exact_mut(ow).zip(ap.chunks_exact_mut(ow)).zip(xp.chunks_exact(2 * w)) {
                let (r0, r1) = rows.split_at(w);
                let done = max_pool_row_lanes(r0, r1, yr, ar);
                let (t, b) = (r0[2 * done..].chunks_exact(2), r1[2 * done..].chunks_exact(2));
                for (((o, a), t), b) in yr[done..].iter_mut().zip(&mut ar[done..]).zip(t).zip(b) {
                    (*o, *a) = window_max(t[0], t[1], b[0], b[1]);
                }
            }
        });
    Ok(())
}

/// The maximum of a 2x2 window `(top-left, top-right, bottom-left, bottom-right)` and its index 0-3:
/// the first of equal maxima, the last NaN if any is NaN (PyTorch's CPU and CUDA rule).
#[inline(always)]
fn window_max(t0: f32, t1: f32, b0: f32, b1: f32) -> (f32, u8) {
    let (mut m, mut k) = (t0, 0u8);
    for (q, v) in [(1u8, t1), (2, b0), (3, b1)] {
        if v > m || v.is_nan() {
            m = v;
            k = q;
        }
    }
    (m, k)
}

/// The first windows of one output row, 4 at a time, with [`window_max`]'s rule: `r0` and `r1` are
/// the two input rows, `y` and `argmax` the output row. Returns how many windows it wrote (a
/// multiple of 4); the caller does the rest. SSE on x86-64 (part of the base instruction set): the
/// portable loop compiles to a compare and a conditional move per value.
#[cfg(target_arch = "x86_64")]
fn max_pool_row_lanes(r0: &[f32], r1: &[f32], y: &mut [f32], argmax: &mut [u8]) -> usize {
    use std::arch::x86_64::*;
    let groups = y.len().min(argmax.len()).min(r0.len() / 2).min(r1.len() / 2) / 4;
    for gi in 0..groups {
        let (j, o) = (8 * gi, 4 * gi);
        // SAFETY: SSE is in every x86-64 CPU; the loads read r0[j..j + 8] and r1[j..j + 8] with
        // j + 8 <= 2 * 4 * groups <= both lengths; the store writes y[o..o + 4], o + 4 <= y.len().
        let k = unsafe {
            let (u0, u1) = (_mm_loadu_ps(r0.as_ptr().add(j)), _mm_loadu_ps(r0.as_ptr().add(j + 4)));
            let (l0, l1) = (_mm_loadu_ps(r1.as_ptr().add(j)), _mm_loadu_ps(r1.as_ptr().add(j + 4)));
            // Even lanes are each window's left column, odd lanes its right one.
            let candidates = [
                (1, _mm_shuffle_ps::<0b11_01_11_01>(u0, u1)),
                (2, _mm_shuffle_ps::<0b10_00_10_00>(l0, l1)),
                (3, _mm_shuffle_ps::<0b11_01_11_01>(l0, l1)),
            ];
            let mut m = _mm_shuffle_ps::<0b10_00_10_00>(u0, u1);
            let mut k = _mm_setzero_si128();
            for (q, v) in candidates {
                let take = _mm_or_ps(_mm_cmpgt_ps(v, m), _mm_cmpunord_ps(v, v));
                m = _mm_or_ps(_mm_and_ps(take, v), _mm_andnot_ps(take, m));
                let take = _mm_castps_si128(take);
                k = _mm_or_si128(_mm_and_si128(take, _mm_set1_epi32(q)), _mm_andnot_si128(take, k));
            }
            _mm_storeu_ps(y.as_mut_ptr().add(o), m);
            _mm_cvtsi128_si32(_mm_packus_epi16(_mm_packs_epi32(k, k), k)) as u32
        };
        argmax[o..o + 4].copy_from_slice(&k.to_le_bytes());
    }
    4 * groups
}

/// Portable [`max_pool_row_lanes`]: leaves every window to the caller.
#[cfg(not(target_arch = "x86_64"))]
fn max_pool_row_lanes(_r0: &[f32], _r1: &[f32], _y: &mut [f32], _argmax: &mut [u8]) -> usize {
    0
}

/// Backward of the max-pool: `dx` (`shape.len()`) from `dy` and the forward's `argmax`.
pub fn max_pool_backward(dy: &[f32], argmax: &[u8], shape: PoolShape) -> Result<Vec<f32>> {
    check_max_pool(shape)?;
    let mut dx = vec![0.0; shape.len()];
    max_pool_backward_into(dy, argmax, &mut dx, shape)?;
    Ok(dx)
}

/// [`max_pool_backward`] into a caller buffer (fully overwritten).
pub fn max_pool_backward_into(dy: &[f32], argmax: &[u8], dx: &mut [f32], shape: PoolShape) -> Result<()> {
    check_max_pool(shape)?;
    check_len(OP, "dy", dy.len(), shape.pooled_len())?;
    check_len(OP, "argmax", argmax.len(), shape.pooled_len())?;
    check_len(OP, "dx", dx.len(), shape.len())?;
    if shape.planes() == 0 {
        return Ok(());
    }
    let (w, ow, opl) = (shape.w, shape.pooled_w(), shape.pooled_h() * shape.pooled_w());
    dx.par_chunks_mut(shape.h * w)
        .zip(dy.par_chunks(opl).zip(argmax.par_chunks(opl)))
        .with_min_len(MIN_TASK.div_ceil(shape.h * w))
        .for_each(|(dxp, (dyp, ap))| {
            // Every window writes its four inputs (the gradient at its argmax, zeros elsewhere), so
            // the writes are sequential and branch-free; a dropped odd row/column is zeroed.
            let mut pairs = dxp.chunks_exact_mut(2 * w);
            for ((gr, ar), rows) in dyp.chunks_exact(ow).zip(ap.chunks_exact(ow)).zip(&mut pairs) {
                let (r0, r1) = rows.split_at_mut(w);
                let (r0, r0_rest) = r0.split_at_mut(2 * ow);
                let (r1, r1_rest) = r1.split_at_mut(2 * ow);
                for (row, base) in [(r0, 0u8), (r1, 2u8)] {
                    for ((o, &g), &a) in row.chunks_exact_mut(2).zip(gr).zip(ar) {
                        o[0] = if a == base { g } else { 0.0 };
                        o[1] = if a == base + 1 { g } else { 0.0 };
                    }
                }
                r0_rest.fill(0.0);
                r1_rest.fill(0.0);
            }
            pairs.into_remainder().fill(0.0);
        });
    Ok(())
}

/// Global average pooling: `y` (`n c`) = mean of each `h w` plane.
pub fn global_avg_pool_forward(x: &[f32], shape: PoolShape) -> Result<Vec<f32>> {
    check_avg_pool(shape)?;
    check_len(OP, "x", x.len(), shape.len())?;
    let mut y = vec![0.0; shape.planes()];
    global_avg_pool_forward_into(x, &mut y, shape)?;
    Ok(y)
}

/// [`global_avg_pool_forward`] into a caller buffer.
pub fn global_avg_pool_forward_into(x: &[f32], y: &mut [f32], shape: PoolShape) -> Result<()> {
    check_avg_pool(shape)?;
    check_len(OP, "x", x.len(), shape.len())?;
    check_len(OP, "y", y.len(), shape.planes())?;
    let hw = shape.h * shape.w;
    let hwf = hw as f32;
    y.par_iter_mut().zip(x.par_chunks(hw)).with_min_len(MIN_TASK.div_ceil(hw)).for_each(|(o, xp)| {
        *o = sum_map(xp, |v| v) / hwf;
    });
    Ok(())
}

/// Backward of global average pooling: `dx[i, c, :, :] = dy[i, c] / (h w)`.
pub fn global_avg_pool_backward(dy: &[f32], shape: PoolShape) -> Result<Vec<f32>> {
    check_avg_pool(shape)?;
    check_len(OP, "dy", dy.len(), shape.planes())?;
    let mut dx = vec![0.0; shape.len()];
    global_avg_pool_backward_into(dy, &mut dx, shape)?;
    Ok(dx)
}

/// [`global_avg_pool_backward`] into a caller buffer.
pub fn global_avg_pool_backward_into(dy: &[f32], dx: &mut [f32], shape: PoolShape) -> Result<()> {
    check_avg_pool(shape)?;
    check_len(OP, "dy", dy.len(), shape.planes())?;
    check_len(OP, "dx", dx.len(), shape.len())?;
    let hw = shape.h * shape.w;
    let hwf = hw as f32;
    dx.par_chunks_mut(hw).zip(dy.par_iter()).with_min_len(MIN_TASK.div_ceil(hw)).for_each(|(dxp, &g)| {
        dxp.fill(g / hwf);
    });
    Ok(())
}

fn check_max_pool(shape: PoolShape) -> Result<()> {
    if shape.checked_len().is_none() {
        return Err(Error::TooLarge { op: OP, msg: format!("{shape:?} overflows usize") });
    }
    if shape.h < 2 || shape.w < 2 {
        return Err(Error::shape(OP, format!("2x2 max-pool needs h, w >= 2, got {} x {}", shape.h, shape.w)));
    }
    Ok(())
}

fn check_avg_pool(shape: PoolShape) -> Result<()> {
    if shape.checked_len().is_none() {
        return Err(Error::TooLarge { op: OP, msg: format!("{shape:?} overflows usize") });
    }
    if shape.h == 0 || shape.w == 0 {
        return Err(Error::shape(OP, format!("global average pooling needs h, w >= 1, got {} x {}", shape.h, shape.w)));
    }
    Ok(())
}
