//! Winograd F(2x2, 3x3) on the CPU for 3x3 filters with stride 1 and no dilation (Lavin & Gray,
//! 2016): each 2x2 block of outputs costs 16 multiplies per (filter, channel) pair instead of 36,
//! 2.25x fewer. The forward pass and the data gradient (a forward pass of the output gradient with
//! the filters flipped and transposed) use it; the weight gradient stays on im2col + GEMM.
//!
//! Per chunk of images: the input tiles (4x4, stride 2) are transformed `V = B^T d B`, the filters
//! once per call `U = G g G^T`, then the 16 transform positions are 16 independent GEMMs
//! `M_xi = U_xi (K x C) * V_xi (C x tiles)`, and every 4x4 `M` becomes a 2x2 output block
//! `Y = A^T M A`. Work is split over images exactly as the im2col path does (see `cpu.rs`).
//!
//! It computes the same convolution as the im2col path but rounds differently (the transforms
//! add and subtract before multiplying), so results agree to a few ulps of the operands' scale,
//! not bit for bit; `tests/conv.rs` checks both against the direct reference.
use rayon::prelude::*;

use super::gemm_plan::{sgemm, Mat, Plan};
use super::Conv2dShape;

/// Transform positions of a 4x4 tile.
const T16: usize = 16;
/// A chunk aims for about this many 2x2 output tiles (GEMM columns).
const TARGET_TILES: usize = 512;

/// Whether [`forward_into`] applies: 3x3 filters, stride 1, dilation 1.
pub(crate) fn applies(sh: &Conv2dShape) -> bool {
    sh.r == 3 && sh.s == 3 && sh.opts.stride == [1, 1] && sh.opts.dilation == [1, 1]
}

/// Whether the data gradient can run as a Winograd forward pass: as [`applies`], and padding at most
/// 2 (the flipped convolution pads by `2 - pad`).
pub(crate) fn applies_backward_data(sh: &Conv2dShape) -> bool {
    applies(sh) && sh.opts.pad[0] <= 2 && sh.opts.pad[1] <= 2
}

/// `y = conv(x, w) + bias` for a shape where [`applies`] holds; lengths already checked.
pub(crate) fn forward_into(sh: &Conv2dShape, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    debug_assert!(applies(sh));
    let u = transform_filters(w, sh.k, sh.c);
    run(sh, x, &u, bias, y);
}

/// `dx` (NCHW, overwritten) from `dy` and `w` for a shape where [`applies_backward_data`] holds:
/// the forward pass of `dy` with filters `w'[c][k][r][s] = w[k][c][2 - r][2 - s]` and padding
/// `2 - pad`.
pub(crate) fn backward_data_into(sh: &Conv2dShape, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    debug_assert!(applies_backward_data(sh));
    let (k, c) = (sh.k, sh.c);
    let mut wt = vec![0.0f32; c * k * 9];
    for kk in 0..k {
        for cc in 0..c {
            let src = &w[(kk * c + cc) * 9..][..9];
            let dst = &mut wt[(cc * k + kk) * 9..][..9];
            for (i, d) in dst.iter_mut().enumerate() {
                *d = src[8 - i];
            }
        }
    }
    let opts = super::Conv2dOpts { stride: [1, 1], pad: [2 - sh.opts.pad[0], 2 - sh.opts.pad[1]], dilation: [1, 1] };
    let flipped = Conv2dShape::new([sh.n, k, sh.oh, sh.ow], [c, k, 3, 3], opts)
        .expect("the transposed shape of a valid convolution is valid");
    debug_assert_eq!((flipped.oh, flipped.ow), (sh.h, sh.w));
    let u = transform_filters(&wt, c, k);
    run(&flipped, dy, &u, None, dx);
}

/// `U[xi][k][c] = (G g G^T)[xi]` for every 3x3 filter `g = w[k][c]`.
fn transform_filters(w: &[f32], k: usize, c: usize) -> Vec<f32> {
    let mut u = vec![0.0f32; T16 * k * c];
    for kk in 0..k {
        for cc in 0..c {
            let g = &w[(kk * c + cc) * 9..][..9];
            // G g (4x3), then (G g) G^T (4x4). G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1].
            let mut gg = [[0.0f32; 3]; 4];
            for j in 0..3 {
                let (a, b, d) = (g[j], g[3 + j], g[6 + j]);
                gg[0][j] = a;
                gg[1][j] = 0.5 * (a + b + d);
                gg[2][j] = 0.5 * (a - b + d);
                gg[3][j] = d;
            }
            for (i, row) in gg.iter().enumerate() {
                let (a, b, d) = (row[0], row[1], row[2]);
                let t = [a, 0.5 * (a + b + d), 0.5 * (a - b + d), d];
                for (j, v) in t.into_iter().enumerate() {
                    u[((i * 4 + j) * k + kk) * c + cc] = v;
                }
            }
        }
    }
    u
}

