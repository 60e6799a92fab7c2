//! CPU version of `kernels/augment.cu`, parallel over the images of the batch; a 256-entry table
//! per channel holds the normalized value of every byte (computed exactly as the kernel does).
use rayon::prelude::*;

use super::{AugmentSpec, MAX_CHANNELS};
use crate::cuda::check_len;
use crate::error::{Error, Result};

const OP: &str = "augment (cpu)";

/// Training batch (`indices.len() x c x h x w`): gather, crop at `crops` (`(dy, dx)` per image,
/// interleaved), mirror where `flips` is nonzero, normalize.
pub fn train_batch(data: &[u8], indices: &[i32], crops: &[u8], flips: &[u8], spec: &AugmentSpec) -> Result<Vec<f32>> {
    spec.check(OP, data.len())?;
    let mut out = vec![0.0; out_len(indices.len(), spec)?];
    train_batch_into(data, indices, crops, flips, &mut out, spec)?;
    Ok(out)
}

/// [`train_batch`] into a caller buffer of `indices.len() * c * h * w` f32.
pub fn train_batch_into(
    data: &[u8],
    indices: &[i32],
    crops: &[u8],
    flips: &[u8],
    out: &mut [f32],
    spec: &AugmentSpec,
) -> Result<()> {
    let n = indices.len();
    check_len(OP, "crops", crops.len(), 2 * n)?;
    check_len(OP, "flips", flips.len(), n)?;
    if let Some((b, o)) = crops.chunks_exact(2).enumerate().find(|(_, o)| o.iter().any(|&v| v as usize > 2 * spec.pad))
    {
        return Err(Error::shape(
            OP,
            format!("crop offset ({}, {}) of batch position {b} exceeds 2 * pad = {}", o[0], o[1], 2 * spec.pad),
        ));
    }
    build(data, indices, |b| (crops[2 * b] as usize, crops[2 * b + 1] as usize, flips[b] != 0), out, spec)
}

/// Eval batch: gather and normalize (no crop, no flip).
pub fn eval_batch(data: &[u8], indices: &[i32], spec: &AugmentSpec) -> Result<Vec<f32>> {
    spec.check(OP, data.len())?;
    let mut out = vec![0.0; out_len(indices.len(), spec)?];
    eval_batch_into(data, indices, &mut out, spec)?;
    Ok(out)
}

/// [`eval_batch`] into a caller buffer of `indices.len() * c * h * w` f32.
pub fn eval_batch_into(data: &[u8], indices: &[i32], out: &mut [f32], spec: &AugmentSpec) -> Result<()> {
    build(data, indices, |_| (spec.pad, spec.pad, false), out, spec)
}

fn build(
    data: &[u8],
    indices: &[i32],
    pick: impl Fn(usize) -> (usize, usize, bool) + Sync,
    out: &mut [f32],
    spec: &AugmentSpec,
) -> Result<()> {
    let count = spec.check(OP, data.len())?;
    check_len(OP, "out", out.len(), out_len(indices.len(), spec)?)?;
    if let Some((b, &v)) = indices.iter().enumerate().find(|(_, &v)| v < 0 || v as usize >= count) {
        return Err(Error::InvalidSample { op: OP, index: b, value: v as i64, count });
    }
    let (c, h, w, pad) = (spec.c, spec.h, spec.w, spec.pad as isize);
    let image = spec.image_len();
    let mut lut = [[0.0f32; 256]; MAX_CHANNELS];
    for (ch, table) in lut.iter_mut().enumerate().take(c) {
        for (u, v) in table.iter_mut().enumerate() {
            *v = (u as f32 / 255.0 - spec.mean[ch]) / spec.std[ch];
        }
    }
    out.par_chunks_mut(image).enumerate().for_each(|(b, dst)| {
        let src = &data[indices[b] as usize * image..][..image];
        let (dy, dx, flip) = pick(b);
        let (dy, dx) = (dy as isize, dx as isize);
        for (ch, (dplane, splane)) in dst.chunks_exact_mut(h * w).zip(src.chunks_exact(h * w)).enumerate() {
            let table = &lut[ch];
            for (y, drow) in dplane.chunks_exact_mut(w).enumerate() {
                let sy = y as isize + dy - pad;
                if sy < 0 || sy >= h as isize {
                    drow.fill(0.0);
                    continue;
                }
                let srow = &splane[sy as usize * w..][..w];
                for (x, o) in drow.iter_mut().enumerate() {
                    let xx = if flip { w - 1 - x } else { x };
                    let sx = xx as isize + dx - pad;
                    *o = if sx < 0 || sx >= w as isize { 0.0 } else { table[srow[sx as usize] as usize] };
                }
            }
        }
    });
    Ok(())
}

fn out_len(n: usize, spec: &AugmentSpec) -> Result<usize> {
    n.checked_mul(spec.image_len()).ok_or_else(|| Error::TooLarge { op: OP, msg: format!("{n} images overflow usize") })
}
