//! candle's CUDA device (feature `candle-cuda`): this crate's kernels launched on candle's own
//! stream, reading and writing candle's own buffers (`CudaStorage` holds cudarc slices of the
//! same cudarc as this crate).
use candle_core::cuda::CudaStorageSlice;
use candle_core::op::BackpropOp;
use candle_core::{CudaStorage, DType, Layout, Storage, Tensor};
use cudarc::driver::{CudaSlice, CudaView};

use super::{shape_err, to_candle, Result, CE_OP, CM_OP, SM_OP};
use crate::confusion::{cuda as confusion_cuda, ConfusionMatrix};
use crate::cross_entropy::{cuda as ce_cuda, LogitAdjust, Options, Reduction};
use crate::cuda::Dtype;
use crate::error::DriverContext;
use crate::softmax::{cuda as sm_cuda, Kind};

fn range(op: &'static str, l: &Layout) -> Result<std::ops::Range<usize>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(a..b),
        None => Err(shape_err(op, "internal: a non-contiguous layout reached the op")),
    }
}

/// The targets as an `i32` view: `i32` as is, `u32` reinterpreted (values >= 2^31 become negative
/// and are then invalid targets, never indices).
fn targets<'a>(op: &'static str, s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, i32>> {
    let r = range(op, l)?;
    let len = r.len();
    match &s.slice {
        CudaStorageSlice::I32(v) => Ok(v.slice(r)),
        CudaStorageSlice::U32(v) => {
            let v = v.slice(r);
            // SAFETY: u32 and i32 have the same size and alignment and every bit pattern is valid
            // for both; the view covers exactly `len` elements of the u32 view.
            unsafe { v.transmute::<i32>(len) }.ok_or_else(|| shape_err(op, "internal: u32 targets view"))
        }
        s => Err(shape_err(op, format!("targets have dtype {:?} on CUDA; expected i32 or u32", s_dtype(s)))),
    }
}

fn f32s<'a>(op: &'static str, s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, f32>> {
    Ok(s.as_cuda_slice::<f32>()
        .map_err(|_| shape_err(op, "internal: weight must be f32 on CUDA"))?
        .slice(range(op, l)?))
}

fn s_dtype(s: &CudaStorageSlice) -> DType {
    match s {
        CudaStorageSlice::U8(_) => DType::U8,
        CudaStorageSlice::U32(_) => DType::U32,
        CudaStorageSlice::I16(_) => DType::I16,
        CudaStorageSlice::I32(_) => DType::I32,
        CudaStorageSlice::I64(_) => DType::I64,
        CudaStorageSlice::BF16(_) => DType::BF16,
        CudaStorageSlice::F16(_) => DType::F16,
        CudaStorageSlice::F32(_) => DType::F32,
        CudaStorageSlice::F64(_) => DType::F64,
        _ => DType::U8,
    }
}

/// Runs `f` with the logits as a typed view, for the three kernel dtypes.
macro_rules! with_float {
    ($op:expr, $s:expr, $l:expr, |$v:ident: $t:ident| $body:expr) => {{
        let r = range($op, $l)?;
        match &$s.slice {
            CudaStorageSlice::F32(x) => {
                type $t = f32;
                let $v = x.slice(r);
                $body
            }
            CudaStorageSlice::F16(x) => {
                type $t = half::f16;
                let $v = x.slice(r);
                $body
            }
            CudaStorageSlice::BF16(x) => {
                type $t = half::bf16;
                let $v = x.slice(r);
                $body
            }
            other => {
                Err(shape_err($op, format!("dtype {:?} is not supported; supported: f32, f16, bf16", s_dtype(other))))
            }
        }
    }};
}

