//! CUDA launches of `kernels/conv.cu` on the caller's stream and device buffers.
//!
//! Filters, bias and gradients of filters and bias are f32. The activations and their gradients
//! (x, y, dy, dx) are f32 everywhere, and f32 or bf16 ([`ActDtype`]) in the functions of the
//! trainer's passes ([`forward_algo`], [`backward_data_algo`], [`backward_weight_algo`],
//! [`backward_weight_algo_in`]): mixed-precision training, with f32 accumulation either way. A bf16
//! activation is converted to f32 exactly by the kernels, and a bf16 output is the f32 result
//! rounded to nearest even. The [`Algo::Naive`] kernels and [`bias_grad`] exist for f32 only.
//!
//! Every function checks every buffer length against the [`Conv2dShape`] before launching. The
//! kernels index with 32-bit integers, so tensors (and GEMM dimensions) above [`MAX_INDEX`] are refused
//! ([`Error::TooLarge`]).
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::{Conv2dShape, ConvAlgo};
use crate::cuda::{
    after_launch, blocks_for, cfg, check_device, check_devices, check_len, function, ActDtype, MAX_INDEX,
};
use crate::error::{DriverContext, Error, Result};

const OP: &str = "conv2d (cuda)";
const MODULE: &str = "conv";
/// Tile (pixels x filters) and block size of the tensor-core forward kernels.
const TC_TILE: usize = 64;
const TC_THREADS: u32 = 128;
/// Channels per reduction tile of the tensor-core kernels; layers with fewer input channels (the
/// stem) take the forward kernels that reduce over the flattened (c, r, s), up to this many.
const TC_CHANNEL_TILE: usize = 16;
const STEM_MAX_CRS: usize = 256;
/// Tile sizes of the implicit-GEMM kernels (BM = BN, BK) and their block size.
const TILE: usize = 64;
const TILE_K: usize = 16;
const TILE_THREADS: u32 = 256;
/// The weight gradient splits its reduction until about this many blocks are launched...
const TARGET_BLOCKS: usize = 512;
/// ...but gives each split at least this many output pixels (N*OH*OW) to reduce.
const MIN_SPLIT_ROWS: usize = 512;

/// Pass as `bias` for a convolution without one.
pub const NO_BIAS: Option<&CudaSlice<f32>> = None;

/// The split-K weight gradient's device scratch, kept across calls: a training loop that passes
/// the same one to [`backward_weight_algo_in`] allocates it once (grown when a larger layer is
/// first seen) instead of in every backward pass. Every use overwrites the part it reads (each
/// split writes its whole `K*C*R*S` slice before the sum reads it), so it is never zeroed. Use it
/// on one stream: a call on that stream is ordered after the previous call's sum has read it.
pub type WeightWorkspace = crate::cuda::Scratch;

/// Which kernel variant runs a pass; all compute the same thing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algo {
    /// Shared-memory tiled implicit GEMM (64x64 tiles, 4x4 per thread). The default.
    #[default]
    ImplicitGemm,
    /// One thread per output element with direct loops: slow, for cross-checking.
    Naive,
}

/// Mirrors `Conv2dParams` in `kernels/conv.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct Conv2dParams {
    n: i32,
    c: i32,
    h: i32,
    w: i32,
    k: i32,
    r: i32,
    s: i32,
    stride_h: i32,
    stride_w: i32,
    pad_h: i32,
    pad_w: i32,
    dil_h: i32,
    dil_w: i32,
    oh: i32,
    ow: i32,
}
// SAFETY: plain-old-data with the same layout as the C struct (15 x i32, no padding).
unsafe impl cudarc::driver::DeviceRepr for Conv2dParams {}
crate::cuda::check_params_layout!(Conv2dParams);

