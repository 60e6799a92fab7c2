//! The weighted loss, softmax and confusion counting for [candle](https://crates.io/crates/candle-core)
//! tensors (feature `candle`), as candle custom ops with backward.
//!
//! - [`cross_entropy`]: this crate's cross-entropy (PyTorch semantics: class `weight`,
//!   `ignore_index`, label smoothing, every [`Reduction`]) as a candle op, so `loss.backward()` in
//!   a candle graph gives the gradient of this crate's fused pass. A drop-in for
//!   `candle_nn::loss::cross_entropy(&logits, &targets)`:
//!   `evenclass::candle::cross_entropy(&logits, &targets, Some(&weight), &Options::default())`.
//! - [`cross_entropy_with_grad`]: loss and gradient in one fused pass, outside the graph.
//! - [`softmax`] / [`log_softmax`] over the last dimension, with backward.
//! - [`confusion`] / [`confusion_ignoring`]: the confusion matrix of the logits' argmax against
//!   the targets, as a host [`ConfusionMatrix`] with its metrics (recall, precision, F1,
//!   accuracy, balanced accuracy: [`ConfusionMatrix::metrics`]).
//!
//! On candle's CPU device the ops run this crate's CPU references ([`crate::cross_entropy::cpu`],
//! ...). On its CUDA device (feature `candle-cuda`) they launch this crate's kernels on candle's
//! own stream and buffers: no copy and no second CUDA context.
//!
//! # Inputs
//!
//! - Logits: f32, f16 or bf16 (other dtypes are a candle error). Arithmetic is f32 throughout.
//!   The loss is always **f32** (a scalar for `Sum`/`Mean`, shape `(N,)` for `None`); gradients
//!   and softmax outputs have the logits' dtype.
//! - Targets: a rank-1 tensor of class indices of any integer dtype (`u8`, `u32`, `i16`, `i32`,
//!   `i64`; candle's own loss uses `u32`). On the CPU a value that does not fit in `i32` is an
//!   invalid target (the error names the sample). On CUDA `i32` and `u32` are read in place (a
//!   `u32` is reinterpreted as `i32`, so values `>= 2^31` are invalid targets); `u8`, `i16` and
//!   `i64` are first converted to `i32` with candle's cast, where an `i64` outside the `i32` range
//!   wraps (the kernel still never indexes out of bounds).
//! - Class weights: rank 1, one per class, any float dtype (converted to f32). No gradient flows
//!   to the weights or the targets.
//! - Non-contiguous inputs (transposed, narrowed, broadcast) are **made contiguous** first with
//!   candle's `Tensor::contiguous` (a copy, which candle differentiates as usual); contiguous
//!   inputs are used in place.
//!
//! Errors (bad dtype, shape, device, targets outside `[0, C)`, label smoothing outside `[0, 1]`)
//! are candle errors ([`candle_core::Error::Wrapped`] around this crate's [`crate::Error`], whose
//! message they carry); nothing panics on bad input.
//!
//! # The backward
//!
//! When the logits take part in a gradient computation (`Tensor::track_op`), the cross-entropy
//! forward runs the fused loss-and-gradient pass once and keeps the gradient (for an upstream
//! gradient of 1) until the backward takes it: `loss.backward()` then costs no second pass over the
//! logits. When the upstream gradient is not 1 (e.g. `(loss * 0.5).backward()`), or the backward
//! runs a second time, the backward recomputes with the upstream gradient instead, with this
//! crate's backward. On CUDA this fusion is used for `Sum` and `Mean` (reading the scalar upstream
//! gradient is a 4-byte copy); with `None` the backward is its own launch. The kept gradient lives
//! as long as the graph node (until the backward or until the loss tensor is dropped). Gradients
//! returned by these ops are not themselves differentiable (no second-order gradients).
use std::sync::Mutex;

use candle_core::op::BackpropOp;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Tensor};

pub use crate::confusion::{ConfusionMatrix, Metrics};
pub use crate::cross_entropy::{LogitAdjust, Options, Reduction};
pub use crate::softmax::Kind;

mod common;
mod cpu;
#[cfg(feature = "candle-cuda")]
mod cuda;

pub use common::Result;
use common::{shape_err, to_candle, CE_OP, CM_OP, SM_OP};

