//! CUDA launches of `kernels/cross_entropy.cu` on the caller's stream and buffers.
//!
//! Every call runs `cross_entropy_prepare` (target check, total weight), then one pass over the
//! logits for loss and/or gradient, then (sum/mean) a deterministic one-block reduction. Scratch
//! memory lives in a [`Workspace`] the caller keeps, so a training loop allocates nothing per step.
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut, PushKernelArg};

use super::{Options, Reduction};
use crate::cuda::{
    after_launch, blocks_for, cfg, check_device, check_devices, check_len, function, read_one, BadIndexFlag, Dtype,
    MAX_INDEX,
};
use crate::error::{DriverContext, Error, Result};

const OP: &str = "cross_entropy (cuda)";
const WARP_ROW_MAX_COLS: usize = 1024;

/// Mirrors `CeParams` in `kernels/cross_entropy.cu`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct CeParams {
    rows: i64,
    cols: i32,
    warp_per_row: i32,
    ignore_index: i32,
    has_ignore: i32,
    has_weight: i32,
    reduction: i32,
    label_smoothing: f32,
    grad_output_len: i32,
    has_scale: i32,
    has_offset: i32,
}
// SAFETY: plain-old-data laid out exactly as the C struct (i64 then ten 4-byte fields: 48 bytes,
// 8-byte aligned on both sides, no padding).
unsafe impl cudarc::driver::DeviceRepr for CeParams {}
crate::cuda::check_params_layout!(CeParams);

/// Per-class logit scale and offset on the device: the GPU twin of
/// [`super::LogitAdjust`] (`u_c = scale_c * x_c + offset_c`; `None`: 1 and 0).
#[derive(Clone, Copy, Default)]
pub struct LogitAdjust<'a, 'b> {
    /// `classes` multipliers, or `None`.
    pub scale: Option<&'a CudaView<'b, f32>>,
    /// `classes` addends, or `None`.
    pub offset: Option<&'a CudaView<'b, f32>>,
}

impl LogitAdjust<'_, '_> {
    /// No adjustment: the plain loss.
    pub const NONE: LogitAdjust<'static, 'static> = LogitAdjust { scale: None, offset: None };

    fn check(&self, stream: &Arc<CudaStream>, classes: usize) -> Result<()> {
        for (name, v) in [("logit scale", self.scale), ("logit offset", self.offset)] {
            if let Some(v) = v {
                check_device(OP, stream, name, v)?;
                check_len(OP, name, v.len(), classes)?;
            }
        }
        Ok(())
    }
}

/// Scratch buffers reused across calls: per-row losses, the two statistics and the target flag.
pub struct Workspace {
    row_loss: CudaSlice<f32>,
    stats: CudaSlice<f32>,
    flag: BadIndexFlag,
    /// When false, calls do not wait to check the targets; call [`Workspace::check_targets`].
    sync_check: bool,
}

impl Workspace {
    pub fn new(stream: &Arc<CudaStream>) -> Result<Self> {
        Ok(Workspace {
            row_loss: stream.alloc_zeros::<f32>(1).during("allocating the workspace")?,
            stats: stream.alloc_zeros::<f32>(2).during("allocating the workspace")?,
            flag: BadIndexFlag::new(stream)?,
            sync_check: true,
        })
    }

    /// By default every call waits for the stream to report a bad target as an error. With
    /// `deferred(true)` calls return at once (bad targets are still never used as indices: their
    /// rows get loss 0 and gradient 0) and [`Workspace::check_targets`] reports the first bad one.
    pub fn deferred(mut self, deferred: bool) -> Self {
        self.sync_check = !deferred;
        self
    }

    /// Waits for the stream; errors with the first bad target seen since the last check.
    pub fn check_targets(
        &mut self,
        stream: &Arc<CudaStream>,
        targets: &CudaView<'_, i32>,
        classes: usize,
    ) -> Result<()> {
        check_devices!(OP, stream, targets);
        check_device(OP, stream, "the workspace", &self.stats)?;
        self.check(stream, targets, classes)
    }

    /// Waits for the stream; the first bad target's row seen since the last check or take, if
    /// any (the flag is cleared), for a caller that no longer holds the targets.
    pub fn take_bad_target(&mut self, stream: &Arc<CudaStream>) -> Result<Option<usize>> {
        check_device(OP, stream, "the workspace", &self.stats)?;
        self.flag.take(stream)
    }