/// Forward of the loss (a single launch of the fused pass with `fuse`, which also returns the
/// gradient for upstream 1).
#[allow(clippy::too_many_arguments)]
pub(super) fn cross_entropy(
    x: &CudaStorage,
    xl: &Layout,
    t: &CudaStorage,
    tl: &Layout,
    w: Option<(&CudaStorage, &Layout)>,
    classes: usize,
    adjust: &LogitAdjust<'_>,
    opts: &Options,
    fuse: bool,
) -> Result<(CudaStorage, Option<CudaStorage>)> {
    let dev = x.device.clone();
    let stream = dev.cuda_stream();
    let (sc, of) = upload_adjust(&stream, adjust)?;
    let (scv, ofv) = (sc.as_ref().map(|v| v.as_view()), of.as_ref().map(|v| v.as_view()));
    let adj = ce_cuda::LogitAdjust { scale: scv.as_ref(), offset: ofv.as_ref() };
    let rows = xl.dims()[0];
    let tv = targets(CE_OP, t, tl)?;
    let wv = w.map(|(s, l)| f32s(CE_OP, s, l)).transpose()?;
    let mut ws = ce_cuda::Workspace::new(&stream).map_err(to_candle)?;
    let mut loss = stream.alloc_zeros::<f32>(opts.loss_len(rows)).during(CE_OP).map_err(to_candle)?;
    let grad = with_float!(CE_OP, x, xl, |xv: T| {
        if fuse {
            let mut g = stream.alloc_zeros::<T>(rows * classes).during(CE_OP).map_err(to_candle)?;
            ce_cuda::forward_backward_adjusted(
                &stream,
                &mut ws,
                &xv,
                &tv,
                wv.as_ref(),
                &adj,
                classes,
                opts,
                &mut loss,
                &mut g,
            )
            .map_err(to_candle)?;
            Ok(Some(CudaStorage::wrap_cuda_slice(g, dev.clone())))
        } else {
            ce_cuda::forward_adjusted(&stream, &mut ws, &xv, &tv, wv.as_ref(), &adj, classes, opts, &mut loss)
                .map_err(to_candle)?;
            Ok(None)
        }
    })?;
    Ok((CudaStorage::wrap_cuda_slice(loss, dev), grad))
}

/// Gradient of the logits: the kept fused gradient when the upstream gradient is exactly 1, else
/// this crate's backward kernel with `grad_res` (f32, contiguous) as upstream gradient.
#[allow(clippy::too_many_arguments)]
pub(super) fn cross_entropy_backward(
    logits: &Tensor,
    targets_t: &Tensor,
    weight: Option<&Tensor>,
    grad_res: &Tensor,
    kept: Option<CudaStorage>,
    classes: usize,
    adjust: &LogitAdjust<'_>,
    opts: &Options,
) -> Result<Tensor> {
    let (rows, _) = logits.dims2()?;
    let shape = (rows, classes);
    if let Some(g) = kept {
        if opts.reduction != Reduction::None && grad_res.flatten_all()?.to_vec1::<f32>()? == [1.0] {
            return Ok(Tensor::from_storage(Storage::Cuda(g), shape, BackpropOp::none(), false));
        }
    }
    let (xs, xl) = logits.storage_and_layout();
    let (ts, tl) = targets_t.storage_and_layout();
    let (gs, gl) = grad_res.storage_and_layout();
    let ws = weight.map(|w| w.storage_and_layout());
    let (Storage::Cuda(xs), Storage::Cuda(ts), Storage::Cuda(gs)) = (&*xs, &*ts, &*gs) else {
        return Err(shape_err(CE_OP, "internal: CUDA backward on a non-CUDA tensor"));
    };
    let wv = match &ws {
        Some((s, l)) => match &**s {
            Storage::Cuda(s) => Some(f32s(CE_OP, s, l)?),
            _ => return Err(shape_err(CE_OP, "internal: CUDA backward on a non-CUDA tensor")),
        },
        None => None,
    };
    let dev = xs.device.clone();
    let stream = dev.cuda_stream();
    let tv = targets(CE_OP, ts, tl)?;
    let gv = f32s(CE_OP, gs, gl)?;
    let (sc, of) = upload_adjust(&stream, adjust)?;
    let (scv, ofv) = (sc.as_ref().map(|v| v.as_view()), of.as_ref().map(|v| v.as_view()));
    let adj = ce_cuda::LogitAdjust { scale: scv.as_ref(), offset: ofv.as_ref() };
    let mut ws = ce_cuda::Workspace::new(&stream).map_err(to_candle)?;
    let grad = with_float!(CE_OP, xs, xl, |xv: T| {
        let mut g = stream.alloc_zeros::<T>(rows * classes).during(CE_OP).map_err(to_candle)?;
        ce_cuda::backward_adjusted(&stream, &mut ws, &xv, &tv, wv.as_ref(), &adj, classes, opts, &gv, &mut g)
            .map_err(to_candle)?;
        Ok(CudaStorage::wrap_cuda_slice(g, dev.clone()))
    })?;
    Ok(Tensor::from_storage(Storage::Cuda(grad), shape, BackpropOp::none(), false))
}

