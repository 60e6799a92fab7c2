//! CUDA launches of `kernels/activation.cu` on the caller's stream (f32, flat buffers).
use std::sync::Arc;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, PushKernelArg};

use crate::cuda::{after_launch, blocks_for, cfg, check_devices, check_len, function};
use crate::error::{DriverContext, Result};

const OP: &str = "relu (cuda)";
const MODULE: &str = "activation";

/// `y = relu(x)`; `y` has the length of `x`.
pub fn relu_forward(stream: &Arc<CudaStream>, x: &impl DevicePtr<f32>, y: &mut impl DevicePtrMut<f32>) -> Result<()> {
    check_devices!(OP, stream, x, y);
    let n = x.len();
    check_len(OP, "y", y.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let f = function(stream, MODULE, "relu_fwd_f32")?;
    let (xp, _gx) = x.device_ptr(stream);
    let (yp, _gy) = y.device_ptr_mut(stream);
    let n64 = n as i64;
    let mut b = stream.launch_builder(&f);
    b.arg(&xp).arg(&yp).arg(&n64);
    // SAFETY: x and y hold n f32 (checked above); the kernel touches indices below n only.
    unsafe { b.launch(launch(n)) }.during(OP)?;
    after_launch(stream, OP, &f)?;
    Ok(())
}

/// `x = relu(x)` in place.
pub fn relu_forward_inplace(stream: &Arc<CudaStream>, x: &mut impl DevicePtrMut<f32>) -> Result<()> {
    check_devices!(OP, stream, x);
    let n = x.len();
    if n == 0 {
        return Ok(());
    }
    let f = function(stream, MODULE, "relu_fwd_f32")?;
    let (xp, _gx) = x.device_ptr_mut(stream);
    let n64 = n as i64;
    let mut b = stream.launch_builder(&f);
    b.arg(&xp).arg(&xp).arg(&n64);
    // SAFETY: x holds n f32; the kernel reads and writes index i < n only, each by one thread (its
    // pointers are not __restrict__, so passing x as both input and output is allowed).
    unsafe { b.launch(launch(n)) }.during(OP)?;
    after_launch(stream, OP, &f)?;
    Ok(())
}

/// `dx = y <= 0 ? 0 : dy` from the forward output `y`.
pub fn relu_backward(
    stream: &Arc<CudaStream>,
    y: &impl DevicePtr<f32>,
    dy: &impl DevicePtr<f32>,
    dx: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    check_devices!(OP, stream, y, dy, dx);
    let n = y.len();
    check_len(OP, "dy", dy.len(), n)?;
    check_len(OP, "dx", dx.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let f = function(stream, MODULE, "relu_bwd_f32")?;
    let (yp, _gy) = y.device_ptr(stream);
    let (dyp, _gdy) = dy.device_ptr(stream);
    let (dxp, _gdx) = dx.device_ptr_mut(stream);
    let n64 = n as i64;
    let mut b = stream.launch_builder(&f);
    b.arg(&yp).arg(&dyp).arg(&dxp).arg(&n64);
    // SAFETY: all three buffers hold n f32 (checked above); indices below n only.
    unsafe { b.launch(launch(n)) }.during(OP)?;
    after_launch(stream, OP, &f)?;
    Ok(())
}

/// [`relu_backward`] in place: `grad` holds `dy` on entry and `dx` on return.
pub fn relu_backward_inplace(
    stream: &Arc<CudaStream>,
    y: &impl DevicePtr<f32>,
    grad: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    check_devices!(OP, stream, y, grad);
    let n = y.len();
    check_len(OP, "grad", grad.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let f = function(stream, MODULE, "relu_bwd_f32")?;
    let (yp, _gy) = y.device_ptr(stream);
    let (gp, _gg) = grad.device_ptr_mut(stream);
    let n64 = n as i64;
    let mut b = stream.launch_builder(&f);
    b.arg(&yp).arg(&gp).arg(&gp).arg(&n64);
    // SAFETY: y and grad hold n f32; each index i < n is read then written by one thread (no
    // __restrict__ in the kernel, so dy == dx is allowed).
    unsafe { b.launch(launch(n)) }.during(OP)?;
    after_launch(stream, OP, &f)?;
    Ok(())
}

/// Grid-stride elementwise launch: 256 threads, at most 8192 blocks.
fn launch(n: usize) -> cudarc::driver::LaunchConfig {
    cfg(blocks_for(n, 256).min(8192), 256, 0)
}
