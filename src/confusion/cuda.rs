//! CUDA launches of `kernels/confusion.cu` on the caller's stream.
//!
//! [`count_logits`] and [`count_labels`] add into a caller's device matrix of `C * C` `u64`
//! (zero it once, e.g. with `stream.memset_zeros`, then sum batches); [`from_logits`] and
//! [`from_labels`] allocate, count and copy back to a [`ConfusionMatrix`].
//!
//! Targets and predicted labels are passed as [`CudaView`]s (`slice.as_view()`), so that the
//! wrapper can read a bad value back to name it in the error. Every call waits for the stream at
//! its end (to read the bad-index flags).
use std::sync::Arc;

use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaStream, CudaView, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::{check_classes, ConfusionMatrix};
use crate::cuda::{
    after_launch, blocks_for, cfg, check_device, check_devices, check_len, function, read_one, BadIndexFlag, Dtype,
};
use crate::error::{DriverContext, Error, Result};

const OP: &str = "confusion (cuda)";
const THREADS: u32 = 256;
/// Dynamic shared memory a block may use without opting in; the per-block u32 histogram of
/// `C * C` is used while it fits (C <= 110), global atomics otherwise.
const PRIVATE_HIST_MAX_BYTES: usize = 48 * 1024;

/// Mirrors `ConfusionParams` in `kernels/confusion.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct ConfusionParams {
    n: i64,
    classes: i32,
    has_ignore: i32,
    ignore_index: i32,
    privatized: i32,
}
// SAFETY: plain-old-data with the same layout as the C struct (i64, then four i32; no padding).
unsafe impl cudarc::driver::DeviceRepr for ConfusionParams {}
crate::cuda::check_params_layout!(ConfusionParams);

/// Adds the confusion counts of `logits` (`targets.len()` x `classes`, row-major; predicted class
/// = row argmax, fused) against `targets` to `counts` (`classes * classes`, row-major, row = true
/// class). Samples whose target is `ignore_index` are skipped.
pub fn count_logits<T: Dtype>(
    stream: &Arc<CudaStream>,
    logits: &impl DevicePtr<T>,
    targets: &CudaView<'_, i32>,
    counts: &mut impl DevicePtrMut<u64>,
    classes: usize,
    ignore_index: Option<i32>,
) -> Result<()> {
    count_logits_biased(stream, logits, None, targets, counts, classes, ignore_index)
}

/// [`count_logits`] with the predicted class `argmax_c(logit_c + bias[c])` (`bias`: `classes` f32,
/// added in f32), or plain argmax with `None`: a post-hoc per-class logit bias applied inside the
/// fused argmax, so evaluating with it costs nothing extra.
pub fn count_logits_biased<T: Dtype>(
    stream: &Arc<CudaStream>,
    logits: &impl DevicePtr<T>,
    bias: Option<&CudaView<'_, f32>>,
    targets: &CudaView<'_, i32>,
    counts: &mut impl DevicePtrMut<u64>,
    classes: usize,
    ignore_index: Option<i32>,
) -> Result<()> {
    let mut flag = BadIndexFlag::new(stream)?;
    count_logits_biased_with(stream, logits, bias, targets, counts, classes, ignore_index, &mut flag, true)
}

