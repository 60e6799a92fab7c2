//! CUDA launches of `kernels/pool.cu` on the caller's stream: activations of an [`ActDtype`] (f32,
//! or bf16 in mixed precision), u8 argmax, the global average's pooled values f32.
use std::sync::Arc;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::PoolShape;
use crate::cuda::{after_launch, blocks_for, cfg, check_devices, check_len, function, ActDtype, MAX_INDEX};
use crate::error::{DriverContext, Error, Result};

const OP: &str = "pool (cuda)";
const MODULE: &str = "pool";

/// Mirrors `PoolParams` in `kernels/pool.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct PoolParams {
    planes: i32,
    h: i32,
    w: i32,
}
// SAFETY: plain-old-data with the same layout as the C struct (three i32; no padding).
unsafe impl cudarc::driver::DeviceRepr for PoolParams {}
crate::cuda::check_params_layout!(PoolParams);

/// 2x2 stride-2 max-pool: `y` and `argmax` hold `shape.pooled_len()` elements.
pub fn max_pool_forward<A: ActDtype>(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<A>,
    y: &mut impl DevicePtrMut<A>,
    argmax: &mut impl DevicePtrMut<u8>,
    shape: PoolShape,
) -> Result<()> {
    check_devices!(OP, stream, x, y, argmax);
    let p = params(shape, 2)?;
    check_len(OP, "x", x.len(), shape.len())?;
    check_len(OP, "y", y.len(), shape.pooled_len())?;
    check_len(OP, "argmax", argmax.len(), shape.pooled_len())?;
    if shape.planes() == 0 {
        return Ok(());
    }
    let f = function(stream, MODULE, &format!("max_pool_fwd_f32{}", A::ACT_SUFFIX))?;
    let (xp, _gx) = x.device_ptr(stream);
    let (yp, _gy) = y.device_ptr_mut(stream);
    let (ap, _ga) = argmax.device_ptr_mut(stream);
    let mut b = stream.launch_builder(&f);
    b.arg(&xp).arg(&yp).arg(&ap).arg(&p);
    // SAFETY: x holds planes*h*w elements, y and argmax planes*(h/2)*(w/2) elements (checked above); the
    // kernel writes output o < planes*(h/2)*(w/2) and reads rows 2*oy, 2*oy+1 < h and columns
    // 2*ox, 2*ox+1 < w of plane o / ((h/2)*(w/2)) < planes.
    unsafe { b.launch(elementwise_cfg(shape.pooled_len())) }.during(OP)?;
    after_launch(stream, OP, &f)?;
    Ok(())
}

/// Backward of the max-pool: writes all of `dx` (`shape.len()`).
pub fn max_pool_backward<A: ActDtype>(
    stream: &Arc<CudaStream>,
    dy: &impl DevicePtr<A>,
    argmax: &impl DevicePtr<u8>,
    dx: &mut impl DevicePtrMut<A>,
    shape: PoolShape,
) -> Result<()> {
    check_devices!(OP, stream, dy, argmax, dx);
    let p = params(shape, 2)?;
    check_len(OP, "dy", dy.len(), shape.pooled_len())?;
    check_len(OP, "argmax", argmax.len(), shape.pooled_len())?;
    check_len(OP, "dx", dx.len(), shape.len())?;
    if shape.planes() == 0 {
        return Ok(());
    }
    let f = function(stream, MODULE, &format!("max_pool_bwd_f32{}", A::ACT_SUFFIX))?;
    let (dyp, _gdy) = dy.device_ptr(stream);
    let (ap, _ga) = argmax.device_ptr(stream);
    let (dxp, _gdx) = dx.device_ptr_mut(stream);
    let mut b = stream.launch_builder(&f);
    b.arg(&dyp).arg(&ap).arg(&dxp).arg(&p);
    // SAFETY: dx holds planes*h*w elements, dy and argmax planes*(h/2)*(w/2) (checked above); the kernel
    // writes each dx index below planes*h*w once and reads dy/argmax only at (plane*oh + oy)*ow + ox
    // with oy < oh, ox < ow.
    unsafe { b.launch(elementwise_cfg(shape.len())) }.during(OP)?;
    after_launch(stream, OP, &f)?;
    Ok(())
}