    fn check(&mut self, stream: &Arc<CudaStream>, targets: &CudaView<'_, i32>, classes: usize) -> Result<()> {
        let Some(index) = self.flag.read(stream)? else { return Ok(()) };
        // Clear it for the next call before reporting.
        stream.memcpy_htod(&[BadIndexFlag::CLEAR], self.flag.buf_mut()).during(OP)?;
        let value = if index < targets.len() { read_one(stream, targets, index)? as i64 } else { i64::MIN };
        Err(Error::InvalidTarget { op: OP, index, value, classes })
    }
}

/// Loss only: `loss` gets one value per sample (`Reduction::None`) or one value.
#[allow(clippy::too_many_arguments)]
pub fn forward<T: Dtype>(
    stream: &Arc<CudaStream>,
    ws: &mut Workspace,
    logits: &CudaView<'_, T>,
    targets: &CudaView<'_, i32>,
    weight: Option<&CudaView<'_, f32>>,
    classes: usize,
    opts: &Options,
    loss: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    forward_adjusted(stream, ws, logits, targets, weight, &LogitAdjust::NONE, classes, opts, loss)
}

/// [`forward`] on the adjusted logits `u_c = scale_c * x_c + offset_c`.
#[allow(clippy::too_many_arguments)]
pub fn forward_adjusted<T: Dtype>(
    stream: &Arc<CudaStream>,
    ws: &mut Workspace,
    logits: &CudaView<'_, T>,
    targets: &CudaView<'_, i32>,
    weight: Option<&CudaView<'_, f32>>,
    adjust: &LogitAdjust<'_, '_>,
    classes: usize,
    opts: &Options,
    loss: &mut impl DevicePtrMut<f32>,
) -> Result<()> {
    check_devices!(OP, stream, logits, targets, loss);
    if let Some(b) = &weight {
        check_device(OP, stream, "weight", &**b)?;
    }
    launch::<T, _, CudaSlice<T>>(stream, ws, logits, targets, weight, adjust, classes, opts, None, Some(loss), None)
}

/// Gradient only, given the upstream gradient `grad_output` (one value per sample for
/// `Reduction::None`, else one value).
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Dtype>(
    stream: &Arc<CudaStream>,
    ws: &mut Workspace,
    logits: &CudaView<'_, T>,
    targets: &CudaView<'_, i32>,
    weight: Option<&CudaView<'_, f32>>,
    classes: usize,
    opts: &Options,
    grad_output: &CudaView<'_, f32>,
    grad: &mut impl DevicePtrMut<T>,
) -> Result<()> {
    backward_adjusted(stream, ws, logits, targets, weight, &LogitAdjust::NONE, classes, opts, grad_output, grad)
}

/// [`backward`] of the adjusted loss: the gradient with respect to the unadjusted logits,
/// `scale_c * dL/du_c`.
#[allow(clippy::too_many_arguments)]
pub fn backward_adjusted<T: Dtype>(
    stream: &Arc<CudaStream>,
    ws: &mut Workspace,
    logits: &CudaView<'_, T>,
    targets: &CudaView<'_, i32>,
    weight: Option<&CudaView<'_, f32>>,
    adjust: &LogitAdjust<'_, '_>,
    classes: usize,
    opts: &Options,
    grad_output: &CudaView<'_, f32>,
    grad: &mut impl DevicePtrMut<T>,
) -> Result<()> {
    check_devices!(OP, stream, logits, targets, grad_output, grad);
    if let Some(b) = &weight {
        check_device(OP, stream, "weight", &**b)?;
    }
    launch::<T, CudaSlice<f32>, _>(
        stream,
        ws,
        logits,
        targets,
        weight,
        adjust,
        classes,
        opts,
        Some(grad_output),
        None,
        Some(grad),
    )
}

/// Loss and gradient in one pass over the logits, upstream gradient 1: the training step.
#[allow(clippy::too_many_arguments)]
pub fn forward_backward<T: Dtype>(
    stream: &Arc<CudaStream>,
    ws: &mut Workspace,
    logits: &CudaView<'_, T>,
    targets: &CudaView<'_, i32>,
    weight: Option<&CudaView<'_, f32>>,
    classes: usize,
    opts: &Options,
    loss: &mut impl DevicePtrMut<f32>,
    grad: &mut impl DevicePtrMut<T>,
) -> Result<()> {
    forward_backward_adjusted(stream, ws, logits, targets, weight, &LogitAdjust::NONE, classes, opts, loss, grad)
}

