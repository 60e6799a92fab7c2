//! CUDA launches of `kernels/linear.cu` on the caller's stream (f32, row-major buffers).
use std::sync::Arc;

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::{Gemm, LinearShape};
use crate::cuda::{after_launch, blocks_for, cfg, check_devices, check_len, function, MAX_INDEX};
use crate::error::{DriverContext, Error, Result};

const OP: &str = "linear (cuda)";
const MODULE: &str = "linear";
/// Tile of C per block (`GEMM_BM`, `GEMM_BN` in the kernel).
const TILE: usize = 64;

/// Mirrors `GemmParams` in `kernels/linear.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct GemmParams {
    m: i32,
    n: i32,
    k: i32,
    a_rs: i32,
    a_cs: i32,
    b_rs: i32,
    b_cs: i32,
    ldc: i32,
    has_bias: i32,
}
// SAFETY: plain-old-data with the same layout as the C struct (nine i32; no padding).
unsafe impl cudarc::driver::DeviceRepr for GemmParams {}
crate::cuda::check_params_layout!(GemmParams);

/// `y = x W^T + b`: `x` is `batch x in`, `w` is `out x in`, `b` is `out`, `y` is `batch x out`.
pub fn forward(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<f32>,
    w: &impl DevicePtr<f32>,
    b: &impl DevicePtr<f32>,
    y: &mut impl DevicePtrMut<f32>,
    shape: LinearShape,
) -> Result<()> {
    check_devices!(OP, stream, x, w, b, y);
    let (nx, nw, ny) = lens(shape)?;
    check_len(OP, "x", x.len(), nx)?;
    check_len(OP, "w", w.len(), nw)?;
    check_len(OP, "b", b.len(), shape.out_features)?;
    check_len(OP, "y", y.len(), ny)?;
    let g = shape.forward_gemm();
    let p = gemm_params(g, true)?;
    let (xp, _gx) = x.device_ptr(stream);
    let (wp, _gw) = w.device_ptr(stream);
    let (bp, _gb) = b.device_ptr(stream);
    let (yp, _gy) = y.device_ptr_mut(stream);
    // SAFETY: x, w, y hold m*k, n*k, m*n f32 for this Gemm (checked above), bias holds n.
    unsafe { launch_gemm(stream, xp, wp, yp, bp, p, g) }
}

/// All three gradients: `dx = dy W`, `dw = dy^T x`, `db = sum over the batch of dy`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<f32>,
    w: &impl DevicePtr<f32>,
    dy: &impl DevicePtr<f32>,
    dx: &mut impl DevicePtrMut<f32>,
    dw: &mut impl DevicePtrMut<f32>,
    db: &mut impl DevicePtrMut<f32>,
    shape: LinearShape,
) -> Result<()> {
    check_devices!(OP, stream, x, w, dy, dx, dw, db);
    backward_data(stream, w, dy, dx, shape)?;
    backward_params(stream, x, dy, dw, db, shape)
}

/// Input gradient only: `dx = dy W` (`batch x in`).
pub fn backward_data(
    stream: &Arc<CudaStream>,
    w: &impl DevicePtr<f32>,
    dy: &impl DevicePtr<f32>,
    dx: &mut impl DevicePtrMut<f32>,
    shape: LinearShape,
) -> Result<()> {
    check_devices!(OP, stream, w, dy, dx);
    let (nx, nw, ny) = lens(shape)?;
    check_len(OP, "w", w.len(), nw)?;
    check_len(OP, "dy", dy.len(), ny)?;
    check_len(OP, "dx", dx.len(), nx)?;
    let g = shape.data_gemm();
    let p = gemm_params(g, false)?;
    let (wp, _gw) = w.device_ptr(stream);
    let (dyp, _gdy) = dy.device_ptr(stream);
    let (dxp, _gdx) = dx.device_ptr_mut(stream);
    // SAFETY: dy (A) holds m*k = batch*out, w (B) k*n = out*in, dx (C) m*n = batch*in (checked above).
    unsafe { launch_gemm(stream, dyp, wp, dxp, 0, p, g) }
}

/// Parameter gradients only: `dw = dy^T x` (`out x in`), `db` (`out`).
pub fn backward_params(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<f32>,
    dy: &impl DevicePtr<f32>,
    dw: &mut impl DevicePtrMut<f32>,
    db: &mut impl DevicePtrMut<f32>,
    shape: LinearShape,
) -> Result<()> {
    check_devices!(OP, stream, x, dy, dw, db);
    let (nx, nw, ny) = lens(shape)?;
    check_len(OP, "x", x.len(), nx)?;
    check_len(OP, "dy", dy.len(), ny)?;
    check_len(OP, "dw", dw.len(), nw)?;
    check_len(OP, "db", db.len(), shape.out_features)?;
    let g = shape.weight_gemm();
    let p = gemm_params(g, false)?;
    let (xp, _gx) = x.device_ptr(stream);
    let (dyp, _gdy) = dy.device_ptr(stream);
    let (dwp, _gdw) = dw.device_ptr_mut(stream);
    let (dbp, _gdb) = db.device_ptr_mut(stream);
    // SAFETY: dy (A, stored k x m = batch x out) holds m*k, x (B) k*n = batch*in, dw (C) m*n = out*in.
    unsafe { launch_gemm(stream, dyp, xp, dwp, 0, p, g) }?;
    if shape.out_features == 0 {
        return Ok(());
    }
    let f = function(stream, MODULE, "linear_col_sum_f32")?;
    let (rows, cols) = (p.k, p.m); // batch, out
    let mut b = stream.launch_builder(&f);
    b.arg(&dyp).arg(&dbp).arg(&rows).arg(&cols);
    // SAFETY: dy holds batch*out f32 and db out (checked above); thread j < out reads r*out + j for
    // r < batch and writes db[j]. batch and out fit i32 (gemm_params checked).
    unsafe { b.launch(cfg(blocks_for(shape.out_features, 256).min(8192), 256, 0)) }.during(OP)?;
    after_launch(stream, OP, &f)?;
    Ok(())
}

