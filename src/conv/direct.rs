//! Direct 3x3 convolution on the CPU (stride 1, no dilation, padding at most 2, output width a
//! multiple of 8), register-blocked for AVX2 + FMA: the trainer's CPU path for all three passes.
//!
//! Why not im2col + GEMM for these shapes: with 3x3 filters on small channel counts the GEMM spends
//! as long building, packing and re-reading the 9x larger im2col matrix as it does multiplying (the
//! `gemm` micro-kernel was under half of a training step's time, `docs/performance.md`). Here the
//! "im2col panel" is read straight from a zero-padded copy of one image: for output pixels
//! `q0..q0+8` of row `p`, filter tap `(r, s)` of channel `c` reads `xpad[c][p + r][q0 + s..][..8]`,
//! one unaligned vector load. Nothing the size of the im2col matrix is ever written.
//!
//! - forward: per image, blocks of `NV` = 3 output vectors (24 pixels) times `KB` = 4 output channels
//!   are 12 accumulators; each filter tap is 3 vector loads, 4 broadcasts and 12 FMAs.
//! - data gradient: the forward pass of the output gradient with the filters flipped and
//!   transposed, padded by `2 - pad` (the same kernel).
//! - weight gradient: per 4 filters, input channel and filter row, 4 x 3 (filter, tap column)
//!   accumulators over every output vector of a tile of images, summed horizontally once per tile.
//!   Threads split the filters (never the images), so each weight's sum runs in one fixed order:
//!   the result does not depend on the thread count.
//!
//! It sums in a different order than im2col + GEMM, so results agree to rounding, not bit for bit;
//! `tests/conv.rs` checks all three passes against the direct-loop oracle `cpu::naive`.
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::cpu::Plan;
use super::Conv2dShape;

/// Output channels (filters) per micro-kernel.
const KB: usize = 4;
/// 8-pixel output vectors per forward micro-kernel.
const NV: usize = 2;
const LANES: usize = 8;
/// The weight gradient sums a tile of images of at least this many output pixels between its
/// horizontal sums.
const WGRAD_TILE_PIXELS: usize = 512;

/// Whether this CPU runs the kernels (AVX2 and FMA, detected at run time; cached by std).
pub(crate) fn cpu_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn is_3x3_same_family(sh: &Conv2dShape) -> bool {
    sh.r == 3
        && sh.s == 3
        && sh.opts.stride == [1, 1]
        && sh.opts.dilation == [1, 1]
        && sh.opts.pad[0] <= 2
        && sh.opts.pad[1] <= 2
}

/// The forward pass and the weight gradient apply: a 3x3 filter, stride 1, no dilation, padding at
/// most 2, an output width that is a multiple of 8, and a CPU with AVX2 + FMA.
pub(crate) fn applies(sh: &Conv2dShape) -> bool {
    is_3x3_same_family(sh) && sh.ow.is_multiple_of(LANES) && cpu_supported()
}

/// The data gradient applies: as [`applies`] but the *input* width is the multiple of 8 (it is the
/// output of the transposed convolution).
pub(crate) fn applies_backward_data(sh: &Conv2dShape) -> bool {
    is_3x3_same_family(sh) && sh.w.is_multiple_of(LANES) && cpu_supported()
}

/// One 3x3 stride-1 convolution as the kernels see it: `cin` planes of `h x w` padded by
/// `(ph, pw)` into `hp x wp`, `cout` planes of `oh x ow` out.
#[derive(Clone, Copy)]
struct Dims {
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    ph: usize,
    pw: usize,
    hp: usize,
    wp: usize,
    oh: usize,
    ow: usize,
}

impl Dims {
    fn new(cin: usize, cout: usize, h: usize, w: usize, ph: usize, pw: usize) -> Self {
        let (hp, wp) = (h + 2 * ph, w + 2 * pw);
        Self { cin, cout, h, w, ph, pw, hp, wp, oh: hp - 2, ow: wp - 2 }
    }
    fn plane(&self) -> usize {
        self.hp * self.wp
    }
    fn in_len(&self) -> usize {
        self.cin * self.h * self.w
    }
    fn out_len(&self) -> usize {
        self.cout * self.oh * self.ow
    }
    fn kblocks(&self) -> usize {
        self.cout.div_ceil(KB)
    }
    /// Offset of output vector `v` (row-major, 8 pixels each) in an output plane, and of its tap
    /// (0, 0) in a padded input plane.
    fn vector(&self, v: usize) -> (usize, usize) {
        let per_row = self.ow / LANES;
        let (p, q0) = (v / per_row, v % per_row * LANES);
        (p * self.ow + q0, p * self.wp + q0)
    }
}

