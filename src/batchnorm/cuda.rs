//! CUDA launches of `kernels/batchnorm.cu` on the caller's stream. The activations `x`, `y`, `dy`,
//! `dx` hold `n * c * hw` elements (NCHW) of an [`ActDtype`] (f32, or bf16 in mixed precision);
//! every per-channel buffer is `c` f32, and all math is f32.
//!
//! Every kernel runs a grid of (channels, splits) blocks: each channel's `n * hw` values are cut
//! into [`split_plan`]'s slices so that a layer of few channels still fills the GPU. The training
//! forward and the backward write per-slice partial results to a [`Workspace`] and merge them in
//! a fixed order (the same bits on every run). The `_in` forms take the caller's workspace (a
//! training loop allocates it once); the others allocate one per call.
use std::sync::Arc;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::{BnConfig, BnShape};
use crate::cuda::{after_launch, check_devices, check_len, function, ActDtype, MAX_INDEX};
use crate::error::{DriverContext, Error, Result};

const OP: &str = "batchnorm (cuda)";
const MODULE: &str = "batchnorm";
/// Threads per block of every kernel (`BN_THREADS` in the kernel).
const THREADS: u32 = 256;
/// Most slices a channel is cut into (`BN_MAX_SPLITS`: the merge gives each a lane of one warp).
pub const MAX_SPLITS: usize = 32;
/// The slices aim at up to this many blocks: 132 SMs (H100/H200) x 8 resident 256-thread blocks,
/// one full wave at full occupancy (the register use allows it: docs/kernel-resources.md).
const TARGET_BLOCKS: usize = 132 * 8;
/// ...but give each slice at least this many values (4 groups of 4 a thread), so that a block's
/// fixed cost (the merge, the index setup) stays small next to its loads.
const MIN_CHUNK: usize = 4 * 4 * THREADS as usize;

/// Device scratch of the per-slice partial results (two f32 per channel and slice), kept across
/// calls: a training loop that passes the same one to the `_in` functions allocates it once
/// (grown when a larger layer is first seen). Every launch that reads it reads only what the
/// launch before it on the stream wrote, so it is never zeroed. Use it on one stream.
pub type Workspace = crate::cuda::Scratch;

/// How the kernels cut each channel's `m = n * hw` values: `splits` slices of `chunk` values (the
/// last one shorter, none empty); `chunk` is a multiple of 4 when `vec` (groups of 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitPlan {
    pub splits: usize,
    pub chunk: usize,
}

/// The slices of [`SplitPlan`] for `shape`: at most [`TARGET_BLOCKS`] blocks over all channels
/// (unless there are more channels), at most [`MAX_SPLITS`] a channel, at least [`MIN_CHUNK`]
/// values a slice (one slice when the channel is shorter). Empty shapes get one slice of 0.
pub fn split_plan(shape: BnShape, vec: bool) -> SplitPlan {
    let m = shape.per_channel();
    if m == 0 {
        return SplitPlan { splits: 1, chunk: 0 };
    }
    // Rounded down: one more block than a wave holds would run a second, nearly empty wave.
    let want = (TARGET_BLOCKS / shape.c.max(1)).clamp(1, MAX_SPLITS).min(m.div_ceil(MIN_CHUNK));
    let mut chunk = m.div_ceil(want);
    if vec {
        chunk = chunk.next_multiple_of(4);
    }
    SplitPlan { splits: m.div_ceil(chunk), chunk }
}

/// Mirrors `BnParams` in `kernels/batchnorm.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct BnParams {
    n: i32,
    c: i32,
    hw: i32,
    eps: f32,
    momentum: f32,
    relu: i32,
    splits: i32,
    chunk: i32,
    vec: i32,
}
// SAFETY: plain-old-data with the same layout as the C struct (nine 4-byte fields; no padding).
unsafe impl cudarc::driver::DeviceRepr for BnParams {}
crate::cuda::check_params_layout!(BnParams);

