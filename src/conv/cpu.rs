//! CPU path of `kernels/conv.cu`: im2col + GEMM (the `gemm` crate), multi-threaded with rayon: the
//! reference the CUDA kernels are tested against, and the trainer's path for every shape that
//! neither the direct 3x3 kernels (`direct.rs`) nor Winograd (`winograd.rs`) take
//! ([`CpuAlgo::Auto`]). The `*_into_with` functions choose
//! the algorithm.
//!
//! Work split: the batch is cut into `G = min(n, threads)` contiguous groups of images, one rayon
//! task each; a task walks its images in chunks of `B` images whose im2col matrices sit side by side
//! (so small feature maps still give the GEMM enough columns) and runs single-threaded GEMMs. When
//! the batch is smaller than the thread count, each GEMM gets the spare threads instead. The weight
//! gradient sums one partial per group in a fixed order: results depend on the thread count, never
//! on scheduling.
//!
//! The `*_into` functions take contiguous NCHW / KCRS slices and write into caller buffers, so a
//! training loop can reuse its allocations; the others take `ndarray` views and allocate.
use ndarray::{Array1, Array4, ArrayView1, ArrayView4, Axis};
use rayon::prelude::*;

use super::gemm_plan::{sgemm, Mat, Plan};
use super::{Conv2dOpts, Conv2dShape};
use crate::error::{Error, Result};

const OP: &str = "conv2d (cpu)";

// ---- ndarray API ---------------------------------------------------------------------------------

/// Convolution of `x` (`n x c x h x w`) with filters `w` (`k x c x r x s`) plus an optional `bias`
/// (`k`): returns `y` (`n x k x oh x ow`).
pub fn forward(
    x: ArrayView4<'_, f32>,
    w: ArrayView4<'_, f32>,
    bias: Option<ArrayView1<'_, f32>>,
    opts: Conv2dOpts,
) -> Result<Array4<f32>> {
    let shape = Conv2dShape::new(x.dim().into(), w.dim().into(), opts)?;
    let x = x.as_standard_layout();
    let w = w.as_standard_layout();
    let bias = bias.map(|b| b.to_vec());
    let mut y = Array4::zeros(shape.output_dims());
    forward_into(&shape, slice(&x), slice(&w), bias.as_deref(), y.as_slice_mut().expect("fresh array"))?;
    Ok(y)
}

/// Gradient of the input from the output gradient `dy` (`n x k x oh x ow`) and the filters `w`.
pub fn backward_data(shape: &Conv2dShape, dy: ArrayView4<'_, f32>, w: ArrayView4<'_, f32>) -> Result<Array4<f32>> {
    check_dims("dy", dy.shape(), shape.output_dims())?;
    check_dims("w", w.shape(), shape.filter_dims())?;
    let dy = dy.as_standard_layout();
    let w = w.as_standard_layout();
    let mut dx = Array4::zeros(shape.input_dims());
    backward_data_into(shape, slice(&dy), slice(&w), dx.as_slice_mut().expect("fresh array"))?;
    Ok(dx)
}

/// Gradient of the filters from the input `x` and the output gradient `dy`.
pub fn backward_weight(shape: &Conv2dShape, x: ArrayView4<'_, f32>, dy: ArrayView4<'_, f32>) -> Result<Array4<f32>> {
    check_dims("x", x.shape(), shape.input_dims())?;
    check_dims("dy", dy.shape(), shape.output_dims())?;
    let x = x.as_standard_layout();
    let dy = dy.as_standard_layout();
    let mut dw = Array4::zeros(shape.filter_dims());
    backward_weight_into(shape, slice(&x), slice(&dy), dw.as_slice_mut().expect("fresh array"), 0.0)?;
    Ok(dw)
}

/// Gradient of the bias: the sum of `dy` (`n x k x oh x ow`) over everything but `k`.
pub fn bias_grad(dy: ArrayView4<'_, f32>) -> Array1<f32> {
    let mut db = Array1::zeros(dy.dim().1);
    db.as_slice_mut().expect("fresh array").par_iter_mut().enumerate().for_each(|(k, d)| {
        let plane = dy.index_axis(Axis(1), k);
        *d = plane.iter().map(|&v| f64::from(v)).sum::<f64>() as f32;
    });
    db
}