/// Copies `imgs` images of `d.cin` planes (`h x w`) into `dst` as zero-padded `hp x wp` planes.
fn pad_images(d: &Dims, src: &[f32], imgs: usize, dst: &mut Vec<f32>) {
    let planes = imgs * d.cin;
    dst.clear();
    dst.resize(planes * d.plane(), 0.0);
    for (i, plane) in dst.chunks_exact_mut(d.plane()).enumerate() {
        let s = &src[i * d.h * d.w..][..d.h * d.w];
        for (row, line) in s.chunks_exact(d.w).enumerate() {
            plane[(row + d.ph) * d.wp + d.pw..][..d.w].copy_from_slice(line);
        }
    }
}

/// Filters in micro-kernel order: `[kblock][cin][tap][KB]`, where filter `j` of block `kb` tap
/// `t` on input channel `ci` is `tap(kb * KB + j, ci, t)`; zero for filters past `cout`.
fn pack(d: &Dims, tap: impl Fn(usize, usize, usize) -> f32) -> Vec<f32> {
    let mut out = vec![0.0f32; d.kblocks() * d.cin * 9 * KB];
    for (i, v) in out.iter_mut().enumerate() {
        let j = i % KB;
        let t = i / KB % 9;
        let ci = i / (KB * 9) % d.cin;
        let kb = i / (KB * 9 * d.cin);
        let co = kb * KB + j;
        if co < d.cout {
            *v = tap(co, ci, t);
        }
    }
    out
}

/// `y = conv(x, w) + bias` (lengths checked by the caller, [`applies`] holds).
pub(crate) fn forward_into(sh: &Conv2dShape, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    debug_assert!(applies(sh));
    let d = Dims::new(sh.c, sh.k, sh.h, sh.w, sh.opts.pad[0], sh.opts.pad[1]);
    let wk = pack(&d, |k, c, t| w[(k * sh.c + c) * 9 + t]);
    run(sh, &d, x, &wk, bias, y);
}

/// `dx` (overwritten) from `dy` and `w` ([`applies_backward_data`] holds): the forward pass of
/// `dy` with filters `w'[c][k][t] = w[k][c][8 - t]`, padded by `2 - pad`.
pub(crate) fn backward_data_into(sh: &Conv2dShape, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    debug_assert!(applies_backward_data(sh));
    let d = Dims::new(sh.k, sh.c, sh.oh, sh.ow, 2 - sh.opts.pad[0], 2 - sh.opts.pad[1]);
    debug_assert_eq!((d.oh, d.ow), (sh.h, sh.w));
    let wk = pack(&d, |c, k, t| w[(k * sh.c + c) * 9 + 8 - t]);
    run(sh, &d, dy, &wk, None, dx);
}

/// The images of `src` (each `d.in_len()`) convolved into `dst` (each `d.out_len()`), the batch
/// split over threads as the im2col path splits it.
fn run(sh: &Conv2dShape, d: &Dims, src: &[f32], wk: &[f32], bias: Option<&[f32]>, dst: &mut [f32]) {
    let plan = Plan::new(sh);
    let (in_len, out_len) = (d.in_len(), d.out_len());
    plan.groups_of(dst, out_len).into_par_iter().for_each(|(lo, group)| {
        let mut xpad = Vec::new();
        for (i, out) in group.chunks_exact_mut(out_len).enumerate() {
            pad_images(d, &src[(lo + i) * in_len..][..in_len], 1, &mut xpad);
            conv_image(d, &xpad, wk, bias, out);
        }
    });
}