/// [`forward_backward`] of the adjusted loss (see [`super::LogitAdjust`]).
#[allow(clippy::too_many_arguments)]
pub fn forward_backward_adjusted<T: Dtype>(
    stream: &Arc<CudaStream>,
    ws: &mut Workspace,
    logits: &CudaView<'_, T>,
    targets: &CudaView<'_, i32>,
    weight: Option<&CudaView<'_, f32>>,
    adjust: &LogitAdjust<'_, '_>,
    classes: usize,
    opts: &Options,
    loss: &mut impl DevicePtrMut<f32>,
    grad: &mut impl DevicePtrMut<T>,
) -> Result<()> {
    check_devices!(OP, stream, logits, targets, loss, grad);
    if let Some(b) = &weight {
        check_device(OP, stream, "weight", &**b)?;
    }
    launch(stream, ws, logits, targets, weight, adjust, classes, opts, None, Some(loss), Some(grad))
}

#[allow(clippy::too_many_arguments)]
fn launch<T: Dtype, L: DevicePtrMut<f32>, G: DevicePtrMut<T>>(
    stream: &Arc<CudaStream>,
    ws: &mut Workspace,
    logits: &CudaView<'_, T>,
    targets: &CudaView<'_, i32>,
    weight: Option<&CudaView<'_, f32>>,
    adjust: &LogitAdjust<'_, '_>,
    classes: usize,
    opts: &Options,
    grad_output: Option<&CudaView<'_, f32>>,
    mut loss: Option<&mut L>,
    mut grad: Option<&mut G>,
) -> Result<()> {
    opts.validate(OP)?;
    check_device(OP, stream, "the workspace", &ws.stats)?;
    if classes == 0 {
        return Err(Error::shape(OP, "logits need at least one class"));
    }
    if classes > MAX_INDEX {
        return Err(Error::TooLarge { op: OP, msg: format!("{classes} classes, at most {MAX_INDEX}") });
    }
    let rows = targets.len();
    if rows > i32::MAX as usize - 1 || rows.checked_mul(classes).is_none_or(|n| n > i64::MAX as usize) {
        return Err(Error::TooLarge { op: OP, msg: format!("{rows} samples x {classes} classes") });
    }
    check_len(OP, "logits", logits.len(), rows * classes)?;
    if let Some(w) = weight {
        check_len(OP, "weight", w.len(), classes)?;
    }
    adjust.check(stream, classes)?;
    let loss_len = opts.loss_len(rows);
    if let Some(l) = &loss {
        check_len(OP, "loss", l.len(), loss_len)?;
    }
    if let Some(g) = &grad {
        check_len(OP, "grad", g.len(), rows * classes)?;
    }
    if let Some(g) = grad_output {
        check_len(OP, "grad_output", g.len(), loss_len)?;
    }
    if ws.row_loss.len() < rows.max(1) {
        ws.row_loss = stream.alloc_zeros::<f32>(rows.max(1)).during("growing the workspace")?;
    }

    let warp = classes <= WARP_ROW_MAX_COLS;
    let p = CeParams {
        rows: rows as i64,
        cols: classes as i32,
        warp_per_row: warp as i32,
        ignore_index: opts.ignore_index.unwrap_or(0),
        has_ignore: opts.ignore_index.is_some() as i32,
        has_weight: weight.is_some() as i32,
        reduction: match opts.reduction {
            Reduction::None => 0,
            Reduction::Sum => 1,
            Reduction::Mean => 2,
        },
        label_smoothing: opts.label_smoothing,
        grad_output_len: grad_output.map_or(0, |g| g.len() as i32),
        has_scale: adjust.scale.is_some() as i32,
        has_offset: adjust.offset.is_some() as i32,
    };
    // A null pointer tells the kernel "absent" (no weight, no upstream gradient, no loss, no grad).
    let null: u64 = 0;
    let (wp, _gw) = match weight {
        Some(w) => {
            let (p, g) = w.device_ptr(stream);
            (p, Some(g))
        }
        None => (null, None),
    };
    let (scp, _gsc) = match adjust.scale {
        Some(v) => {
            let (p, g) = v.device_ptr(stream);
            (p, Some(g))
        }
        None => (null, None),
    };
    let (ofp, _gof) = match adjust.offset {
        Some(v) => {
            let (p, g) = v.device_ptr(stream);
            (p, Some(g))
        }
        None => (null, None),
    };
    let (tp, _gt) = targets.device_ptr(stream);
    let (xp, _gx) = logits.device_ptr(stream);
    let (gop, _ggo) = match grad_output {
        Some(g) => {
            let (p, g) = g.device_ptr(stream);
            (p, Some(g))
        }
        None => (null, None),
    };

    // 1. Validate targets, total weight, weight sum.
    {
        let f = function(stream, "cross_entropy", "cross_entropy_prepare")?;
        let (flagp, _gf) = ws.flag.buf_mut().device_ptr_mut(stream);
        let (sp, _gs) = ws.stats.device_ptr_mut(stream);
        let mut b = stream.launch_builder(&f);
        b.arg(&tp).arg(&wp).arg(&p).arg(&flagp).arg(&sp);
        // SAFETY: targets has `rows` i32, weight (if non-null) `classes` f32 (checked above);
        // flag is 1 i32 and stats 2 f32 owned by the workspace; the kernel reads targets[i] for
        // i < rows and weight[c] only for c < classes, after checking 0 <= t < classes.
        unsafe { b.launch(cfg(1, 1024, 0)) }.during(OP)?;
        after_launch(stream, OP, &f)?;
    }

    // 2. One pass over the logits.
    if rows > 0 {
        // The adjusted loss is its own entry point (see kernels/cross_entropy.cu).
        let adjusted = p.has_scale != 0 || p.has_offset != 0;
        let name = format!("cross_entropy_fwd_bwd_{}{}", if adjusted { "adjusted_" } else { "" }, T::SUFFIX);
        let f = function(stream, "cross_entropy", &name)?;
        let (sp, _gs) = ws.stats.device_ptr(stream);
        // Per-row losses go straight to `loss` for Reduction::None, else to the workspace.
        let (lp, _gl) = match (loss.as_mut(), opts.reduction) {
            (None, _) => (null, None),
            (Some(l), Reduction::None) => {
                let (p, g) = l.device_ptr_mut(stream);
                (p, Some(g))
            }
            (Some(_), Reduction::Sum | Reduction::Mean) => {
                let (p, g) = ws.row_loss.device_ptr_mut(stream);
                (p, Some(g))
            }
        };
        let (gp, _gg) = match grad.as_mut() {
            Some(g) => {
                let (p, g) = g.device_ptr_mut(stream);
                (p, Some(g))
            }
            None => (null, None),
        };
        let launch = if warp {
            cfg(blocks_for(rows, 8).min(65_535 * 32), 256, 0)
        } else {
            let threads = classes.div_ceil(8).next_multiple_of(32).clamp(128, 1024) as u32;
            cfg(blocks_for(rows, 1).min(1 << 20), threads, 0)
        };
        let mut b = stream.launch_builder(&f);
        b.arg(&xp).arg(&tp).arg(&wp).arg(&scp).arg(&ofp).arg(&sp).arg(&gop).arg(&lp).arg(&gp).arg(&p);
        // SAFETY: logits and grad hold rows*classes elements, targets rows, row losses >= rows,
        // scale and offset `classes` f32 each when non-null (p.has_scale/has_offset say which;
        // the kernel reads scale[c]/offset[c] only for c < cols and only when its flag is set),
        // grad_output 0/1/rows as p.grad_output_len says (all checked above); the kernel indexes
        // row*cols + c with row < rows, c < cols, and uses a target as an index only after
        // checking it lies in [0, cols).
        unsafe { b.launch(launch) }.during(OP)?;
        after_launch(stream, OP, &f)?;
    }

    // 3. Reduce the per-row losses.
    if let (Some(l), Reduction::Sum | Reduction::Mean) = (loss, opts.reduction) {
        let f = function(stream, "cross_entropy", "cross_entropy_reduce")?;
        let (rp, _gr) = ws.row_loss.device_ptr(stream);
        let (sp, _gs) = ws.stats.device_ptr(stream);
        let (op, _go) = l.device_ptr_mut(stream);
        let mut b = stream.launch_builder(&f);
        b.arg(&rp).arg(&sp).arg(&op).arg(&p);
        // SAFETY: row_loss holds >= rows f32 written by step 2 (or none read when rows == 0),
        // stats 2 f32, out 1 f32 (loss_len checked above).
        unsafe { b.launch(cfg(1, 1024, 0)) }.during(OP)?;
        after_launch(stream, OP, &f)?;
    }

    if ws.sync_check {
        ws.check(stream, targets, classes)?;
    }
    Ok(())
}