impl Conv2dParams {
    /// The kernels' parameters, or [`Error::TooLarge`] when a tensor does not fit 32-bit indexing.
    fn new(sh: &Conv2dShape) -> Result<Self> {
        // Besides the tensors, the implicit GEMMs' dimensions: the kernels form column indices up
        // to a 64-wide tile past N*OH*OW (forward, weight gradient) and N*H*W (data gradient), and
        // the bias gradient strides 256 past N*OH*OW, all in i32.
        let npq = sh.n() * sh.oh() * sh.ow();
        let nhw = sh.n() * sh.h() * sh.w();
        for (what, len) in [
            ("input", sh.input_len()),
            ("filter", sh.filter_len()),
            ("output", sh.output_len()),
            ("N*OH*OW", npq),
            ("N*H*W", nhw),
        ] {
            if len > MAX_INDEX {
                return Err(Error::TooLarge {
                    op: OP,
                    msg: format!("{what} is {len}; the kernels index with 32 bits and take at most {MAX_INDEX}"),
                });
            }
        }
        let o = sh.opts();
        let i = |what: &str, v: Option<usize>| -> Result<i32> {
            v.and_then(|v| i32::try_from(v).ok()).ok_or_else(|| too_large(what))
        };
        // The padded sizes bound every coordinate the kernels form (ih, iw, ih + pad, op * stride,
        // r * dilation), so they must fit.
        i("padded height", o.pad[0].checked_mul(2).and_then(|v| v.checked_add(sh.h())))?;
        i("padded width", o.pad[1].checked_mul(2).and_then(|v| v.checked_add(sh.w())))?;
        // A stride or dilation only ever multiplied by 0 (one output row, one filter row) is
        // passed as 1, so an arbitrary one is accepted there too.
        let one_if = |unused: bool, v: usize| Some(if unused { 1 } else { v });
        Ok(Self {
            n: i("n", Some(sh.n()))?,
            c: i("c", Some(sh.c()))?,
            h: i("h", Some(sh.h()))?,
            w: i("w", Some(sh.w()))?,
            k: i("k", Some(sh.k()))?,
            r: i("r", Some(sh.r()))?,
            s: i("s", Some(sh.s()))?,
            stride_h: i("stride", one_if(sh.oh() == 1, o.stride[0]))?,
            stride_w: i("stride", one_if(sh.ow() == 1, o.stride[1]))?,
            pad_h: i("pad", Some(o.pad[0]))?,
            pad_w: i("pad", Some(o.pad[1]))?,
            dil_h: i("dilation", one_if(sh.r() == 1, o.dilation[0]))?,
            dil_w: i("dilation", one_if(sh.s() == 1, o.dilation[1]))?,
            oh: i("oh", Some(sh.oh()))?,
            ow: i("ow", Some(sh.ow()))?,
        })
    }
}

fn too_large(what: &str) -> Error {
    Error::TooLarge { op: OP, msg: format!("{what} does not fit the kernels' 32-bit indexing") }
}

