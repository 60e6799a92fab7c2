//! CUDA launch of `kernels/optim.cu` on the caller's stream.
use std::sync::Arc;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, PushKernelArg};

use super::SgdConfig;
use crate::cuda::{after_launch, blocks_for, cfg, check_devices, check_len, function};
use crate::error::{DriverContext, Result};

const OP: &str = "sgd (cuda)";

/// Mirrors `SgdParams` in `kernels/optim.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct SgdParams {
    n: i64,
    lr: f32,
    momentum: f32,
    weight_decay: f32,
    nesterov: i32,
}
// SAFETY: plain-old-data with the same layout as the C struct (i64 then four 4-byte fields: 24
// bytes, 8-aligned, no padding).
unsafe impl cudarc::driver::DeviceRepr for SgdParams {}
crate::cuda::check_params_layout!(SgdParams);

/// One SGD step in place over `params`, with the same-length `grads` and momentum `buf`
/// (zero-filled before the first step; untouched when `momentum == 0`).
pub fn sgd_step(
    stream: &Arc<CudaStream>,
    params: &mut impl DevicePtrMut<f32>,
    grads: &impl DevicePtr<f32>,
    buf: &mut impl DevicePtrMut<f32>,
    config: &SgdConfig,
    lr: f32,
) -> Result<()> {
    check_devices!(OP, stream, params, grads, buf);
    config.check(OP, lr)?;
    let n = params.len();
    check_len(OP, "grads", grads.len(), n)?;
    check_len(OP, "buf", buf.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let f = function(stream, "optim", "sgd_step_f32")?;
    let q = SgdParams {
        n: n as i64,
        lr,
        momentum: config.momentum,
        weight_decay: config.weight_decay,
        nesterov: config.nesterov as i32,
    };
    let (pp, _gp) = params.device_ptr_mut(stream);
    let (gp, _gg) = grads.device_ptr(stream);
    let (bp, _gb) = buf.device_ptr_mut(stream);
    let mut b = stream.launch_builder(&f);
    b.arg(&pp).arg(&gp).arg(&bp).arg(&q);
    // SAFETY: params, grads and buf hold n f32 each (checked above) and are distinct buffers (one is
    // a shared borrow, two are unique); the kernel touches index i < n only.
    unsafe { b.launch(cfg(blocks_for(n, 256).min(8192), 256, 0)) }.during(OP)?;
    after_launch(stream, OP, &f)?;
    Ok(())
}
