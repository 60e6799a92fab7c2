//! candle's CPU device: the ops run this crate's CPU references on candle's storage.
//!
//! Logits in f16/bf16 are widened to f32 for the reference (which is what the kernels compute in)
//! and results are rounded back to the logits' dtype.
use std::borrow::Cow;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType, Device, Layout, Shape, Tensor};
use half::{bf16, f16};
use ndarray::{Array2, ArrayView1, ArrayView2};

use super::{shape_err, to_candle, Result, CE_OP, SM_OP};
use crate::confusion::{cpu as confusion_cpu, ConfusionMatrix};
use crate::cross_entropy::{cpu as ce_cpu, LogitAdjust, Options};
use crate::error::Error;
use crate::softmax::{cpu as sm_cpu, Kind};

/// The elements of a contiguous layout (`start..end` of the storage).
fn range(op: &'static str, l: &Layout) -> Result<std::ops::Range<usize>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(a..b),
        None => Err(shape_err(op, "internal: a non-contiguous layout reached the op")),
    }
}

/// Float elements as f32 (borrowed when they are f32 already).
fn floats<'a>(op: &'static str, s: &'a CpuStorage, l: &Layout) -> Result<Cow<'a, [f32]>> {
    let r = range(op, l)?;
    Ok(match s {
        CpuStorage::F32(v) => Cow::Borrowed(&v[r]),
        CpuStorage::F16(v) => Cow::Owned(v[r].iter().map(|x| x.to_f32()).collect()),
        CpuStorage::BF16(v) => Cow::Owned(v[r].iter().map(|x| x.to_f32()).collect()),
        CpuStorage::F64(v) => Cow::Owned(v[r].iter().map(|&x| x as f32).collect()),
        s => return Err(shape_err(op, format!("dtype {:?} is not supported; supported: f32, f16, bf16", s.dtype()))),
    })
}

