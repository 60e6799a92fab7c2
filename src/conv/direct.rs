//! Direct 3x3 convolution on the CPU (stride 1, no dilation, padding at most 2), register-blocked
//! for AVX-512 (16 lanes) or AVX2 + FMA (8 lanes), detected at run time: the trainer's CPU path
//! for all three passes.
//!
//! Why not im2col + GEMM for these shapes: with 3x3 filters on small channel counts the GEMM spends
//! as long building, packing and re-reading the 9x larger im2col matrix as it does multiplying (the
//! `gemm` micro-kernel was under half of a training step's time, `docs/performance.md`). Here the
//! "im2col panel" is read straight from a zero-padded copy of one image: for output pixels
//! `q0..q0+L` of row `p` (`L` lanes), filter tap `(r, s)` of channel `c` reads
//! `xpad[c][p + r][q0 + s..][..L]`, one unaligned vector load. Nothing the size of the im2col
//! matrix is ever written.
//!
//! - forward: per image, blocks of `V` output vectors times `K` output channels of accumulators;
//!   each filter tap is `V` vector loads, `K` broadcasts and `K V` FMAs. AVX2 (16 registers) runs
//!   K = 4, V = 2; AVX-512 (32 registers) K = 8, V = 3, or K = 4, V = 4 when there are at most 4
//!   output channels (K = 8 over K = 4, V = 4 measured 8-13% faster on 32x32 and 16x16 planes and
//!   29-31% on 8x8 ones, `docs/performance.md`). On 8-wide planes (two rows per AVX-512 vector)
//!   the input is laid out as three shifted copies of each padded plane, so a tap is one load;
//!   on a network's first layer the filter blocks go outermost ([`Dims::forward_filters_outer`]).
//! - data gradient: the forward pass of the output gradient with the filters flipped and
//!   transposed, padded by `2 - pad` (the same kernel).
//! - weight gradient: with AVX-512 and at least 8 input channels, a GEMM with the filters in the
//!   lanes ([`lanes_wgrad`]): the output gradient transposed into panels of 32 filters, per pixel
//!   2 panel loads, 12 broadcasts of input pixels straight from the padded planes and 24 FMAs
//!   into register accumulators; threads split the (channel, tap) pairs. Otherwise (AVX2, or a
//!   network's first layer) per 4 filters, input channel and filter row, 4 x 3 (filter, tap
//!   column) accumulators over every output vector of a tile of images, summed horizontally once
//!   per tile; threads split the filters. Never the images or pixels: each weight's sum runs in
//!   one fixed order, and the result does not depend on the thread count.
//!
//! The vector width is the widest the CPU has whose vectors tile the output plane (the input
//! plane for the data gradient): a 32- or 16-wide layer runs on AVX-512 where there is one, an
//! 8-wide layer of even height on AVX-512 two rows per vector, any other multiple of 8 on AVX2. `EVENCLASS_CPU_SIMD=avx2` caps it at AVX2 (the A/B of
//! `docs/performance.md`), `=none` turns this path off (im2col everywhere).
//!
//! It sums in a different order than im2col + GEMM, and AVX-512 in a different order than AVX2,
//! so results agree to rounding, not bit for bit; `tests/conv.rs` and the tests below check all
//! three passes of each instruction set against the direct-loop oracle `cpu::naive`.
use std::sync::OnceLock;

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::gemm_plan::Plan;
use super::Conv2dShape;

/// Output channels (filters) per weight-gradient micro-kernel (8 measured 1.3x to 1.6x slower with
/// AVX-512), and per forward micro-kernel where [`Isa::forward_block`] says so.
const KB: usize = 4;
/// Most output vectors per forward micro-kernel (of any instruction set).
const NV_MAX: usize = 4;
/// The weight gradient sums a tile of images of at least this many output pixels between its
/// horizontal sums.
const WGRAD_TILE_PIXELS: usize = 512;

/// The instruction set the kernels run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// AVX2 + FMA, 8 lanes.
    Avx2,
    /// AVX-512F, 16 lanes of one row.
    Avx512,
    /// AVX-512F on planes 8 wide: a vector holds two rows of 8 (two 8-lane loads of the padded
    /// input joined, one 16-lane load or store of the contiguous output rows).
    Avx512Rows2,
}

impl Isa {
    /// Widest first.
    const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx512Rows2, Isa::Avx2];

    pub(crate) fn lanes(self) -> usize {
        match self {
            Isa::Avx2 => 8,
            Isa::Avx512 | Isa::Avx512Rows2 => 16,
        }
    }

    /// Output rows per vector.
    fn rows(self) -> usize {
        match self {
            Isa::Avx512Rows2 => 2,
            Isa::Avx2 | Isa::Avx512 => 1,
        }
    }

    /// Whether the kernels of this set cover an output plane of `h x w`: a vector's pixels must
    /// tile it.
    fn fits(self, h: usize, w: usize) -> bool {
        match self {
            Isa::Avx512Rows2 => w == 8 && h.is_multiple_of(2),
            Isa::Avx2 | Isa::Avx512 => w.is_multiple_of(self.lanes()),
        }
    }

    /// Filters `K` and most output vectors `V` per forward micro-kernel for `cout` output
    /// channels: `K V` accumulators plus the inputs and a broadcast fit the registers (16 with
    /// AVX2, 32 with AVX-512; with K = 8, V = 3 the compiler reloads a few inputs). K = 8 only
    /// where it does not mostly compute zero filters.
    fn forward_block(self, cout: usize) -> (usize, usize) {
        match self {
            Isa::Avx2 => (4, 2),
            Isa::Avx512 | Isa::Avx512Rows2 if cout > KB => (8, 3),
            Isa::Avx512 | Isa::Avx512Rows2 => (4, 4),
        }
    }

    /// Whether this CPU has the instructions (detected at run time; cached by std).
    pub(crate) fn cpu_has(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
                Isa::Avx512 | Isa::Avx512Rows2 => is_x86_feature_detected!("avx512f"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Whether the kernels may use it: the CPU has it and `EVENCLASS_CPU_SIMD` allows it.
    fn allowed(self) -> bool {
        self.cpu_has() && self.lanes() <= simd_cap()
    }

    /// The widest allowed instruction set that covers an `h x w` plane.
    fn for_plane(h: usize, w: usize) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.fits(h, w) && i.allowed())
    }
}

/// The most lanes `EVENCLASS_CPU_SIMD` allows (read once): `avx512` or unset 16, `avx2` 8,
/// `none` 0. Another value is reported once on stderr and ignored.
fn simd_cap() -> usize {
    static CAP: OnceLock<usize> = OnceLock::new();
    *CAP.get_or_init(|| match std::env::var("EVENCLASS_CPU_SIMD") {
        Err(_) => 16,
        Ok(v) => match v.trim().to_ascii_lowercase().as_str() {
            "" | "avx512" => 16,
            "avx2" => 8,
            "none" => 0,
            other => {
                eprintln!("warning: EVENCLASS_CPU_SIMD={other:?} is not one of avx512, avx2, none; ignored");
                16
            }
        },
    })
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
/// most 2, an output width that is a multiple of 8 (16 for AVX-512), and a CPU with AVX2 + FMA.
pub(crate) fn applies(sh: &Conv2dShape) -> bool {
    is_3x3_same_family(sh) && Isa::for_plane(sh.oh, sh.ow).is_some()
}

/// The data gradient applies: as [`applies`] but for the *input* width (it is the output of the
/// transposed convolution).
pub(crate) fn applies_backward_data(sh: &Conv2dShape) -> bool {
    is_3x3_same_family(sh) && Isa::for_plane(sh.h, sh.w).is_some()
}

/// One 3x3 stride-1 convolution as the kernels see it: `cin` planes of `h x w` padded by
/// `(ph, pw)` into `hp x wp`, `cout` planes of `oh x ow` out, in vectors of `lanes` pixels.
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
    isa: Isa,
}

