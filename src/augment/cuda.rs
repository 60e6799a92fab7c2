//! CUDA launches of `kernels/augment.cu` on the caller's stream. The batch is written as the
//! activations' [`ActDtype`]: f32, or bf16 in mixed precision (normalized in f32, then rounded).
//!
//! Both functions wait for the stream at the end: they read back the device flag that says
//! whether an index or crop offset was bad, so that a bad choice is an error, never a silent batch.
use std::sync::Arc;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, PushKernelArg};

use super::{AugmentSpec, MAX_CHANNELS};
use crate::cuda::{
    after_launch, blocks_for, cfg, check_devices, check_len, function, ActDtype, BadIndexFlag, MAX_INDEX,
};
use crate::error::{DriverContext, Error, Result};

const OP: &str = "augment (cuda)";
const MODULE: &str = "augment";

/// Mirrors `AugmentParams` in `kernels/augment.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct AugmentParams {
    n: i32,
    c: i32,
    h: i32,
    w: i32,
    pad: i32,
    count: i32,
    mean: [f32; MAX_CHANNELS],
    std: [f32; MAX_CHANNELS],
}
// SAFETY: plain-old-data with the same layout as the C struct (six i32, then two arrays of four
// f32: 56 bytes, 4-aligned, no padding).
unsafe impl cudarc::driver::DeviceRepr for AugmentParams {}
crate::cuda::check_params_layout!(AugmentParams);

/// Training batch into `out` (`n x c x h x w` f32, `n = indices.len()`): gather `data`
/// (`count x c x h x w` bytes), crop at `crops` (`(dy, dx)` per image, `2 n` bytes), mirror where
/// `flips` (`n` bytes) is nonzero, normalize. Waits for the stream (see the module docs).
pub fn train_batch<A: ActDtype>(
    stream: &Arc<CudaStream>,
    data: &impl DevicePtr<u8>,
    indices: &impl DevicePtr<i32>,
    crops: &impl DevicePtr<u8>,
    flips: &impl DevicePtr<u8>,
    out: &mut impl DevicePtrMut<A>,
    spec: &AugmentSpec,
) -> Result<()> {
    train_batch_with(stream, data, indices, crops, flips, out, spec, &mut BadIndexFlag::new(stream)?, true)
}

/// [`train_batch`] with the caller's bad-sample flag (clear, or raised by an earlier call: then
/// this call's error names a sample of this batch or of that one). With `wait`, waits for the
/// stream and reports a bad sample as [`train_batch`] does, clearing the flag; without, returns
/// after the launch and leaves the flag to the caller (`flag.take`): the kernel never reads
/// outside `data` for a bad sample, it only raises the flag.
#[allow(clippy::too_many_arguments)]
pub(crate) fn train_batch_with<A: ActDtype>(
    stream: &Arc<CudaStream>,
    data: &impl DevicePtr<u8>,
    indices: &impl DevicePtr<i32>,
    crops: &impl DevicePtr<u8>,
    flips: &impl DevicePtr<u8>,
    out: &mut impl DevicePtrMut<A>,
    spec: &AugmentSpec,
    flag: &mut BadIndexFlag,
    wait: bool,
) -> Result<()> {
    check_devices!(OP, stream, data, indices, crops, flips, out);
    let n = indices.len();
    check_len(OP, "crops", crops.len(), 2 * n)?;
    check_len(OP, "flips", flips.len(), n)?;
    let p = params(spec, data.len(), n)?;
    check_len(OP, "out", out.len(), n * spec.image_len())?;
    if n == 0 {
        return Ok(());
    }
    let f = function(stream, MODULE, &format!("augment_train_f32{}", A::ACT_SUFFIX))?;
    {
        let (dp, _gd) = data.device_ptr(stream);
        let (ip, _gi) = indices.device_ptr(stream);
        let (cp, _gc) = crops.device_ptr(stream);
        let (fp, _gf) = flips.device_ptr(stream);
        let (op, _go) = out.device_ptr_mut(stream);
        let (bp, _gb) = flag.buf_mut().device_ptr_mut(stream);
        let mut b = stream.launch_builder(&f);
        b.arg(&dp).arg(&ip).arg(&cp).arg(&fp).arg(&op).arg(&bp).arg(&p);
        // SAFETY: out holds n*c*h*w activations (<= i32::MAX), indices n, flips n, crops 2n (checked above);
        // data holds count*c*h*w bytes (params checked the division). The kernel reads data only
        // for 0 <= index < count, 0 <= dy, dx <= 2 pad and in-image (sy, sx), and writes out[i] for
        // i < n*c*h*w; the flag is one i32.
        unsafe { b.launch(launch(n * spec.image_len())) }.during(OP)?;
        after_launch(stream, OP, &f)?;
    }
    if !wait {
        return Ok(());
    }
    report(stream, flag, indices, Some(crops), spec, p.count)
}