// ---- slice API -----------------------------------------------------------------------------------

/// Which algorithm the CPU runs. All compute the same convolution (to rounding); where the chosen
/// one does not apply to a shape, im2col + GEMM runs instead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuAlgo {
    /// im2col + GEMM, any shape. The default of the `*_into` functions.
    #[default]
    Im2col,
    /// Winograd F(2x2, 3x3) (2.25x fewer multiplies) for all three passes of 3x3 filters with
    /// stride 1 and no dilation (and padding <= 2 for the data gradient).
    Winograd,
    /// Register-blocked direct convolution (AVX-512 or AVX2 + FMA, detected at run time;
    /// `EVENCLASS_CPU_SIMD=avx2` caps it at AVX2, `=none` turns it off) for 3x3 filters with
    /// stride 1, no dilation and padding <= 2, all three passes, when the output width (the input
    /// width, for the data gradient) is a multiple of 8.
    Direct,
    /// The trainer's choice per pass and shape: `Winograd` for wide layers (the forward pass and
    /// the data gradient when both channel counts are at least 128, or at least 64 on maps of
    /// 16x16 and more; the weight gradient when both are at least 128), `Direct` for the rest,
    /// im2col where neither applies. On the 2-core Xeon where it was measured
    /// (`docs/performance.md`), Winograd took 1.1x-2.3x less time than `Direct` on those passes
    /// and was slower or level on narrower ones. `EVENCLASS_CPU_SIMD` caps only the direct
    /// kernels; Winograd's GEMMs (the `gemm` crate) pick their own instructions.
    Auto,
}

impl CpuAlgo {
    /// The algorithm that actually runs for `pass` of `shape` (this one, or `Im2col` where it does
    /// not apply or the CPU lacks the instructions).
    pub fn resolve(self, shape: &Conv2dShape, pass: Pass) -> CpuAlgo {
        if self == CpuAlgo::Auto {
            let narrow = shape.c.min(shape.k);
            let (rows, cols) = match pass {
                Pass::Forward => (shape.oh, shape.ow),
                _ => (shape.h, shape.w),
            };
            let wide = match pass {
                Pass::BackwardWeight => narrow >= 128,
                _ => narrow >= 128 || (narrow >= 64 && rows.min(cols) >= 16),
            };
            let winograd = CpuAlgo::Winograd.resolve(shape, pass);
            return if wide && winograd == CpuAlgo::Winograd { winograd } else { CpuAlgo::Direct.resolve(shape, pass) };
        }
        let applies = match (self, pass) {
            (CpuAlgo::Im2col, _) => true,
            (CpuAlgo::Winograd, Pass::Forward) => super::winograd::applies(shape),
            (CpuAlgo::Winograd, Pass::BackwardData) => super::winograd::applies_backward_data(shape),
            (CpuAlgo::Winograd, Pass::BackwardWeight) => super::winograd::applies(shape),
            (CpuAlgo::Direct, Pass::Forward | Pass::BackwardWeight) => super::direct::applies(shape),
            (CpuAlgo::Direct, Pass::BackwardData) => super::direct::applies_backward_data(shape),
            (CpuAlgo::Auto, _) => unreachable!("resolved above"),
        };
        if applies {
            self
        } else {
            CpuAlgo::Im2col
        }
    }
}

/// One of the three convolution passes (for [`CpuAlgo::resolve`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Forward,
    BackwardData,
    BackwardWeight,
}

/// [`forward_into`] with a chosen [`CpuAlgo`].
pub fn forward_into_with(
    algo: CpuAlgo,
    shape: &Conv2dShape,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) -> Result<()> {
    let algo = algo.resolve(shape, Pass::Forward);
    if algo == CpuAlgo::Im2col {
        return forward_into(shape, x, w, bias, y);
    }
    check_len("x", x.len(), shape.input_len())?;
    check_len("w", w.len(), shape.filter_len())?;
    if let Some(b) = bias {
        check_len("bias", b.len(), shape.k)?;
    }
    check_len("y", y.len(), shape.output_len())?;
    match algo {
        CpuAlgo::Winograd => super::winograd::forward_into(shape, x, w, bias, y),
        _ => super::direct::forward_into(shape, x, w, bias, y),
    }
    Ok(())
}

