//! Winograd F(2x2, 3x3) on the CPU for 3x3 filters with stride 1 and no dilation (Lavin & Gray,
//! 2016): each 2x2 block of outputs costs 16 multiplies per (filter, channel) pair instead of 36,
//! 2.25x fewer. The forward pass, the data gradient (a forward pass of the output gradient with
//! the filters flipped and transposed) and the weight gradient (the forward pass's transforms
//! differentiated, see [`backward_weight_into`]) use it.
//!
//! Per chunk of images: the input tiles (4x4, stride 2) are transformed `V = B^T d B`, the filters
//! once per call `U = G g G^T`, then the 16 transform positions are 16 independent GEMMs
//! `M_xi = U_xi (K x C) * V_xi (C x tiles)`, and every 4x4 `M` becomes a 2x2 output block
//! `Y = A^T M A`. The transforms are separable (rows, then columns), written as flat loops over
//! the tiles of a plane so that they vectorize. Chunks of about [`TARGET_TILES`] blocks are the
//! unit of parallel work, so results do not depend on the thread count.
//!
//! It computes the same convolution as the im2col path but rounds differently (the transforms
//! add and subtract before multiplying), so results agree to a few ulps of the operands' scale,
//! not bit for bit; `tests/conv.rs` checks both against the direct reference.
use rayon::prelude::*;

use gemm::Parallelism;

use super::gemm_plan::{sgemm, Mat};
use super::Conv2dShape;

/// Transform positions of a 4x4 tile.
const T16: usize = 16;
/// A chunk aims for about this many 2x2 output blocks (GEMM columns). Tried on the 2-core Xeon
/// (2 MiB of L2 a core) on the trainer's layers of 32 to 1,024 channels: 16, 32, 64, 128, 256,
/// 512 and 1,024; 64 was the fastest or within noise of it on all but one (128->256 at 8x8, where
/// 128 was faster), 512 and more up to 1.7x slower. A chunk's transformed input and output,
/// `16 (C + K)` floats a column, then fit in L2 while `C + K` is at most about 512.
const TARGET_TILES: usize = 64;

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
    let c = sh.c;
    let u = transform_filters(sh.k, c, |kk, cc, t| w[(kk * c + cc) * 9 + t]);
    run(sh, x, &u, bias, y);
}

/// `dx` (NCHW, overwritten) from `dy` and `w` for a shape where [`applies_backward_data`] holds:
/// the forward pass of `dy` with filters `w'[c][k][r][s] = w[k][c][2 - r][2 - s]` and padding
/// `2 - pad`.
pub(crate) fn backward_data_into(sh: &Conv2dShape, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    debug_assert!(applies_backward_data(sh));
    let (k, c) = (sh.k, sh.c);
    let opts = super::Conv2dOpts { stride: [1, 1], pad: [2 - sh.opts.pad[0], 2 - sh.opts.pad[1]], dilation: [1, 1] };
    let flipped = Conv2dShape::new([sh.n, k, sh.oh, sh.ow], [c, k, 3, 3], opts)
        .expect("the transposed shape of a valid convolution is valid");
    debug_assert_eq!((flipped.oh, flipped.ow), (sh.h, sh.w));
    // Filter `cc` of the flipped convolution on its input channel `kk` is `w[kk][cc]` rotated.
    let u = transform_filters(c, k, |cc, kk, t| w[(kk * c + cc) * 9 + 8 - t]);
    run(&flipped, dy, &u, None, dx);
}