impl Dims {
    fn new(cin: usize, cout: usize, h: usize, w: usize, ph: usize, pw: usize, isa: Isa) -> Self {
        let (hp, wp) = (h + 2 * ph, w + 2 * pw);
        Self { cin, cout, h, w, ph, pw, hp, wp, oh: hp - 2, ow: wp - 2, isa }
    }
    fn lanes(&self) -> usize {
        self.isa.lanes()
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
    /// Blocks of [`KB`] filters (the weight gradient's).
    fn kblocks(&self) -> usize {
        self.cout.div_ceil(KB)
    }
    /// Filters per forward block, and most output vectors per forward micro-kernel.
    fn forward_block(&self) -> (usize, usize) {
        self.isa.forward_block(self.cout)
    }
    /// Whether the forward micro-kernels sweep filter blocks outermost: when the padded input
    /// stays in L1 (a network's first layer: 3 channels, 14 KiB at 32x32), so each output plane is
    /// written in one sweep. Otherwise output vectors go outermost, so their input rows are reused
    /// by every filter block while in cache. (At 3->128, 32x32 the sweep measured 2.5x faster,
    /// 20-23% -> 55-58% of the FMA peak on two threads, `benches/roofline.rs`; on wide layers it
    /// was no faster.)
    fn forward_filters_outer(&self) -> bool {
        self.cin * self.forward_channel() * size_of::<f32>() <= 16 << 10
    }
    /// Whether the forward pass reads each input channel as three shifted copies of its padded
    /// plane (`[s][hp][ow]`, copy `s` starting at padded column `s`) rather than the padded plane:
    /// on planes 8 wide, two rows per AVX-512 vector, a tap's two rows are then one contiguous
    /// load, where the padded plane needs two loads and a shuffle, and the shuffle competes with
    /// the FMAs for the same port (the micro-kernel alone measured 12-14% faster at 8x8).
    fn forward_shifted(&self) -> bool {
        self.isa.rows() > 1
    }
    /// Floats per input channel in the forward pass's padded input.
    fn forward_channel(&self) -> usize {
        if self.forward_shifted() {
            3 * self.hp * self.ow
        } else {
            self.plane()
        }
    }
    /// Strides of a filter row and a filter column in the forward pass's padded input: tap
    /// `(r, s)` of an output vector is at `r * row + s * col` from its tap `(0, 0)`.
    fn forward_strides(&self) -> (usize, usize) {
        if self.forward_shifted() {
            (self.ow, self.hp * self.ow)
        } else {
            (self.wp, 1)
        }
    }
    /// Offset of output vector `v` (row-major; `lanes` pixels of one row, or of two rows of 8)
    /// in an output plane, and of its tap (0, 0) in the forward pass's padded input channel.
    fn vector(&self, v: usize) -> (usize, usize) {
        let (rows, cols) = (self.isa.rows(), self.lanes() / self.isa.rows());
        let per_row = self.ow / cols;
        let (p, q0) = (v / per_row * rows, v % per_row * cols);
        (p * self.ow + q0, p * self.forward_strides().0 + q0)
    }
}

/// Copies one image's `d.cin` planes into `dst` as the forward pass reads them: zero-padded
/// `hp x wp` planes, or ([`Dims::forward_shifted`]) per channel three `hp x ow` copies of the
/// padded plane, copy `s` from padded column `s` on.
fn pad_forward(d: &Dims, src: &[f32], dst: &mut Vec<f32>) {
    if !d.forward_shifted() {
        return pad_images(d, src, 1, dst);
    }
    dst.clear();
    dst.resize(d.cin * d.forward_channel(), 0.0);
    let copy_len = d.hp * d.ow;
    for (chan, x) in dst.chunks_exact_mut(d.forward_channel()).zip(src.chunks_exact(d.h * d.w)) {
        if d.w == 8 && d.pw == 1 {
            // The network's case (8 wide, padding 1), in fixed-size copies: a row padded to 10,
            // then its three windows of 8. (Per-row `memcpy` calls of 8 floats made the data
            // gradient at 8x8 3-4% slower than with the plain padded planes.)
            let (c0, rest) = chan.split_at_mut(copy_len);
            let (c1, c2) = rest.split_at_mut(copy_len);
            for (row, line) in x.chunks_exact(8).enumerate() {
                let mut padded = [0.0f32; 10];
                padded[1..9].copy_from_slice(line);
                let at = (row + d.ph) * 8;
                c0[at..at + 8].copy_from_slice(&padded[0..8]);
                c1[at..at + 8].copy_from_slice(&padded[1..9]);
                c2[at..at + 8].copy_from_slice(&padded[2..10]);
            }
            continue;
        }
        for (s, copy) in chan.chunks_exact_mut(copy_len).enumerate() {
            // Padded column `q + s` is input column `q + s - pw`: the columns `q` that land inside.
            let (q_lo, q_hi) = (d.pw.saturating_sub(s), (d.w + d.pw).saturating_sub(s).min(d.ow));
            if q_lo >= q_hi {
                continue;
            }
            for (row, line) in x.chunks_exact(d.w).enumerate() {
                let from = q_lo + s - d.pw;
                copy_row(&mut copy[(row + d.ph) * d.ow + q_lo..], &line[from..][..q_hi - q_lo]);
            }
        }
    }
}

/// `dst[..src.len()] = src` for one image row: fixed-size copies for the network's widths (a
/// `memcpy` call per row of 8 to 32 values spends more on the call than on the copy).
#[inline(always)]
fn copy_row(dst: &mut [f32], src: &[f32]) {
    match src.len() {
        32 => dst[..32].copy_from_slice(&src[..32]),
        16 => dst[..16].copy_from_slice(&src[..16]),
        8 => dst[..8].copy_from_slice(&src[..8]),
        n => dst[..n].copy_from_slice(src),
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
            copy_row(&mut plane[(row + d.ph) * d.wp + d.pw..], line);
        }
    }
}

/// Filters in forward micro-kernel order: `[kblock][cin][tap][K]` (`K` from
/// [`Dims::forward_block`]), where filter `j` of block `kb` tap `t` on input channel `ci` is
/// `tap(kb * K + j, ci, t)`; zero for filters past `cout`.
fn pack(d: &Dims, tap: impl Fn(usize, usize, usize) -> f32) -> Vec<f32> {
    let k = d.forward_block().0;
    let mut out = vec![0.0f32; d.cout.div_ceil(k) * d.cin * 9 * k];
    for (i, v) in out.iter_mut().enumerate() {
        let j = i % k;
        let t = i / k % 9;
        let ci = i / (k * 9) % d.cin;
        let kb = i / (k * 9 * d.cin);
        let co = kb * k + j;
        if co < d.cout {
            *v = tap(co, ci, t);
        }
    }
    out
}

/// `y = conv(x, w) + bias` (lengths checked by the caller, [`applies`] holds).
pub(crate) fn forward_into(sh: &Conv2dShape, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    forward_with(Isa::for_plane(sh.oh, sh.ow).expect("applies() holds"), sh, x, w, bias, y);
}

