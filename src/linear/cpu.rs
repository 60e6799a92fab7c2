//! CPU version of `kernels/linear.cu` on `matrixmultiply::sgemm` (blocked, SIMD, and threaded by
//! its own pool; `MATMUL_NUM_THREADS` caps it).
use super::{Gemm, Grads, LinearShape};
use crate::cuda::check_len;
use crate::error::{Error, Result};

const OP: &str = "linear (cpu)";

/// `y = x W^T + b` (`batch x out`).
pub fn forward(x: &[f32], w: &[f32], b: &[f32], shape: LinearShape) -> Result<Vec<f32>> {
    let (_, _, ny) = lens(shape)?;
    let mut y = vec![0.0; ny];
    forward_into(x, w, b, &mut y, shape)?;
    Ok(y)
}

/// [`forward`] into a caller buffer `y` (overwritten).
pub fn forward_into(x: &[f32], w: &[f32], b: &[f32], y: &mut [f32], shape: LinearShape) -> Result<()> {
    let (nx, nw, ny) = lens(shape)?;
    check_len(OP, "x", x.len(), nx)?;
    check_len(OP, "w", w.len(), nw)?;
    check_len(OP, "b", b.len(), shape.out_features)?;
    check_len(OP, "y", y.len(), ny)?;
    if shape.out_features > 0 {
        for row in y.chunks_exact_mut(shape.out_features) {
            row.copy_from_slice(b);
        }
    }
    gemm(x, w, y, shape.forward_gemm(), 1.0);
    Ok(())
}

/// All three gradients.
pub fn backward(x: &[f32], w: &[f32], dy: &[f32], shape: LinearShape) -> Result<Grads> {
    let (nx, nw, _) = lens(shape)?;
    let mut g = Grads { dx: vec![0.0; nx], dw: vec![0.0; nw], db: vec![0.0; shape.out_features] };
    backward_into(x, w, dy, &mut g.dx, &mut g.dw, &mut g.db, shape)?;
    Ok(g)
}

/// [`backward`] into caller buffers (overwritten).
pub fn backward_into(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dw: &mut [f32],
    db: &mut [f32],
    shape: LinearShape,
) -> Result<()> {
    backward_data_into(w, dy, dx, shape)?;
    backward_params_into(x, dy, dw, db, shape)
}

/// Input gradient only: `dx = dy W`.
pub fn backward_data_into(w: &[f32], dy: &[f32], dx: &mut [f32], shape: LinearShape) -> Result<()> {
    let (nx, nw, ny) = lens(shape)?;
    check_len(OP, "w", w.len(), nw)?;
    check_len(OP, "dy", dy.len(), ny)?;
    check_len(OP, "dx", dx.len(), nx)?;
    gemm(dy, w, dx, shape.data_gemm(), 0.0);
    Ok(())
}

/// Parameter gradients only: `dW = dy^T x`, `db = sum over the batch of dy`.
pub fn backward_params_into(x: &[f32], dy: &[f32], dw: &mut [f32], db: &mut [f32], shape: LinearShape) -> Result<()> {
    let (nx, nw, ny) = lens(shape)?;
    check_len(OP, "x", x.len(), nx)?;
    check_len(OP, "dy", dy.len(), ny)?;
    check_len(OP, "dw", dw.len(), nw)?;
    check_len(OP, "db", db.len(), shape.out_features)?;
    gemm(dy, x, dw, shape.weight_gemm(), 0.0);
    // Rows in order, as the kernel's col_sum: the two agree bit for bit.
    db.fill(0.0);
    if shape.out_features > 0 {
        for row in dy.chunks_exact(shape.out_features) {
            for (s, &v) in db.iter_mut().zip(row) {
                *s += v;
            }
        }
    }
    Ok(())
}

/// `C = op(A) op(B)` (see [`Gemm`]); `c` is overwritten.
pub fn sgemm(a: &[f32], b: &[f32], c: &mut [f32], g: Gemm) -> Result<()> {
    let (na, nb, nc) = g.lens().ok_or_else(|| Error::TooLarge { op: OP, msg: format!("{g:?} overflows usize") })?;
    check_len(OP, "a", a.len(), na)?;
    check_len(OP, "b", b.len(), nb)?;
    check_len(OP, "c", c.len(), nc)?;
    gemm(a, b, c, g, 0.0);
    Ok(())
}

/// `C = op(A) op(B) + beta C` for buffers whose lengths the caller checked against `g`.
fn gemm(a: &[f32], b: &[f32], c: &mut [f32], g: Gemm, beta: f32) {
    if g.m == 0 || g.n == 0 {
        return;
    }
    if g.k == 0 {
        if beta == 0.0 {
            c.fill(0.0);
        }
        return;
    }
    debug_assert_eq!((a.len(), b.len(), c.len()), g.lens().unwrap());
    let (rsa, csa) = g.a_strides();
    let (rsb, csb) = g.b_strides();
    // SAFETY: the callers checked a.len() = m*k, b.len() = k*n, c.len() = m*n (all > 0 here). With
    // the strides of `Gemm` (row-major storage, transposed or not) the largest offsets read are
    // (m-1)*rsa + (k-1)*csa = m*k - 1 in A and (k-1)*rsb + (n-1)*csb = k*n - 1 in B, and the largest
    // written is (m-1)*n + (n-1) = m*n - 1 in C; strides are below the slice lengths, so they fit
    // isize. `c` is a unique borrow, so A and B do not alias it. With beta = 0, C is not read.
    unsafe {
        matrixmultiply::sgemm(
            g.m,
            g.k,
            g.n,
            1.0,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            beta,
            c.as_mut_ptr(),
            g.n as isize,
            1,
        )
    }
}

fn lens(shape: LinearShape) -> Result<(usize, usize, usize)> {
    shape.lens().ok_or_else(|| Error::TooLarge { op: OP, msg: format!("{shape:?} overflows usize") })
}