/// [`count_logits_biased`] with the caller's bad-target flag. With `wait`, waits for the stream
/// and reports a bad target as [`count_logits_biased`] does, clearing the flag; without, returns
/// after the launch and leaves the flag to the caller (`flag.take`): a sample with a bad target
/// is never counted, it only raises the flag.
#[allow(clippy::too_many_arguments)]
pub(crate) fn count_logits_biased_with<T: Dtype>(
    stream: &Arc<CudaStream>,
    logits: &impl DevicePtr<T>,
    bias: Option<&CudaView<'_, f32>>,
    targets: &CudaView<'_, i32>,
    counts: &mut impl DevicePtrMut<u64>,
    classes: usize,
    ignore_index: Option<i32>,
    bad_target: &mut BadIndexFlag,
    wait: bool,
) -> Result<()> {
    check_devices!(OP, stream, logits, targets, counts);
    if let Some(b) = bias {
        check_device(OP, stream, "bias", b)?;
        check_len(OP, "bias", b.len(), classes)?;
    }
    let n = targets.len();
    check_common(n, classes, counts.len())?;
    let want = n.checked_mul(classes).ok_or_else(|| too_large(n, classes))?;
    check_len(OP, "logits", logits.len(), want)?;
    if n == 0 {
        return Ok(());
    }
    let name = format!("confusion_logits_{}", T::SUFFIX);
    let f = function(stream, "confusion", &name)?;
    // A warp per row.
    let (p, launch) = plan(stream, n, (THREADS / 32) as usize, classes, ignore_index)?;
    {
        let (xp, _gx) = logits.device_ptr(stream);
        let bias_guard = bias.map(|b| b.device_ptr(stream));
        // A null pointer tells the kernel there is no bias.
        let bp: u64 = bias_guard.as_ref().map_or(0, |(ptr, _)| *ptr);
        let (tp, _gt) = targets.device_ptr(stream);
        let (cp, _gc) = counts.device_ptr_mut(stream);
        let (fp, _gf) = bad_target.buf_mut().device_ptr_mut(stream);
        let mut b = stream.launch_builder(&f);
        b.arg(&xp).arg(&bp).arg(&tp).arg(&cp).arg(&fp).arg(&p);
        // SAFETY: logits hold n*classes elements of T, targets n i32 and bias (when not null)
        // classes f32 (checked above); the kernel reads logits only at row*classes + c and bias at c,
        // with row < n, c < classes, and only for rows whose
        // target is in [0, classes); it writes counts only at t*classes + p with t, p in
        // [0, classes), and counts holds classes*classes u64 (checked); the flag is one i32. The
        // dynamic shared memory requested (plan) is classes*classes*4 bytes when privatized, which
        // is all the kernel touches. The argument list matches the kernel's signature.
        unsafe { b.launch(launch) }.during(OP)?;
        after_launch(stream, OP, &f)?;
    }
    if !wait {
        return Ok(());
    }
    if let Some(i) = bad_target.take(stream)? {
        return Err(bad_target_error(stream, targets, i, classes)?);
    }
    Ok(())
}

/// Adds the confusion counts of predicted labels `preds` against `targets` (same length) to
/// `counts` (`classes * classes`). Samples whose target is `ignore_index` are skipped, but their
/// prediction must still be in `[0, classes)`.
pub fn count_labels(
    stream: &Arc<CudaStream>,
    preds: &CudaView<'_, i32>,
    targets: &CudaView<'_, i32>,
    counts: &mut impl DevicePtrMut<u64>,
    classes: usize,
    ignore_index: Option<i32>,
) -> Result<()> {
    check_devices!(OP, stream, preds, targets, counts);
    let n = targets.len();
    check_common(n, classes, counts.len())?;
    check_len(OP, "preds", preds.len(), n)?;
    if n == 0 {
        return Ok(());
    }
    let f = function(stream, "confusion", "confusion_labels")?;
    let (p, launch) = plan(stream, n, THREADS as usize, classes, ignore_index)?;
    let mut bad_target = BadIndexFlag::new(stream)?;
    let mut bad_pred = BadIndexFlag::new(stream)?;
    {
        let (yp, _gy) = preds.device_ptr(stream);
        let (tp, _gt) = targets.device_ptr(stream);
        let (cp, _gc) = counts.device_ptr_mut(stream);
        let (ftp, _gft) = bad_target.buf_mut().device_ptr_mut(stream);
        let (fyp, _gfy) = bad_pred.buf_mut().device_ptr_mut(stream);
        let mut b = stream.launch_builder(&f);
        b.arg(&yp).arg(&tp).arg(&cp).arg(&ftp).arg(&fyp).arg(&p);
        // SAFETY: preds and targets hold n i32 each (checked above) and are read at i < n only;
        // counts holds classes*classes u64 (checked) and is written only at t*classes + y with t,
        // y in [0, classes); each flag is one i32. Dynamic shared memory as in `count_logits`.
        // The argument list matches the kernel's signature.
        unsafe { b.launch(launch) }.during(OP)?;
        after_launch(stream, OP, &f)?;
    }
    let t = bad_target.read(stream)?;
    let y = bad_pred.read(stream)?;
    // The first bad sample; when it has both a bad target and a bad prediction, the target.
    match (t, y) {
        (Some(t), y) if y.is_none_or(|y| t <= y) => Err(bad_target_error(stream, targets, t, classes)?),
        (_, Some(y)) => {
            let value = read_one(stream, preds, y)? as i64;
            Err(Error::InvalidPrediction { op: OP, index: y, value, classes })
        }
        _ => Ok(()),
    }
}