/// Grid of a tiled kernel: `cols` GEMM columns by `rows` GEMM rows (by `z`).
fn tiled_cfg(cols: usize, rows: usize, z: usize) -> Result<LaunchConfig> {
    let gx = cols.div_ceil(TILE);
    let gy = rows.div_ceil(TILE);
    if gx > i32::MAX as usize || gy > 65_535 || z > 65_535 {
        return Err(Error::TooLarge { op: OP, msg: format!("grid {gx} x {gy} x {z} exceeds the CUDA limits") });
    }
    Ok(LaunchConfig {
        grid_dim: (gx as u32, gy as u32, z as u32),
        block_dim: (TILE_THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Grid-stride launch over `total` elements, 256 threads a block.
fn flat_cfg(total: usize) -> LaunchConfig {
    cfg(blocks_for(total, 256).min(1 << 20), 256, 0)
}

/// `y = conv(x, w) + bias` with the default [`Algo`]: `x` NCHW, `w` KCRS, `bias` (k) or
/// [`NO_BIAS`], `y` N x K x OH x OW.
pub fn forward<B: DevicePtr<f32>>(
    stream: &Arc<CudaStream>,
    shape: &Conv2dShape,
    x: &impl DevicePtr<f32>,
    w: &impl DevicePtr<f32>,
    bias: Option<&B>,
    y: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    check_devices!(OP, stream, x, w, y);
    if let Some(b) = &bias {
        check_device(OP, stream, "bias", &**b)?;
    }
    forward_with(stream, Algo::default(), shape, x, w, bias, y)
}

/// [`forward`] with a chosen kernel variant.
pub fn forward_with<B: DevicePtr<f32>>(
    stream: &Arc<CudaStream>,
    algo: Algo,
    shape: &Conv2dShape,
    x: &impl DevicePtr<f32>,
    w: &impl DevicePtr<f32>,
    bias: Option<&B>,
    y: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    check_devices!(OP, stream, x, w, y);
    if let Some(b) = &bias {
        check_device(OP, stream, "bias", &**b)?;
    }
    let p = forward_lens(shape, x, w, bias, y)?;
    let (name, launch) = match algo {
        Algo::ImplicitGemm => ("conv2d_fwd_f32", tiled_cfg(shape.n() * shape.oh() * shape.ow(), shape.k(), 1)?),
        Algo::Naive => ("conv2d_fwd_naive_f32", flat_cfg(shape.output_len())),
    };
    launch_forward(stream, name, launch, &p, x, w, bias, y)
}

/// The kernel `base` (its f32-activation name, e.g. `conv2d_fwd_tf32`) for activations of type `A`:
/// `conv2d_fwd_tf32` or `conv2d_fwd_tf32_abf16` (the naming of kernels/conv.cu's header).
fn act_kernel<A: ActDtype>(base: &str) -> String {
    format!("{base}{}", A::ACT_SUFFIX)
}

/// The forward pass's parameters, once the buffers' lengths match `shape`.
fn forward_lens<A: ActDtype, B: DevicePtr<f32>>(
    shape: &Conv2dShape,
    x: &impl DevicePtr<A>,
    w: &impl DevicePtr<f32>,
    bias: Option<&B>,
    y: &impl DevicePtrMut<A>,
) -> Result<Conv2dParams> {
    let p = Conv2dParams::new(shape)?;
    check_len(OP, "x", x.len(), shape.input_len())?;
    check_len(OP, "w", w.len(), shape.filter_len())?;
    if let Some(b) = bias {
        check_len(OP, "bias", b.len(), shape.k())?;
    }
    check_len(OP, "y", y.len(), shape.output_len())?;
    Ok(p)
}

/// Launches the forward kernel `name` of kernels/conv.cu for activations of type `A` (they share
/// one argument list, with `A` for x and y) on buffers [`forward_lens`] has checked.
#[allow(clippy::too_many_arguments)]
fn launch_forward<A: ActDtype, B: DevicePtr<f32>>(
    stream: &Arc<CudaStream>,
    name: &str,
    launch: LaunchConfig,
    p: &Conv2dParams,
    x: &impl DevicePtr<A>,
    w: &impl DevicePtr<f32>,
    bias: Option<&B>,
    y: &mut impl DevicePtrMut<A>,
) -> Result<()> {
    let f = function(stream, MODULE, name)?;
    let (xp, _gx) = x.device_ptr(stream);
    let (wp, _gw) = w.device_ptr(stream);
    let bias_guard = bias.map(|b| b.device_ptr(stream));
    // A null pointer tells the kernel there is no bias.
    let bp: u64 = bias_guard.as_ref().map_or(0, |(ptr, _)| *ptr);
    let (yp, _gy) = y.device_ptr_mut(stream);
    let mut b = stream.launch_builder(&f);
    b.arg(&xp).arg(&wp).arg(&bp).arg(&yp).arg(p);
    // SAFETY: x and y hold exactly input_len and output_len elements of A, w and bias exactly
    // filter_len and k f32s (forward_lens). Every forward kernel indexes only inside those, by the
    // shape in `p` (all < 2^31, Conv2dParams::new): the FP32 ones by construction, the tensor-core
    // ones gather x and w only at in-bounds coordinates (others are stored as zeros in shared
    // memory) and write y only for pixels < N*OH*OW and filters < K. bias is such a buffer or
    // null, tested before use. `name` is the entry point for A (act_kernel; the naive kernels,
    // launched with f32 only, have no other), so the argument list matches
    // `(const T*, const float*, const float*, T*, Conv2dParams)` with T = float for f32 and
    // __nv_bfloat16 (2 bytes, as half::bf16) for bf16. `launch` has the block size of the
    // kernel's __launch_bounds__ (tiled_cfg, flat_cfg or the 128 threads of the tensor-core grids).
    unsafe { b.launch(launch) }.during(OP)?;
    after_launch(stream, OP, &f)?;
    Ok(())
}

/// The algorithm [`ConvAlgo::Auto`] stands for on `stream`'s device (any other is returned as
/// it is); errors ([`Error::NoCuda`]) when a tensor-core one is asked of a device older than
/// compute capability 8.0.
pub fn resolve_algo(stream: &Arc<CudaStream>, algo: ConvAlgo) -> Result<ConvAlgo> {
    let (major, minor) = stream.context().compute_capability().during("reading the compute capability")?;
    let algo = algo.resolve(major);
    if matches!(algo, ConvAlgo::Tf32 | ConvAlgo::Bf16) && major < 8 {
        return Err(Error::NoCuda(format!(
            "{algo:?} convolutions need tensor cores of compute capability 8.0 or newer; the device has {major}.{minor}"
        )));
    }
    Ok(algo)
}

/// [`forward`] on the arithmetic `algo` picks, with activations `x` and `y` of type `A` (f32, or
/// bf16 for mixed precision: `y` is then the f32 result rounded to bf16): `Fp32` runs
/// [`Algo::ImplicitGemm`], `Tf32` and `Bf16` the tensor-core kernels (`conv2d_fwd_tf32`,
/// `conv2d_fwd_bf16`, with `_abf16` for bf16 activations), `Auto` what [`resolve_algo`] says.
pub fn forward_algo<A: ActDtype, B: DevicePtr<f32>>(
    stream: &Arc<CudaStream>,
    algo: ConvAlgo,
    shape: &Conv2dShape,
    x: &impl DevicePtr<A>,
    w: &impl DevicePtr<f32>,
    bias: Option<&B>,
    y: &mut impl DevicePtrMut<A>,
) -> Result<()> {
    check_devices!(OP, stream, x, w, y);
    if let Some(b) = &bias {
        check_device(OP, stream, "bias", &**b)?;
    }
    // The stem kernels reduce over the flattened (c, r, s) (see kernels/conv.cu).
    let stem = shape.c() < TC_CHANNEL_TILE && shape.c() * shape.r() * shape.s() <= STEM_MAX_CRS;
    let algo = resolve_algo(stream, algo)?;
    let p = forward_lens(shape, x, w, bias, y)?;
    let (npq, k) = (shape.n() * shape.oh() * shape.ow(), shape.k());
    let (base, launch) = match (algo, stem) {
        (ConvAlgo::Tf32, false) => ("conv2d_fwd_tf32", tc_cfg(npq, k, 1)?),
        (ConvAlgo::Bf16, false) => ("conv2d_fwd_bf16", tc_cfg(npq, k, 1)?),
        (ConvAlgo::Tf32, true) => ("conv2d_fwd_stem_tf32", tc_cfg(npq, k, 1)?),
        (ConvAlgo::Bf16, true) => ("conv2d_fwd_stem_bf16", tc_cfg(npq, k, 1)?),
        // Fp32: the FFMA kernel of Algo::ImplicitGemm.
        _ => ("conv2d_fwd_f32", tiled_cfg(npq, k, 1)?),
    };
    launch_forward(stream, &act_kernel::<A>(base), launch, &p, x, w, bias, y)
}

/// `dx` (NCHW, overwritten) = gradient of the input from `dy` (N x K x OH x OW) and `w` (KCRS),
/// with the default [`Algo`].
pub fn backward_data(
    stream: &Arc<CudaStream>,
    shape: &Conv2dShape,
    dy: &impl DevicePtr<f32>,
    w: &impl DevicePtr<f32>,
    dx: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    check_devices!(OP, stream, dy, w, dx);
    backward_data_with(stream, Algo::default(), shape, dy, w, dx)
}

/// [`backward_data`] with a chosen kernel variant.
pub fn backward_data_with(
    stream: &Arc<CudaStream>,
    algo: Algo,
    shape: &Conv2dShape,
    dy: &impl DevicePtr<f32>,
    w: &impl DevicePtr<f32>,
    dx: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    check_devices!(OP, stream, dy, w, dx);
    let p = data_lens(shape, dy, w, dx)?;
    let (name, launch) = match algo {
        Algo::ImplicitGemm => ("conv2d_bwd_data_f32", tiled_cfg(shape.n() * shape.h() * shape.w(), shape.c(), 1)?),
        Algo::Naive => ("conv2d_bwd_data_naive_f32", flat_cfg(shape.input_len())),
    };
    launch_backward_data(stream, name, launch, &p, dy, w, dx)
}

/// The data gradient's parameters, once the buffers' lengths match `shape`.
fn data_lens<A: ActDtype>(
    shape: &Conv2dShape,
    dy: &impl DevicePtr<A>,
    w: &impl DevicePtr<f32>,
    dx: &impl DevicePtrMut<A>,
) -> Result<Conv2dParams> {
    let p = Conv2dParams::new(shape)?;
    check_len(OP, "dy", dy.len(), shape.output_len())?;
    check_len(OP, "w", w.len(), shape.filter_len())?;
    check_len(OP, "dx", dx.len(), shape.input_len())?;
    Ok(p)
}

/// Launches the data-gradient kernel `name` of kernels/conv.cu for activation gradients of type
/// `A` (they share one argument list, with `A` for dy and dx) on buffers [`data_lens`] has checked.
fn launch_backward_data<A: ActDtype>(
    stream: &Arc<CudaStream>,
    name: &str,
    launch: LaunchConfig,
    p: &Conv2dParams,
    dy: &impl DevicePtr<A>,
    w: &impl DevicePtr<f32>,
    dx: &mut impl DevicePtrMut<A>,
) -> Result<()> {
    let f = function(stream, MODULE, name)?;
    let (dyp, _gdy) = dy.device_ptr(stream);
    let (wp, _gw) = w.device_ptr(stream);
    let (dxp, _gdx) = dx.device_ptr_mut(stream);
    let mut b = stream.launch_builder(&f);
    b.arg(&dyp).arg(&wp).arg(&dxp).arg(p);
    // SAFETY: dy and dx hold exactly output_len and input_len elements of A, w filter_len f32s
    // (data_lens). Every data-gradient kernel indexes only inside those by the shape in `p`
    // (< 2^31 elements each): the tensor-core one gathers dy and w only at in-bounds coordinates
    // and writes dx only for pixels < N*H*W and channels < C. `name` is the entry point for A
    // (act_kernel), so the argument list matches `(const T*, const float*, T*, Conv2dParams)`
    // with T = float for f32 and __nv_bfloat16 (2 bytes, as half::bf16) for bf16. `launch` has
    // the block size of the kernel's __launch_bounds__.
    unsafe { b.launch(launch) }.during(OP)?;
    after_launch(stream, OP, &f)?;
    Ok(())
}

/// `dw = beta * dw + grad` (KCRS), the gradient of the filters from `x` (NCHW) and `dy`, with the
/// default [`Algo`]. With `beta == 0` the old `dw` is never read. May allocate a workspace on
/// `stream` (the reduction over N*OH*OW is split over blocks, then summed in a fixed order, so the
/// result is deterministic).
pub fn backward_weight(
    stream: &Arc<CudaStream>,
    shape: &Conv2dShape,
    x: &impl DevicePtr<f32>,
    dy: &impl DevicePtr<f32>,
    dw: &mut impl DevicePtrMut<f32>,
    beta: f32,
) -> Result<()> {
    check_devices!(OP, stream, x, dy, dw);
    backward_weight_with(stream, Algo::default(), shape, x, dy, dw, beta)
}

/// [`backward_weight`] with a chosen kernel variant.
pub fn backward_weight_with(
    stream: &Arc<CudaStream>,
    algo: Algo,
    shape: &Conv2dShape,
    x: &impl DevicePtr<f32>,
    dy: &impl DevicePtr<f32>,
    dw: &mut impl DevicePtrMut<f32>,
    beta: f32,
) -> Result<()> {
    backward_weight_with_in(stream, algo, shape, x, dy, dw, beta, &mut WeightWorkspace::new())
}

/// [`backward_weight_with`] with the caller's workspace.
#[allow(clippy::too_many_arguments)]
fn backward_weight_with_in(
    stream: &Arc<CudaStream>,
    algo: Algo,
    shape: &Conv2dShape,
    x: &impl DevicePtr<f32>,
    dy: &impl DevicePtr<f32>,
    dw: &mut impl DevicePtrMut<f32>,
    beta: f32,
    ws: &mut WeightWorkspace,
) -> Result<()> {
    check_devices!(OP, stream, x, dy, dw);
    let p = Conv2dParams::new(shape)?;
    check_len(OP, "x", x.len(), shape.input_len())?;
    check_len(OP, "dy", dy.len(), shape.output_len())?;
    check_len(OP, "dw", dw.len(), shape.filter_len())?;
    if algo == Algo::Naive {
        let f = function(stream, MODULE, "conv2d_bwd_weight_naive_f32")?;
        let (xp, _gx) = x.device_ptr(stream);
        let (dyp, _gdy) = dy.device_ptr(stream);
        let (dwp, _gdw) = dw.device_ptr_mut(stream);
        let mut b = stream.launch_builder(&f);
        b.arg(&xp).arg(&dyp).arg(&dwp).arg(&p).arg(&beta);
        // SAFETY: x, dy and dw hold input_len, output_len and filter_len f32s (checked above); the
        // kernel indexes only inside those by `p`; the arguments match
        // `(const float*, const float*, float*, Conv2dParams, float)`.
        unsafe { b.launch(flat_cfg(shape.filter_len())) }.during(OP)?;
        after_launch(stream, OP, &f)?;
        return Ok(());
    }

    let splits = weight_splits(shape).0;
    let launch = tiled_cfg(shape.c(), shape.k(), shape.r() * shape.s() * splits)?;
    weight_split_k::<f32>(stream, "conv2d_bwd_weight_f32", launch, shape, x, dy, dw, beta, ws)
}

/// The split-K weight gradient shared by the FP32 and tensor-core kernels (`kernel`, the entry
/// point for activations of type `A`, launched as `launch`, whose grid's z is R*S times the splits
/// of [`weight_splits`]): one launch into `dw` when there is one split, else one into a (f32)
/// workspace and `conv2d_sum_splits_f32`, which adds the splits in a fixed order (the same result
/// bit for bit on every run), the workspace taken from `ws` (grown when too short). Lengths checked
/// by the caller.
#[allow(clippy::too_many_arguments)]
fn weight_split_k<A: ActDtype>(
    stream: &Arc<CudaStream>,
    kernel: &str,
    launch: LaunchConfig,
    shape: &Conv2dShape,
    x: &impl DevicePtr<A>,
    dy: &impl DevicePtr<A>,
    dw: &mut impl DevicePtrMut<f32>,
    beta: f32,
    ws: &mut WeightWorkspace,
) -> Result<()> {
    let p = Conv2dParams::new(shape)?;
    let kcrs = shape.filter_len();
    let (splits, chunk) = weight_splits(shape);
    let f = function(stream, MODULE, kernel)?;
    let (xp, _gx) = x.device_ptr(stream);
    let (dyp, _gdy) = dy.device_ptr(stream);
    let chunk_i = i32::try_from(chunk).map_err(|_| too_large("N*OH*OW"))?;
    if splits == 1 {
        let (dwp, _gdw) = dw.device_ptr_mut(stream);
        let mut b = stream.launch_builder(&f);
        b.arg(&xp).arg(&dyp).arg(&dwp).arg(&p).arg(&chunk_i).arg(&0i32).arg(&beta);
        // SAFETY: x and dy hold input_len and output_len elements of A, dw filter_len f32s
        // (checked by the caller); with one split (split_stride 0) the kernel writes
        // dw[m*CRS + c*RS + rs] for m < K, c < C, rs < R*S only, and reads x and dy inside their
        // shapes; `kernel` is the entry point for A, so the arguments match
        // `(const T*, const T*, float*, Conv2dParams, int, int, float)`, T = float for f32 and
        // __nv_bfloat16 (2 bytes, as half::bf16) for bf16.
        unsafe { b.launch(launch) }.during(OP)?;
        after_launch(stream, OP, &f)?;
        return Ok(());
    }
    let mut ws =
        view_mut_of(ws.at_least(stream, splits * kcrs, OP, "allocating the weight-gradient workspace")?, splits * kcrs);
    {
        let (wsp, _gws) = ws.device_ptr_mut(stream);
        let stride = kcrs as i32; // splits * kcrs < 2^31 (weight_splits)
        let mut b = stream.launch_builder(&f);
        b.arg(&xp).arg(&dyp).arg(&wsp).arg(&p).arg(&chunk_i).arg(&stride).arg(&0.0f32);
        // SAFETY: as above, but the block of split z writes ws[z*kcrs + i] for i < kcrs, with
        // z < splits and ws holding splits*kcrs f32s (< 2^31); beta 0 never reads ws.
        unsafe { b.launch(launch) }.during(OP)?;
        after_launch(stream, OP, &f)?;
    }
    let sum = function(stream, MODULE, "conv2d_sum_splits_f32")?;
    let (wsp, _gws) = ws.device_ptr(stream);
    let (dwp, _gdw) = dw.device_ptr_mut(stream);
    let (len, nsplit) = (kcrs as i32, splits as i32);
    let mut b = stream.launch_builder(&sum);
    b.arg(&wsp).arg(&dwp).arg(&len).arg(&nsplit).arg(&beta);
    // SAFETY: ws holds splits*len and dw len f32s; the kernel reads ws[s*len + i] and reads/writes
    // dw[i] for s < splits, i < len only; the arguments match
    // `(const float*, float*, int, int, float)`. The workspace outlives the launch: it is the
    // caller's, or freed stream-ordered after the kernel.
    unsafe { b.launch(flat_cfg(kcrs)) }.during(OP)?;
    after_launch(stream, OP, &sum)?;
    Ok(())
}

/// Grid of a tensor-core kernel: `rows` GEMM rows by `cols` columns (by `z`), 128 threads.
fn tc_cfg(rows: usize, cols: usize, z: usize) -> Result<LaunchConfig> {
    let (gx, gy) = (rows.div_ceil(TC_TILE), cols.div_ceil(TC_TILE));
    if gx > i32::MAX as usize || gy > 65_535 || z > 65_535 {
        return Err(Error::TooLarge { op: OP, msg: format!("grid {gx} x {gy} x {z} exceeds the CUDA limits") });
    }
    Ok(LaunchConfig { grid_dim: (gx as u32, gy as u32, z as u32), block_dim: (TC_THREADS, 1, 1), shared_mem_bytes: 0 })
}

/// [`backward_data`] on the arithmetic `algo` picks (see [`forward_algo`]), with activation
/// gradients `dy` and `dx` of type `A` (bf16: `dx` is the f32 result rounded to bf16).
pub fn backward_data_algo<A: ActDtype>(
    stream: &Arc<CudaStream>,
    algo: ConvAlgo,
    shape: &Conv2dShape,
    dy: &impl DevicePtr<A>,
    w: &impl DevicePtr<f32>,
    dx: &mut impl DevicePtrMut<A>,
) -> Result<()> {
    check_devices!(OP, stream, dy, w, dx);
    let algo = resolve_algo(stream, algo)?;
    let p = data_lens(shape, dy, w, dx)?;
    let (nhw, c) = (shape.n() * shape.h() * shape.w(), shape.c());
    let (base, launch) = match algo {
        ConvAlgo::Tf32 => ("conv2d_bwd_data_tf32", tc_cfg(nhw, c, 1)?),
        ConvAlgo::Bf16 => ("conv2d_bwd_data_bf16", tc_cfg(nhw, c, 1)?),
        _ => ("conv2d_bwd_data_f32", tiled_cfg(nhw, c, 1)?),
    };
    launch_backward_data(stream, &act_kernel::<A>(base), launch, &p, dy, w, dx)
}

/// [`backward_weight`] on the arithmetic `algo` picks (see [`forward_algo`]), with activations
/// `x` and `dy` of type `A` (`dw` is f32 whatever `A`); deterministic whatever the algorithm
/// (split-K with a fixed-order sum). Allocates its workspace per call: [`backward_weight_algo_in`]
/// keeps it.
pub fn backward_weight_algo<A: ActDtype>(
    stream: &Arc<CudaStream>,
    algo: ConvAlgo,
    shape: &Conv2dShape,
    x: &impl DevicePtr<A>,
    dy: &impl DevicePtr<A>,
    dw: &mut impl DevicePtrMut<f32>,
    beta: f32,
) -> Result<()> {
    backward_weight_algo_in(stream, algo, shape, x, dy, dw, beta, &mut WeightWorkspace::new())
}

/// [`backward_weight_algo`] with the split-K scratch in `ws` (see [`WeightWorkspace`]): no
/// allocation once `ws` is large enough for `shape`.
#[allow(clippy::too_many_arguments)]
pub fn backward_weight_algo_in<A: ActDtype>(
    stream: &Arc<CudaStream>,
    algo: ConvAlgo,
    shape: &Conv2dShape,
    x: &impl DevicePtr<A>,
    dy: &impl DevicePtr<A>,
    dw: &mut impl DevicePtrMut<f32>,
    beta: f32,
    ws: &mut WeightWorkspace,
) -> Result<()> {
    check_devices!(OP, stream, x, dy, dw);
    let algo = resolve_algo(stream, algo)?;
    Conv2dParams::new(shape)?;
    check_len(OP, "x", x.len(), shape.input_len())?;
    check_len(OP, "dy", dy.len(), shape.output_len())?;
    check_len(OP, "dw", dw.len(), shape.filter_len())?;
    let (k, c, z) = (shape.k(), shape.c(), shape.r() * shape.s() * weight_splits(shape).0);
    // The FP32 kernel's grid is (C tiles, K tiles), the tensor-core ones' (K tiles, C tiles).
    let (base, launch) = match algo {
        ConvAlgo::Tf32 => ("conv2d_bwd_weight_tf32", tc_cfg(k, c, z)?),
        ConvAlgo::Bf16 => ("conv2d_bwd_weight_bf16", tc_cfg(k, c, z)?),
        _ => ("conv2d_bwd_weight_f32", tiled_cfg(c, k, z)?),
    };
    weight_split_k(stream, &act_kernel::<A>(base), launch, shape, x, dy, dw, beta, ws)
}

/// The first `len` f32s of a workspace buffer (`len <= b.len()`, as `at_least` ensures).
fn view_mut_of(b: &mut CudaSlice<f32>, len: usize) -> cudarc::driver::CudaViewMut<'_, f32> {
    b.slice_mut(..len)
}

/// `(splits, chunk)`: the weight gradient's reduction over N*OH*OW is cut into `splits` ranges of
/// `chunk` (a multiple of the tile depth when there are several), none empty, with the workspace
/// under 2^31 elements and `chunk <= N*OH*OW < 2^31`.
fn weight_splits(shape: &Conv2dShape) -> (usize, usize) {
    let rs = shape.r() * shape.s();
    let npq = shape.n() * shape.oh() * shape.ow();
    let tiles = shape.c().div_ceil(TILE) * shape.k().div_ceil(TILE) * rs;
    let mut splits = TARGET_BLOCKS.div_ceil(tiles).min(npq.div_ceil(MIN_SPLIT_ROWS));
    splits = splits.min(65_535 / rs.max(1)).min(i32::MAX as usize / shape.filter_len()).max(1);
    if splits == 1 {
        return (1, npq);
    }
    let chunk = npq.div_ceil(splits).next_multiple_of(TILE_K);
    (npq.div_ceil(chunk), chunk)
}

/// `db = beta * db + sum over n, oh, ow of dy` (k). With `beta == 0` the old `db` is never read.
pub fn bias_grad(
    stream: &Arc<CudaStream>,
    shape: &Conv2dShape,
    dy: &impl DevicePtr<f32>,
    db: &mut impl DevicePtrMut<f32>,
    beta: f32,
) -> Result<()> {
    check_devices!(OP, stream, dy, db);
    let p = Conv2dParams::new(shape)?;
    check_len(OP, "dy", dy.len(), shape.output_len())?;
    check_len(OP, "db", db.len(), shape.k())?;
    let f = function(stream, MODULE, "conv2d_bias_grad_f32")?;
    let (dyp, _gdy) = dy.device_ptr(stream);
    let (dbp, _gdb) = db.device_ptr_mut(stream);
    let mut b = stream.launch_builder(&f);
    b.arg(&dyp).arg(&dbp).arg(&p).arg(&beta);
    // SAFETY: dy holds output_len and db k f32s (checked above); the kernel reads
    // dy[(n*K + k)*OH*OW + pq] and writes db[k] for in-range n, k, pq only; 256 threads (a multiple
    // of 32, as block_sum needs); the arguments match `(const float*, float*, Conv2dParams, float)`.
    unsafe { b.launch(cfg(blocks_for(shape.k(), 1).min(65_535), 256, 0)) }.during(OP)?;
    after_launch(stream, OP, &f)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::Conv2dOpts;

    fn shape(input: [usize; 4], filter: [usize; 4]) -> Conv2dShape {
        Conv2dShape::new(input, filter, Conv2dOpts::default()).expect("valid shape")
    }

    #[test]
    fn sizes_within_a_tile_of_2_pow_31_are_refused_before_launch() {
        // 1x1 convolutions over one very wide row: N*OH*OW = N*H*W = the input length.
        for len in [i32::MAX as usize - 10, i32::MAX as usize - 63, MAX_INDEX + 1] {
            let err = Conv2dParams::new(&shape([1, 1, 1, len], [1, 1, 1, 1])).unwrap_err();
            assert!(matches!(err, Error::TooLarge { .. }), "{len}: {err}");
        }
        // Many images of one pixel: the GEMM column count is N, the tensors are small per image.
        let err = Conv2dParams::new(&shape([i32::MAX as usize - 5, 1, 1, 1], [1, 1, 1, 1])).unwrap_err();
        assert!(err.to_string().contains("N*OH*OW") || err.to_string().contains("input"), "{err}");
        // Filters: K within a tile of 2^31.
        let err = Conv2dParams::new(&shape([1, 1, 1, 1], [i32::MAX as usize - 3, 1, 1, 1])).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
        // The largest accepted size still builds parameters.
        let p = Conv2dParams::new(&shape([1, 1, 1, MAX_INDEX], [1, 1, 1, 1])).expect("MAX_INDEX fits");
        assert_eq!(p.w as usize, MAX_INDEX);
    }
}
