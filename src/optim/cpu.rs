//! CPU version of `kernels/optim.cu`, parallel over large buffers; bit-identical to the kernel.
use rayon::prelude::*;

use super::SgdConfig;
use crate::cuda::check_len;
use crate::error::Result;

const OP: &str = "sgd (cpu)";
/// Elements per rayon task.
const CHUNK: usize = 1 << 15;

/// One SGD step in place over `params`, with the same-length `grads` and momentum `buf`
/// (zero-filled before the first step; untouched when `momentum == 0`).
pub fn sgd_step(params: &mut [f32], grads: &[f32], buf: &mut [f32], cfg: &SgdConfig, lr: f32) -> Result<()> {
    cfg.check(OP, lr)?;
    check_len(OP, "grads", grads.len(), params.len())?;
    check_len(OP, "buf", buf.len(), params.len())?;
    let SgdConfig { momentum, weight_decay, nesterov } = *cfg;
    // The settings are fixed for the call: pick a loop without per-element branches.
    let step = match (weight_decay != 0.0, momentum != 0.0, nesterov) {
        (false, false, _) => step_chunk::<false, false, false>,
        (true, false, _) => step_chunk::<true, false, false>,
        (false, true, false) => step_chunk::<false, true, false>,
        (true, true, false) => step_chunk::<true, true, false>,
        (false, true, true) => step_chunk::<false, true, true>,
        (true, true, true) => step_chunk::<true, true, true>,
    };
    params
        .par_chunks_mut(CHUNK)
        .zip(grads.par_chunks(CHUNK))
        .zip(buf.par_chunks_mut(CHUNK))
        .for_each(|((ps, gs), bs)| step(ps, gs, bs, momentum, weight_decay, lr));
    Ok(())
}

/// The kernel's arithmetic, each product and sum rounded separately (Rust never fuses them).
fn step_chunk<const WD: bool, const MOM: bool, const NEST: bool>(
    ps: &mut [f32],
    gs: &[f32],
    bs: &mut [f32],
    momentum: f32,
    weight_decay: f32,
    lr: f32,
) {
    for ((p, &g), b) in ps.iter_mut().zip(gs).zip(bs) {
        let mut d = g;
        if WD {
            d += weight_decay * *p;
        }
        if MOM {
            *b = momentum * *b + d;
            d = if NEST { d + momentum * *b } else { *b };
        }
        *p -= lr * d;
    }
}