/// Eval batch into `out`: gather and normalize, no crop or flip. Waits for the stream.
pub fn eval_batch<A: ActDtype>(
    stream: &Arc<CudaStream>,
    data: &impl DevicePtr<u8>,
    indices: &impl DevicePtr<i32>,
    out: &mut impl DevicePtrMut<A>,
    spec: &AugmentSpec,
) -> Result<()> {
    check_devices!(OP, stream, data, indices, out);
    let n = indices.len();
    let p = params(spec, data.len(), n)?;
    check_len(OP, "out", out.len(), n * spec.image_len())?;
    if n == 0 {
        return Ok(());
    }
    let f = function(stream, MODULE, &format!("augment_eval_f32{}", A::ACT_SUFFIX))?;
    let mut flag = BadIndexFlag::new(stream)?;
    {
        let (dp, _gd) = data.device_ptr(stream);
        let (ip, _gi) = indices.device_ptr(stream);
        let (op, _go) = out.device_ptr_mut(stream);
        let (bp, _gb) = flag.buf_mut().device_ptr_mut(stream);
        let mut b = stream.launch_builder(&f);
        b.arg(&dp).arg(&ip).arg(&op).arg(&bp).arg(&p);
        // SAFETY: as in `train_batch`, without crops and flips (the eval kernel reads neither).
        unsafe { b.launch(launch(n * spec.image_len())) }.during(OP)?;
        after_launch(stream, OP, &f)?;
    }
    report(stream, &mut flag, indices, None::<&cudarc::driver::CudaSlice<u8>>, spec, p.count)
}

/// Turns a flagged batch position into an error naming the bad index or crop offset.
fn report(
    stream: &Arc<CudaStream>,
    flag: &mut BadIndexFlag,
    indices: &impl DevicePtr<i32>,
    crops: Option<&impl DevicePtr<u8>>,
    spec: &AugmentSpec,
    count: i32,
) -> Result<()> {
    let Some(b) = flag.take(stream)? else { return Ok(()) };
    let idx = stream.clone_dtoh(indices).during(OP)?;
    let value = idx.get(b).copied().unwrap_or(-1);
    if value < 0 || value >= count {
        return Err(Error::InvalidSample { op: OP, index: b, value: value as i64, count: count as usize });
    }
    let offsets = match crops {
        Some(c) => stream.clone_dtoh(c).during(OP)?,
        None => Vec::new(),
    };
    let (dy, dx) = (offsets.get(2 * b).copied().unwrap_or(0), offsets.get(2 * b + 1).copied().unwrap_or(0));
    Err(Error::shape(OP, format!("crop offset ({dy}, {dx}) of batch position {b} exceeds 2 * pad = {}", 2 * spec.pad)))
}

fn params(spec: &AugmentSpec, data_len: usize, n: usize) -> Result<AugmentParams> {
    let count = spec.check(OP, data_len)?;
    let total = n.checked_mul(spec.image_len());
    if total.is_none_or(|t| t > MAX_INDEX) || count > MAX_INDEX {
        return Err(Error::TooLarge {
            op: OP,
            msg: format!("{n} images of {} values (or a dataset of {count} images) exceed the kernels' 32-bit indexing (at most {MAX_INDEX})", spec.image_len()),
        });
    }
    // c <= 4, pad <= 127, and h, w are at most the image length, which fits i32 when n >= 1 (n = 0
    // launches nothing, so clamping is harmless).
    let small = |v: usize| v.min(i32::MAX as usize) as i32;
    Ok(AugmentParams {
        n: small(n),
        c: small(spec.c),
        h: small(spec.h),
        w: small(spec.w),
        pad: small(spec.pad),
        count: count as i32,
        mean: spec.mean,
        std: spec.std,
    })
}

/// Grid-stride elementwise launch: 256 threads, at most 8192 blocks.
fn launch(total: usize) -> cudarc::driver::LaunchConfig {
    cfg(blocks_for(total, 256).min(8192), 256, 0)
}