/// Training forward: `y = bn(x)` with batch statistics; writes `save_mean`, `save_invstd` and
/// updates `running_mean`, `running_var` in place. Allocates a workspace; see
/// [`forward_train_in`].
#[allow(clippy::too_many_arguments)]
pub fn forward_train<A: ActDtype>(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<A>,
    gamma: &impl DevicePtr<f32>,
    beta: &impl DevicePtr<f32>,
    running_mean: &mut impl DevicePtrMut<f32>,
    running_var: &mut impl DevicePtrMut<f32>,
    y: &mut impl DevicePtrMut<A>,
    save_mean: &mut impl DevicePtrMut<f32>,
    save_invstd: &mut impl DevicePtrMut<f32>,
    shape: BnShape,
    config: BnConfig,
) -> Result<()> {
    let ws = &mut Workspace::new();
    forward_train_in(stream, x, gamma, beta, running_mean, running_var, y, save_mean, save_invstd, shape, config, ws)
}

/// [`forward_train`] with the caller's workspace.
#[allow(clippy::too_many_arguments)]
pub fn forward_train_in<A: ActDtype>(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<A>,
    gamma: &impl DevicePtr<f32>,
    beta: &impl DevicePtr<f32>,
    running_mean: &mut impl DevicePtrMut<f32>,
    running_var: &mut impl DevicePtrMut<f32>,
    y: &mut impl DevicePtrMut<A>,
    save_mean: &mut impl DevicePtrMut<f32>,
    save_invstd: &mut impl DevicePtrMut<f32>,
    shape: BnShape,
    config: BnConfig,
    ws: &mut Workspace,
) -> Result<()> {
    check_devices!(OP, stream, x, gamma, beta, running_mean, running_var, y, save_mean, save_invstd);
    let bufs = TrainBufs { x, gamma, beta, running_mean, running_var, y, save_mean, save_invstd };
    train(stream, bufs, shape, config, false, ws)
}

/// Training forward fused with a ReLU: `y = relu(bn(x))`. Allocates a workspace; see
/// [`relu_forward_train_in`].
#[allow(clippy::too_many_arguments)]
pub fn relu_forward_train<A: ActDtype>(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<A>,
    gamma: &impl DevicePtr<f32>,
    beta: &impl DevicePtr<f32>,
    running_mean: &mut impl DevicePtrMut<f32>,
    running_var: &mut impl DevicePtrMut<f32>,
    y: &mut impl DevicePtrMut<A>,
    save_mean: &mut impl DevicePtrMut<f32>,
    save_invstd: &mut impl DevicePtrMut<f32>,
    shape: BnShape,
    config: BnConfig,
) -> Result<()> {
    let ws = &mut Workspace::new();
    relu_forward_train_in(
        stream,
        x,
        gamma,
        beta,
        running_mean,
        running_var,
        y,
        save_mean,
        save_invstd,
        shape,
        config,
        ws,
    )
}

/// [`relu_forward_train`] with the caller's workspace.
#[allow(clippy::too_many_arguments)]
pub fn relu_forward_train_in<A: ActDtype>(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<A>,
    gamma: &impl DevicePtr<f32>,
    beta: &impl DevicePtr<f32>,
    running_mean: &mut impl DevicePtrMut<f32>,
    running_var: &mut impl DevicePtrMut<f32>,
    y: &mut impl DevicePtrMut<A>,
    save_mean: &mut impl DevicePtrMut<f32>,
    save_invstd: &mut impl DevicePtrMut<f32>,
    shape: BnShape,
    config: BnConfig,
    ws: &mut Workspace,
) -> Result<()> {
    check_devices!(OP, stream, x, gamma, beta, running_mean, running_var, y, save_mean, save_invstd);
    let bufs = TrainBufs { x, gamma, beta, running_mean, running_var, y, save_mean, save_invstd };
    train(stream, bufs, shape, config, true, ws)
}

/// Eval forward from the running statistics.
#[allow(clippy::too_many_arguments)]
pub fn forward_eval<A: ActDtype>(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<A>,
    gamma: &impl DevicePtr<f32>,
    beta: &impl DevicePtr<f32>,
    running_mean: &impl DevicePtr<f32>,
    running_var: &impl DevicePtr<f32>,
    y: &mut impl DevicePtrMut<A>,
    shape: BnShape,
    config: BnConfig,
) -> Result<()> {
    check_devices!(OP, stream, x, gamma, beta, running_mean, running_var, y);
    eval(stream, x, gamma, beta, running_mean, running_var, y, shape, config, false)
}