/// `dw = beta * dw + dL/dw` (KCRS) from `x` and `dy` for a shape where [`applies`] holds.
///
/// The forward pass is `y = A^T [sum_c U ⊙ V] A` per block, so `dL/dU[k][c] = sum over blocks of
/// (A dy A^T) ⊙ V[c]` (16 GEMMs of `K x tiles` by `tiles x C`) and `dL/dg = G^T (dL/dU) G`.
/// The batch is cut into fixed runs of images; for each, the input planes and the output-gradient
/// planes are transformed in parallel, then the 16 positions' GEMMs run in parallel, each adding
/// into its own `K x C` sum in run order. Nothing is summed in an order that depends on the thread
/// count.
pub(crate) fn backward_weight_into(sh: &Conv2dShape, x: &[f32], dy: &[f32], dw: &mut [f32], beta: f32) {
    debug_assert!(applies(sh));
    let (n, c, k) = (sh.n, sh.c, sh.k);
    let (hw, pq) = (sh.h * sh.w, sh.oh * sh.ow);
    let tiles = sh.oh.div_ceil(2) * sh.ow.div_ceil(2);
    let run_images = (WGRAD_RUN_FLOATS / (T16 * (c + k) * tiles)).clamp(1, n);
    let mut sums = vec![0.0f32; T16 * k * c];
    let mut v = Vec::new();
    let mut z = Vec::new();
    for (r, b0) in (0..n).step_by(run_images).enumerate() {
        let nb = run_images.min(n - b0);
        let t = nb * tiles;
        v.resize(T16 * c * t, 0.0);
        z.resize(T16 * k * t, 0.0);
        transform_planes(&mut v, c, t, |cc, dst, s| {
            for b in 0..nb {
                let plane = &x[((b0 + b) * c + cc) * hw..][..hw];
                transform_input_plane(sh, plane, &mut Rows { rows: dst, first: b * tiles }, s);
            }
        });
        transform_planes(&mut z, k, t, |kk, dst, s| {
            for b in 0..nb {
                let plane = &dy[((b0 + b) * k + kk) * pq..][..pq];
                transform_gradient_plane(sh, plane, &mut Rows { rows: dst, first: b * tiles }, s);
            }
        });
        let keep = (r > 0).then_some(1.0);
        sums.par_chunks_mut(k * c).enumerate().for_each(|(xi, sum)| {
            let lhs = Mat { data: &z[xi * k * t..][..k * t], rs: t, cs: 1 };
            let rhs = Mat { data: &v[xi * c * t..][..c * t], rs: 1, cs: t };
            sgemm(k, c, t, sum, c, keep, lhs, rhs, Parallelism::None);
        });
    }
    // G^T S G per filter: G^T = [1 .5 .5 0; 0 .5 -.5 0; 0 .5 .5 1].
    dw.par_chunks_mut(c * 9).enumerate().for_each(|(kk, dwk)| {
        for (cc, g) in dwk.chunks_exact_mut(9).enumerate() {
            let m: [f32; T16] = std::array::from_fn(|xi| sums[(xi * k + kk) * c + cc]);
            let mut gm = [[0.0f32; 4]; 3];
            for j in 0..4 {
                let (m0, m1, m2, m3) = (m[j], m[4 + j], m[8 + j], m[12 + j]);
                gm[0][j] = m0 + 0.5 * (m1 + m2);
                gm[1][j] = 0.5 * (m1 - m2);
                gm[2][j] = 0.5 * (m1 + m2) + m3;
            }
            for (i, row) in gm.iter().enumerate() {
                let [m0, m1, m2, m3] = *row;
                let out = [m0 + 0.5 * (m1 + m2), 0.5 * (m1 - m2), 0.5 * (m1 + m2) + m3];
                for (jj, val) in out.into_iter().enumerate() {
                    let old = &mut g[i * 3 + jj];
                    *old = if beta == 0.0 { val } else { beta * *old + val };
                }
            }
        }
    });
}

/// How many floats a run's transformed inputs and output gradients (`16 (C + K)` a block) should
/// take: enough blocks that each GEMM's inner dimension amortizes reading and writing its sum, few
/// enough to stay far from the trainer's own memory (16 MiB).
const WGRAD_RUN_FLOATS: usize = 1 << 22;

/// `buf` (`[16][planes][t]`) handed out plane by plane, in parallel: `f(plane, its 16 rows, ..)`.
fn transform_planes(
    buf: &mut [f32],
    planes: usize,
    t: usize,
    f: impl Fn(usize, &mut [&mut [f32]], &mut Scratch) + Sync,
) {
    let mut rows: Vec<Vec<&mut [f32]>> = (0..planes).map(|_| Vec::with_capacity(T16)).collect();
    for (i, row) in buf.chunks_exact_mut(t).enumerate() {
        rows[i % planes].push(row);
    }
    rows.par_iter_mut().enumerate().for_each_init(Scratch::default, |s, (p, r)| f(p, r, s));
}