fn forward_with(isa: Isa, sh: &Conv2dShape, x: &[f32], w: &[f32], bias: Option<&[f32]>, y: &mut [f32]) {
    assert!(is_3x3_same_family(sh) && isa.fits(sh.oh, sh.ow) && isa.cpu_has());
    let d = Dims::new(sh.c, sh.k, sh.h, sh.w, sh.opts.pad[0], sh.opts.pad[1], isa);
    let wk = pack(&d, |k, c, t| w[(k * sh.c + c) * 9 + t]);
    run(sh, &d, x, &wk, bias, y);
}

/// `dx` (overwritten) from `dy` and `w` ([`applies_backward_data`] holds): the forward pass of
/// `dy` with filters `w'[c][k][t] = w[k][c][8 - t]`, padded by `2 - pad`.
pub(crate) fn backward_data_into(sh: &Conv2dShape, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    backward_data_with(Isa::for_plane(sh.h, sh.w).expect("applies_backward_data() holds"), sh, dy, w, dx);
}

fn backward_data_with(isa: Isa, sh: &Conv2dShape, dy: &[f32], w: &[f32], dx: &mut [f32]) {
    assert!(is_3x3_same_family(sh) && isa.fits(sh.h, sh.w) && isa.cpu_has());
    let d = Dims::new(sh.k, sh.c, sh.oh, sh.ow, 2 - sh.opts.pad[0], 2 - sh.opts.pad[1], isa);
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
            pad_forward(d, &src[(lo + i) * in_len..][..in_len], &mut xpad);
            conv_image(d, &xpad, wk, bias, out);
        }
    });
}