/// Eval forward fused with a ReLU.
#[allow(clippy::too_many_arguments)]
pub fn relu_forward_eval<A: ActDtype>(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<A>,
    gamma: &impl DevicePtr<f32>,
    beta: &impl DevicePtr<f32>,
    running_mean: &impl DevicePtr<f32>,
    running_var: &impl DevicePtr<f32>,
    y: &mut impl DevicePtrMut<A>,
    shape: BnShape,
    config: BnConfig,
) -> Result<()> {
    check_devices!(OP, stream, x, gamma, beta, running_mean, running_var, y);
    eval(stream, x, gamma, beta, running_mean, running_var, y, shape, config, true)
}

/// Backward of [`forward_train`]: writes `dx`, `dgamma`, `dbeta`. Allocates a workspace; see
/// [`backward_in`].
#[allow(clippy::too_many_arguments)]
pub fn backward<A: ActDtype>(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<A>,
    dy: &impl DevicePtr<A>,
    gamma: &impl DevicePtr<f32>,
    save_mean: &impl DevicePtr<f32>,
    save_invstd: &impl DevicePtr<f32>,
    dx: &mut impl DevicePtrMut<A>,
    dgamma: &mut impl DevicePtrMut<f32>,
    dbeta: &mut impl DevicePtrMut<f32>,
    shape: BnShape,
) -> Result<()> {
    backward_in(stream, x, dy, gamma, save_mean, save_invstd, dx, dgamma, dbeta, shape, &mut Workspace::new())
}

/// [`backward`] with the caller's workspace.
#[allow(clippy::too_many_arguments)]
pub fn backward_in<A: ActDtype>(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<A>,
    dy: &impl DevicePtr<A>,
    gamma: &impl DevicePtr<f32>,
    save_mean: &impl DevicePtr<f32>,
    save_invstd: &impl DevicePtr<f32>,
    dx: &mut impl DevicePtrMut<A>,
    dgamma: &mut impl DevicePtrMut<f32>,
    dbeta: &mut impl DevicePtrMut<f32>,
    shape: BnShape,
    ws: &mut Workspace,
) -> Result<()> {
    check_devices!(OP, stream, x, dy, gamma, save_mean, save_invstd, dx, dgamma, dbeta);
    // `x` stands in for the unused `y`: only its length is checked and the kernels never read it.
    let bufs = BwdBufs { x, y: x, dy, gamma, save_mean, save_invstd, dx, dgamma, dbeta };
    bwd(stream, bufs, shape, false, ws)
}

/// Backward of [`relu_forward_train`]; `y` is its saved output. Allocates a workspace; see
/// [`relu_backward_in`].
#[allow(clippy::too_many_arguments)]
pub fn relu_backward<A: ActDtype>(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<A>,
    y: &impl DevicePtr<A>,
    dy: &impl DevicePtr<A>,
    gamma: &impl DevicePtr<f32>,
    save_mean: &impl DevicePtr<f32>,
    save_invstd: &impl DevicePtr<f32>,
    dx: &mut impl DevicePtrMut<A>,
    dgamma: &mut impl DevicePtrMut<f32>,
    dbeta: &mut impl DevicePtrMut<f32>,
    shape: BnShape,
) -> Result<()> {
    let ws = &mut Workspace::new();
    relu_backward_in(stream, x, y, dy, gamma, save_mean, save_invstd, dx, dgamma, dbeta, shape, ws)
}

/// [`relu_backward`] with the caller's workspace.
#[allow(clippy::too_many_arguments)]
pub fn relu_backward_in<A: ActDtype>(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<A>,
    y: &impl DevicePtr<A>,
    dy: &impl DevicePtr<A>,
    gamma: &impl DevicePtr<f32>,
    save_mean: &impl DevicePtr<f32>,
    save_invstd: &impl DevicePtr<f32>,
    dx: &mut impl DevicePtrMut<A>,
    dgamma: &mut impl DevicePtrMut<f32>,
    dbeta: &mut impl DevicePtrMut<f32>,
    shape: BnShape,
    ws: &mut Workspace,
) -> Result<()> {
    check_devices!(OP, stream, x, y, dy, gamma, save_mean, save_invstd, dx, dgamma, dbeta);
    let bufs = BwdBufs { x, y, dy, gamma, save_mean, save_invstd, dx, dgamma, dbeta };
    bwd(stream, bufs, shape, true, ws)
}

// ---- implementation ----------------------------------------------------------------------------