/// [`backward_data_into`] with a chosen [`CpuAlgo`].
pub fn backward_data_into_with(
    algo: CpuAlgo,
    shape: &Conv2dShape,
    dy: &[f32],
    w: &[f32],
    dx: &mut [f32],
) -> Result<()> {
    let algo = algo.resolve(shape, Pass::BackwardData);
    if algo == CpuAlgo::Im2col {
        return backward_data_into(shape, dy, w, dx);
    }
    check_len("dy", dy.len(), shape.output_len())?;
    check_len("w", w.len(), shape.filter_len())?;
    check_len("dx", dx.len(), shape.input_len())?;
    match algo {
        CpuAlgo::Winograd => super::winograd::backward_data_into(shape, dy, w, dx),
        _ => super::direct::backward_data_into(shape, dy, w, dx),
    }
    Ok(())
}

/// [`backward_weight_into`] with a chosen [`CpuAlgo`].
pub fn backward_weight_into_with(
    algo: CpuAlgo,
    shape: &Conv2dShape,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    beta: f32,
) -> Result<()> {
    let algo = algo.resolve(shape, Pass::BackwardWeight);
    if algo == CpuAlgo::Im2col {
        return backward_weight_into(shape, x, dy, dw, beta);
    }
    check_len("x", x.len(), shape.input_len())?;
    check_len("dy", dy.len(), shape.output_len())?;
    check_len("dw", dw.len(), shape.filter_len())?;
    match algo {
        CpuAlgo::Winograd => super::winograd::backward_weight_into(shape, x, dy, dw, beta),
        _ => super::direct::backward_weight_into(shape, x, dy, dw, beta),
    }
    Ok(())
}

/// [`forward`] on contiguous slices: `x` NCHW, `w` KCRS, `bias` of length k, into `y` (NKHW).
pub fn forward_into(shape: &Conv2dShape, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) -> Result<()> {
    check_len("x", x.len(), shape.input_len())?;
    check_len("w", w.len(), shape.filter_len())?;
    if let Some(b) = bias {
        check_len("bias", b.len(), shape.k)?;
    }
    check_len("y", y.len(), shape.output_len())?;
    let g = Geometry::new(shape);
    let plan = Plan::new(shape);
    let (chw, kpq) = (g.c * g.h * g.w, g.k * g.pq);
    plan.groups_of(y, kpq).into_par_iter().for_each(|(lo, yg)| {
        let mut col = Vec::new();
        let mut tmp = Vec::new();
        for (b0, nb) in plan.chunks(yg.len() / kpq) {
            let cols = nb * g.pq;
            let xs = &x[(lo + b0) * chw..(lo + b0 + nb) * chw];
            let colm: &[f32] = if shape.is_pointwise() && nb == 1 {
                xs
            } else {
                col.resize(g.crs * cols, 0.0);
                im2col(&g, xs, nb, &mut col);
                &col
            };
            let ys = &mut yg[b0 * kpq..(b0 + nb) * kpq];
            let lhs = Mat { data: w, rs: g.crs, cs: 1 };
            let rhs = Mat { data: colm, rs: cols, cs: 1 };
            if nb == 1 {
                sgemm(g.k, cols, g.crs, ys, cols, None, lhs, rhs, plan.par);
                if let Some(b) = bias {
                    for (row, &bk) in ys.chunks_exact_mut(g.pq).zip(b) {
                        row.iter_mut().for_each(|v| *v += bk);
                    }
                }
            } else {
                tmp.resize(g.k * cols, 0.0);
                sgemm(g.k, cols, g.crs, &mut tmp, cols, None, lhs, rhs, plan.par);
                scatter_chunk(&tmp, nb, g.k, g.pq, bias, ys);
            }
        }
    });
    Ok(())
}