/// `A dy A^T` (4x4) for every 2x2 block of one output-gradient plane (zero past its edge), position
/// by position into `dst`. `A` applied to a pair `(a, b)` gives `(a, a + b, a - b, -b)`. The
/// blocks' four values are first gathered into four flat arrays so the arithmetic vectorizes.
fn transform_gradient_plane(sh: &Conv2dShape, plane: &[f32], dst: &mut impl TileRows, s: &mut Scratch) {
    let ow = sh.ow;
    let tw = ow.div_ceil(2);
    let tiles = sh.oh.div_ceil(2) * tw;
    s.out.clear();
    s.out.resize(4 * tiles, 0.0);
    // out[2 i + jj][block]: the block's value at row i, column jj.
    for (r, line) in plane.chunks_exact(ow).enumerate() {
        let (ty, i) = (r / 2, r % 2);
        let (left, right) = s.out[2 * i * tiles..][..2 * tiles].split_at_mut(tiles);
        let (left, right) = (&mut left[ty * tw..][..tw], &mut right[ty * tw..][..tw]);
        let mut pairs = line.chunks_exact(2);
        for ((p, l), r) in (&mut pairs).zip(left.iter_mut()).zip(right.iter_mut()) {
            (*l, *r) = (p[0], p[1]);
        }
        if let [last] = pairs.remainder() {
            left[tw - 1] = *last;
        }
    }
    let (y00, rest) = s.out.split_at(tiles);
    let (y01, rest) = rest.split_at(tiles);
    let (y10, y11) = rest.split_at(tiles);
    for j in 0..4 {
        let [z0, z1, z2, z3] = dst.four(j, tiles);
        for q in 0..tiles {
            // Column j of (dy A^T) for the block's two rows, then A down the column.
            let along = |a: f32, b: f32| match j {
                0 => a,
                1 => a + b,
                2 => a - b,
                _ => -b,
            };
            let (u0, u1) = (along(y00[q], y01[q]), along(y10[q], y11[q]));
            z0[q] = u0;
            z1[q] = u0 + u1;
            z2[q] = u0 - u1;
            z3[q] = -u1;
        }
    }
}

/// `U[k][xi][c] = (G g G^T)[xi]` for every 3x3 filter `g = tap(k, c, ·)` (taps row-major), the
/// filters in parallel. Filter-major so that each filter writes one block; the GEMM reads transform
/// position `xi` as a `K x C` matrix with row stride `16 C`.
fn transform_filters(k: usize, c: usize, tap: impl Fn(usize, usize, usize) -> f32 + Sync) -> Vec<f32> {
    let mut u = vec![0.0f32; k * T16 * c];
    u.par_chunks_mut(T16 * c).enumerate().for_each(|(kk, uk)| {
        for cc in 0..c {
            let g: [f32; 9] = std::array::from_fn(|t| tap(kk, cc, t));
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
                    uk[(i * 4 + j) * c + cc] = v;
                }
            }
        }
    });
    u
}

/// How many images a chunk holds: about [`TARGET_TILES`] 2x2 output blocks, at least one image.
fn chunk_images(sh: &Conv2dShape) -> usize {
    let tiles = sh.oh.div_ceil(2) * sh.ow.div_ceil(2);
    TARGET_TILES.div_ceil(tiles).max(1)
}

/// The chunks (fixed runs of images, the last one shorter) are the unit of parallel work, so which
/// images share a GEMM, and so every output's rounding, does not depend on the thread count.
fn run(sh: &Conv2dShape, x: &[f32], u: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    let (c, h, w, k, oh, ow) = (sh.c, sh.h, sh.w, sh.k, sh.oh, sh.ow);
    let tiles = oh.div_ceil(2) * ow.div_ceil(2);
    let chunk = chunk_images(sh);
    let (chw, kpq) = (c * h * w, k * oh * ow);
    y.par_chunks_mut(chunk * kpq).enumerate().for_each_init(Scratch::default, |s, (i, yc)| {
        let (b0, nb) = (i * chunk, yc.len() / kpq);
        let t = nb * tiles;
        s.v.resize(T16 * c * t, 0.0);
        s.m.resize(T16 * k * t, 0.0);
        let mut v = std::mem::take(&mut s.v);
        let mut m = std::mem::take(&mut s.m);
        transform_input(sh, &x[b0 * chw..(b0 + nb) * chw], nb, &mut v, s);
        for xi in 0..T16 {
            let lhs = Mat { data: &u[xi * c..], rs: T16 * c, cs: 1 };
            let rhs = Mat { data: &v[xi * c * t..][..c * t], rs: t, cs: 1 };
            sgemm(k, t, c, &mut m[xi * k * t..][..k * t], t, None, lhs, rhs, Parallelism::None);
        }
        transform_output(sh, &m, nb, bias, yc, s);
        (s.v, s.m) = (v, m);
    });
}