/// The buffers of a training forward.
struct TrainBufs<'a, X, G, B, RM, RV, Y, SM, SI> {
    x: &'a X,
    gamma: &'a G,
    beta: &'a B,
    running_mean: &'a mut RM,
    running_var: &'a mut RV,
    y: &'a mut Y,
    save_mean: &'a mut SM,
    save_invstd: &'a mut SI,
}

/// The buffers of a backward.
struct BwdBufs<'a, X, Y, DY, G, SM, SI, DX, DG, DB> {
    x: &'a X,
    y: &'a Y,
    dy: &'a DY,
    gamma: &'a G,
    save_mean: &'a SM,
    save_invstd: &'a SI,
    dx: &'a mut DX,
    dgamma: &'a mut DG,
    dbeta: &'a mut DB,
}

#[allow(clippy::type_complexity)]
fn train<A: ActDtype, X, G, B, RM, RV, Y, SM, SI>(
    stream: &Arc<CudaStream>,
    t: TrainBufs<'_, X, G, B, RM, RV, Y, SM, SI>,
    shape: BnShape,
    config: BnConfig,
    relu: bool,
    ws: &mut Workspace,
) -> Result<()>
where
    X: DevicePtr<A>,
    G: DevicePtr<f32>,
    B: DevicePtr<f32>,
    RM: DevicePtrMut<f32>,
    RV: DevicePtrMut<f32>,
    Y: DevicePtrMut<A>,
    SM: DevicePtrMut<f32>,
    SI: DevicePtrMut<f32>,
{
    let total = shape.len();
    check_len(OP, "x", t.x.len(), total)?;
    check_len(OP, "y", t.y.len(), total)?;
    for (what, len) in [
        ("gamma", t.gamma.len()),
        ("beta", t.beta.len()),
        ("running_mean", t.running_mean.len()),
        ("running_var", t.running_var.len()),
        ("save_mean", t.save_mean.len()),
        ("save_invstd", t.save_invstd.len()),
    ] {
        check_len(OP, what, len, shape.c)?;
    }
    check_training_batch(shape)?;
    check_size(shape)?;
    if total == 0 {
        return Ok(());
    }
    let stats = function(stream, MODULE, &format!("batchnorm_stats_f32{}", A::ACT_SUFFIX))?;
    let apply = function(stream, MODULE, &format!("batchnorm_train_apply_f32{}", A::ACT_SUFFIX))?;
    let (xp, _gx) = t.x.device_ptr(stream);
    let (gp, _gg) = t.gamma.device_ptr(stream);
    let (bp, _gb) = t.beta.device_ptr(stream);
    let (rmp, _grm) = t.running_mean.device_ptr_mut(stream);
    let (rvp, _grv) = t.running_var.device_ptr_mut(stream);
    let (yp, _gy) = t.y.device_ptr_mut(stream);
    let (smp, _gsm) = t.save_mean.device_ptr_mut(stream);
    let (sip, _gsi) = t.save_invstd.device_ptr_mut(stream);
    let p = params(shape, config, relu, aligned::<A>(&[xp, yp]))?;
    let partial = ws.at_least(stream, partial_len(shape, p), OP, "allocating the batch-norm workspace")?;
    let (pp, _gp) = partial.device_ptr_mut(stream);

    let mut b = stream.launch_builder(&stats);
    b.arg(&xp).arg(&pp).arg(&p);
    // SAFETY: x holds n*c*hw activations (checked above) and the workspace 2*c*splits; block (ch, s)
    // reads (i*c + ch)*hw + k with i < n, k < hw (groups of 4 only when hw % 4 == 0 and x is
    // aligned to a group, `params`) and writes partial[(ch*splits + s)*2 + {0, 1}]; m = n*hw >= 2;
    // the arguments match the kernel's signature.
    unsafe { b.launch(grid(shape, p)) }.during(OP)?;
    after_launch(stream, OP, &stats)?;

    let mut b = stream.launch_builder(&apply);
    b.arg(&xp).arg(&pp).arg(&gp).arg(&bp).arg(&rmp).arg(&rvp).arg(&smp).arg(&sip).arg(&yp).arg(&p);
    // SAFETY: as above for x and y (same indices, y aligned to a group when vectorized); it reads the
    // partials the stats launch just wrote and writes the per-channel buffers (c f32 each) at ch.
    unsafe { b.launch(grid(shape, p)) }.during(OP)?;
    after_launch(stream, OP, &apply)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn eval<A: ActDtype>(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<A>,
    gamma: &impl DevicePtr<f32>,
    beta: &impl DevicePtr<f32>,
    running_mean: &impl DevicePtr<f32>,
    running_var: &impl DevicePtr<f32>,
    y: &mut impl DevicePtrMut<A>,
    shape: BnShape,
    config: BnConfig,
    relu: bool,
) -> Result<()> {
    let total = shape.len();
    check_len(OP, "x", x.len(), total)?;
    check_len(OP, "y", y.len(), total)?;
    for (what, len) in [
        ("gamma", gamma.len()),
        ("beta", beta.len()),
        ("running_mean", running_mean.len()),
        ("running_var", running_var.len()),
    ] {
        check_len(OP, what, len, shape.c)?;
    }
    check_size(shape)?;
    if total == 0 {
        return Ok(());
    }
    let apply = function(stream, MODULE, &format!("batchnorm_apply_f32{}", A::ACT_SUFFIX))?;
    let (xp, _gx) = x.device_ptr(stream);
    let (gp, _gg) = gamma.device_ptr(stream);
    let (bp, _gb) = beta.device_ptr(stream);
    let (rmp, _grm) = running_mean.device_ptr(stream);
    let (rvp, _grv) = running_var.device_ptr(stream);
    let (yp, _gy) = y.device_ptr_mut(stream);
    let p = params(shape, config, relu, aligned::<A>(&[xp, yp]))?;
    let mut b = stream.launch_builder(&apply);
    b.arg(&xp).arg(&rmp).arg(&rvp).arg(&gp).arg(&bp).arg(&yp).arg(&p);
    // SAFETY: x and y hold n*c*hw activations, the per-channel buffers c f32 (checked above); block
    // (ch, s) touches (i*c + ch)*hw + k with i < n, k < hw (groups of 4 only when aligned, `params`).
    unsafe { b.launch(grid(shape, p)) }.during(OP)?;
    after_launch(stream, OP, &apply)?;
    Ok(())
}

#[allow(clippy::type_complexity)]
fn bwd<A: ActDtype, X, Y, DY, G, SM, SI, DX, DG, DB>(
    stream: &Arc<CudaStream>,
    t: BwdBufs<'_, X, Y, DY, G, SM, SI, DX, DG, DB>,
    shape: BnShape,
    relu: bool,
    ws: &mut Workspace,
) -> Result<()>
where
    X: DevicePtr<A>,
    Y: DevicePtr<A>,
    DY: DevicePtr<A>,
    G: DevicePtr<f32>,
    SM: DevicePtr<f32>,
    SI: DevicePtr<f32>,
    DX: DevicePtrMut<A>,
    DG: DevicePtrMut<f32>,
    DB: DevicePtrMut<f32>,
{
    let total = shape.len();
    check_len(OP, "x", t.x.len(), total)?;
    check_len(OP, "y", t.y.len(), total)?;
    check_len(OP, "dy", t.dy.len(), total)?;
    check_len(OP, "dx", t.dx.len(), total)?;
    for (what, len) in [
        ("gamma", t.gamma.len()),
        ("save_mean", t.save_mean.len()),
        ("save_invstd", t.save_invstd.len()),
        ("dgamma", t.dgamma.len()),
        ("dbeta", t.dbeta.len()),
    ] {
        check_len(OP, what, len, shape.c)?;
    }
    check_training_batch(shape)?;
    check_size(shape)?;
    if total == 0 {
        return Ok(());
    }
    let reduce = function(stream, MODULE, &format!("batchnorm_bwd_reduce_f32{}", A::ACT_SUFFIX))?;
    let dx_fn = function(stream, MODULE, &format!("batchnorm_bwd_dx_f32{}", A::ACT_SUFFIX))?;
    let (xp, _gx) = t.x.device_ptr(stream);
    let (yp, _gy) = t.y.device_ptr(stream);
    let (dyp, _gdy) = t.dy.device_ptr(stream);
    let (gp, _gg) = t.gamma.device_ptr(stream);
    let (smp, _gsm) = t.save_mean.device_ptr(stream);
    let (sip, _gsi) = t.save_invstd.device_ptr(stream);
    let (dxp, _gdx) = t.dx.device_ptr_mut(stream);
    let (dgp, _gdg) = t.dgamma.device_ptr_mut(stream);
    let (dbp, _gdb) = t.dbeta.device_ptr_mut(stream);
    let p = params(shape, BnConfig::default(), relu, aligned::<A>(&[xp, yp, dyp, dxp]))?;
    let partial = ws.at_least(stream, partial_len(shape, p), OP, "allocating the batch-norm workspace")?;
    let (pp, _gp) = partial.device_ptr_mut(stream);

    let mut b = stream.launch_builder(&reduce);
    b.arg(&xp).arg(&yp).arg(&dyp).arg(&smp).arg(&pp).arg(&p);
    // SAFETY: x, y, dy hold n*c*hw activations, save_mean c f32 and the workspace 2*c*splits (checked
    // above); block (ch, s) reads (i*c + ch)*hw + k with ch < c, i < n, k < hw (groups of 4 only
    // when hw % 4 == 0 and every tensor is aligned to a group) and writes partial[(ch*splits + s)*2..].
    unsafe { b.launch(grid(shape, p)) }.during(OP)?;
    after_launch(stream, OP, &reduce)?;

    let mut b = stream.launch_builder(&dx_fn);
    b.arg(&xp).arg(&yp).arg(&dyp).arg(&smp).arg(&sip).arg(&gp).arg(&pp).arg(&dgp).arg(&dbp).arg(&dxp).arg(&p);
    // SAFETY: as above; it reads the partials the reduce launch just wrote, writes dx at the same
    // indices and dgamma/dbeta (c f32 each) at ch.
    unsafe { b.launch(grid(shape, p)) }.during(OP)?;
    after_launch(stream, OP, &dx_fn)?;
    Ok(())
}

/// Whether every pointer is aligned to a group of four activations (16 bytes of f32, 8 of bf16),
/// as the vectorized loads and stores need.
fn aligned<A: ActDtype>(ptrs: &[u64]) -> bool {
    let group = 4 * std::mem::size_of::<A>() as u64;
    ptrs.iter().all(|&p| p.is_multiple_of(group))
}

/// f32s of the workspace a launch with `p` uses: (two partials) x channels x splits.
fn partial_len(shape: BnShape, p: BnParams) -> usize {
    2 * shape.c * p.splits as usize
}

/// Refuses tensors beyond the kernels' 32-bit indexing.
fn check_size(shape: BnShape) -> Result<()> {
    let fits = shape.n.checked_mul(shape.c).and_then(|v| v.checked_mul(shape.hw)).is_some_and(|v| v <= MAX_INDEX);
    if !fits {
        return Err(Error::TooLarge {
            op: OP,
            msg: format!("{shape:?} has more than {MAX_INDEX} elements (32-bit indexing)"),
        });
    }
    Ok(())
}

/// The kernels' parameters; groups of 4 when `hw % 4 == 0` and `aligned`. Call after
/// [`check_size`] and only for a non-empty shape.
fn params(shape: BnShape, config: BnConfig, relu: bool, aligned: bool) -> Result<BnParams> {
    let vec = aligned && shape.hw.is_multiple_of(4);
    let plan = split_plan(shape, vec);
    // Every value is at most n*c*hw <= MAX_INDEX (check_size), chunk <= m and splits <= 32.
    let int = |v: usize| {
        i32::try_from(v).map_err(|_| Error::TooLarge { op: OP, msg: format!("{shape:?}: {v} does not fit 32 bits") })
    };
    Ok(BnParams {
        n: int(shape.n)?,
        c: int(shape.c)?,
        hw: int(shape.hw)?,
        eps: config.eps,
        momentum: config.momentum,
        relu: relu as i32,
        splits: int(plan.splits)?,
        chunk: int(plan.chunk)?,
        vec: vec as i32,
    })
}

fn check_training_batch(shape: BnShape) -> Result<()> {
    if shape.c > 0 && shape.per_channel() < 2 {
        return Err(Error::shape(
            OP,
            format!("training needs more than one value per channel, got n * hw = {}", shape.per_channel()),
        ));
    }
    Ok(())
}

/// One block per (channel, slice): channels on x (up to 2^31 - 1), slices on y (<= 32).
fn grid(shape: BnShape, p: BnParams) -> LaunchConfig {
    LaunchConfig { grid_dim: (shape.c as u32, p.splits as u32, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}