/// [`backward_data`] on contiguous slices: `dy` NKHW, `w` KCRS, into `dx` (NCHW, overwritten).
pub fn backward_data_into(shape: &Conv2dShape, dy: &[f32], w: &[f32], dx: &mut [f32]) -> Result<()> {
    check_len("dy", dy.len(), shape.output_len())?;
    check_len("w", w.len(), shape.filter_len())?;
    check_len("dx", dx.len(), shape.input_len())?;
    let g = Geometry::new(shape);
    let plan = Plan::new(shape);
    let (chw, kpq) = (g.c * g.h * g.w, g.k * g.pq);
    plan.groups_of(dx, chw).into_par_iter().for_each(|(lo, dxg)| {
        let mut dcol = Vec::new();
        let mut dyc = Vec::new();
        for (b0, nb) in plan.chunks(dxg.len() / chw) {
            let cols = nb * g.pq;
            let dys = &dy[(lo + b0) * kpq..(lo + b0 + nb) * kpq];
            let dym: &[f32] = if nb == 1 {
                dys
            } else {
                dyc.resize(g.k * cols, 0.0);
                gather_chunk(dys, nb, g.k, g.pq, &mut dyc);
                &dyc
            };
            // dcol = w^T (crs x k) * dy (k x cols)
            let lhs = Mat { data: w, rs: 1, cs: g.crs };
            let rhs = Mat { data: dym, rs: cols, cs: 1 };
            let dxs = &mut dxg[b0 * chw..(b0 + nb) * chw];
            if shape.is_pointwise() && nb == 1 {
                sgemm(g.crs, cols, g.k, dxs, cols, None, lhs, rhs, plan.par);
            } else {
                dcol.resize(g.crs * cols, 0.0);
                sgemm(g.crs, cols, g.k, &mut dcol, cols, None, lhs, rhs, plan.par);
                col2im(&g, &dcol, nb, dxs);
            }
        }
    });
    Ok(())
}

/// [`backward_weight`] on contiguous slices: `dw = beta * dw + grad` (KCRS). With `beta == 0` the
/// old contents of `dw` are never read (they may be NaN).
pub fn backward_weight_into(shape: &Conv2dShape, x: &[f32], dy: &[f32], dw: &mut [f32], beta: f32) -> Result<()> {
    check_len("x", x.len(), shape.input_len())?;
    check_len("dy", dy.len(), shape.output_len())?;
    check_len("dw", dw.len(), shape.filter_len())?;
    let g = Geometry::new(shape);
    let plan = Plan::new(shape);
    let (chw, kpq, kcrs) = (g.c * g.h * g.w, g.k * g.pq, g.k * g.crs);
    // Group 0 accumulates into dw itself, the others into partials summed afterwards.
    let mut partials: Vec<Vec<f32>> = (1..plan.groups).map(|_| vec![0.0; kcrs]).collect();
    let outs: Vec<&mut [f32]> =
        std::iter::once(&mut *dw).chain(partials.iter_mut().map(|p| p.as_mut_slice())).collect();
    outs.into_par_iter().enumerate().for_each(|(grp, out)| {
        let (lo, hi) = plan.group_range(grp);
        let mut col = Vec::new();
        let mut dyc = Vec::new();
        for (b0, nb) in plan.chunks(hi - lo) {
            let cols = nb * g.pq;
            let first = b0 == 0;
            let xs = &x[(lo + b0) * chw..(lo + b0 + nb) * chw];
            let colm: &[f32] = if shape.is_pointwise() && nb == 1 {
                xs
            } else {
                col.resize(g.crs * cols, 0.0);
                im2col(&g, xs, nb, &mut col);
                &col
            };
            let dys = &dy[(lo + b0) * kpq..(lo + b0 + nb) * kpq];
            let dym: &[f32] = if nb == 1 {
                dys
            } else {
                dyc.resize(g.k * cols, 0.0);
                gather_chunk(dys, nb, g.k, g.pq, &mut dyc);
                &dyc
            };
            // out (k x crs) (+)= dy (k x cols) * col^T (cols x crs)
            let keep = match (first, grp) {
                (false, _) => Some(1.0),
                (true, 0) if beta != 0.0 => Some(beta),
                (true, _) => None,
            };
            let lhs = Mat { data: dym, rs: cols, cs: 1 };
            let rhs = Mat { data: colm, rs: 1, cs: cols };
            sgemm(g.k, g.crs, cols, out, g.crs, keep, lhs, rhs, plan.par);
        }
    });
    if !partials.is_empty() {
        const BLOCK: usize = 1 << 14;
        dw.par_chunks_mut(BLOCK).enumerate().for_each(|(i, d)| {
            for p in &partials {
                d.iter_mut().zip(&p[i * BLOCK..]).for_each(|(a, b)| *a += b);
            }
        });
    }
    Ok(())
}

