//! CUDA launches of `kernels/softmax.cu` on the caller's stream.
use std::sync::Arc;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, PushKernelArg};

use super::Kind;
use crate::cuda::{after_launch, blocks_for, cfg, check_devices, check_len, function, Dtype, MAX_INDEX};
use crate::error::{DriverContext, Error, Result};

const OP: &str = "softmax (cuda)";
/// Rows of at most this many columns get a warp each; longer rows a block each.
const WARP_ROW_MAX_COLS: usize = 1024;

/// Mirrors `SoftmaxParams` in `kernels/softmax.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct SoftmaxParams {
    rows: i64,
    cols: i32,
    warp_per_row: i32,
}
// SAFETY: plain-old-data with the same layout as the C struct (i64, i32, i32; no padding).
unsafe impl cudarc::driver::DeviceRepr for SoftmaxParams {}
crate::cuda::check_params_layout!(SoftmaxParams);

/// Softmax or log-softmax of each row of the `rows x cols` matrix `x` into `y` (both row-major).
pub fn forward<T: Dtype>(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<T>,
    y: &mut impl DevicePtrMut<T>,
    rows: usize,
    cols: usize,
    kind: Kind,
) -> Result<()> {
    check_devices!(OP, stream, x, y);
    let (p, launch) = plan(rows, cols)?;
    check_len(OP, "x", x.len(), rows * cols)?;
    check_len(OP, "y", y.len(), rows * cols)?;
    if rows == 0 {
        return Ok(());
    }
    let name = match kind {
        Kind::Softmax => format!("softmax_fwd_{}", T::SUFFIX),
        Kind::LogSoftmax => format!("log_softmax_fwd_{}", T::SUFFIX),
    };
    let f = function(stream, "softmax", &name)?;
    let (xp, _gx) = x.device_ptr(stream);
    let (yp, _gy) = y.device_ptr_mut(stream);
    let mut b = stream.launch_builder(&f);
    b.arg(&xp).arg(&yp).arg(&p);
    // SAFETY: x and y hold rows*cols elements of T (checked above); the kernel touches only
    // indices row*cols + c with row < rows, c < cols; the argument list matches its signature.
    unsafe { b.launch(launch) }.during(OP)?;
    after_launch(stream, OP, &f)?;
    Ok(())
}

/// Gradient `dx` of softmax / log-softmax from the forward output `y` and the output gradient `dy`.
pub fn backward<T: Dtype>(
    stream: &Arc<CudaStream>,
    y: &impl DevicePtr<T>,
    dy: &impl DevicePtr<T>,
    dx: &mut impl DevicePtrMut<T>,
    rows: usize,
    cols: usize,
    kind: Kind,
) -> Result<()> {
    check_devices!(OP, stream, y, dy, dx);
    let (p, launch) = plan(rows, cols)?;
    check_len(OP, "y", y.len(), rows * cols)?;
    check_len(OP, "dy", dy.len(), rows * cols)?;
    check_len(OP, "dx", dx.len(), rows * cols)?;
    if rows == 0 {
        return Ok(());
    }
    let name = match kind {
        Kind::Softmax => format!("softmax_bwd_{}", T::SUFFIX),
        Kind::LogSoftmax => format!("log_softmax_bwd_{}", T::SUFFIX),
    };
    let f = function(stream, "softmax", &name)?;
    let (yp, _gy) = y.device_ptr(stream);
    let (dyp, _gdy) = dy.device_ptr(stream);
    let (dxp, _gdx) = dx.device_ptr_mut(stream);
    let mut b = stream.launch_builder(&f);
    b.arg(&yp).arg(&dyp).arg(&dxp).arg(&p);
    // SAFETY: as in `forward`: all three buffers hold rows*cols elements, checked above.
    unsafe { b.launch(launch) }.during(OP)?;
    after_launch(stream, OP, &f)?;
    Ok(())
}

fn plan(rows: usize, cols: usize) -> Result<(SoftmaxParams, cudarc::driver::LaunchConfig)> {
    if cols == 0 {
        return Err(Error::shape(OP, "a row needs at least one column"));
    }
    if cols > MAX_INDEX || rows.checked_mul(cols).is_none_or(|n| n > i64::MAX as usize) {
        return Err(Error::TooLarge { op: OP, msg: format!("{rows} x {cols} is too large") });
    }
    let warp = cols <= WARP_ROW_MAX_COLS;
    let launch = if warp {
        // 8 warps (rows) per block.
        cfg(blocks_for(rows, 8).min(65_535 * 32), 256, 0)
    } else {
        // Enough threads for ~8 elements each, at most 1024.
        let threads = cols.div_ceil(8).next_multiple_of(32).clamp(128, 1024) as u32;
        cfg(blocks_for(rows, 1).min(1 << 20), threads, 0)
    };
    let p = SoftmaxParams { rows: rows as i64, cols: cols as i32, warp_per_row: warp as i32 };
    Ok((p, launch))
}