/// Weighted cross-entropy of `logits` (`N x C`) against class-index `targets` (`N`), with
/// optional per-class `weight` (`C`), as a differentiable candle op. See the [module docs](self)
/// for dtypes, layouts and the backward, and [`crate::cross_entropy`] for the exact semantics
/// (PyTorch's `nn.CrossEntropyLoss`, except that a `Mean` over zero total weight is 0, not NaN).
///
/// ```no_run
/// # fn main() -> candle_core::Result<()> {
/// use candle_core::{Device, Tensor};
/// use evenclass::candle::{cross_entropy, Options};
/// let dev = Device::Cpu;
/// let logits = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1., (8, 3), &dev)?)?;
/// let targets = Tensor::new(&[0u32, 1, 2, 0, 1, 2, 0, 1], &dev)?;
/// let weight = Tensor::new(&[0.5f32, 1.0, 2.0], &dev)?;
/// // was: let loss = candle_nn::loss::cross_entropy(&logits, &targets)?;
/// let loss = cross_entropy(&logits, &targets, Some(&weight), &Options::default())?;
/// let grads = loss.backward()?;
/// # Ok(()) }
/// ```
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, weight: Option<&Tensor>, opts: &Options) -> Result<Tensor> {
    cross_entropy_adjusted(logits, targets, weight, &LogitAdjust::NONE, opts)
}

/// [`cross_entropy`] on the adjusted logits `u_c = scale_c * x_c + offset_c` (per-class scale and
/// offset from `adjust`, see [`crate::cross_entropy::LogitAdjust`]: VS-loss, class-dependent
/// temperature, logit adjustment), as one differentiable op: the gradient flows to the logits
/// (`scale_c * dL/du_c`), not to the scale or offset, which are constants of the loss.
pub fn cross_entropy_adjusted(
    logits: &Tensor,
    targets: &Tensor,
    weight: Option<&Tensor>,
    adjust: &LogitAdjust<'_>,
    opts: &Options,
) -> Result<Tensor> {
    let (logits, targets, weight, c) = prepare(logits, targets, weight, opts)?;
    adjust.check(CE_OP, c).map_err(to_candle)?;
    let op = CrossEntropyOp {
        adjust: OwnedAdjust::from(adjust),
        opts: *opts,
        classes: c,
        fuse: logits.track_op() && fuse_on(logits.device(), opts),
        grad: Mutex::new(None),
    };
    match &weight {
        None => logits.apply_op2(&targets, op),
        Some(w) => logits.apply_op3(&targets, w, op),
    }
}

/// The loss and its gradient with respect to the logits (upstream gradient 1) in one fused pass,
/// outside candle's autograd: for hand-written training loops, or to check a graph's gradient.
/// Same inputs and checks as [`cross_entropy`]; the gradient has the logits' shape and dtype.
pub fn cross_entropy_with_grad(
    logits: &Tensor,
    targets: &Tensor,
    weight: Option<&Tensor>,
    opts: &Options,
) -> Result<(Tensor, Tensor)> {
    let (logits, targets, weight, c) = prepare(logits, targets, weight, opts)?;
    let n = logits.dims()[0];
    let shape = (n, c);
    let (xs, xl) = logits.storage_and_layout();
    let (ts, tl) = targets.storage_and_layout();
    let ws = weight.as_ref().map(|w| w.storage_and_layout());
    let op =
        CrossEntropyOp { adjust: OwnedAdjust::default(), opts: *opts, classes: c, fuse: true, grad: Mutex::new(None) };
    match (&*xs, &*ts, ws.as_ref().map(|(s, l)| (&**s, *l))) {
        (candle_core::Storage::Cpu(x), candle_core::Storage::Cpu(t), w) => {
            let w = match w {
                Some((candle_core::Storage::Cpu(s), l)) => Some((s, l)),
                None => None,
                Some(_) => return Err(unsupported_device(CE_OP, logits.device())),
            };
            let (loss, shape_l) = op.cpu(x, xl, t, tl, w)?;
            let Some(Kept::Cpu(g)) = op.take() else {
                return Err(shape_err(CE_OP, "internal: the fused pass gave no gradient"));
            };
            let loss = Tensor::from_storage(candle_core::Storage::Cpu(loss), shape_l, BackpropOp::none(), false);
            Ok((loss, cpu::tensor_like(g.into_raw_vec_and_offset().0, shape, logits.dtype())?))
        }
        #[cfg(feature = "candle-cuda")]
        (candle_core::Storage::Cuda(x), candle_core::Storage::Cuda(t), w) => {
            let w = match w {
                Some((candle_core::Storage::Cuda(s), l)) => Some((s, l)),
                None => None,
                Some(_) => return Err(unsupported_device(CE_OP, logits.device())),
            };
            let (loss, shape_l) = op.cuda(x, xl, t, tl, w)?;
            let Some(Kept::Cuda(g)) = op.take() else {
                return Err(shape_err(CE_OP, "internal: the fused pass gave no gradient"));
            };
            let loss = Tensor::from_storage(candle_core::Storage::Cuda(loss), shape_l, BackpropOp::none(), false);
            Ok((loss, Tensor::from_storage(candle_core::Storage::Cuda(g), shape, BackpropOp::none(), false)))
        }
        _ => Err(unsupported_device(CE_OP, logits.device())),
    }
}