fn run(sh: &Conv2dShape, x: &[f32], u: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let (c, h, w, k, oh, ow) = (sh.c, sh.h, sh.w, sh.k, sh.oh, sh.ow);
    let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));
    let tiles = th * tw;
    let plan = Plan::new(sh);
    let chunk = TARGET_TILES.div_ceil(tiles).max(1);
    let (chw, kpq) = (c * h * w, k * oh * ow);
    plan.groups_of(y, kpq).into_par_iter().for_each(|(lo, yg)| {
        let imgs = yg.len() / kpq;
        let mut v = Vec::new();
        let mut m = Vec::new();
        for b0 in (0..imgs).step_by(chunk) {
            let nb = chunk.min(imgs - b0);
            let t = nb * tiles;
            v.resize(T16 * c * t, 0.0);
            m.resize(T16 * k * t, 0.0);
            let xs = &x[(lo + b0) * chw..(lo + b0 + nb) * chw];
            transform_input(sh, xs, nb, &mut v);
            for xi in 0..T16 {
                let lhs = Mat { data: &u[xi * k * c..][..k * c], rs: c, cs: 1 };
                let rhs = Mat { data: &v[xi * c * t..][..c * t], rs: t, cs: 1 };
                sgemm(k, t, c, &mut m[xi * k * t..][..k * t], t, None, lhs, rhs, plan.par);
            }
            transform_output(sh, &m, nb, bias, &mut yg[b0 * kpq..(b0 + nb) * kpq]);
        }
    });
}

/// `v[xi][c][tile] = (B^T d B)[xi]` for every 4x4 input tile `d` (zero outside the image) of the
/// `nb` images `x`; tile `b*TH*TW + ty*TW + tx` starts at row `2 ty - pad_h`, column `2 tx - pad_w`.
fn transform_input(sh: &Conv2dShape, x: &[f32], nb: usize, v: &mut [f32]) {
    let (c, h, w) = (sh.c, sh.h, sh.w);
    let (th, tw) = (sh.oh.div_ceil(2), sh.ow.div_ceil(2));
    let t = nb * th * tw;
    let (ph, pw) = (sh.opts.pad[0] as isize, sh.opts.pad[1] as isize);
    for b in 0..nb {
        for cc in 0..c {
            let plane = &x[(b * c + cc) * h * w..][..h * w];
            for ty in 0..th {
                for tx in 0..tw {
                    let (r0, c0) = (2 * ty as isize - ph, 2 * tx as isize - pw);
                    let mut d = [[0.0f32; 4]; 4];
                    for (i, row) in d.iter_mut().enumerate() {
                        let r = r0 + i as isize;
                        if r < 0 || r >= h as isize {
                            continue;
                        }
                        let line = &plane[r as usize * w..][..w];
                        for (j, e) in row.iter_mut().enumerate() {
                            let col = c0 + j as isize;
                            if col >= 0 && col < w as isize {
                                *e = line[col as usize];
                            }
                        }
                    }
                    // B^T d: rows d0 - d2, d1 + d2, d2 - d1, d1 - d3; then the same on columns.
                    let mut bd = [[0.0f32; 4]; 4];
                    for j in 0..4 {
                        bd[0][j] = d[0][j] - d[2][j];
                        bd[1][j] = d[1][j] + d[2][j];
                        bd[2][j] = d[2][j] - d[1][j];
                        bd[3][j] = d[1][j] - d[3][j];
                    }
                    let tile = (b * th + ty) * tw + tx;
                    for (i, r) in bd.iter().enumerate() {
                        let vals = [r[0] - r[2], r[1] + r[2], r[2] - r[1], r[1] - r[3]];
                        for (j, val) in vals.into_iter().enumerate() {
                            v[((i * 4 + j) * c + cc) * t + tile] = val;
                        }
                    }
                }
            }
        }
    }
}

/// `y[b][k][2ty + i][2tx + j] = (A^T M A)[i][j] (+ bias[k])` for the blocks inside the output.
fn transform_output(sh: &Conv2dShape, m: &[f32], nb: usize, bias: Option<&[f32]>, y: &mut [f32]) {
    let (k, oh, ow) = (sh.k, sh.oh, sh.ow);
    let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));
    let t = nb * th * tw;
    for b in 0..nb {
        for kk in 0..k {
            let add = bias.map_or(0.0, |bs| bs[kk]);
            let plane = &mut y[(b * k + kk) * oh * ow..][..oh * ow];
            for ty in 0..th {
                for tx in 0..tw {
                    let tile = (b * th + ty) * tw + tx;
                    let mut mm = [[0.0f32; 4]; 4];
                    for (i, row) in mm.iter_mut().enumerate() {
                        for (j, e) in row.iter_mut().enumerate() {
                            *e = m[((i * 4 + j) * k + kk) * t + tile];
                        }
                    }
                    // A^T M: rows m0 + m1 + m2 and m1 - m2 - m3; then the same on columns.
                    let mut am = [[0.0f32; 4]; 2];
                    for j in 0..4 {
                        am[0][j] = mm[0][j] + mm[1][j] + mm[2][j];
                        am[1][j] = mm[1][j] - mm[2][j] - mm[3][j];
                    }
                    for (i, r) in am.iter().enumerate() {
                        let row = 2 * ty + i;
                        if row >= oh {
                            continue;
                        }
                        let out = [r[0] + r[1] + r[2], r[1] - r[2] - r[3]];
                        for (j, val) in out.into_iter().enumerate() {
                            let col = 2 * tx + j;
                            if col < ow {
                                plane[row * ow + col] = val + add;
                            }
                        }
                    }
                }
            }
        }
    }
}
