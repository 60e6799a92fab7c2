//! CUDA launches of `kernels/batchnorm.cu` on the caller's stream. Every buffer is f32; `x`, `y`,
//! `dy`, `dx` hold `n * c * hw` elements (NCHW), every per-channel buffer `c`.
use std::sync::Arc;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::{BnConfig, BnShape};
use crate::cuda::{after_launch, blocks_for, cfg, check_devices, check_len, function, MAX_INDEX};
use crate::error::{DriverContext, Error, Result};

const OP: &str = "batchnorm (cuda)";
const MODULE: &str = "batchnorm";

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
    from_var: i32,
}
// SAFETY: plain-old-data with the same layout as the C struct (seven 4-byte fields; no padding).
unsafe impl cudarc::driver::DeviceRepr for BnParams {}
crate::cuda::check_params_layout!(BnParams);

/// Training forward: `y = bn(x)` with batch statistics; writes `save_mean`, `save_invstd` and
/// updates `running_mean`, `running_var` in place.
#[allow(clippy::too_many_arguments)]
pub fn forward_train(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<f32>,
    gamma: &impl DevicePtr<f32>,
    beta: &impl DevicePtr<f32>,
    running_mean: &mut impl DevicePtrMut<f32>,
    running_var: &mut impl DevicePtrMut<f32>,
    y: &mut impl DevicePtrMut<f32>,
    save_mean: &mut impl DevicePtrMut<f32>,
    save_invstd: &mut impl DevicePtrMut<f32>,
    shape: BnShape,
    config: BnConfig,
) -> Result<()> {
    check_devices!(OP, stream, x, gamma, beta, running_mean, running_var, y, save_mean, save_invstd);
    train(stream, x, gamma, beta, running_mean, running_var, y, save_mean, save_invstd, shape, config, false)
}

/// Training forward fused with a ReLU: `y = relu(bn(x))`.
#[allow(clippy::too_many_arguments)]
pub fn relu_forward_train(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<f32>,
    gamma: &impl DevicePtr<f32>,
    beta: &impl DevicePtr<f32>,
    running_mean: &mut impl DevicePtrMut<f32>,
    running_var: &mut impl DevicePtrMut<f32>,
    y: &mut impl DevicePtrMut<f32>,
    save_mean: &mut impl DevicePtrMut<f32>,
    save_invstd: &mut impl DevicePtrMut<f32>,
    shape: BnShape,
    config: BnConfig,
) -> Result<()> {
    check_devices!(OP, stream, x, gamma, beta, running_mean, running_var, y, save_mean, save_invstd);
    train(stream, x, gamma, beta, running_mean, running_var, y, save_mean, save_invstd, shape, config, true)
}

/// Eval forward from the running statistics.
#[allow(clippy::too_many_arguments)]
pub fn forward_eval(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<f32>,
    gamma: &impl DevicePtr<f32>,
    beta: &impl DevicePtr<f32>,
    running_mean: &impl DevicePtr<f32>,
    running_var: &impl DevicePtr<f32>,
    y: &mut impl DevicePtrMut<f32>,
    shape: BnShape,
    config: BnConfig,
) -> Result<()> {
    check_devices!(OP, stream, x, gamma, beta, running_mean, running_var, y);
    eval(stream, x, gamma, beta, running_mean, running_var, y, shape, config, false)
}

/// Eval forward fused with a ReLU.
#[allow(clippy::too_many_arguments)]
pub fn relu_forward_eval(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<f32>,
    gamma: &impl DevicePtr<f32>,
    beta: &impl DevicePtr<f32>,
    running_mean: &impl DevicePtr<f32>,
    running_var: &impl DevicePtr<f32>,
    y: &mut impl DevicePtrMut<f32>,
    shape: BnShape,
    config: BnConfig,
) -> Result<()> {
    check_devices!(OP, stream, x, gamma, beta, running_mean, running_var, y);
    eval(stream, x, gamma, beta, running_mean, running_var, y, shape, config, true)
}

/// Backward of [`forward_train`]: writes `dx`, `dgamma`, `dbeta`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<f32>,
    dy: &impl DevicePtr<f32>,
    gamma: &impl DevicePtr<f32>,
    save_mean: &impl DevicePtr<f32>,
    save_invstd: &impl DevicePtr<f32>,
    dx: &mut impl DevicePtrMut<f32>,
    dgamma: &mut impl DevicePtrMut<f32>,
    dbeta: &mut impl DevicePtrMut<f32>,
    shape: BnShape,
) -> Result<()> {
    check_devices!(OP, stream, x, dy, gamma, save_mean, save_invstd, dx, dgamma, dbeta);
    // `x` stands in for the unused `y`: only its length is checked and the kernels never read it.
    bwd(stream, x, x, dy, gamma, save_mean, save_invstd, dx, dgamma, dbeta, shape, false)
}