/// Checks the inputs of the loss and brings them into the form the ops read: contiguous logits,
/// targets readable by the device's kernels, f32 detached weights. Returns them and C.
fn prepare(
    logits: &Tensor,
    targets: &Tensor,
    weight: Option<&Tensor>,
    opts: &Options,
) -> Result<(Tensor, Tensor, Option<Tensor>, usize)> {
    opts.validate(CE_OP).map_err(to_candle)?;
    let (n, c) = match logits.dims() {
        &[n, c] => (n, c),
        d => return Err(shape_err(CE_OP, format!("logits must be N x C (rank 2), got shape {d:?}"))),
    };
    if c == 0 {
        return Err(shape_err(CE_OP, "logits need at least one class"));
    }
    check_float(CE_OP, "logits", logits.dtype())?;
    check_device(CE_OP, logits.device())?;
    match targets.dims() {
        &[m] if m == n => {}
        d => return Err(shape_err(CE_OP, format!("targets must have shape [{n}] (rows of logits), got {d:?}"))),
    }
    check_int(CE_OP, targets.dtype())?;
    same_device(CE_OP, "targets", logits, targets)?;
    let weight = match weight {
        None => None,
        Some(w) => {
            match w.dims() {
                &[k] if k == c => {}
                d => return Err(shape_err(CE_OP, format!("weight must have shape [{c}] (classes), got {d:?}"))),
            }
            check_float(CE_OP, "weight", w.dtype())?;
            same_device(CE_OP, "weight", logits, w)?;
            // Detached: the loss gives no gradient to the weights, and they need not be tracked.
            Some(w.detach().to_dtype(DType::F32)?.contiguous()?)
        }
    };
    let targets = targets_for_device(&targets.contiguous()?)?;
    Ok((logits.contiguous()?, targets, weight, c))
}

/// Softmax over the last dimension (any rank >= 1), differentiable. Same dtype as `x`.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    softmax_kind(x, Kind::Softmax)
}

/// Log-softmax over the last dimension (any rank >= 1), differentiable. Same dtype as `x`.
pub fn log_softmax(x: &Tensor) -> Result<Tensor> {
    softmax_kind(x, Kind::LogSoftmax)
}

fn softmax_kind(x: &Tensor, kind: Kind) -> Result<Tensor> {
    if x.rank() == 0 {
        return Err(shape_err(SM_OP, "softmax needs at least one dimension"));
    }
    check_float(SM_OP, "input", x.dtype())?;
    check_device(SM_OP, x.device())?;
    x.contiguous()?.apply_op1(SoftmaxOp { kind })
}

/// Confusion matrix of the argmax of `logits` (`N x classes`) against `targets` (`N`), every
/// sample counted (see [`confusion_ignoring`] to skip an `ignore_index`). The argmax follows
/// `torch.argmax` (ties to the lowest index, NaN is the maximum); see [`crate::confusion`].
/// On CUDA the fused argmax+count kernel runs on candle's stream and only the `classes^2` counts
/// are copied back.
pub fn confusion(logits: &Tensor, targets: &Tensor, classes: usize) -> Result<ConfusionMatrix> {
    confusion_ignoring(logits, targets, classes, None)
}

