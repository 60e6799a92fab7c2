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
    params.par_chunks_mut(CHUNK).zip(grads.par_chunks(CHUNK)).zip(buf.par_chunks_mut(CHUNK)).for_each(
        |((ps, gs), bs)| {
            for ((p, &g), b) in ps.iter_mut().zip(gs).zip(bs) {
                let mut d = g;
                if weight_decay != 0.0 {
                    d += weight_decay * *p;
                }
                if momentum != 0.0 {
                    *b = momentum * *b + d;
                    d = if nesterov { d + momentum * *b } else { *b };
                }
                *p -= lr * d;
            }
        },
    );
    Ok(())
}