/// Class indices as `i32`. A value that does not fit is reported as an invalid target (index and
/// value), as any other target outside `[0, classes)`.
fn targets(op: &'static str, s: &CpuStorage, l: &Layout, classes: usize) -> Result<Cow<'static, [i32]>> {
    fn conv<T: Copy + Into<i64>>(op: &'static str, v: &[T], classes: usize) -> Result<Vec<i32>> {
        v.iter()
            .enumerate()
            .map(|(i, &x)| {
                let x: i64 = x.into();
                i32::try_from(x).map_err(|_| to_candle(Error::InvalidTarget { op, index: i, value: x, classes }))
            })
            .collect()
    }
    let r = range(op, l)?;
    Ok(Cow::Owned(match s {
        CpuStorage::I32(v) => v[r].to_vec(),
        CpuStorage::U8(v) => v[r].iter().map(|&x| x as i32).collect(),
        CpuStorage::I16(v) => v[r].iter().map(|&x| x as i32).collect(),
        CpuStorage::U32(v) => conv(op, &v[r], classes)?,
        CpuStorage::I64(v) => conv(op, &v[r], classes)?,
        s => return Err(shape_err(op, format!("targets have dtype {:?}; need an integer dtype", s.dtype()))),
    }))
}

/// f32 values into a storage of `dtype` (f32, f16 or bf16).
fn storage_of(v: Vec<f32>, dtype: DType) -> CpuStorage {
    match dtype {
        DType::F16 => CpuStorage::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
        DType::BF16 => CpuStorage::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
        _ => CpuStorage::F32(v),
    }
}

/// A CPU tensor of `dtype` from f32 values.
pub(super) fn tensor_like(v: Vec<f32>, shape: impl Into<Shape>, dtype: DType) -> Result<Tensor> {
    let shape = shape.into();
    match dtype {
        DType::F16 => Tensor::from_vec(v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>(), shape, &Device::Cpu),
        DType::BF16 => Tensor::from_vec(v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>(), shape, &Device::Cpu),
        _ => Tensor::from_vec(v, shape, &Device::Cpu),
    }
}

fn view2<'a>(op: &'static str, v: &'a [f32], rows: usize, cols: usize) -> Result<ArrayView2<'a, f32>> {
    ArrayView2::from_shape((rows, cols), v).map_err(|e| shape_err(op, format!("internal: {e}")))
}

/// Forward of the loss; with `fuse`, also the gradient for upstream 1 (the fused pass).
#[allow(clippy::too_many_arguments)]
pub(super) fn cross_entropy(
    x: &CpuStorage,
    xl: &Layout,
    t: &CpuStorage,
    tl: &Layout,
    w: Option<(&CpuStorage, &Layout)>,
    classes: usize,
    adjust: &LogitAdjust<'_>,
    opts: &Options,
    fuse: bool,
) -> Result<(Vec<f32>, Option<Array2<f32>>)> {
    let rows = xl.dims()[0];
    let xv = floats(CE_OP, x, xl)?;
    let tv = targets(CE_OP, t, tl, classes)?;
    let wv = w.map(|(s, l)| floats(CE_OP, s, l)).transpose()?;
    let x = view2(CE_OP, &xv, rows, classes)?;
    let t = ArrayView1::from(&tv[..]);
    let w = wv.as_deref().map(ArrayView1::from);
    if fuse {
        let (loss, grad) = ce_cpu::forward_backward_adjusted(x, t, w, adjust, opts).map_err(to_candle)?;
        Ok((loss.into_raw_vec_and_offset().0, Some(grad)))
    } else {
        let loss = ce_cpu::forward_adjusted(x, t, w, adjust, opts).map_err(to_candle)?;
        Ok((loss.into_raw_vec_and_offset().0, None))
    }
}

/// Gradient of the logits (f32) for the upstream gradient `up`, from the op's argument tensors.
pub(super) fn cross_entropy_backward(
    logits: &Tensor,
    targets_t: &Tensor,
    weight: Option<&Tensor>,
    up: &[f32],
    classes: usize,
    adjust: &LogitAdjust<'_>,
    opts: &Options,
) -> Result<Array2<f32>> {
    let (xs, xl) = logits.storage_and_layout();
    let (ts, tl) = targets_t.storage_and_layout();
    let ws = weight.map(|w| w.storage_and_layout());
    let (candle_core::Storage::Cpu(xs), candle_core::Storage::Cpu(ts)) = (&*xs, &*ts) else {
        return Err(shape_err(CE_OP, "internal: CPU backward on a non-CPU tensor"));
    };
    let xv = floats(CE_OP, xs, xl)?;
    let tv = targets(CE_OP, ts, tl, classes)?;
    let wv = match &ws {
        Some((s, l)) => match &**s {
            candle_core::Storage::Cpu(s) => Some(floats(CE_OP, s, l)?),
            _ => return Err(shape_err(CE_OP, "internal: CPU backward on a non-CPU tensor")),
        },
        None => None,
    };
    let x = view2(CE_OP, &xv, xl.dims()[0], classes)?;
    let (t, w) = (ArrayView1::from(&tv[..]), wv.as_deref().map(ArrayView1::from));
    ce_cpu::backward_adjusted(x, t, w, adjust, opts, ArrayView1::from(up)).map_err(to_candle)
}

/// Rows and columns of a tensor seen as rows of its last dimension.
fn rows_cols(l: &Layout) -> (usize, usize) {
    let cols = *l.dims().last().unwrap_or(&1);
    let rows = l.shape().elem_count().checked_div(cols).unwrap_or(0);
    (rows, cols)
}

pub(super) fn softmax(s: &CpuStorage, l: &Layout, kind: Kind) -> Result<CpuStorage> {
    let (rows, cols) = rows_cols(l);
    let x = floats(SM_OP, s, l)?;
    let mut y = vec![0f32; x.len()];
    if !x.is_empty() {
        let yv = ndarray::ArrayViewMut2::from_shape((rows, cols), &mut y[..])
            .map_err(|e| shape_err(SM_OP, format!("internal: {e}")))?;
        sm_cpu::forward_into(view2(SM_OP, &x, rows, cols)?, yv, kind).map_err(to_candle)?;
    }
    Ok(storage_of(y, s.dtype()))
}

pub(super) fn softmax_backward(y: &Tensor, dy: &Tensor, kind: Kind) -> Result<Tensor> {
    let (ys, yl) = y.storage_and_layout();
    let (ds, dl) = dy.storage_and_layout();
    let (candle_core::Storage::Cpu(ys), candle_core::Storage::Cpu(ds)) = (&*ys, &*ds) else {
        return Err(shape_err(SM_OP, "internal: CPU backward on a non-CPU tensor"));
    };
    let (rows, cols) = rows_cols(yl);
    let yv = floats(SM_OP, ys, yl)?;
    let dv = floats(SM_OP, ds, dl)?;
    let dx = if yv.is_empty() {
        Vec::new()
    } else {
        let dx = sm_cpu::backward(view2(SM_OP, &yv, rows, cols)?, view2(SM_OP, &dv, rows, cols)?, kind)
            .map_err(to_candle)?;
        dx.into_raw_vec_and_offset().0
    };
    tensor_like(dx, yl.shape().clone(), y.dtype())
}

pub(super) fn confusion(
    x: &CpuStorage,
    xl: &Layout,
    t: &CpuStorage,
    tl: &Layout,
    classes: usize,
    ignore_index: Option<i32>,
) -> Result<ConfusionMatrix> {
    const OP: &str = super::CM_OP;
    let rows = xl.dims()[0];
    let tv = targets(OP, t, tl, classes)?;
    let r = range(OP, xl)?;
    fn run<T: crate::cuda::Dtype>(
        v: &[T],
        rows: usize,
        classes: usize,
        t: &[i32],
        ignore: Option<i32>,
    ) -> Result<ConfusionMatrix> {
        let x = ArrayView2::from_shape((rows, classes), v)
            .map_err(|e| shape_err(super::CM_OP, format!("internal: {e}")))?;
        confusion_cpu::from_logits(x, t, ignore).map_err(to_candle)
    }
    match x {
        CpuStorage::F32(v) => run(&v[r], rows, classes, &tv, ignore_index),
        CpuStorage::F16(v) => run(&v[r], rows, classes, &tv, ignore_index),
        CpuStorage::BF16(v) => run(&v[r], rows, classes, &tv, ignore_index),
        s => Err(shape_err(OP, format!("logits have dtype {:?}; supported: f32, f16, bf16", s.dtype()))),
    }
}