/// [`confusion`], skipping the samples whose target is `ignore_index`.
pub fn confusion_ignoring(
    logits: &Tensor,
    targets: &Tensor,
    classes: usize,
    ignore_index: Option<i32>,
) -> Result<ConfusionMatrix> {
    let n = match logits.dims() {
        &[n, c] if c == classes => n,
        d => return Err(shape_err(CM_OP, format!("logits must have shape [N, {classes}], got {d:?}"))),
    };
    check_float(CM_OP, "logits", logits.dtype())?;
    check_device(CM_OP, logits.device())?;
    match targets.dims() {
        &[m] if m == n => {}
        d => return Err(shape_err(CM_OP, format!("targets must have shape [{n}] (rows of logits), got {d:?}"))),
    }
    check_int(CM_OP, targets.dtype())?;
    same_device(CM_OP, "targets", logits, targets)?;
    let logits = logits.contiguous()?;
    let targets = targets_for_device(&targets.contiguous()?)?;
    let (xs, xl) = logits.storage_and_layout();
    let (ts, tl) = targets.storage_and_layout();
    match (&*xs, &*ts) {
        (candle_core::Storage::Cpu(x), candle_core::Storage::Cpu(t)) => {
            cpu::confusion(x, xl, t, tl, classes, ignore_index)
        }
        #[cfg(feature = "candle-cuda")]
        (candle_core::Storage::Cuda(x), candle_core::Storage::Cuda(t)) => {
            cuda::confusion(x, xl, t, tl, classes, ignore_index)
        }
        _ => Err(unsupported_device(CM_OP, logits.device())),
    }
}

// ---- the custom ops --------------------------------------------------------------------------

/// The cross-entropy op: arguments (logits, targets) or (logits, targets, weight).
struct CrossEntropyOp {
    /// Per-class logit scale and offset (none for the plain loss).
    adjust: OwnedAdjust,
    opts: Options,
    classes: usize,
    /// Run the fused pass in the forward and keep the gradient for the backward.
    fuse: bool,
    /// The fused pass's gradient (upstream 1), taken by the first backward.
    grad: Mutex<Option<Kept>>,
}

/// The op's own copy of a [`LogitAdjust`] (the op outlives the caller's slices).
#[derive(Clone, Debug, Default)]
struct OwnedAdjust {
    scale: Option<Vec<f32>>,
    offset: Option<Vec<f32>>,
}

impl From<&LogitAdjust<'_>> for OwnedAdjust {
    fn from(a: &LogitAdjust<'_>) -> Self {
        OwnedAdjust { scale: a.scale.map(<[f32]>::to_vec), offset: a.offset.map(<[f32]>::to_vec) }
    }
}

impl OwnedAdjust {
    fn borrow(&self) -> LogitAdjust<'_> {
        LogitAdjust { scale: self.scale.as_deref(), offset: self.offset.as_deref() }
    }
}

/// A gradient kept by the forward for the backward.
enum Kept {
    Cpu(ndarray::Array2<f32>),
    #[cfg(feature = "candle-cuda")]
    Cuda(candle_core::CudaStorage),
}

impl CrossEntropyOp {
    fn keep(&self, g: Kept) {
        *self.grad.lock().unwrap_or_else(|p| p.into_inner()) = Some(g);
    }

    fn take(&self) -> Option<Kept> {
        self.grad.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn loss_shape(&self, rows: usize) -> Shape {
        match self.opts.reduction {
            Reduction::None => Shape::from(rows),
            Reduction::Sum | Reduction::Mean => Shape::from(()),
        }
    }

    fn cpu(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        t: &CpuStorage,
        tl: &Layout,
        w: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let (loss, grad) =
            cpu::cross_entropy(x, xl, t, tl, w, self.classes, &self.adjust.borrow(), &self.opts, self.fuse)?;
        if let Some(g) = grad {
            self.keep(Kept::Cpu(g));
        }
        Ok((CpuStorage::F32(loss), self.loss_shape(xl.dims()[0])))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda(
        &self,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        t: &candle_core::CudaStorage,
        tl: &Layout,
        w: Option<(&candle_core::CudaStorage, &Layout)>,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (loss, grad) =
            cuda::cross_entropy(x, xl, t, tl, w, self.classes, &self.adjust.borrow(), &self.opts, self.fuse)?;
        if let Some(g) = grad {
            self.keep(Kept::Cuda(g));
        }
        Ok((loss, self.loss_shape(xl.dims()[0])))
    }

    /// Gradient of the logits for the upstream gradient `grad_res`.
    fn backward(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        weight: Option<&Tensor>,
        grad_res: &Tensor,
    ) -> Result<Tensor> {
        let (n, c) = logits.dims2()?;
        let grad_res = grad_res.to_dtype(DType::F32)?.contiguous()?;
        let kept = self.take();
        match logits.device() {
            Device::Cpu => {
                let up = grad_res.flatten_all()?.to_vec1::<f32>()?;
                let grad = match kept {
                    Some(Kept::Cpu(g)) if up.iter().all(|&v| v == 1.0) => g,
                    _ => {
                        cpu::cross_entropy_backward(logits, targets, weight, &up, c, &self.adjust.borrow(), &self.opts)?
                    }
                };
                cpu::tensor_like(grad.into_raw_vec_and_offset().0, (n, c), logits.dtype())
            }
            #[cfg(feature = "candle-cuda")]
            Device::Cuda(_) => {
                let kept = match kept {
                    Some(Kept::Cuda(g)) => Some(g),
                    _ => None,
                };
                cuda::cross_entropy_backward(
                    logits,
                    targets,
                    weight,
                    &grad_res,
                    kept,
                    c,
                    &self.adjust.borrow(),
                    &self.opts,
                )
            }
            d => Err(unsupported_device(CE_OP, d)),
        }
    }
}

impl CustomOp2 for CrossEntropyOp {
    fn name(&self) -> &'static str {
        "evenclass-cross-entropy"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.cpu(s1, l1, s2, l2, None)
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.cuda(s1, l1, s2, l2, None)
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(self.backward(logits, targets, None, grad_res)?), None))
    }
}