/// The logit scale and offset copied to the device (`classes` floats each, checked by the caller).
#[allow(clippy::type_complexity)]
fn upload_adjust(
    stream: &std::sync::Arc<cudarc::driver::CudaStream>,
    adjust: &LogitAdjust<'_>,
) -> Result<(Option<cudarc::driver::CudaSlice<f32>>, Option<cudarc::driver::CudaSlice<f32>>)> {
    let up = |v: Option<&[f32]>| v.map(|v| stream.clone_htod(v)).transpose().during(CE_OP).map_err(to_candle);
    Ok((up(adjust.scale)?, up(adjust.offset)?))
}

fn rows_cols(l: &Layout) -> (usize, usize) {
    let cols = *l.dims().last().unwrap_or(&1);
    let rows = l.shape().elem_count().checked_div(cols).unwrap_or(0);
    (rows, cols)
}

pub(super) fn softmax(s: &CudaStorage, l: &Layout, kind: Kind) -> Result<CudaStorage> {
    let dev = s.device.clone();
    let stream = dev.cuda_stream();
    let (rows, cols) = rows_cols(l);
    let n = l.shape().elem_count();
    with_float!(SM_OP, s, l, |xv: T| {
        let mut y = stream.alloc_zeros::<T>(n).during(SM_OP).map_err(to_candle)?;
        if n > 0 {
            sm_cuda::forward(&stream, &xv, &mut y, rows, cols, kind).map_err(to_candle)?;
        }
        Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
    })
}

pub(super) fn softmax_backward(y: &Tensor, dy: &Tensor, kind: Kind) -> Result<Tensor> {
    let (ys, yl) = y.storage_and_layout();
    let (ds, dl) = dy.storage_and_layout();
    let (Storage::Cuda(ys), Storage::Cuda(ds)) = (&*ys, &*ds) else {
        return Err(shape_err(SM_OP, "internal: CUDA backward on a non-CUDA tensor"));
    };
    let dev = ys.device.clone();
    let stream = dev.cuda_stream();
    let (rows, cols) = rows_cols(yl);
    let n = yl.shape().elem_count();
    let dr = range(SM_OP, dl)?;
    let dx = with_float!(SM_OP, ys, yl, |yv: T| {
        let dyv = <T as CudaFloat>::slice(ds).map_err(|_| shape_err(SM_OP, "internal: dy dtype"))?.slice(dr.clone());
        let mut dx = stream.alloc_zeros::<T>(n).during(SM_OP).map_err(to_candle)?;
        if n > 0 {
            sm_cuda::backward(&stream, &yv, &dyv, &mut dx, rows, cols, kind).map_err(to_candle)?;
        }
        Ok(CudaStorage::wrap_cuda_slice(dx, dev.clone()))
    })?;
    Ok(Tensor::from_storage(Storage::Cuda(dx), yl.shape().clone(), BackpropOp::none(), false))
}

/// The typed slice of a candle CUDA storage, for the kernel dtypes.
trait CudaFloat: Dtype + candle_core::cuda::CudaDType {
    fn slice(s: &CudaStorage) -> candle_core::Result<&CudaSlice<Self>> {
        s.as_cuda_slice::<Self>()
    }
}
impl CudaFloat for f32 {}
impl CudaFloat for half::f16 {}
impl CudaFloat for half::bf16 {}

pub(super) fn confusion(
    x: &CudaStorage,
    xl: &Layout,
    t: &CudaStorage,
    tl: &Layout,
    classes: usize,
    ignore_index: Option<i32>,
) -> Result<ConfusionMatrix> {
    let stream = x.device.cuda_stream();
    let tv = targets(CM_OP, t, tl)?;
    with_float!(CM_OP, x, xl, |xv: T| {
        let _: Option<T> = None;
        confusion_cuda::from_logits(&stream, &xv, &tv, classes, ignore_index).map_err(to_candle)
    })
}