/// Backward of [`relu_forward_train`]; `y` is its saved output.
#[allow(clippy::too_many_arguments)]
pub fn relu_backward(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<f32>,
    y: &impl DevicePtr<f32>,
    dy: &impl DevicePtr<f32>,
    gamma: &impl DevicePtr<f32>,
    save_mean: &impl DevicePtr<f32>,
    save_invstd: &impl DevicePtr<f32>,
    dx: &mut impl DevicePtrMut<f32>,
    dgamma: &mut impl DevicePtrMut<f32>,
    dbeta: &mut impl DevicePtrMut<f32>,
    shape: BnShape,
) -> Result<()> {
    check_devices!(OP, stream, x, y, dy, gamma, save_mean, save_invstd, dx, dgamma, dbeta);
    bwd(stream, x, y, dy, gamma, save_mean, save_invstd, dx, dgamma, dbeta, shape, true)
}

// ---- implementation ----------------------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
fn train(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<f32>,
    gamma: &impl DevicePtr<f32>,
    beta: &impl DevicePtr<f32>,
    running_mean: &mut impl DevicePtrMut<f32>,
    running_var: &mut impl DevicePtrMut<f32>,
    y: &mut impl DevicePtrMut<f32>,
    save_mean: &mut impl DevicePtrMut<f32>,
    save_invstd: &mut impl DevicePtrMut<f32>,
    shape: BnShape,
    config: BnConfig,
    relu: bool,
) -> Result<()> {
    let p = params(shape, config, relu, false)?;
    let total = shape.len();
    check_len(OP, "x", x.len(), total)?;
    check_len(OP, "y", y.len(), total)?;
    for (what, len) in [
        ("gamma", gamma.len()),
        ("beta", beta.len()),
        ("running_mean", running_mean.len()),
        ("running_var", running_var.len()),
        ("save_mean", save_mean.len()),
        ("save_invstd", save_invstd.len()),
    ] {
        check_len(OP, what, len, shape.c)?;
    }
    check_training_batch(shape)?;
    if total == 0 {
        return Ok(());
    }
    let stats = function(stream, MODULE, "batchnorm_stats_f32")?;
    let apply = function(stream, MODULE, "batchnorm_apply_f32")?;
    let (xp, _gx) = x.device_ptr(stream);
    let (gp, _gg) = gamma.device_ptr(stream);
    let (bp, _gb) = beta.device_ptr(stream);
    let (rmp, _grm) = running_mean.device_ptr_mut(stream);
    let (rvp, _grv) = running_var.device_ptr_mut(stream);
    let (yp, _gy) = y.device_ptr_mut(stream);
    let (smp, _gsm) = save_mean.device_ptr_mut(stream);
    let (sip, _gsi) = save_invstd.device_ptr_mut(stream);

    let mut b = stream.launch_builder(&stats);
    b.arg(&xp).arg(&rmp).arg(&rvp).arg(&smp).arg(&sip).arg(&p);
    // SAFETY: x holds n*c*hw f32 and the four statistics buffers c f32 each (checked above); a block
    // handles channels ch < c and reads only (i*c + ch)*hw + k with i < n, k < hw; m = n*hw >= 2;
    // the arguments match the kernel's signature.
    unsafe { b.launch(reduce_cfg(shape)) }.during(OP)?;
    after_launch(stream, OP, &stats)?;

    let mut b = stream.launch_builder(&apply);
    b.arg(&xp).arg(&smp).arg(&sip).arg(&gp).arg(&bp).arg(&yp).arg(&p);
    // SAFETY: x and y hold n*c*hw f32, the per-channel buffers c f32 (checked above); the kernel
    // touches indices below n*c*hw (<= i32::MAX) and channels (i / hw) % c < c.
    unsafe { b.launch(elementwise_cfg(total)) }.during(OP)?;
    after_launch(stream, OP, &apply)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn eval(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<f32>,
    gamma: &impl DevicePtr<f32>,
    beta: &impl DevicePtr<f32>,
    running_mean: &impl DevicePtr<f32>,
    running_var: &impl DevicePtr<f32>,
    y: &mut impl DevicePtrMut<f32>,
    shape: BnShape,
    config: BnConfig,
    relu: bool,
) -> Result<()> {
    let p = params(shape, config, relu, true)?;
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
    if total == 0 {
        return Ok(());
    }
    let apply = function(stream, MODULE, "batchnorm_apply_f32")?;
    let (xp, _gx) = x.device_ptr(stream);
    let (gp, _gg) = gamma.device_ptr(stream);
    let (bp, _gb) = beta.device_ptr(stream);
    let (rmp, _grm) = running_mean.device_ptr(stream);
    let (rvp, _grv) = running_var.device_ptr(stream);
    let (yp, _gy) = y.device_ptr_mut(stream);
    let mut b = stream.launch_builder(&apply);
    b.arg(&xp).arg(&rmp).arg(&rvp).arg(&gp).arg(&bp).arg(&yp).arg(&p);
    // SAFETY: as in `train`'s apply launch; from_var = 1 makes the kernel read running_var (c f32).
    unsafe { b.launch(elementwise_cfg(total)) }.during(OP)?;
    after_launch(stream, OP, &apply)?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn bwd(
    stream: &Arc<CudaStream>,
    x: &impl DevicePtr<f32>,
    y: &impl DevicePtr<f32>,
    dy: &impl DevicePtr<f32>,
    gamma: &impl DevicePtr<f32>,
    save_mean: &impl DevicePtr<f32>,
    save_invstd: &impl DevicePtr<f32>,
    dx: &mut impl DevicePtrMut<f32>,
    dgamma: &mut impl DevicePtrMut<f32>,
    dbeta: &mut impl DevicePtrMut<f32>,
    shape: BnShape,
    relu: bool,
) -> Result<()> {
    let p = params(shape, BnConfig::default(), relu, false)?;
    let total = shape.len();
    check_len(OP, "x", x.len(), total)?;
    check_len(OP, "y", y.len(), total)?;
    check_len(OP, "dy", dy.len(), total)?;
    check_len(OP, "dx", dx.len(), total)?;
    for (what, len) in [
        ("gamma", gamma.len()),
        ("save_mean", save_mean.len()),
        ("save_invstd", save_invstd.len()),
        ("dgamma", dgamma.len()),
        ("dbeta", dbeta.len()),
    ] {
        check_len(OP, what, len, shape.c)?;
    }
    check_training_batch(shape)?;
    if total == 0 {
        return Ok(());
    }
    let reduce = function(stream, MODULE, "batchnorm_bwd_reduce_f32")?;
    let dx_fn = function(stream, MODULE, "batchnorm_bwd_dx_f32")?;
    let (xp, _gx) = x.device_ptr(stream);
    let (yp, _gy) = y.device_ptr(stream);
    let (dyp, _gdy) = dy.device_ptr(stream);
    let (gp, _gg) = gamma.device_ptr(stream);
    let (smp, _gsm) = save_mean.device_ptr(stream);
    let (sip, _gsi) = save_invstd.device_ptr(stream);
    let (dxp, _gdx) = dx.device_ptr_mut(stream);
    let (dgp, _gdg) = dgamma.device_ptr_mut(stream);
    let (dbp, _gdb) = dbeta.device_ptr_mut(stream);

    let mut b = stream.launch_builder(&reduce);
    b.arg(&xp).arg(&yp).arg(&dyp).arg(&smp).arg(&sip).arg(&dgp).arg(&dbp).arg(&p);
    // SAFETY: x, y, dy hold n*c*hw f32 and the per-channel buffers c f32 (checked above); blocks
    // read (i*c + ch)*hw + k with ch < c, i < n, k < hw, and write dgamma/dbeta[ch].
    unsafe { b.launch(reduce_cfg(shape)) }.during(OP)?;
    after_launch(stream, OP, &reduce)?;

    let mut b = stream.launch_builder(&dx_fn);
    b.arg(&xp).arg(&yp).arg(&dyp).arg(&smp).arg(&sip).arg(&gp).arg(&dgp).arg(&dbp).arg(&dxp).arg(&p);
    // SAFETY: as above; indices below n*c*hw (<= i32::MAX), channels (i / hw) % c < c.
    unsafe { b.launch(elementwise_cfg(total)) }.during(OP)?;
    after_launch(stream, OP, &dx_fn)?;
    Ok(())
}

fn params(shape: BnShape, config: BnConfig, relu: bool, from_var: bool) -> Result<BnParams> {
    let fits = shape.n.checked_mul(shape.c).and_then(|v| v.checked_mul(shape.hw)).is_some_and(|v| v <= MAX_INDEX);
    if !fits {
        return Err(Error::TooLarge {
            op: OP,
            msg: format!("{shape:?} has more than {MAX_INDEX} elements (32-bit indexing)"),
        });
    }
    // n, c and hw are each at most the product (or the product is 0 and the kernels do not run).
    let small = |v: usize| v.min(i32::MAX as usize) as i32;
    Ok(BnParams {
        n: small(shape.n),
        c: small(shape.c),
        hw: small(shape.hw),
        eps: config.eps,
        momentum: config.momentum,
        relu: relu as i32,
        from_var: from_var as i32,
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

/// A block per channel (grid-stride beyond 65535 channels); 512 threads for long channels.
fn reduce_cfg(shape: BnShape) -> LaunchConfig {
    let threads = if shape.per_channel() >= 1 << 15 { 512 } else { 256 };
    cfg(shape.c.clamp(1, 65_535) as u32, threads, 0)
}

/// Grid-stride elementwise launch: 256 threads, at most 8192 blocks.
fn elementwise_cfg(total: usize) -> LaunchConfig {
    cfg(blocks_for(total, 256).min(8192), 256, 0)
}