/// Bias gradient on contiguous slices: `db = beta * db + sum over n, oh, ow of dy` (f64 sums).
/// With `beta == 0` the old contents of `db` are never read.
pub fn bias_grad_into(shape: &Conv2dShape, dy: &[f32], db: &mut [f32], beta: f32) -> Result<()> {
    check_len("dy", dy.len(), shape.output_len())?;
    check_len("db", db.len(), shape.k)?;
    let (k, pq) = (shape.k, shape.oh * shape.ow);
    db.par_iter_mut().enumerate().for_each(|(kk, d)| {
        let sum: f64 =
            (0..shape.n).map(|n| dy[(n * k + kk) * pq..][..pq].iter().map(|&v| f64::from(v)).sum::<f64>()).sum();
        *d = if beta == 0.0 { sum as f32 } else { (f64::from(beta) * f64::from(*d) + sum) as f32 };
    });
    Ok(())
}

// ---- internals -----------------------------------------------------------------------------------

/// The shape's numbers unpacked for the loops.
struct Geometry {
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    r: usize,
    s: usize,
    oh: usize,
    ow: usize,
    pq: usize,
    crs: usize,
    stride: [usize; 2],
    pad: [usize; 2],
    dil: [usize; 2],
}

impl Geometry {
    fn new(sh: &Conv2dShape) -> Self {
        let o = sh.opts;
        Self {
            c: sh.c,
            h: sh.h,
            w: sh.w,
            k: sh.k,
            r: sh.r,
            s: sh.s,
            oh: sh.oh,
            ow: sh.ow,
            pq: sh.oh * sh.ow,
            crs: sh.c * sh.r * sh.s,
            stride: o.stride,
            pad: o.pad,
            dil: o.dilation,
        }
    }

    /// For the filter tap at offset `off` (= r*dh or s*dw) along one axis: the output positions
    /// `[lo, hi)` whose input position `o * stride + start` lies inside `[0, len)`, and `start`.
    fn valid_range(off: usize, pad: usize, stride: usize, len: usize, out: usize) -> (usize, usize, isize) {
        let start = off as isize - pad as isize;
        let lo = if start >= 0 { 0 } else { start.unsigned_abs().div_ceil(stride) };
        let last = len as isize - 1 - start;
        let hi = if last < 0 { 0 } else { last as usize / stride + 1 };
        let lo = lo.min(out);
        (lo, hi.min(out).max(lo), start)
    }
}