/// One image: `xpad` (`cin` padded planes) into `out` (`cout` planes).
fn conv_image(d: &Dims, xpad: &[f32], wk: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    assert!(xpad.len() >= d.cin * d.plane() && out.len() >= d.out_len() && wk.len() >= d.kblocks() * d.cin * 9 * KB);
    assert!(bias.is_none_or(|b| b.len() >= d.cout));
    let nvec = d.oh * d.ow / LANES;
    let mut v0 = 0;
    while v0 < nvec {
        let nv = (nvec - v0).min(NV);
        let mut yoff = [0usize; NV];
        let mut xoff = [0usize; NV];
        for i in 0..nv {
            (yoff[i], xoff[i]) = d.vector(v0 + i);
        }
        for kb in 0..d.kblocks() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `applies*` checked that the CPU has AVX2 and FMA. Every load and store is in
            // bounds: the asserts above give the buffer lengths; vector `v`'s tap `(r, s)` on
            // channel `c` reads `c * plane + xoff + r * wp + s + 0..8`, whose largest index is
            // `cin * plane - 1` because output vectors lie inside `oh x ow` and `hp = oh + 2`,
            // `wp = ow + 2`; stores go to `(kb * KB + j) * oh * ow + yoff + 0..8` only for
            // filters `kb * KB + j < cout`; weights are read below `kblocks * cin * 9 * KB`.
            unsafe {
                match nv {
                    3 => fwd_kernel::<3>(d, xpad, wk, bias, out, kb, &xoff, &yoff),
                    2 => fwd_kernel::<2>(d, xpad, wk, bias, out, kb, &xoff, &yoff),
                    _ => fwd_kernel::<1>(d, xpad, wk, bias, out, kb, &xoff, &yoff),
                }
            }
        }
        v0 += nv;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn fwd_kernel<const V: usize>(
    d: &Dims,
    xpad: &[f32],
    wk: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    kb: usize,
    xoff: &[usize; NV],
    yoff: &[usize; NV],
) {
    // SAFETY: the caller's contract (see `conv_image`): AVX2 + FMA present, every offset in bounds.
    unsafe {
        let plane = d.plane();
        let xp = xpad.as_ptr();
        let mut wp = wk.as_ptr().add(kb * d.cin * 9 * KB);
        let mut acc = [[_mm256_setzero_ps(); V]; KB];
        for c in 0..d.cin {
            let xc = xp.add(c * plane);
            for r in 0..3 {
                for s in 0..3 {
                    let tap = r * d.wp + s;
                    let xv: [__m256; V] = std::array::from_fn(|v| _mm256_loadu_ps(xc.add(xoff[v] + tap)));
                    for (j, row) in acc.iter_mut().enumerate() {
                        let a = _mm256_broadcast_ss(&*wp.add(j));
                        for (a_v, x_v) in row.iter_mut().zip(&xv) {
                            *a_v = _mm256_fmadd_ps(a, *x_v, *a_v);
                        }
                    }
                    wp = wp.add(KB);
                }
            }
        }
        let pq = d.oh * d.ow;
        for (j, row) in acc.iter().enumerate() {
            let k = kb * KB + j;
            if k >= d.cout {
                break;
            }
            let add = _mm256_set1_ps(bias.map_or(0.0, |b| b[k]));
            let yk = out.as_mut_ptr().add(k * pq);
            for (v, a_v) in row.iter().enumerate() {
                _mm256_storeu_ps(yk.add(yoff[v]), _mm256_add_ps(*a_v, add));
            }
        }
    }
}

/// `dw = beta * dw + grad` (KCRS; [`applies`] holds, lengths checked by the caller). With
/// `beta == 0` the old `dw` is never read.
pub(crate) fn backward_weight_into(sh: &Conv2dShape, x: &[f32], dy: &[f32], dw: &mut [f32], beta: f32) {
    debug_assert!(applies(sh));
    let d = Dims::new(sh.c, sh.k, sh.h, sh.w, sh.opts.pad[0], sh.opts.pad[1]);
    let (n, pq) = (sh.n, d.oh * d.ow);
    let per_block = KB * d.cin * 9; // dw values of one block of KB filters
    let kblocks = d.kblocks();
    let threads = rayon::current_num_threads().max(1);
    // Contiguous runs of filter blocks, one per thread: each pads every image once.
    let runs = threads.min(kblocks);
    let tile = WGRAD_TILE_PIXELS.div_ceil(pq).min(n);
    let mut parts: Vec<&mut [f32]> = Vec::with_capacity(runs);
    let mut rest = dw;
    let mut starts = Vec::with_capacity(runs);
    for t in 0..runs {
        let (b0, b1) = (t * kblocks / runs, (t + 1) * kblocks / runs);
        let len = ((b1 * KB).min(d.cout) - b0 * KB) * d.cin * 9;
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(len);
        parts.push(head);
        starts.push((b0, b1));
        rest = tail;
    }
    parts.into_par_iter().zip(starts).for_each(|(out, (b0, b1))| {
        let mut acc = vec![0.0f32; (b1 - b0) * per_block];
        let mut xpad = Vec::new();
        for n0 in (0..n).step_by(tile) {
            let nb = tile.min(n - n0);
            pad_images(&d, &x[n0 * d.in_len()..][..nb * d.in_len()], nb, &mut xpad);
            let dys = &dy[n0 * d.out_len()..][..nb * d.out_len()];
            for kb in b0..b1 {
                wgrad_tile(&d, &xpad, dys, nb, kb, &mut acc[(kb - b0) * per_block..][..per_block]);
            }
        }
        // acc is [kb][j][c][tap], the filters' own order (KCRS) with filters past cout left out.
        for (o, a) in out.iter_mut().zip(&acc) {
            *o = if beta == 0.0 { *a } else { beta * *o + a };
        }
    });
}

/// Adds the weight gradient of filters `kb * KB ..` over `nb` images to `acc` (`[j][c][tap]`).
fn wgrad_tile(d: &Dims, xpad: &[f32], dy: &[f32], nb: usize, kb: usize, acc: &mut [f32]) {
    let pq = d.oh * d.ow;
    assert!(xpad.len() >= nb * d.cin * d.plane() && dy.len() >= nb * d.cout * pq && acc.len() >= KB * d.cin * 9);
    let k0 = kb * KB;
    // Filters past cout read filter k0's gradient (a valid address) and are never stored.
    let ks: [usize; KB] = std::array::from_fn(|j| if k0 + j < d.cout { k0 + j } else { k0 });
    for c in 0..d.cin {
        for r in 0..3 {
            let mut sums = [[0.0f32; 3]; KB];
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `applies` checked AVX2 and FMA. Reads stay in bounds (asserts above): image
            // `b`'s output vector at `yoff` reads `dy[(b * cout + ks[j]) * pq + yoff + 0..8]` with
            // `ks[j] < cout`, and `xpad[(b * cin + c) * plane + xoff + r * wp + s + 0..8]`, whose
            // largest index is below `(b * cin + c + 1) * plane` (see `conv_image`).
            unsafe {
                wgrad_kernel(d, xpad, dy, nb, &ks, c, r, &mut sums);
            }
            for j in 0..KB.min(d.cout - k0) {
                for (s, v) in sums[j].iter().enumerate() {
                    acc[(j * d.cin + c) * 9 + r * 3 + s] += v;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn wgrad_kernel(
    d: &Dims,
    xpad: &[f32],
    dy: &[f32],
    nb: usize,
    ks: &[usize; KB],
    c: usize,
    r: usize,
    sums: &mut [[f32; 3]; KB],
) {
    // SAFETY: the caller's contract (see `wgrad_tile`): AVX2 + FMA present, every offset in bounds.
    unsafe {
        let (pq, plane) = (d.oh * d.ow, d.plane());
        let mut acc = [[_mm256_setzero_ps(); 3]; KB];
        for b in 0..nb {
            let xb = xpad.as_ptr().add((b * d.cin + c) * plane + r * d.wp);
            let dyb: [*const f32; KB] = std::array::from_fn(|j| dy.as_ptr().add((b * d.cout + ks[j]) * pq));
            for p in 0..d.oh {
                for q0 in (0..d.ow).step_by(LANES) {
                    let xs = xb.add(p * d.wp + q0);
                    let xv = [_mm256_loadu_ps(xs), _mm256_loadu_ps(xs.add(1)), _mm256_loadu_ps(xs.add(2))];
                    for (j, row) in acc.iter_mut().enumerate() {
                        let g = _mm256_loadu_ps(dyb[j].add(p * d.ow + q0));
                        for (a_s, x_s) in row.iter_mut().zip(&xv) {
                            *a_s = _mm256_fmadd_ps(g, *x_s, *a_s);
                        }
                    }
                }
            }
        }
        for (row, out) in acc.iter().zip(sums.iter_mut()) {
            for (a, o) in row.iter().zip(out.iter_mut()) {
                *o = hsum(*a);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}