/// Allocates a zeroed matrix, counts `logits` against `targets` into it and copies it back.
pub fn from_logits<T: Dtype>(
    stream: &Arc<CudaStream>,
    logits: &impl DevicePtr<T>,
    targets: &CudaView<'_, i32>,
    classes: usize,
    ignore_index: Option<i32>,
) -> Result<ConfusionMatrix> {
    from_logits_biased(stream, logits, None, targets, classes, ignore_index)
}

/// [`from_logits`] with an optional per-class logit bias (see [`count_logits_biased`]).
pub fn from_logits_biased<T: Dtype>(
    stream: &Arc<CudaStream>,
    logits: &impl DevicePtr<T>,
    bias: Option<&CudaView<'_, f32>>,
    targets: &CudaView<'_, i32>,
    classes: usize,
    ignore_index: Option<i32>,
) -> Result<ConfusionMatrix> {
    check_devices!(OP, stream, logits, targets);
    check_classes(OP, classes)?;
    let mut counts = stream.alloc_zeros::<u64>(classes * classes).during(OP)?;
    count_logits_biased(stream, logits, bias, targets, &mut counts, classes, ignore_index)?;
    ConfusionMatrix::from_counts(classes, stream.clone_dtoh(&counts).during(OP)?)
}

/// Allocates a zeroed matrix, counts `preds` against `targets` into it and copies it back.
pub fn from_labels(
    stream: &Arc<CudaStream>,
    preds: &CudaView<'_, i32>,
    targets: &CudaView<'_, i32>,
    classes: usize,
    ignore_index: Option<i32>,
) -> Result<ConfusionMatrix> {
    check_devices!(OP, stream, preds, targets);
    check_classes(OP, classes)?;
    let mut counts = stream.alloc_zeros::<u64>(classes * classes).during(OP)?;
    count_labels(stream, preds, targets, &mut counts, classes, ignore_index)?;
    ConfusionMatrix::from_counts(classes, stream.clone_dtoh(&counts).during(OP)?)
}

/// Checks shared by both inputs: classes in range, `n` within the kernels' i32 sample indices, and
/// the matrix length.
fn check_common(n: usize, classes: usize, counts_len: usize) -> Result<()> {
    check_classes(OP, classes)?;
    if n > i32::MAX as usize {
        return Err(Error::TooLarge { op: OP, msg: format!("{n} samples, at most {} are supported", i32::MAX) });
    }
    check_len(OP, "counts", counts_len, classes * classes)
}

fn too_large(n: usize, classes: usize) -> Error {
    Error::TooLarge { op: OP, msg: format!("{n} x {classes} logits are too many") }
}

fn bad_target_error(
    stream: &Arc<CudaStream>,
    targets: &CudaView<'_, i32>,
    index: usize,
    classes: usize,
) -> Result<Error> {
    let value = read_one(stream, targets, index)? as i64;
    Ok(Error::InvalidTarget { op: OP, index, value, classes })
}

/// Params and launch shape: `per_block` samples per block per grid-stride step; the grid is capped
/// at a few blocks per SM (the loops stride over the rest), which also bounds how many private
/// histograms are flushed.
fn plan(
    stream: &Arc<CudaStream>,
    n: usize,
    per_block: usize,
    classes: usize,
    ignore_index: Option<i32>,
) -> Result<(ConfusionParams, LaunchConfig)> {
    let hist_bytes = classes * classes * 4;
    let privatized = hist_bytes <= PRIVATE_HIST_MAX_BYTES;
    let sms = stream.context().attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).during(OP)?;
    let per_sm = if privatized { 4 } else { 8 };
    let cap = (sms.max(1) as u32).saturating_mul(per_sm);
    let blocks = blocks_for(n, per_block).min(cap);
    let smem = if privatized { hist_bytes as u32 } else { 0 };
    let p = ConfusionParams {
        n: n as i64,
        classes: classes as i32,
        has_ignore: ignore_index.is_some() as i32,
        ignore_index: ignore_index.unwrap_or(0),
        privatized: privatized as i32,
    };
    Ok((p, cfg(blocks, THREADS, smem)))
}