/// Per-thread buffers of the transforms, sized on first use.
#[derive(Default)]
struct Scratch {
    /// The chunk's transformed input `[16][C][tiles]` and GEMM output `[16][K][tiles]`.
    v: Vec<f32>,
    m: Vec<f32>,
    line: Vec<f32>,
    rows: Vec<f32>,
    out: Vec<f32>,
}

/// `v[xi][c][tile] = (B^T d B)[xi]` for every 4x4 input tile `d` (zero outside the image) of the
/// `nb` images `x`; tile `b*TH*TW + ty*TW + tx` starts at row `2 ty - pad_h`, column `2 tx - pad_w`.
fn transform_input(sh: &Conv2dShape, x: &[f32], nb: usize, v: &mut [f32], s: &mut Scratch) {
    let (c, hw) = (sh.c, sh.h * sh.w);
    let tiles = sh.oh.div_ceil(2) * sh.ow.div_ceil(2);
    let t = nb * tiles;
    for b in 0..nb {
        for cc in 0..c {
            let mut dst = Packed { v: &mut *v, at: |xi: usize| (xi * c + cc) * t + b * tiles };
            transform_input_plane(sh, &x[(b * c + cc) * hw..][..hw], &mut dst, s);
        }
    }
}

/// Where [`transform_input_plane`] writes: the plane's `tiles` transformed values of positions
/// `j`, `4 + j`, `8 + j` and `12 + j`.
trait TileRows {
    fn four(&mut self, j: usize, tiles: usize) -> [&mut [f32]; 4];
}

/// Position `xi`'s values at `v[at(xi)..]`, the 16 windows disjoint and in increasing order.
struct Packed<'a, F> {
    v: &'a mut [f32],
    at: F,
}

impl<F: Fn(usize) -> usize> TileRows for Packed<'_, F> {
    fn four(&mut self, j: usize, tiles: usize) -> [&mut [f32]; 4] {
        let at = [(self.at)(j), (self.at)(4 + j), (self.at)(8 + j), (self.at)(12 + j)];
        debug_assert!((0..3).all(|i| at[i] + tiles <= at[i + 1]));
        let (_, rest) = self.v.split_at_mut(at[0]);
        let (a, rest) = rest.split_at_mut(at[1] - at[0]);
        let (b, rest) = rest.split_at_mut(at[2] - at[1]);
        let (c, d) = rest.split_at_mut(at[3] - at[2]);
        [&mut a[..tiles], &mut b[..tiles], &mut c[..tiles], &mut d[..tiles]]
    }
}

/// Position `xi`'s values at `rows[xi][first..]`.
struct Rows<'a, 'b> {
    rows: &'a mut [&'b mut [f32]],
    first: usize,
}

impl TileRows for Rows<'_, '_> {
    fn four(&mut self, j: usize, tiles: usize) -> [&mut [f32]; 4] {
        let first = self.first;
        let rows = self.rows.get_disjoint_mut([j, 4 + j, 8 + j, 12 + j]).expect("16 distinct rows");
        rows.map(|r| &mut r[first..][..tiles])
    }
}