/// Adds a batch's per-class statistics to `sums` (`3 * classes` f64, accumulated across calls):
/// per class the summed unweighted label-smoothed cross-entropy of its rows (on the plain logits),
/// their summed gradient norms at the logits `||softmax(x) - q||_2` and their count, as
/// [`super::cpu::class_sums`] computes them (in f64, rows added in order). Rows whose target is
/// not in `[0, classes)` are skipped. `row_stats` is scratch of at least `2 * rows` f64. Two
/// launches and no wait: nothing is read back.
pub fn class_sums<T: Dtype>(
    stream: &Arc<CudaStream>,
    logits: &CudaView<'_, T>,
    targets: &CudaView<'_, i32>,
    classes: usize,
    label_smoothing: f32,
    row_stats: &mut (impl DevicePtr<f64> + DevicePtrMut<f64>),
    sums: &mut impl DevicePtrMut<f64>,
) -> Result<()> {
    check_devices!(OP, stream, logits, targets, row_stats, sums);
    if classes == 0 || classes > MAX_INDEX {
        return Err(Error::shape(OP, format!("{classes} classes: at least 1, at most {MAX_INDEX}")));
    }
    if !(0.0..=1.0).contains(&label_smoothing) {
        return Err(Error::shape(OP, format!("label smoothing {label_smoothing} not in [0, 1]")));
    }
    let rows = targets.len();
    if rows.checked_mul(classes).is_none_or(|n| n > MAX_INDEX) {
        return Err(Error::TooLarge { op: OP, msg: format!("{rows} samples x {classes} classes") });
    }
    check_len(OP, "logits", logits.len(), rows * classes)?;
    check_len(OP, "sums", sums.len(), 3 * classes)?;
    if row_stats.len() < 2 * rows {
        return Err(Error::shape(OP, format!("row_stats holds {} f64, need {}", row_stats.len(), 2 * rows)));
    }
    if rows == 0 {
        return Ok(());
    }
    let (r, c) = (rows as i32, classes as i32); // rows * classes <= MAX_INDEX (checked)
    let (xp, _gx) = logits.device_ptr(stream);
    let (tp, _gt) = targets.device_ptr(stream);
    {
        let f = function(stream, "cross_entropy", &format!("cross_entropy_row_stats_{}", T::SUFFIX))?;
        let (rp, _gr) = row_stats.device_ptr_mut(stream);
        let mut b = stream.launch_builder(&f);
        b.arg(&xp).arg(&tp).arg(&rp).arg(&r).arg(&c).arg(&label_smoothing);
        // SAFETY: logits hold rows*classes elements of T, targets rows i32, row_stats >= 2*rows f64
        // (checked above); the kernel reads logits[i*cols + c] for i < rows, c < cols only for
        // rows whose target is in [0, cols), and writes row_stats[2i], row_stats[2i + 1] for
        // i < rows; the arguments match `(const T*, const int32_t*, double*, int, int, float)`.
        unsafe { b.launch(cfg(blocks_for(rows, 256).min(65_535), 256, 0)) }.during(OP)?;
        after_launch(stream, OP, &f)?;
    }
    let f = function(stream, "cross_entropy", "cross_entropy_class_sums")?;
    let (rp, _gr) = row_stats.device_ptr(stream);
    let (sp, _gs) = sums.device_ptr_mut(stream);
    let mut b = stream.launch_builder(&f);
    b.arg(&rp).arg(&tp).arg(&sp).arg(&r).arg(&c);
    // SAFETY: row_stats holds >= 2*rows f64 written by the launch before on this stream, targets
    // rows i32, sums 3*classes f64 (checked above); thread k < cols reads and writes sums[k],
    // sums[cols + k], sums[2 cols + k] only; the arguments match
    // `(const double*, const int32_t*, double*, int, int)`.
    unsafe { b.launch(cfg(1, classes.next_multiple_of(32).min(1024) as u32, 0)) }.during(OP)?;
    after_launch(stream, OP, &f)?;
    Ok(())
}
