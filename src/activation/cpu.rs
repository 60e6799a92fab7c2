//! CPU version of `kernels/activation.cu`, parallel over large buffers.
use rayon::prelude::*;

use crate::cuda::check_len;
use crate::error::Result;

const OP: &str = "relu (cpu)";
/// Elements per rayon task.
const CHUNK: usize = 1 << 15;

/// `relu(x)`.
pub fn relu_forward(x: &[f32]) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    fwd(x, &mut y);
    y
}

/// [`relu_forward`] into a caller buffer of the same length.
pub fn relu_forward_into(x: &[f32], y: &mut [f32]) -> Result<()> {
    check_len(OP, "y", y.len(), x.len())?;
    fwd(x, y);
    Ok(())
}

/// `x = relu(x)` in place.
pub fn relu_forward_inplace(x: &mut [f32]) {
    x.par_chunks_mut(CHUNK).for_each(|c| c.iter_mut().for_each(|v| *v = relu(*v)));
}

/// `dx = y <= 0 ? 0 : dy` from the forward output `y`.
pub fn relu_backward(y: &[f32], dy: &[f32]) -> Result<Vec<f32>> {
    check_len(OP, "dy", dy.len(), y.len())?;
    let mut dx = vec![0.0; y.len()];
    bwd(y, dy, &mut dx);
    Ok(dx)
}

/// [`relu_backward`] into a caller buffer.
pub fn relu_backward_into(y: &[f32], dy: &[f32], dx: &mut [f32]) -> Result<()> {
    check_len(OP, "dy", dy.len(), y.len())?;
    check_len(OP, "dx", dx.len(), y.len())?;
    bwd(y, dy, dx);
    Ok(())
}

/// [`relu_backward`] in place: `grad` holds `dy` on entry and `dx` on return.
pub fn relu_backward_inplace(y: &[f32], grad: &mut [f32]) -> Result<()> {
    check_len(OP, "grad", grad.len(), y.len())?;
    grad.par_chunks_mut(CHUNK).zip(y.par_chunks(CHUNK)).for_each(|(g, y)| {
        for (g, &y) in g.iter_mut().zip(y) {
            if y <= 0.0 {
                *g = 0.0;
            }
        }
    });
    Ok(())
}

fn fwd(x: &[f32], y: &mut [f32]) {
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| {
        for (o, &v) in y.iter_mut().zip(x) {
            *o = relu(v);
        }
    });
}

fn bwd(y: &[f32], dy: &[f32], dx: &mut [f32]) {
    dx.par_chunks_mut(CHUNK).zip(y.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK))).for_each(|(dx, (y, dy))| {
        for ((o, &y), &g) in dx.iter_mut().zip(y).zip(dy) {
            *o = if y <= 0.0 { 0.0 } else { g };
        }
    });
}

#[inline(always)]
fn relu(v: f32) -> f32 {
    if v <= 0.0 {
        0.0
    } else {
        v
    }
}