/// Global average pooling: `y` (`n c`) = mean of each `h w` plane of `x`.
pub fn global_avg_pool_forward<A: ActDtype>(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<A>,
    y: &mut impl DevicePtrMut<f32>,
    shape: PoolShape,
) -> Result<()> {
    check_devices!(OP, stream, x, y);
    let p = params(shape, 1)?;
    check_len(OP, "x", x.len(), shape.len())?;
    check_len(OP, "y", y.len(), shape.planes())?;
    if shape.planes() == 0 {
        return Ok(());
    }
    let f = function(stream, MODULE, &format!("global_avg_pool_fwd_f32{}", A::ACT_SUFFIX))?;
    let (xp, _gx) = x.device_ptr(stream);
    let (yp, _gy) = y.device_ptr_mut(stream);
    let mut b = stream.launch_builder(&f);
    b.arg(&xp).arg(&yp).arg(&p);
    // SAFETY: x holds planes*h*w elements and y planes f32 (checked above); a warp per plane < planes reads
    // that plane's h*w values and writes y[plane]. 256 threads = 8 warps per block.
    unsafe { b.launch(cfg(blocks_for(shape.planes(), 8).min(65_535), 256, 0)) }.during(OP)?;
    after_launch(stream, OP, &f)?;
    Ok(())
}

/// Backward of global average pooling: `dx[i, c, :, :] = dy[i, c] / (h w)`.
pub fn global_avg_pool_backward<A: ActDtype>(
    stream: &Arc<CudaStream>,
    dy: &impl DevicePtr<f32>,
    dx: &mut impl DevicePtrMut<A>,
    shape: PoolShape,
) -> Result<()> {
    check_devices!(OP, stream, dy, dx);
    let p = params(shape, 1)?;
    check_len(OP, "dy", dy.len(), shape.planes())?;
    check_len(OP, "dx", dx.len(), shape.len())?;
    if shape.planes() == 0 {
        return Ok(());
    }
    let f = function(stream, MODULE, &format!("global_avg_pool_bwd_f32{}", A::ACT_SUFFIX))?;
    let (dyp, _gdy) = dy.device_ptr(stream);
    let (dxp, _gdx) = dx.device_ptr_mut(stream);
    let mut b = stream.launch_builder(&f);
    b.arg(&dyp).arg(&dxp).arg(&p);
    // SAFETY: dx holds planes*h*w elements, dy planes f32 (checked above); index i < planes*h*w reads dy[i / (h*w)].
    unsafe { b.launch(elementwise_cfg(shape.len())) }.during(OP)?;
    after_launch(stream, OP, &f)?;
    Ok(())
}

/// Validates the shape (`h, w >= min_side`, at most i32::MAX elements) and builds the params.
fn params(shape: PoolShape, min_side: usize) -> Result<PoolParams> {
    if shape.checked_len().is_none_or(|n| n > MAX_INDEX) {
        return Err(Error::TooLarge {
            op: OP,
            msg: format!("{shape:?} has more than {MAX_INDEX} elements (32-bit indexing)"),
        });
    }
    if shape.h < min_side || shape.w < min_side {
        return Err(Error::shape(
            OP,
            format!("needs h, w >= {min_side} (2x2 max-pool: 2, global average: 1), got {} x {}", shape.h, shape.w),
        ));
    }
    // Each factor is at most the product (<= i32::MAX), unless the product is 0 because n or c is:
    // then nothing is launched and the clamped values are never used.
    let small = |v: usize| v.min(i32::MAX as usize) as i32;
    Ok(PoolParams { planes: small(shape.planes()), h: small(shape.h), w: small(shape.w) })
}

/// Grid-stride elementwise launch: 256 threads, at most 8192 blocks.
fn elementwise_cfg(total: usize) -> LaunchConfig {
    cfg(blocks_for(total, 256).min(8192), 256, 0)
}
