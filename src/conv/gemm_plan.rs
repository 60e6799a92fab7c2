//! The CPU convolutions' shared pieces: how a call splits its batch over threads ([`Plan`]) and
//! the single GEMM call ([`sgemm`], on the `gemm` crate) that the im2col path (`cpu.rs`) and the
//! Winograd path (`winograd.rs`) run; the direct kernels (`direct.rs`) split work as [`Plan`] does.
//! A leaf: it imports none of the algorithm files.
use gemm::Parallelism;

use super::Conv2dShape;

/// A chunk aims for at least this many GEMM columns (images x output pixels)...
const TARGET_COLS: usize = 256;
/// ...while its im2col matrix stays under this many elements (one image always fits).
const MAX_COL_ELEMS: usize = 1 << 21;

/// How a call splits its batch (see `cpu.rs`'s module docs).
pub(super) struct Plan {
    n: usize,
    pub(super) groups: usize,
    chunk: usize,
    pub(super) par: Parallelism,
}

impl Plan {
    pub(super) fn new(sh: &Conv2dShape) -> Self {
        let threads = rayon::current_num_threads().max(1);
        let groups = sh.n.min(threads);
        let per_group = sh.n.div_ceil(groups);
        let pq = sh.oh * sh.ow;
        let per_image = sh.c * sh.r * sh.s * pq;
        let chunk = TARGET_COLS.div_ceil(pq).min(MAX_COL_ELEMS / per_image).min(per_group).max(1);
        let spare = threads / groups;
        let par = if spare > 1 { Parallelism::Rayon(spare) } else { Parallelism::None };
        Self { n: sh.n, groups, chunk, par }
    }

    /// Images `[lo, hi)` of group `g`.
    pub(super) fn group_range(&self, g: usize) -> (usize, usize) {
        (g * self.n / self.groups, (g + 1) * self.n / self.groups)
    }

    /// `buf` (`n` images of `per_image` elements) cut into the groups, each with its first image.
    pub(super) fn groups_of<'a>(&self, buf: &'a mut [f32], per_image: usize) -> Vec<(usize, &'a mut [f32])> {
        let mut out = Vec::with_capacity(self.groups);
        let mut rest = buf;
        for g in 0..self.groups {
            let (lo, hi) = self.group_range(g);
            let (head, tail) = std::mem::take(&mut rest).split_at_mut((hi - lo) * per_image);
            out.push((lo, head));
            rest = tail;
        }
        out
    }

    /// `(first, count)` of each chunk of a group of `imgs` images.
    pub(super) fn chunks(&self, imgs: usize) -> impl Iterator<Item = (usize, usize)> {
        let chunk = self.chunk;
        (0..imgs).step_by(chunk).map(move |b0| (b0, chunk.min(imgs - b0)))
    }
}

/// A read-only strided matrix: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(super) struct Mat<'a> {
    pub(super) data: &'a [f32],
    pub(super) rs: usize,
    pub(super) cs: usize,
}

/// `dst (m x n, row stride dst_rs) = keep.map_or(0, |a| a * dst) + lhs (m x k) * rhs (k x n)`.
/// With `keep == None` the old `dst` is never read.
#[allow(clippy::too_many_arguments)]
pub(super) fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_rs: usize,
    keep: Option<f32>,
    lhs: Mat,
    rhs: Mat,
    par: Parallelism,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(last(m, n, dst_rs, 1) < dst.len(), "sgemm: dst too short");
    assert!(last(m, k, lhs.rs, lhs.cs) < lhs.data.len(), "sgemm: lhs too short");
    assert!(last(k, n, rhs.rs, rhs.cs) < rhs.data.len(), "sgemm: rhs too short");
    // SAFETY: the asserts above keep every element the GEMM touches inside its slice (strides are
    // non-negative and the largest index is the last one); `dst` is a unique borrow, so it does not
    // alias `lhs` or `rhs`; strides fit in isize because slice lengths do.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            keep.is_some(),
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            keep.unwrap_or(0.0),
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}