/// `B^T d B` for every 4x4 tile `d` of one input plane, position by position into `dst`.
///
/// Separably: each zero-padded input row is first transformed along its columns (`d B`, four
/// values per tile column, stored by row parity), then each tile row along the rows (`B^T`). Both
/// passes are flat loops over contiguous arrays, so they vectorize.
fn transform_input_plane(sh: &Conv2dShape, plane: &[f32], dst: &mut impl TileRows, s: &mut Scratch) {
    let (h, w) = (sh.h, sh.w);
    let (th, tw) = (sh.oh.div_ceil(2), sh.ow.div_ceil(2));
    let tiles = th * tw;
    let (ph, pw) = (sh.opts.pad[0], sh.opts.pad[1]);
    // Padded rows 0..2 TH + 2 and columns 0..2 TW + 2 cover every tile (the output is
    // h + 2 pad - 2 rows, so the padded image fits).
    let cols = 2 * tw + 2;
    let half = (th + 1) * tw;
    if s.line.len() != cols || s.rows.len() != 8 * half {
        s.line.clear();
        s.line.resize(cols, 0.0);
        s.rows.clear();
        s.rows.resize(8 * half, 0.0);
    }
    // rows[par][j][r2][tx]: row 2 r2 + par of the padded plane, column transform j.
    for row in 0..2 * th + 2 {
        let (par, r2) = (row % 2, row / 2);
        let src = row.checked_sub(ph).filter(|&r| r < h);
        // `line` is all zero between rows: only the interior is written and then cleared.
        let line = &mut s.line;
        if let Some(r) = src {
            line[pw..pw + w].copy_from_slice(&plane[r * w..][..w]);
        }
        let base = par * 4 * half + r2 * tw;
        let (r0, rest) = s.rows[base..].split_at_mut(half);
        let (r1, rest) = rest.split_at_mut(half);
        let (r2s, r3) = rest.split_at_mut(half);
        // d B per tile column: d0 - d2, d1 + d2, d2 - d1, d1 - d3.
        for tx in 0..tw {
            let (d0, d1, d2, d3) = (line[2 * tx], line[2 * tx + 1], line[2 * tx + 2], line[2 * tx + 3]);
            r0[tx] = d0 - d2;
            r1[tx] = d1 + d2;
            r2s[tx] = d2 - d1;
            r3[tx] = d1 - d3;
        }
        if src.is_some() {
            line[pw..pw + w].fill(0.0);
        }
    }
    // B^T on rows 2ty .. 2ty + 3 = even[ty], odd[ty], even[ty + 1], odd[ty + 1].
    let (even, odd) = s.rows.split_at(4 * half);
    for j in 0..4 {
        let (e, o) = (&even[j * half..][..half], &odd[j * half..][..half]);
        let (e0, e1, o0, o1) = (&e[..tiles], &e[tw..][..tiles], &o[..tiles], &o[tw..][..tiles]);
        let [v0, v1, v2, v3] = dst.four(j, tiles);
        for q in 0..tiles {
            v0[q] = e0[q] - e1[q];
            v1[q] = o0[q] + e1[q];
            v2[q] = e1[q] - o0[q];
            v3[q] = o0[q] - o1[q];
        }
    }
}

/// `y[b][k][2ty + i][2tx + j] = (A^T M A)[i][j] (+ bias[k])` for the blocks inside the output.
fn transform_output(sh: &Conv2dShape, m: &[f32], nb: usize, bias: Option<&[f32]>, y: &mut [f32], s: &mut Scratch) {
    let (k, oh, ow) = (sh.k, sh.oh, sh.ow);
    let (th, tw) = (oh.div_ceil(2), ow.div_ceil(2));
    let tiles = th * tw;
    let t = nb * tiles;
    s.out.clear();
    s.out.resize(4 * tiles, 0.0);
    for b in 0..nb {
        for kk in 0..k {
            let add = bias.map_or(0.0, |bs| bs[kk]);
            let mm: [&[f32]; T16] = std::array::from_fn(|xi| &m[(xi * k + kk) * t + b * tiles..][..tiles]);
            // A^T M A per block, all blocks of the plane at once: out[i][j] for the 2x2 outputs.
            let (o00, rest) = s.out.split_at_mut(tiles);
            let (o01, rest) = rest.split_at_mut(tiles);
            let (o10, o11) = rest.split_at_mut(tiles);
            for q in 0..tiles {
                // Rows of A^T M: m0 + m1 + m2 and m1 - m2 - m3, per column j.
                let a0: [f32; 4] = std::array::from_fn(|j| mm[j][q] + mm[4 + j][q] + mm[8 + j][q]);
                let a1: [f32; 4] = std::array::from_fn(|j| mm[4 + j][q] - mm[8 + j][q] - mm[12 + j][q]);
                o00[q] = a0[0] + a0[1] + a0[2] + add;
                o01[q] = a0[1] - a0[2] - a0[3] + add;
                o10[q] = a1[0] + a1[1] + a1[2] + add;
                o11[q] = a1[1] - a1[2] - a1[3] + add;
            }
            let plane = &mut y[(b * k + kk) * oh * ow..][..oh * ow];
            for (row, line) in plane.chunks_exact_mut(ow).enumerate() {
                let (ty, i) = (row / 2, row % 2);
                let (left, right) = if i == 0 { (&*o00, &*o01) } else { (&*o10, &*o11) };
                let (left, right) = (&left[ty * tw..][..tw], &right[ty * tw..][..tw]);
                let mut pairs = line.chunks_exact_mut(2);
                for ((pair, l), r) in (&mut pairs).zip(left).zip(right) {
                    pair[0] = *l;
                    pair[1] = *r;
                }
                if let [last] = pairs.into_remainder() {
                    *last = left[tw - 1];
                }
            }
        }
    }
}