/// `C = op(A) op(B)` (see [`Gemm`]); `c` (`m x n`) is overwritten.
pub fn sgemm(
    stream: &Arc<CudaStream>,
    a: &impl DevicePtr<f32>,
    b: &impl DevicePtr<f32>,
    c: &mut impl DevicePtrMut<f32>,
    g: Gemm,
) -> Result<()> {
    check_devices!(OP, stream, a, b, c);
    let (na, nb, nc) = g.lens().ok_or_else(|| Error::TooLarge { op: OP, msg: format!("{g:?} overflows usize") })?;
    check_len(OP, "a", a.len(), na)?;
    check_len(OP, "b", b.len(), nb)?;
    check_len(OP, "c", c.len(), nc)?;
    let p = gemm_params(g, false)?;
    let (ap, _ga) = a.device_ptr(stream);
    let (bp, _gb) = b.device_ptr(stream);
    let (cp, _gc) = c.device_ptr_mut(stream);
    // SAFETY: a, b, c hold m*k, k*n, m*n f32 (checked above).
    unsafe { launch_gemm(stream, ap, bp, cp, 0, p, g) }
}

/// Launches `linear_sgemm_f32`; nothing when C is empty.
///
/// # Safety
/// `a`, `b`, `c` must point to live device buffers of at least `m*k`, `k*n`, `m*n` f32 for `g`
/// (whose strides `p` mirrors), `c` not overlapping `a` or `b`, and `bias` to `n` f32 when
/// `p.has_bias` is set; the buffers must stay alive until the kernel has run (the callers hold
/// their stream guards).
unsafe fn launch_gemm(
    stream: &Arc<CudaStream>,
    a: CUdeviceptr,
    b: CUdeviceptr,
    c: CUdeviceptr,
    bias: CUdeviceptr,
    p: GemmParams,
    g: Gemm,
) -> Result<()> {
    if g.m == 0 || g.n == 0 {
        return Ok(());
    }
    let f = function(stream, MODULE, "linear_sgemm_f32")?;
    let launch = LaunchConfig {
        grid_dim: (g.n.div_ceil(TILE) as u32, g.m.div_ceil(TILE) as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut bld = stream.launch_builder(&f);
    bld.arg(&a).arg(&b).arg(&c).arg(&bias).arg(&p);
    // SAFETY: by this function's contract the buffers are large enough; the kernel reads A(i, kk),
    // B(kk, j) only for i < m, j < n, kk < k, at offsets below m*k and k*n for the `Gemm` strides, and
    // writes C[i*n + j] for i < m, j < n; the grid covers m and n in 64-wide tiles (m fits the
    // y-grid limit, checked by gemm_params).
    unsafe { bld.launch(launch) }.during(OP)?;
    after_launch(stream, OP, &f)?;
    Ok(())
}

/// Kernel params for `g`, after checking that every size fits the kernel (i32, grid limits).
fn gemm_params(g: Gemm, has_bias: bool) -> Result<GemmParams> {
    // The kernel forms row, column and depth indices up to a tile past the end (MAX_INDEX).
    let big = |v: usize| v > MAX_INDEX;
    if big(g.m) || big(g.n) || big(g.k) || g.m.div_ceil(TILE) > 65_535 {
        return Err(Error::TooLarge {
            op: OP,
            msg: format!("{g:?} exceeds the kernel's limits (sizes <= {MAX_INDEX}, m <= 4194240)"),
        });
    }
    let (a_rs, a_cs) = g.a_strides();
    let (b_rs, b_cs) = g.b_strides();
    Ok(GemmParams {
        m: g.m as i32,
        n: g.n as i32,
        k: g.k as i32,
        a_rs: a_rs as i32,
        a_cs: a_cs as i32,
        b_rs: b_rs as i32,
        b_cs: b_cs as i32,
        ldc: g.n as i32,
        has_bias: has_bias as i32,
    })
}

fn lens(shape: LinearShape) -> Result<(usize, usize, usize)> {
    shape.lens().ok_or_else(|| Error::TooLarge { op: OP, msg: format!("{shape:?} overflows usize") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_within_a_tile_of_2_pow_31_are_refused_before_launch() {
        let near = i32::MAX as usize - 40;
        for g in [
            Gemm { m: 1, n: near, k: 1, trans_a: false, trans_b: false },
            Gemm { m: 1, n: 1, k: near, trans_a: false, trans_b: true },
            Gemm { m: 4_000_000, n: 1, k: MAX_INDEX + 1, trans_a: true, trans_b: false },
        ] {
            assert!(matches!(gemm_params(g, false), Err(Error::TooLarge { .. })), "{g:?}");
        }
        let ok = Gemm { m: 1, n: MAX_INDEX, k: MAX_INDEX, trans_a: false, trans_b: false };
        assert_eq!(gemm_params(ok, true).expect("fits").n as usize, MAX_INDEX);
    }
}