/// One image: `xpad` (`cin` channels as [`pad_forward`] lays them out) into `out` (`cout` planes).
fn conv_image(d: &Dims, xpad: &[f32], wk: &[f32], bias: Option<&[f32]>, out: &mut [f32]) {
    let (k, max_nv) = d.forward_block();
    let kblocks = d.cout.div_ceil(k);
    assert!(xpad.len() >= d.cin * d.forward_channel() && out.len() >= d.out_len());
    assert!(wk.len() >= kblocks * d.cin * 9 * k);
    assert!(bias.is_none_or(|b| b.len() >= d.cout));
    assert!(d.isa.fits(d.oh, d.ow) && d.isa.cpu_has() && max_nv <= NV_MAX);
    let nvec = d.oh * d.ow / d.lanes();
    // Blocks of output vectors, each with its vectors' output and input offsets. (Splitting a
    // last `max_nv + 1` vectors into halves rather than `max_nv + 1` measured slower: 22.6
    // against 20.1 ms on the 8x8 layer, 3 + 1 vectors.)
    let blocks = (0..nvec.div_ceil(max_nv)).map(|b| {
        let (v0, nv) = (b * max_nv, (nvec - b * max_nv).min(max_nv));
        let (mut yoff, mut xoff) = ([0usize; NV_MAX], [0usize; NV_MAX]);
        for i in 0..nv {
            (yoff[i], xoff[i]) = d.vector(v0 + i);
        }
        (nv, yoff, xoff)
    });
    let mut block = |kb: usize, (nv, yoff, xoff): &(usize, [usize; NV_MAX], [usize; NV_MAX])| {
        let nv = *nv;
        /// `$isa::fwd::<K, V>` for the block's `(k, nv)`.
        macro_rules! fwd {
            ($isa:ident) => {{
                let f = match (k, nv) {
                    (8, 3) => $isa::fwd::<8, 3>,
                    (8, 2) => $isa::fwd::<8, 2>,
                    (8, _) => $isa::fwd::<8, 1>,
                    (_, 4) => $isa::fwd::<4, 4>,
                    (_, 3) => $isa::fwd::<4, 3>,
                    (_, 2) => $isa::fwd::<4, 2>,
                    _ => $isa::fwd::<4, 1>,
                };
                f(d, xpad, wk, bias, &mut *out, kb, &xoff, &yoff)
            }};
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the assert above checked that the CPU has `d.isa`'s instructions. Every load
        // and store is in bounds: the asserts give the buffer lengths; vector `v`'s tap
        // `(r, s)` on channel `c` reads `c * chan + xoff + r * row + s * col + 0..lanes`
        // (`chan`, `row`, `col` from `forward_channel` and `forward_strides`), whose largest
        // index is `cin * chan - 1` because output vectors lie inside `oh x ow` (`ow` a multiple
        // of the lanes, or 8 with two rows per vector) and `hp = oh + 2`, `wp = ow + 2`: in a
        // padded plane the last vector's tap (2, 2) ends at `(oh + 1) * wp + ow + 1 = hp * wp - 1`;
        // in the shifted copies (two rows of `ow` per vector, the last at row `oh - 2`) it ends at
        // `2 * hp * ow + (oh + 2) * ow - 1 = 3 * hp * ow - 1`; stores go to
        // `(kb * K + j) * oh * ow + yoff + 0..lanes` only for filters `kb * K + j < cout`;
        // weights are read below `kblocks * cin * 9 * K`, the length `pack` wrote for this
        // `K` (the same `forward_block`); `nv <= max_nv <= NV_MAX` offsets are set.
        unsafe {
            match d.isa {
                Isa::Avx2 => fwd!(avx2),
                Isa::Avx512 => fwd!(avx512),
                Isa::Avx512Rows2 => fwd!(avx512_rows2),
            }
        }
    };
    if d.forward_filters_outer() {
        for kb in 0..kblocks {
            blocks.clone().for_each(|b| block(kb, &b));
        }
    } else {
        for b in blocks {
            (0..kblocks).for_each(|kb| block(kb, &b));
        }
    }
}

/// `dw = beta * dw + grad` (KCRS; [`applies`] holds, lengths checked by the caller). With
/// `beta == 0` the old `dw` is never read.
pub(crate) fn backward_weight_into(sh: &Conv2dShape, x: &[f32], dy: &[f32], dw: &mut [f32], beta: f32) {
    backward_weight_with(Isa::for_plane(sh.oh, sh.ow).expect("applies() holds"), sh, x, dy, dw, beta);
}

fn backward_weight_with(isa: Isa, sh: &Conv2dShape, x: &[f32], dy: &[f32], dw: &mut [f32], beta: f32) {
    assert!(is_3x3_same_family(sh) && isa.fits(sh.oh, sh.ow) && isa.cpu_has());
    let d = Dims::new(sh.c, sh.k, sh.h, sh.w, sh.opts.pad[0], sh.opts.pad[1], isa);
    // Filters in the lanes with AVX-512 from 8 input channels on: 1.2x to 3.5x faster than the
    // pixel-lane kernel below on the width-16 and width-64 networks' layers, slower on their
    // first layers (3 channels; `docs/performance.md`).
    if lanes_wgrad::applies(&d) {
        return lanes_wgrad::run(&d, sh.n, x, dy, dw, beta);
    }
    // 8 filters per block with AVX-512 (24 accumulators) measured 1.3x to 1.6x slower than 4.
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

/// The weight gradient as a GEMM with the filters in the lanes (AVX-512, or AVX2 at half the
/// width). `dw[k][j]`, `j` a (channel, tap) pair, is the sum over output pixels of `dy[k][pix]`
/// times the input pixel that tap reads. Per tile of output pixels (whole images, or rows of one
/// image):
/// - the output gradient is transposed, `L x L` blocks in registers (`L` lanes: 16, or 8), into
///   panels of `2 L` filters, `A[pix][2 L]` (filters past `cout` zero), so a panel load per pixel
///   feeds `L` filters;
/// - the tile's input channels are zero-padded, as for the forward pass;
/// - for each chunk of `R` (channel, filter row) pairs, `3 R` (channel, tap) pairs, the
///   micro-kernel runs over the tile's pixels with `KV x 3 R` accumulators (`KV` filter vectors)
///   in registers: per pixel `KV` panel loads, `3 R` broadcasts of input pixels and `3 KV R`
///   FMAs. The broadcasts address `R` row pointers with one shared index and the tap as a
///   constant displacement, so nothing like im2col is ever built, and there are no horizontal
///   sums; the chunk's sums are added to the thread's accumulators once per tile.
///
/// Threads split the chunks (never the pixels), so each weight's sum runs over the tiles in order
/// and over a tile's pixels in order: the result does not depend on the thread count. Each thread
/// transposes every tile's gradient and pads its own channels itself; a barrier per tile to share
/// the transposes would cost more than they do at these sizes.
mod lanes_wgrad {
    use super::*;

    /// (channel, filter row) pairs per micro-kernel with 2 filter vectors and with 1: AVX-512
    /// (32 registers) 4 x 3 x 2 = 24 accumulators, and 8 x 3 = 24; AVX2 (16) 2 x 3 x 2 = 12, and
    /// 4 x 3 = 12.
    const R2: usize = 4;
    const R1: usize = 8;
    const R2_AVX2: usize = 2;
    const R1_AVX2: usize = 4;
    /// Most output pixels per tile: whole images where a plane has at most this many, else rows of
    /// one image.
    const TILE_MAX: usize = 1024;
    /// Floats of transposed gradient per tile (1 MiB: half this CPU's L2 per core), which bounds
    /// the tile's pixels for many filters. 1/8 to 4x this measured no faster on the width-16 and
    /// width-64 networks' layers.
    const PANEL_FLOATS: usize = 1 << 18;

    /// Output rows `p0..p0 + rows` of images `img0..img0 + imgs` (all rows where `imgs > 1`).
    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Tile {
        img0: usize,
        imgs: usize,
        p0: usize,
        rows: usize,
    }

    impl Tile {
        fn pixels(&self, ow: usize) -> usize {
            self.imgs * self.rows * ow
        }
    }

    /// Whether this kernel runs the layer: at least 8 input channels (with 3, a network's first
    /// layer, there are 3 chunks of pairs for 2 threads, and the pixel-lane kernel measured 1.6x
    /// faster), a tile holds at least one output row.
    pub(super) fn applies(d: &Dims) -> bool {
        d.isa.cpu_has() && d.cin >= 8 && d.ow <= TILE_MAX
    }

    /// The tiles of `n` images, in the order every weight's sum runs.
    fn tiles(d: &Dims, n: usize) -> Vec<Tile> {
        let pq = d.oh * d.ow;
        let pw = 2 * d.lanes();
        let tile_max = (PANEL_FLOATS / (d.cout.div_ceil(pw) * pw)).clamp(d.ow, TILE_MAX);
        let mut out = Vec::new();
        if pq <= tile_max {
            let per = tile_max / pq;
            for img0 in (0..n).step_by(per) {
                out.push(Tile { img0, imgs: per.min(n - img0), p0: 0, rows: d.oh });
            }
        } else {
            let rows = tile_max / d.ow;
            for img0 in 0..n {
                for p0 in (0..d.oh).step_by(rows) {
                    out.push(Tile { img0, imgs: 1, p0, rows: rows.min(d.oh - p0) });
                }
            }
        }
        out
    }

    /// A 64-byte aligned window of `len` floats in `buf` (so the panel's 128-byte rows never
    /// straddle cache lines).
    fn aligned(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
        buf.resize(len + 16, 0.0);
        let skip = buf.as_ptr().align_offset(64).min(16);
        &mut buf[skip..][..len]
    }

    pub(super) fn run(d: &Dims, n: usize, x: &[f32], dy: &[f32], dw: &mut [f32], beta: f32) {
        let ct = d.cin * 9;
        assert!(applies(d) && x.len() >= n * d.in_len() && dy.len() >= n * d.out_len());
        assert!(dw.len() >= d.cout * ct);
        let (l, avx2) = (d.lanes(), d.isa == Isa::Avx2);
        let pw = 2 * l; // filters per panel
        let kvecs = d.cout.div_ceil(l);
        let blocks = kvecs.div_ceil(2);
        let r_per = match (kvecs >= 2, avx2) {
            (true, false) => R2,
            (false, false) => R1,
            (true, true) => R2_AVX2,
            (false, true) => R1_AVX2,
        };
        let rows_total = d.cin * 3; // (channel, filter row) pairs
        let chunks = rows_total.div_ceil(r_per);
        let runs = rayon::current_num_threads().max(1).min(chunks);
        let tiles = tiles(d, n);
        let panel_len = tiles.iter().map(|t| t.pixels(d.ow)).max().unwrap_or(0) * pw;
        // Per run: acc[block][j - j0][pw lanes] for its pairs j0..j1 = 3 g0..3 g1.
        let sums: Vec<(usize, usize, Vec<f32>)> = (0..runs)
            .into_par_iter()
            .map(|run| {
                let (g0, g1) = (run * chunks / runs * r_per, ((run + 1) * chunks / runs * r_per).min(rows_total));
                let width = 3 * (g1 - g0);
                let (c_lo, c_hi) = (g0 / 3, g1.div_ceil(3));
                let geo_stride = (c_hi - c_lo) * d.plane();
                let mut acc = vec![0.0f32; blocks * width * pw];
                let mut a_buf = Vec::new();
                let a = aligned(&mut a_buf, blocks * panel_len);
                let mut xpad = Vec::new();
                for tile in &tiles {
                    let npix = tile.pixels(d.ow);
                    for blk in 0..blocks {
                        let kv = (kvecs - 2 * blk).min(2);
                        transpose_panel(d, dy, tile, blk * pw, kv, &mut a[blk * panel_len..][..npix * kv * l]);
                    }
                    pad_channels(d, x, tile, c_lo, c_hi, &mut xpad);
                    let geo = RowGeo { imgs: tile.imgs, img_stride: geo_stride, rows: tile.rows, ow: d.ow, wp: d.wp };
                    for r0 in (g0..g1).step_by(r_per) {
                        let live = r_per.min(g1 - r0);
                        // Offsets of the chunk's rows in `xpad`; a short last chunk repeats its
                        // last row (computed, never stored).
                        let mut rows = [0usize; R1];
                        for (i, o) in rows.iter_mut().enumerate().take(r_per) {
                            let g = (r0 + i).min(r0 + live - 1);
                            *o = (g / 3 - c_lo) * d.plane() + (tile.p0 + g % 3) * d.wp;
                        }
                        for blk in 0..blocks {
                            let kv = (kvecs - 2 * blk).min(2);
                            let panel = &a[blk * panel_len..][..npix * kv * l];
                            let dst = &mut acc[(blk * width + 3 * (r0 - g0)) * pw..];
                            #[cfg(target_arch = "x86_64")]
                            // SAFETY: `applies` checked the CPU has `d.isa`'s instructions; the
                            // micro-kernels assert their bounds.
                            unsafe {
                                match (avx2, kv, r_per) {
                                    (false, 2, _) => {
                                        m512::micro::<2, R2, { 3 * R2 }>(panel, &xpad, &rows, geo, dst, live)
                                    }
                                    (false, _, R2) => {
                                        m512::micro::<1, R2, { 3 * R2 }>(panel, &xpad, &rows, geo, dst, live)
                                    }
                                    (false, _, _) => {
                                        m512::micro::<1, R1, { 3 * R1 }>(panel, &xpad, &rows, geo, dst, live)
                                    }
                                    (true, 2, _) => {
                                        m256::micro::<2, R2_AVX2, { 3 * R2_AVX2 }>(panel, &xpad, &rows, geo, dst, live)
                                    }
                                    (true, _, R2_AVX2) => {
                                        m256::micro::<1, R2_AVX2, { 3 * R2_AVX2 }>(panel, &xpad, &rows, geo, dst, live)
                                    }
                                    (true, _, _) => {
                                        m256::micro::<1, R1_AVX2, { 3 * R1_AVX2 }>(panel, &xpad, &rows, geo, dst, live)
                                    }
                                }
                            }
                        }
                    }
                }
                (3 * g0, 3 * g1, acc)
            })
            .collect();
        // dw is [k][ct].
        for (j0, j1, acc) in sums {
            let width = j1 - j0;
            for (k, row) in dw.chunks_exact_mut(ct).enumerate().take(d.cout) {
                let (blk, lane) = (k / pw, k % pw);
                for (j, o) in row[j0..j1].iter_mut().enumerate() {
                    let g = acc[(blk * width + j) * pw + lane];
                    *o = if beta == 0.0 { g } else { beta * *o + g };
                }
            }
        }
    }

    /// `panel[pix][kv * L]` = the output gradient of filters `k0..k0 + kv * L` (zero past `cout`)
    /// at the tile's pixels, in tile order.
    fn transpose_panel(d: &Dims, dy: &[f32], tile: &Tile, k0: usize, kv: usize, panel: &mut [f32]) {
        let (pq, ow, l) = (d.oh * d.ow, d.ow, d.lanes());
        let seg = tile.rows * ow; // pixels of one image in the tile
        let stride = kv * l;
        assert!(panel.len() >= tile.imgs * seg * stride && (tile.img0 + tile.imgs) * d.cout * pq <= dy.len());
        assert!(tile.p0 + tile.rows <= d.oh && k0 + (kv - 1) * l < d.cout && d.isa.cpu_has());
        let full = seg / l * l;
        for i in 0..tile.imgs {
            let base = (tile.img0 + i) * d.cout * pq + tile.p0 * ow; // filter 0's first pixel
            for g in 0..kv {
                let kg = k0 + g * l;
                let live = (d.cout - kg).min(l);
                let out0 = i * seg * stride + g * l;
                for u in (0..full).step_by(l) {
                    let (src, dst) = (base + kg * pq + u, out0 + u * stride);
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: the CPU has the instructions (asserted); filter `kg + f`, `f < live`,
                    // is below `cout` and reads `dy[src + f * pq..][..l]`, inside its plane's
                    // segment (`u + l <= seg`); the `l` stores of `l` go to
                    // `panel[dst + r * stride..][..l]`, `u + r < seg`, `g * l + l <= stride` (the
                    // assert on `panel.len()`).
                    unsafe {
                        if d.isa == Isa::Avx2 {
                            m256::transpose(dy.as_ptr().add(src), pq, live, panel.as_mut_ptr().add(dst), stride);
                        } else {
                            m512::transpose(dy.as_ptr().add(src), pq, live, panel.as_mut_ptr().add(dst), stride);
                        }
                    }
                }
                for u in full..seg {
                    for f in 0..l {
                        panel[out0 + u * stride + f] = if f < live { dy[base + (kg + f) * pq + u] } else { 0.0 };
                    }
                }
            }
        }
    }

    /// `xpad[m][c - c_lo]` = channel `c` of the tile's image `m`, zero-padded to `hp x wp`. Only
    /// the interior is written when `xpad` is long enough already: every tile has the same
    /// geometry, so the zero border of the previous tile is still there.
    fn pad_channels(d: &Dims, x: &[f32], tile: &Tile, c_lo: usize, c_hi: usize, xpad: &mut Vec<f32>) {
        let (nch, plane, hw) = (c_hi - c_lo, d.plane(), d.h * d.w);
        let len = tile.imgs * nch * plane;
        if xpad.len() < len {
            xpad.clear();
            xpad.resize(len, 0.0);
        }
        for m in 0..tile.imgs {
            let src = &x[(tile.img0 + m) * d.in_len() + c_lo * hw..][..nch * hw];
            for (ci, s) in src.chunks_exact(hw).enumerate() {
                let dst = &mut xpad[(m * nch + ci) * plane..][..plane];
                for (row, line) in s.chunks_exact(d.w).enumerate() {
                    super::copy_row(&mut dst[(row + d.ph) * d.wp + d.pw..], line);
                }
            }
        }
    }

    /// Where a tile's pixels lie in the padded input: `imgs` images `img_stride` apart, `rows`
    /// output rows of `ow` pixels, padded rows `wp` apart.
    #[derive(Clone, Copy)]
    struct RowGeo {
        imgs: usize,
        img_stride: usize,
        rows: usize,
        ow: usize,
        wp: usize,
    }

    /// The micro-kernel of one instruction set (`$lanes` floats a vector, panels of `2 $lanes`).
    macro_rules! lanes_micro {
        ($feature:literal, $lanes:literal, $vec:ty, $zero:ident, $load:ident, $store:ident, $set1:ident,
         $fmadd:ident, $add:ident) => {
            /// Adds to `acc[i * 2 L..][..KV * L]` (`i < 3 live`, `L` lanes) the sums over the
            /// tile's pixels of `panel[pix][..KV * L]` times the input that tap `i % 3` of row
            /// `rows[i / 3]` reads: `xpad[rows[i / 3] + m * img_stride + p * wp + q + i % 3]` at
            /// image `m`, row `p`, column `q`. The `R` row offsets are base registers with one
            /// shared index, the tap a constant displacement.
            ///
            /// # Safety
            /// The CPU has the instructions of `$feature` (the slices' bounds are asserted).
            #[target_feature(enable = $feature)]
            pub(super) unsafe fn micro<const KV: usize, const R: usize, const T: usize>(
                panel: &[f32],
                xpad: &[f32],
                rows: &[usize; R1],
                geo: RowGeo,
                acc: &mut [f32],
                live: usize,
            ) {
                const L: usize = $lanes;
                assert!(T == 3 * R && R <= R1 && (1..=R).contains(&live) && geo.ow + 2 <= geo.wp);
                let npix = geo.imgs * geo.rows * geo.ow;
                assert!(panel.len() >= npix * KV * L && acc.len() >= (3 * live - 1) * 2 * L + KV * L);
                let last = (geo.imgs - 1) * geo.img_stride + (geo.rows - 1) * geo.wp + geo.ow + 1;
                assert!(rows.iter().take(R).all(|&r| r + last < xpad.len()));
                // SAFETY: the asserts above: pixel (m, p, q) reads `panel` below `npix * KV * L`
                // and `xpad[rows[i] + m * img_stride + p * wp + q + s]`, `s <= 2`, at most
                // `rows[i] + last`; the sums go to `acc[i * 2 L + k * L..][..L]`, `i < 3 live`,
                // `k < KV`.
                unsafe {
                    let bases: [*const f32; R] = std::array::from_fn(|i| xpad.as_ptr().add(rows[i]));
                    let mut v: [[$vec; T]; KV] = [[$zero(); T]; KV];
                    let mut ap = panel.as_ptr();
                    for m in 0..geo.imgs {
                        for p in 0..geo.rows {
                            let off0 = m * geo.img_stride + p * geo.wp;
                            for off in off0..off0 + geo.ow {
                                let g: [$vec; KV] = std::array::from_fn(|k| $load(ap.add(k * L)));
                                for (i, b) in bases.iter().enumerate() {
                                    for s in 0..3 {
                                        let xb = $set1(*b.add(off + s));
                                        for k in 0..KV {
                                            v[k][3 * i + s] = $fmadd(g[k], xb, v[k][3 * i + s]);
                                        }
                                    }
                                }
                                ap = ap.add(KV * L);
                            }
                        }
                    }
                    for i in 0..3 * live {
                        for (k, vk) in v.iter().enumerate() {
                            let p = acc.as_mut_ptr().add(i * 2 * L + k * L);
                            $store(p, $add($load(p), vk[i]));
                        }
                    }
                }
            }
        };
    }

    /// The first two stages of a register transpose of `$n` rows: pairs of rows interleaved by 32
    /// bits, then by 64, so that 128-bit lane `l` of `u[4 i + m]` holds rows `4 i .. 4 i + 3` of
    /// column `4 l + m`. The last stage (moving 128-bit lanes) differs with the vector width.
    macro_rules! interleave {
        ($r:expr, $n:literal, $vec:ty, $lo_ps:ident, $hi_ps:ident, $to_pd:ident, $lo_pd:ident, $hi_pd:ident,
         $to_ps:ident) => {{
            let r = $r;
            let t: [$vec; $n] = std::array::from_fn(|i| {
                let (a, b) = (r[i & !1], r[i | 1]);
                if i % 2 == 0 {
                    $lo_ps(a, b)
                } else {
                    $hi_ps(a, b)
                }
            });
            let u: [$vec; $n] = std::array::from_fn(|i| {
                let (q, m) = (i / 4 * 4, i % 4);
                let (a, b) = ($to_pd(t[q + m / 2]), $to_pd(t[q + m / 2 + 2]));
                $to_ps(if m % 2 == 0 { $lo_pd(a, b) } else { $hi_pd(a, b) })
            });
            u
        }};
    }

    #[cfg(target_arch = "x86_64")]
    mod m512 {
        use super::*;

        lanes_micro!(
            "avx512f",
            16,
            __m512,
            _mm512_setzero_ps,
            _mm512_loadu_ps,
            _mm512_storeu_ps,
            _mm512_set1_ps,
            _mm512_fmadd_ps,
            _mm512_add_ps
        );

        /// Transposes 16 rows of 16 floats (`src + f * src_stride`, rows `live..16` taken as
        /// zero) into 16 rows of 16 (`dst + r * dst_stride`): `dst[r][f] = src[f][r]`.
        ///
        /// # Safety
        /// AVX-512F is present; `src[f * src_stride..][..16]` is readable for `f < live`,
        /// `dst[r * dst_stride..][..16]` writable for `r < 16`.
        #[target_feature(enable = "avx512f")]
        pub(super) unsafe fn transpose(
            src: *const f32,
            src_stride: usize,
            live: usize,
            dst: *mut f32,
            dst_stride: usize,
        ) {
            // SAFETY: the caller's contract.
            unsafe {
                let r: [__m512; 16] = if live == 16 {
                    std::array::from_fn(|f| _mm512_loadu_ps(src.add(f * src_stride)))
                } else {
                    std::array::from_fn(|f| {
                        if f < live {
                            _mm512_loadu_ps(src.add(f * src_stride))
                        } else {
                            _mm512_setzero_ps()
                        }
                    })
                };
                let u = interleave!(
                    r,
                    16,
                    __m512,
                    _mm512_unpacklo_ps,
                    _mm512_unpackhi_ps,
                    _mm512_castps_pd,
                    _mm512_unpacklo_pd,
                    _mm512_unpackhi_pd,
                    _mm512_castpd_ps
                );
                // Then the 4 x 4 transpose of 128-bit lanes across u[m], u[4 + m], u[8 + m],
                // u[12 + m]: column 4 l + m is lane l of each.
                for m in 0..4 {
                    let v0 = _mm512_shuffle_f32x4::<0x44>(u[m], u[4 + m]);
                    let v1 = _mm512_shuffle_f32x4::<0xEE>(u[m], u[4 + m]);
                    let v2 = _mm512_shuffle_f32x4::<0x44>(u[8 + m], u[12 + m]);
                    let v3 = _mm512_shuffle_f32x4::<0xEE>(u[8 + m], u[12 + m]);
                    _mm512_storeu_ps(dst.add(m * dst_stride), _mm512_shuffle_f32x4::<0x88>(v0, v2));
                    _mm512_storeu_ps(dst.add((4 + m) * dst_stride), _mm512_shuffle_f32x4::<0xDD>(v0, v2));
                    _mm512_storeu_ps(dst.add((8 + m) * dst_stride), _mm512_shuffle_f32x4::<0x88>(v1, v3));
                    _mm512_storeu_ps(dst.add((12 + m) * dst_stride), _mm512_shuffle_f32x4::<0xDD>(v1, v3));
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    mod m256 {
        use super::*;

        lanes_micro!(
            "avx2,fma",
            8,
            __m256,
            _mm256_setzero_ps,
            _mm256_loadu_ps,
            _mm256_storeu_ps,
            _mm256_set1_ps,
            _mm256_fmadd_ps,
            _mm256_add_ps
        );

        /// Transposes 8 rows of 8 floats (`src + f * src_stride`, rows `live..8` taken as zero)
        /// into 8 rows of 8 (`dst + r * dst_stride`): `dst[r][f] = src[f][r]`.
        ///
        /// # Safety
        /// AVX2 is present; `src[f * src_stride..][..8]` is readable for `f < live`,
        /// `dst[r * dst_stride..][..8]` writable for `r < 8`.
        #[target_feature(enable = "avx2,fma")]
        pub(super) unsafe fn transpose(
            src: *const f32,
            src_stride: usize,
            live: usize,
            dst: *mut f32,
            dst_stride: usize,
        ) {
            // SAFETY: the caller's contract.
            unsafe {
                let r: [__m256; 8] = std::array::from_fn(|f| {
                    if f < live {
                        _mm256_loadu_ps(src.add(f * src_stride))
                    } else {
                        _mm256_setzero_ps()
                    }
                });
                let u = interleave!(
                    r,
                    8,
                    __m256,
                    _mm256_unpacklo_ps,
                    _mm256_unpackhi_ps,
                    _mm256_castps_pd,
                    _mm256_unpacklo_pd,
                    _mm256_unpackhi_pd,
                    _mm256_castpd_ps
                );
                for m in 0..4 {
                    _mm256_storeu_ps(dst.add(m * dst_stride), _mm256_permute2f128_ps::<0x20>(u[m], u[4 + m]));
                    _mm256_storeu_ps(dst.add((4 + m) * dst_stride), _mm256_permute2f128_ps::<0x31>(u[m], u[4 + m]));
                }
            }
        }
    }
}

/// Adds the weight gradient of filters `kb * KB ..` over `nb` images to `acc` (`[j][c][tap]`).
fn wgrad_tile(d: &Dims, xpad: &[f32], dy: &[f32], nb: usize, kb: usize, acc: &mut [f32]) {
    let pq = d.oh * d.ow;
    assert!(xpad.len() >= nb * d.cin * d.plane() && dy.len() >= nb * d.cout * pq && acc.len() >= KB * d.cin * 9);
    assert!(d.isa.fits(d.oh, d.ow) && d.isa.cpu_has());
    let k0 = kb * KB;
    // Filters past cout read filter k0's gradient (a valid address) and are never stored.
    let ks: [usize; KB] = std::array::from_fn(|j| if k0 + j < d.cout { k0 + j } else { k0 });
    for c in 0..d.cin {
        for r in 0..3 {
            let mut sums = [[0.0f32; 3]; KB];
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the assert above checked the CPU has `d.isa`'s instructions. Reads stay in
            // bounds (asserts above): image `b`'s output vector at `yoff` reads
            // `dy[(b * cout + ks[j]) * pq + yoff + 0..lanes]` with `ks[j] < cout`, and
            // `xpad[(b * cin + c) * plane + xoff + r * wp + s + 0..lanes]`, whose largest index
            // is below `(b * cin + c + 1) * plane` (see `conv_image`).
            unsafe {
                match d.isa {
                    Isa::Avx2 => avx2::wgrad(d, xpad, dy, nb, &ks, c, r, &mut sums),
                    Isa::Avx512 => avx512::wgrad(d, xpad, dy, nb, &ks, c, r, &mut sums),
                    Isa::Avx512Rows2 => avx512_rows2::wgrad(d, xpad, dy, nb, &ks, c, r, &mut sums),
                }
            }
            for j in 0..KB.min(d.cout - k0) {
                for (s, v) in sums[j].iter().enumerate() {
                    acc[(j * d.cin + c) * 9 + r * 3 + s] += v;
                }
            }
        }
    }
}

/// The micro-kernels of one instruction set: the same code for every vector width, only the
/// vector type and the intrinsics change (`$lanes` floats per vector, covering `$rows` output
/// rows). `$loadx(p, wp)` loads the input vector at `p` (its second row, if any, at `p + wp`);
/// `$loadfwd(p)` loads the forward pass's input vector at `p` (contiguous: [`pad_forward`]);
/// output and output-gradient vectors are contiguous (`$rows` > 1 only where the width is
/// `$lanes / $rows`).
macro_rules! isa_kernels {
    ($isa:ident, $feature:literal, $lanes:literal, $rows:literal, $vec:ty, $zero:ident, $load:ident,
     $loadx:path, $loadfwd:ident, $store:ident, $set1:ident, $fmadd:ident, $add:ident, $hsum:path) => {
        #[cfg(target_arch = "x86_64")]
        mod $isa {
            use super::*;

            const LANES: usize = $lanes;
            const ROWS: usize = $rows;
            const COLS: usize = LANES / ROWS;

            /// `V` output vectors x `K` filters of one image ([`conv_image`]).
            ///
            /// # Safety
            /// The CPU has the instructions of `$feature`, and every offset is in bounds as
            /// `conv_image` establishes.
            #[target_feature(enable = $feature)]
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn fwd<const K: usize, const V: usize>(
                d: &Dims,
                xpad: &[f32],
                wk: &[f32],
                bias: Option<&[f32]>,
                out: &mut [f32],
                kb: usize,
                xoff: &[usize; NV_MAX],
                yoff: &[usize; NV_MAX],
            ) {
                debug_assert_eq!(d.lanes(), LANES);
                // SAFETY: the caller's contract: the instructions are there, every offset in bounds.
                unsafe {
                    let (chan, (row_step, col_step)) = (d.forward_channel(), d.forward_strides());
                    let xp = xpad.as_ptr();
                    let mut wp = wk.as_ptr().add(kb * d.cin * 9 * K);
                    let mut acc: [[$vec; V]; K] = [[$zero(); V]; K];
                    for c in 0..d.cin {
                        let xc = xp.add(c * chan);
                        for r in 0..3 {
                            for s in 0..3 {
                                let tap = r * row_step + s * col_step;
                                let xv: [$vec; V] = std::array::from_fn(|v| $loadfwd(xc.add(xoff[v] + tap)));
                                for (j, row) in acc.iter_mut().enumerate() {
                                    let a = $set1(*wp.add(j));
                                    for (a_v, x_v) in row.iter_mut().zip(&xv) {
                                        *a_v = $fmadd(a, *x_v, *a_v);
                                    }
                                }
                                wp = wp.add(K);
                            }
                        }
                    }
                    let pq = d.oh * d.ow;
                    for (j, row) in acc.iter().enumerate() {
                        let k = kb * K + j;
                        if k >= d.cout {
                            break;
                        }
                        let add = $set1(bias.map_or(0.0, |b| b[k]));
                        let yk = out.as_mut_ptr().add(k * pq);
                        for (v, a_v) in row.iter().enumerate() {
                            $store(yk.add(yoff[v]), $add(*a_v, add));
                        }
                    }
                }
            }

            /// The 4 x 3 (filter, tap column) sums of row `r` of channel `c` over `nb` images
            /// ([`wgrad_tile`]).
            ///
            /// # Safety
            /// The CPU has the instructions of `$feature`, and every offset is in bounds as
            /// `wgrad_tile` establishes.
            #[target_feature(enable = $feature)]
            #[allow(clippy::too_many_arguments)]
            pub(super) unsafe fn wgrad(
                d: &Dims,
                xpad: &[f32],
                dy: &[f32],
                nb: usize,
                ks: &[usize; KB],
                c: usize,
                r: usize,
                sums: &mut [[f32; 3]; KB],
            ) {
                debug_assert!(d.lanes() == LANES && d.isa.rows() == ROWS && (ROWS == 1 || d.ow == COLS));
                // SAFETY: the caller's contract: the instructions are there, every offset in bounds.
                unsafe {
                    let (pq, plane) = (d.oh * d.ow, d.plane());
                    let mut acc: [[$vec; 3]; KB] = [[$zero(); 3]; KB];
                    for b in 0..nb {
                        let xb = xpad.as_ptr().add((b * d.cin + c) * plane + r * d.wp);
                        let dyb: [*const f32; KB] = std::array::from_fn(|j| dy.as_ptr().add((b * d.cout + ks[j]) * pq));
                        for p in (0..d.oh).step_by(ROWS) {
                            for q0 in (0..d.ow).step_by(COLS) {
                                let xs = xb.add(p * d.wp + q0);
                                let xv = [$loadx(xs, d.wp), $loadx(xs.add(1), d.wp), $loadx(xs.add(2), d.wp)];
                                for (j, row) in acc.iter_mut().enumerate() {
                                    let g = $load(dyb[j].add(p * d.ow + q0));
                                    for (a_s, x_s) in row.iter_mut().zip(&xv) {
                                        *a_s = $fmadd(g, *x_s, *a_s);
                                    }
                                }
                            }
                        }
                    }
                    for (row, out) in acc.iter().zip(sums.iter_mut()) {
                        for (a, o) in row.iter().zip(out.iter_mut()) {
                            *o = $hsum(*a);
                        }
                    }
                }
            }
        }
    };
}

isa_kernels!(
    avx2,
    "avx2,fma",
    8,
    1,
    __m256,
    _mm256_setzero_ps,
    _mm256_loadu_ps,
    row256,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_set1_ps,
    _mm256_fmadd_ps,
    _mm256_add_ps,
    hsum256
);
isa_kernels!(
    avx512,
    "avx512f",
    16,
    1,
    __m512,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    row512,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_add_ps,
    _mm512_reduce_add_ps
);
isa_kernels!(
    avx512_rows2,
    "avx512f",
    16,
    2,
    __m512,
    _mm512_setzero_ps,
    _mm512_loadu_ps,
    rows2_512,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_set1_ps,
    _mm512_fmadd_ps,
    _mm512_add_ps,
    _mm512_reduce_add_ps
);

/// One row of 8 input pixels at `p`.
///
/// # Safety
/// AVX2 is present and `p[..8]` is readable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row256(p: *const f32, _wp: usize) -> __m256 {
    // SAFETY: the caller's contract.
    unsafe { _mm256_loadu_ps(p) }
}

/// One row of 16 input pixels at `p`.
///
/// # Safety
/// AVX-512F is present and `p[..16]` is readable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn row512(p: *const f32, _wp: usize) -> __m512 {
    // SAFETY: the caller's contract.
    unsafe { _mm512_loadu_ps(p) }
}

/// Two rows of 8 input pixels: `p[..8]` in the low half, `p[wp..wp + 8]` in the high half.
///
/// # Safety
/// AVX-512F is present and both ranges are readable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rows2_512(p: *const f32, wp: usize) -> __m512 {
    // SAFETY: the caller's contract.
    unsafe {
        let lo = _mm512_castps_pd(_mm512_castps256_ps512(_mm256_loadu_ps(p)));
        let hi = _mm256_castps_pd(_mm256_loadu_ps(p.add(wp)));
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(lo, hi))
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn hsum256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

#[cfg(test)]
mod tests {
    //! Each instruction set this CPU has, forced, against the direct-loop oracle (`tests/conv.rs`
    //! checks the public path, which picks the widest).
    use super::*;
    use crate::conv::cpu::naive;
    use crate::conv::Conv2dOpts;

    fn rand(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    fn close(what: &str, got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{what}[{i}]: {g} vs {w}");
        }
    }

    #[test]
    fn every_isa_matches_the_oracle() {
        let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.cpu_has()).collect();
        if isas.is_empty() {
            eprintln!("no AVX2 or AVX-512 on this CPU: nothing to check here (tests/conv.rs checks the fallback)");
            return;
        }
        eprintln!("checking {isas:?}");
        // (n, c, k, h, w, pad): widths 16 and 32 run on AVX-512 and AVX2, 8 on AVX2 and (height
        // even) on AVX-512 two rows at a time; pads 0, 1, 2 for each pass; filter counts not
        // multiples of 4; odd channel counts.
        let shapes = [
            (3, 3, 5, 16, 16, 1),
            (2, 5, 7, 7, 32, 1),
            (2, 4, 4, 9, 18, 0),
            (2, 4, 4, 9, 16, 0),
            (1, 2, 9, 5, 14, 2),
            (1, 2, 9, 5, 16, 2),
            (2, 3, 6, 4, 8, 1),
            (2, 3, 6, 5, 8, 1),
            (1, 6, 5, 6, 10, 0),
            (1, 5, 3, 4, 6, 2),
            // More than 32 filters, not a multiple of 16: two filter vectors per block, then one.
            (2, 3, 37, 5, 16, 1),
            (1, 2, 33, 4, 8, 1),
            // At least 8 input channels: the filters-in-lanes weight gradient with AVX-512. One
            // filter vector (8 rows per chunk); three (blocks of 2, then 1) with a short last
            // chunk of rows (27 = 6 x 4 + 3); pads 0 and 2; two rows of 8 per vector; a plane of
            // 1,440 pixels in tiles of rows (21 + 9); and 900 filters, whose tiles of 35 rows of
            // 8 leave 8 pixels past the last 16 (the transpose's scalar tail).
            (2, 8, 16, 16, 16, 1),
            (2, 9, 37, 5, 16, 1),
            (1, 10, 33, 6, 18, 0),
            (1, 8, 20, 4, 14, 2),
            (2, 12, 40, 6, 8, 1),
            (1, 8, 24, 30, 48, 1),
            (1, 8, 900, 36, 8, 1),
            // A padded input over 16 KiB (74 KiB): the forward pass sweeps output vectors
            // outermost (the others above, but the 30x48 one, sweep filter blocks outermost).
            (1, 16, 20, 32, 32, 1),
        ];
        let (mut lanes, mut orders) = (0, [0; 2]);
        for (i, &(n, c, k, h, w, pad)) in shapes.iter().enumerate() {
            let sh = Conv2dShape::new([n, c, h, w], [k, c, 3, 3], Conv2dOpts::square(1, pad)).unwrap();
            let seed = 10 * i as u64;
            let (x, wt, b, dy) = (
                rand(sh.input_len(), seed),
                rand(sh.filter_len(), seed + 1),
                rand(k, seed + 2),
                rand(sh.output_len(), seed + 3),
            );
            let y_ref = naive::forward(&sh, &x, &wt, Some(&b)).unwrap();
            let dx_ref = naive::backward_data(&sh, &dy, &wt).unwrap();
            let dw_ref = naive::backward_weight(&sh, &x, &dy).unwrap();
            for &isa in &isas {
                let tag = format!("{isa:?} shape {i}");
                if isa.fits(sh.oh, sh.ow) {
                    let d = Dims::new(sh.c, sh.k, sh.h, sh.w, pad, pad, isa);
                    lanes += usize::from(lanes_wgrad::applies(&d));
                    orders[usize::from(d.forward_filters_outer())] += 1;
                    let mut y = vec![f32::NAN; sh.output_len()];
                    forward_with(isa, &sh, &x, &wt, Some(&b), &mut y);
                    close(&format!("{tag} y"), &y, &y_ref);
                    let mut dw = rand(sh.filter_len(), seed + 4);
                    let want: Vec<f32> = dw.iter().zip(&dw_ref).map(|(o, g)| 0.5 * o + g).collect();
                    backward_weight_with(isa, &sh, &x, &dy, &mut dw, 0.5);
                    close(&format!("{tag} dw"), &dw, &want);
                    // The same bits on 1 and 3 threads: no sum is split between threads.
                    let on = |threads: usize| {
                        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                        let mut dw = vec![f32::NAN; sh.filter_len()];
                        pool.install(|| backward_weight_with(isa, &sh, &x, &dy, &mut dw, 0.0));
                        dw
                    };
                    assert_eq!(on(1), on(3), "{tag} dw on 1 and 3 threads");
                }
                if isa.fits(sh.h, sh.w) {
                    let mut dx = vec![f32::NAN; sh.input_len()];
                    backward_data_with(isa, &sh, &dy, &wt, &mut dx);
                    close(&format!("{tag} dx"), &dx, &dx_ref);
                }
            }
        }
        // The forward pass ran in both sweep orders; the filters-in-lanes weight gradient on the
        // shapes meant for it (some twice).
        assert!(orders[0] >= 2 && orders[1] >= 10, "forward sweeps (vectors, filters outermost): {orders:?}");
        if Isa::Avx512.cpu_has() {
            assert!(lanes >= 7, "the filters-in-lanes kernel ran on {lanes} shapes");
        }
    }
}