/// im2col of `nb` consecutive images `x` into `col`: row `(c*R + r)*S + s`, column `b*PQ + p*OW + q`
/// holds `x[b, c, p*sh - ph + r*dh, q*sw - pw + s*dw]` (zero outside the image).
fn im2col(g: &Geometry, x: &[f32], nb: usize, col: &mut [f32]) {
    let (hw, cols) = (g.h * g.w, nb * g.pq);
    for b in 0..nb {
        for c in 0..g.c {
            let plane = &x[(b * g.c + c) * hw..][..hw];
            for r in 0..g.r {
                let (p_lo, p_hi, ih0) = Geometry::valid_range(r * g.dil[0], g.pad[0], g.stride[0], g.h, g.oh);
                for s in 0..g.s {
                    let (q_lo, q_hi, iw0) = Geometry::valid_range(s * g.dil[1], g.pad[1], g.stride[1], g.w, g.ow);
                    let dst = &mut col[((c * g.r + r) * g.s + s) * cols + b * g.pq..][..g.pq];
                    dst[..p_lo * g.ow].fill(0.0);
                    dst[p_hi * g.ow..].fill(0.0);
                    for p in p_lo..p_hi {
                        let ih = (p * g.stride[0]) as isize + ih0;
                        let src = &plane[ih as usize * g.w..][..g.w];
                        let out = &mut dst[p * g.ow..][..g.ow];
                        out[..q_lo].fill(0.0);
                        out[q_hi..].fill(0.0);
                        if q_lo == q_hi {
                            continue;
                        }
                        let first = (q_lo * g.stride[1]) as isize + iw0;
                        if g.stride[1] == 1 {
                            out[q_lo..q_hi].copy_from_slice(&src[first as usize..][..q_hi - q_lo]);
                        } else {
                            let src = &src[first as usize..];
                            for (o, v) in out[q_lo..q_hi].iter_mut().zip(src.iter().step_by(g.stride[1])) {
                                *o = *v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Adjoint of [`im2col`]: `dx` (nb images, overwritten) = sum of the `col` entries that read each
/// input element.
fn col2im(g: &Geometry, col: &[f32], nb: usize, dx: &mut [f32]) {
    let (hw, cols) = (g.h * g.w, nb * g.pq);
    dx.fill(0.0);
    for b in 0..nb {
        for c in 0..g.c {
            let plane = &mut dx[(b * g.c + c) * hw..][..hw];
            for r in 0..g.r {
                let (p_lo, p_hi, ih0) = Geometry::valid_range(r * g.dil[0], g.pad[0], g.stride[0], g.h, g.oh);
                for s in 0..g.s {
                    let (q_lo, q_hi, iw0) = Geometry::valid_range(s * g.dil[1], g.pad[1], g.stride[1], g.w, g.ow);
                    let src = &col[((c * g.r + r) * g.s + s) * cols + b * g.pq..][..g.pq];
                    if q_lo == q_hi {
                        continue;
                    }
                    for p in p_lo..p_hi {
                        let ih = (p * g.stride[0]) as isize + ih0;
                        let dst = &mut plane[ih as usize * g.w..][..g.w];
                        let inp = &src[p * g.ow + q_lo..p * g.ow + q_hi];
                        let first = ((q_lo * g.stride[1]) as isize + iw0) as usize;
                        if g.stride[1] == 1 {
                            dst[first..first + inp.len()].iter_mut().zip(inp).for_each(|(d, v)| *d += v);
                        } else {
                            dst[first..].iter_mut().step_by(g.stride[1]).zip(inp).for_each(|(d, v)| *d += v);
                        }
                    }
                }
            }
        }
    }
}

/// `src` holds `nb` blocks of `rows x pq`; `dst` (rows x nb*pq) puts them side by side.
fn gather_chunk(src: &[f32], nb: usize, rows: usize, pq: usize, dst: &mut [f32]) {
    let cols = nb * pq;
    for b in 0..nb {
        for k in 0..rows {
            dst[k * cols + b * pq..][..pq].copy_from_slice(&src[(b * rows + k) * pq..][..pq]);
        }
    }
}

/// Inverse of [`gather_chunk`], adding `bias[k]` to row k.
fn scatter_chunk(src: &[f32], nb: usize, rows: usize, pq: usize, bias: Option<&[f32]>, dst: &mut [f32]) {
    let cols = nb * pq;
    for b in 0..nb {
        for k in 0..rows {
            let out = &mut dst[(b * rows + k) * pq..][..pq];
            let inp = &src[k * cols + b * pq..][..pq];
            match bias {
                Some(bias) => out.iter_mut().zip(inp).for_each(|(o, v)| *o = v + bias[k]),
                None => out.copy_from_slice(inp),
            }
        }
    }
}

fn slice<'a>(a: &'a ndarray::CowArray<'_, f32, ndarray::Ix4>) -> &'a [f32] {
    a.as_slice().expect("as_standard_layout gives a contiguous array")
}

fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::shape(OP, format!("{what} has {got} elements, expected {want}")))
    }
}

fn check_dims(what: &str, got: &[usize], want: [usize; 4]) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::shape(OP, format!("{what} is {got:?}, expected {want:?}")))
    }
}

/// Direct loops with f64 accumulation: slow and obviously right; the oracle of the tests.
pub mod naive {
    use super::{check_len, Conv2dShape};
    use crate::error::Result;

    /// Input index read by output `(p, q)` through tap `(r, s)`, or `None` in the padding.
    fn tap(sh: &Conv2dShape, p: usize, q: usize, r: usize, s: usize) -> Option<usize> {
        let o = sh.opts();
        let ih = (p * o.stride[0] + r * o.dilation[0]).checked_sub(o.pad[0])?;
        let iw = (q * o.stride[1] + s * o.dilation[1]).checked_sub(o.pad[1])?;
        (ih < sh.h() && iw < sh.w()).then_some(ih * sh.w() + iw)
    }

    /// Calls `f(x_index, w_index, y_index)` for every multiply-add of the convolution.
    fn each_mac(sh: &Conv2dShape, mut f: impl FnMut(usize, usize, usize)) {
        let (c, k, r, s, oh, ow) = (sh.c(), sh.k(), sh.r(), sh.s(), sh.oh(), sh.ow());
        let hw = sh.h() * sh.w();
        for n in 0..sh.n() {
            for kk in 0..k {
                for p in 0..oh {
                    for q in 0..ow {
                        let yi = ((n * k + kk) * oh + p) * ow + q;
                        for cc in 0..c {
                            for rr in 0..r {
                                for ss in 0..s {
                                    if let Some(t) = tap(sh, p, q, rr, ss) {
                                        f((n * c + cc) * hw + t, ((kk * c + cc) * r + rr) * s + ss, yi);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    pub fn forward(sh: &Conv2dShape, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Result<Vec<f32>> {
        check_len("x", x.len(), sh.input_len())?;
        check_len("w", w.len(), sh.filter_len())?;
        if let Some(b) = bias {
            check_len("bias", b.len(), sh.k())?;
        }
        let pq = sh.oh() * sh.ow();
        let mut acc: Vec<f64> =
            (0..sh.output_len()).map(|i| bias.map_or(0.0, |b| f64::from(b[i / pq % sh.k()]))).collect();
        each_mac(sh, |xi, wi, yi| acc[yi] += f64::from(x[xi]) * f64::from(w[wi]));
        Ok(acc.into_iter().map(|v| v as f32).collect())
    }

    pub fn backward_data(sh: &Conv2dShape, dy: &[f32], w: &[f32]) -> Result<Vec<f32>> {
        check_len("dy", dy.len(), sh.output_len())?;
        check_len("w", w.len(), sh.filter_len())?;
        let mut acc = vec![0.0f64; sh.input_len()];
        each_mac(sh, |xi, wi, yi| acc[xi] += f64::from(dy[yi]) * f64::from(w[wi]));
        Ok(acc.into_iter().map(|v| v as f32).collect())
    }

    pub fn backward_weight(sh: &Conv2dShape, x: &[f32], dy: &[f32]) -> Result<Vec<f32>> {
        check_len("x", x.len(), sh.input_len())?;
        check_len("dy", dy.len(), sh.output_len())?;
        let mut acc = vec![0.0f64; sh.filter_len()];
        each_mac(sh, |xi, wi, yi| acc[wi] += f64::from(dy[yi]) * f64::from(x[xi]));
        Ok(acc.into_iter().map(|v| v as f32).collect())
    }

    pub fn bias_grad(sh: &Conv2dShape, dy: &[f32]) -> Result<Vec<f32>> {
        check_len("dy", dy.len(), sh.output_len())?;
        let pq = sh.oh() * sh.ow();
        let mut acc = vec![0.0f64; sh.k()];
        for (i, &v) in dy.iter().enumerate() {
            acc[i / pq % sh.k()] += f64::from(v);
        }
        Ok(acc.into_iter().map(|v| v as f32).collect())
    }
}