impl CustomOp3 for CrossEntropyOp {
    fn name(&self) -> &'static str {
        "evenclass-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.cpu(s1, l1, s2, l2, Some((s3, l3)))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        self.cuda(s1, l1, s2, l2, Some((s3, l3)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        Ok((Some(self.backward(logits, targets, Some(weight), grad_res)?), None, None))
    }
}

/// Softmax or log-softmax over the last dimension.
struct SoftmaxOp {
    kind: Kind,
}

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Softmax => "evenclass-softmax",
            Kind::LogSoftmax => "evenclass-log-softmax",
        }
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((cpu::softmax(s, l, self.kind)?, l.shape().clone()))
    }

    #[cfg(feature = "candle-cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((cuda::softmax(s, l, self.kind)?, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // The backward needs only the output y and its gradient dy (in the output's dtype).
        let dy = grad_res.to_dtype(res.dtype())?.contiguous()?;
        let y = res.contiguous()?;
        let dx = match arg.device() {
            Device::Cpu => cpu::softmax_backward(&y, &dy, self.kind)?,
            #[cfg(feature = "candle-cuda")]
            Device::Cuda(_) => cuda::softmax_backward(&y, &dy, self.kind)?,
            d => return Err(unsupported_device(SM_OP, d)),
        };
        Ok(Some(dx))
    }
}

// ---- checks ----------------------------------------------------------------------------------

fn check_float(op: &'static str, what: &str, dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 | DType::F16 | DType::BF16 => Ok(()),
        DType::F64 if what == "weight" => Ok(()),
        d => Err(shape_err(op, format!("{what} has dtype {d:?}; supported: f32, f16, bf16"))),
    }
}

fn check_int(op: &'static str, dtype: DType) -> Result<()> {
    match dtype {
        DType::U8 | DType::U32 | DType::I16 | DType::I32 | DType::I64 => Ok(()),
        d => Err(shape_err(op, format!("targets have dtype {d:?}; class indices must be an integer dtype"))),
    }
}

fn check_device(op: &'static str, device: &Device) -> Result<()> {
    match device {
        Device::Cpu => Ok(()),
        #[cfg(feature = "candle-cuda")]
        Device::Cuda(_) => Ok(()),
        d => Err(unsupported_device(op, d)),
    }
}

fn same_device(op: &'static str, what: &str, logits: &Tensor, other: &Tensor) -> Result<()> {
    if logits.device().same_device(other.device()) {
        Ok(())
    } else {
        Err(shape_err(
            op,
            format!("{what} are on {:?} but the logits on {:?}", other.device().location(), logits.device().location()),
        ))
    }
}

fn unsupported_device(op: &'static str, device: &Device) -> candle_core::Error {
    let hint = if device.is_cuda() { " (enable evenclass's feature `candle-cuda`)" } else { "" };
    shape_err(op, format!("device {:?} is not supported{hint}; supported: cpu, cuda", device.location()))
}

/// Whether the forward should fuse the gradient in (see the module docs).
fn fuse_on(device: &Device, opts: &Options) -> bool {
    match device {
        Device::Cpu => true,
        _ => opts.reduction != Reduction::None,
    }
}

/// Targets as the device's kernels read them: any integer dtype on the CPU (converted there,
/// checked); `i32`/`u32` in place on CUDA, other integer dtypes cast to `i32` by candle.
fn targets_for_device(t: &Tensor) -> Result<Tensor> {
    match (t.device(), t.dtype()) {
        (Device::Cpu, _) | (_, DType::I32 | DType::U32) => Ok(t.clone()),
        _ => t.to_dtype(DType::I32),
    }
}
