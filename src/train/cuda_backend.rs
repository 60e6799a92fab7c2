//! [`Backend`] on the crate's CUDA kernels, on one stream. Buffers stay on the device; per step
//! of the trainer ([`super::TrainStep::run_deferred`]) only the batch plan and labels go up and
//! nothing comes back: the losses and the epoch log's counts are read once an epoch.
//!
//! A training step allocates nothing once the first step has run: the buffers it needs beyond
//! the model's and the step's own (the batch plan, the bad-sample flags, the confusion counts of
//! a batch, the convolutions' weight-gradient workspace, the batch norms' partial sums) are the backend's [`StepBuffers`], each
//! grown once, the first time a larger size is asked for.
use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut, DeviceRepr, ValidAsZeroBits};

use super::backend::{
    augment_spec, bn_parts, plan_bytes, sgd_config, Backend, BatchPlan, BnState, Chw, LinearGrads, Normalize, Saved,
    SgdStep, WeightedLoss,
};
use crate::confusion::ConfusionMatrix;
use crate::conv::{Conv2dShape, ConvAlgo};
use crate::cross_entropy::{self, Options, Reduction};
use crate::cuda::{ActDtype, BadIndexFlag};
use crate::error::DriverContext;
use crate::linear::LinearShape;
use crate::pool::PoolShape;
use crate::{augment, batchnorm, confusion, conv, linear, optim, pool, Error, Result};

/// A CUDA device and a stream of its own; every op is one of the crate's kernels.
///
/// `A` is the activations' element type ([`Backend::Act`]): `f32` ([`CudaBackend::new`]), or
/// `half::bf16` for mixed-precision training ([`CudaBackend::open`]): bf16 activations and
/// gradients between layers, f32 weights, optimizer state, features, logits and loss, f32
/// arithmetic in every kernel.
pub struct CudaBackend<A: ActDtype = f32> {
    stream: Arc<CudaStream>,
    name: String,
    ws: RefCell<cross_entropy::cuda::Workspace>,
    /// The loss's workspace of [`Backend::cross_entropy_into`]: it does not wait to check the
    /// targets ([`Backend::check_deferred`] does).
    deferred_ws: RefCell<cross_entropy::cuda::Workspace>,
    loss: RefCell<CudaSlice<f32>>,
    step: RefCell<StepBuffers>,
    /// The convolutions' arithmetic, resolved for this device (never `Auto`).
    conv_algo: ConvAlgo,
    act: PhantomData<A>,
}

/// Device buffers that the ops of a training step reuse from step to step instead of
/// allocating them per call. Each `Option` is allocated (unfilled) the first time it is needed
/// and replaced by a larger one only when a call needs more: after the first step of a run,
/// none is allocated again. All live on the backend's one stream, which orders every reuse after
/// the previous use.
struct StepBuffers {
    /// The batch plan: dataset indices, crop offsets (2 bytes an image), flips.
    indices: Option<CudaSlice<i32>>,
    crops: Option<CudaSlice<u8>>,
    flips: Option<CudaSlice<u8>>,
    /// The batch builder's bad-sample flag and the confusion count's bad-target flag.
    augment_flag: BadIndexFlag,
    confusion_flag: BadIndexFlag,
    /// One batch's confusion counts (classes x classes), zeroed before each count.
    counts: Option<CudaSlice<u64>>,
    /// The split-K scratch of every convolution's weight gradient (the largest layer's size).
    conv_ws: conv::cuda::WeightWorkspace,
    /// The batch norms' per-slice partial sums (the largest layer's size).
    bn_ws: batchnorm::cuda::Workspace,
}

/// The first `len` elements of `slot`, allocated without a fill (or replaced by a longer
/// buffer) when it holds fewer: every caller writes the prefix before a kernel reads it.
fn grown<'a, T: DeviceRepr>(
    stream: &Arc<CudaStream>,
    slot: &'a mut Option<CudaSlice<T>>,
    len: usize,
) -> Result<CudaViewMut<'a, T>> {
    if slot.as_ref().is_none_or(|b| b.len() < len) {
        *slot = None; // freed before the larger one is allocated
                      // SAFETY: `T` is a plain value type (i32, u8, u64) valid for every bit pattern; the
                      // callers copy or memset the prefix they use before any kernel or copy reads it.
        *slot = Some(unsafe { stream.alloc::<T>(len.max(1)) }.during("allocating a step buffer")?);
    }
    let b = slot.as_mut().expect("allocated above");
    Ok(b.slice_mut(..len))
}

impl CudaBackend<f32> {
    /// Opens device `ordinal` with f32 activations (an error, never a panic, without a driver or
    /// device) and checks that the kernels were compiled into this build.
    pub fn new(ordinal: usize) -> Result<Self> {
        Self::open(ordinal)
    }
}

impl<A: ActDtype> CudaBackend<A> {
    /// Opens device `ordinal` with activations of type `A` (`CudaBackend::<half::bf16>::open(0)`
    /// for mixed precision); otherwise as [`CudaBackend::new`].
    pub fn open(ordinal: usize) -> Result<Self> {
        if let Some(why) = crate::cuda::kernels_not_compiled() {
            return Err(Error::KernelsNotCompiled(why.to_string()));
        }
        let ctx = crate::cuda::open(ordinal)?;
        // cudarc records an event after every use of a buffer and makes every launch wait on the
        // events of the buffers it uses, so that buffers shared between streams are used in
        // order (about 3.5 records and 5.6 waits a launch in the training step). Here they order
        // nothing: `ctx` is this backend's own handle (`open` makes a new one each call, and the
        // flag is per handle), and every buffer allocated through it is allocated, used, copied
        // and freed (stream-ordered) on `stream` alone, whose operations run in issue order. So
        // tracking is off, before the first buffer exists, for every buffer of this backend.
        // SAFETY: cudarc's conditions hold because only one stream of this handle ever touches
        // its buffers; [`CudaBackend::stream`] tells a caller who makes another stream to
        // synchronize with this one.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().during("creating a stream")?;
        let (major, minor) = ctx.compute_capability().during("reading the compute capability")?;
        let name = format!("cuda: {} (sm_{major}{minor})", ctx.name().during("reading the device name")?);
        let ws = cross_entropy::cuda::Workspace::new(&stream)?;
        let deferred_ws = RefCell::new(cross_entropy::cuda::Workspace::new(&stream)?.deferred(true));
        let loss = stream.alloc_zeros::<f32>(1).during("allocating")?;
        let step = StepBuffers {
            indices: None,
            crops: None,
            flips: None,
            augment_flag: BadIndexFlag::new(&stream)?,
            confusion_flag: BadIndexFlag::new(&stream)?,
            counts: None,
            conv_ws: conv::cuda::WeightWorkspace::new(),
            bn_ws: batchnorm::cuda::Workspace::new(),
        };
        let conv_algo = ConvAlgo::Fp32;
        Ok(CudaBackend {
            stream,
            name,
            ws: RefCell::new(ws),
            deferred_ws,
            loss: RefCell::new(loss),
            step: RefCell::new(step),
            conv_algo,
            act: PhantomData,
        })
    }

    /// Runs the convolutions (forward and both gradients) on `algo` ([`ConvAlgo::Auto`] is
    /// resolved for this device); [`CudaBackend::new`] starts on [`ConvAlgo::Fp32`]. Errors when a
    /// tensor-core algorithm is asked of a device older than compute capability 8.0.
    pub fn with_conv_algo(mut self, algo: ConvAlgo) -> Result<Self> {
        self.conv_algo = conv::cuda::resolve_algo(&self.stream, algo)?;
        Ok(self)
    }

    /// The convolutions' arithmetic (never `Auto`).
    pub fn conv_algo(&self) -> ConvAlgo {
        self.conv_algo
    }

    /// The stream every op and buffer of this backend uses. The backend's buffers do not
    /// record events (see [`CudaBackend::new`]): use them on this stream, or synchronize it
    /// before another stream touches them.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    fn alloc<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<CudaSlice<T>> {
        // cudarc refuses zero-byte allocations; a 1-element buffer is never read past `len`.
        self.stream.alloc_zeros::<T>(len.max(1)).during("allocating")
    }

    /// [`Backend::build_batch`] into the kept plan buffers; waits for the bad-sample flag (and
    /// reports it) when `wait`.
    fn batch(
        &self,
        images: &CudaSlice<u8>,
        plan: &BatchPlan,
        pad: usize,
        norm: &Normalize,
        out: &mut CudaSlice<A>,
        wait: bool,
    ) -> Result<()> {
        let s = &self.stream;
        let n = plan.len();
        let mut o = view_mut("build_batch", out, n * 3 * 32 * 32)?;
        if n == 0 {
            return Ok(());
        }
        let (crop_bytes, flip_bytes) = plan_bytes(plan);
        let mut bufs = self.step.borrow_mut();
        let StepBuffers { indices, crops, flips, augment_flag, .. } = &mut *bufs;
        let mut idx = grown(s, indices, n)?;
        let mut crops = grown(s, crops, 2 * n)?;
        let mut flips = grown(s, flips, n)?;
        let up = "uploading the batch plan";
        s.memcpy_htod(&plan.indices, &mut idx).during(up)?;
        s.memcpy_htod(&crop_bytes, &mut crops).during(up)?;
        s.memcpy_htod(&flip_bytes, &mut flips).during(up)?;
        let spec = augment_spec(pad, norm);
        augment::cuda::train_batch_with(s, images, &idx, &crops, &flips, &mut o, &spec, augment_flag, wait)
    }

    /// [`CudaBackend::alloc`] without the zero fill (see [`Backend::scratch`]).
    fn alloc_unfilled<T: DeviceRepr>(&self, len: usize) -> Result<CudaSlice<T>> {
        // SAFETY: the device memory is not initialised; `T` is a plain value type (f32, u8) that
        // every bit pattern is valid for, and the host never reads these buffers before a kernel
        // or copy has written them (the emulated driver's init check fails such a read).
        unsafe { self.stream.alloc::<T>(len.max(1)) }.during("allocating")
    }
}

fn view<'a, T>(op: &'static str, b: &'a CudaSlice<T>, len: usize) -> Result<CudaView<'a, T>> {
    b.try_slice(..len).ok_or_else(|| Error::shape(op, format!("buffer of {} values, need {len}", b.len())))
}

fn view_mut<'a, T>(op: &'static str, b: &'a mut CudaSlice<T>, len: usize) -> Result<CudaViewMut<'a, T>> {
    let have = b.len();
    b.try_slice_mut(..len).ok_or_else(|| Error::shape(op, format!("buffer of {have} values, need {len}")))
}

impl<A: ActDtype> Backend for CudaBackend<A> {
    type Buf = CudaSlice<f32>;
    type Act = CudaSlice<A>;
    type Labels = CudaSlice<i32>;
    type Images = CudaSlice<u8>;
    type Argmax = CudaSlice<u8>;
    /// Confusion counts (u64), per-class sums (f64) and the per-row scratch of the sums
    /// (2 f64 a row of the largest batch).
    type Tally = (CudaSlice<u64>, CudaSlice<f64>, CudaSlice<f64>);

    fn describe(&self) -> String {
        // The report records it: a run's precision is part of its result.
        let acts = if A::ACT_SUFFIX.is_empty() { "" } else { ", bf16 activations" };
        format!("{}, {} convolutions{acts}", self.name, self.conv_algo.name())
    }
    fn activation_bytes(&self) -> usize {
        std::mem::size_of::<A>()
    }
    fn precision(&self) -> String {
        let acts = if A::ACT_SUFFIX.is_empty() { "f32" } else { "bf16" };
        match (self.conv_algo.name(), acts) {
            ("fp32", "f32") => "f32".into(),
            (conv, acts) => format!("{conv} convolutions, {acts} activations"),
        }
    }
    fn memory_available(&self) -> Option<u64> {
        self.stream.context().mem_get_info().ok().map(|(free, _total)| free as u64)
    }
    fn zeros(&self, len: usize) -> Result<CudaSlice<f32>> {
        self.alloc(len)
    }
    fn scratch(&self, len: usize) -> Result<CudaSlice<f32>> {
        self.alloc_unfilled(len)
    }
    fn upload(&self, data: &[f32]) -> Result<CudaSlice<f32>> {
        if data.is_empty() {
            return self.alloc(0);
        }
        self.stream.clone_htod(data).during("uploading")
    }
    fn to_host(&self, buf: &CudaSlice<f32>, len: usize) -> Result<Vec<f32>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        self.stream.clone_dtoh(&view("to_host", buf, len)?).during("downloading")
    }
    fn act_scratch(&self, len: usize) -> Result<CudaSlice<A>> {
        self.alloc_unfilled(len)
    }
    fn act_to_host(&self, buf: &CudaSlice<A>, len: usize) -> Result<Vec<f32>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let host = self.stream.clone_dtoh(&view("act_to_host", buf, len)?).during("downloading")?;
        Ok(host.into_iter().map(A::to_f32).collect())
    }
    fn labels(&self, data: &[i32]) -> Result<CudaSlice<i32>> {
        self.stream.clone_htod(data).during("uploading labels")
    }
    fn write_labels(&self, data: &[i32], out: &mut CudaSlice<i32>) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let mut o = view_mut("write_labels", out, data.len())?;
        self.stream.memcpy_htod(data, &mut o).during("uploading labels")
    }
    fn images(&self, data: &[u8], _count: usize) -> Result<CudaSlice<u8>> {
        self.stream.clone_htod(data).during("uploading images")
    }
    fn argmax_buf(&self, len: usize) -> Result<CudaSlice<u8>> {
        // Written by the max-pool forward pass before its backward pass reads it.
        self.alloc_unfilled(len)
    }

    fn build_batch(
        &self,
        images: &CudaSlice<u8>,
        plan: &BatchPlan,
        pad: usize,
        norm: &Normalize,
        out: &mut CudaSlice<A>,
    ) -> Result<()> {
        self.batch(images, plan, pad, norm, out, true)
    }
    fn build_batch_deferred(
        &self,
        images: &CudaSlice<u8>,
        plan: &BatchPlan,
        pad: usize,
        norm: &Normalize,
        out: &mut CudaSlice<A>,
    ) -> Result<()> {
        self.batch(images, plan, pad, norm, out, false)
    }

    fn conv_forward(&self, p: &Conv2dShape, x: &CudaSlice<A>, w: &CudaSlice<f32>, y: &mut CudaSlice<A>) -> Result<()> {
        let x = view("conv", x, p.input_len())?;
        let mut y = view_mut("conv", y, p.output_len())?;
        conv::cuda::forward_algo(&self.stream, self.conv_algo, p, &x, w, conv::cuda::NO_BIAS, &mut y)
    }

    fn conv_backward(
        &self,
        p: &Conv2dShape,
        x: &CudaSlice<A>,
        w: &CudaSlice<f32>,
        dy: &CudaSlice<A>,
        dx: Option<&mut CudaSlice<A>>,
        dw: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let dyv = view("conv", dy, p.output_len())?;
        let algo = self.conv_algo;
        let x = view("conv", x, p.input_len())?;
        let ws = &mut self.step.borrow_mut().conv_ws;
        conv::cuda::backward_weight_algo_in(&self.stream, algo, p, &x, &dyv, dw, 0.0, ws)?;
        if let Some(dx) = dx {
            let mut dx = view_mut("conv", dx, p.input_len())?;
            conv::cuda::backward_data_algo(&self.stream, algo, p, &dyv, w, &mut dx)?;
        }
        Ok(())
    }

    fn max_pool_forward(
        &self,
        n: usize,
        g: Chw,
        x: &CudaSlice<A>,
        y: &mut CudaSlice<A>,
        argmax: &mut CudaSlice<u8>,
    ) -> Result<()> {
        let s = PoolShape { n, c: g.c, h: g.h, w: g.w };
        let out = s.pooled_len();
        pool::cuda::max_pool_forward(
            &self.stream,
            &view("max_pool", x, s.len())?,
            &mut view_mut("max_pool", y, out)?,
            &mut view_mut("max_pool", argmax, out)?,
            s,
        )
    }

    fn max_pool_backward(
        &self,
        n: usize,
        g: Chw,
        argmax: &CudaSlice<u8>,
        dy: &CudaSlice<A>,
        dx: &mut CudaSlice<A>,
    ) -> Result<()> {
        let s = PoolShape { n, c: g.c, h: g.h, w: g.w };
        let out = s.pooled_len();
        pool::cuda::max_pool_backward(
            &self.stream,
            &view("max_pool", dy, out)?,
            &view("max_pool", argmax, out)?,
            &mut view_mut("max_pool", dx, s.len())?,
            s,
        )
    }

    fn bn_relu_forward_train(
        &self,
        n: usize,
        g: Chw,
        x: &CudaSlice<A>,
        bn: &mut BnState<CudaSlice<f32>>,
        y: &mut CudaSlice<A>,
    ) -> Result<()> {
        let (shape, cfg) = bn_parts(n, g, bn);
        let len = n * g.len();
        let ws = &mut self.step.borrow_mut().bn_ws;
        batchnorm::cuda::relu_forward_train_in(
            &self.stream,
            &view("batchnorm", x, len)?,
            &bn.gamma,
            &bn.beta,
            &mut bn.running_mean,
            &mut bn.running_var,
            &mut view_mut("batchnorm", y, len)?,
            &mut bn.save_mean,
            &mut bn.save_invstd,
            shape,
            cfg,
            ws,
        )
    }

    fn bn_relu_forward_eval(
        &self,
        n: usize,
        g: Chw,
        x: &CudaSlice<A>,
        bn: &BnState<CudaSlice<f32>>,
        y: &mut CudaSlice<A>,
    ) -> Result<()> {
        let (shape, cfg) = bn_parts(n, g, bn);
        let len = n * g.len();
        batchnorm::cuda::relu_forward_eval(
            &self.stream,
            &view("batchnorm", x, len)?,
            &bn.gamma,
            &bn.beta,
            &bn.running_mean,
            &bn.running_var,
            &mut view_mut("batchnorm", y, len)?,
            shape,
            cfg,
        )
    }

    fn bn_relu_backward(
        &self,
        n: usize,
        g: Chw,
        saved: Saved<'_, CudaSlice<A>>,
        bn: &mut BnState<CudaSlice<f32>>,
        dy: &CudaSlice<A>,
        dx: &mut CudaSlice<A>,
    ) -> Result<()> {
        let (x, y) = (saved.input, saved.output);
        let (shape, _) = bn_parts(n, g, bn);
        let len = n * g.len();
        let ws = &mut self.step.borrow_mut().bn_ws;
        batchnorm::cuda::relu_backward_in(
            &self.stream,
            &view("batchnorm", x, len)?,
            &view("batchnorm", y, len)?,
            &view("batchnorm", dy, len)?,
            &bn.gamma,
            &bn.save_mean,
            &bn.save_invstd,
            &mut view_mut("batchnorm", dx, len)?,
            &mut bn.dgamma,
            &mut bn.dbeta,
            shape,
            ws,
        )
    }

    fn global_avg_pool_forward(&self, n: usize, g: Chw, x: &CudaSlice<A>, y: &mut CudaSlice<f32>) -> Result<()> {
        let s = PoolShape { n, c: g.c, h: g.h, w: g.w };
        pool::cuda::global_avg_pool_forward(
            &self.stream,
            &view("gap", x, s.len())?,
            &mut view_mut("gap", y, n * g.c)?,
            s,
        )
    }

    fn global_avg_pool_backward(&self, n: usize, g: Chw, dy: &CudaSlice<f32>, dx: &mut CudaSlice<A>) -> Result<()> {
        let s = PoolShape { n, c: g.c, h: g.h, w: g.w };
        pool::cuda::global_avg_pool_backward(
            &self.stream,
            &view("gap", dy, n * g.c)?,
            &mut view_mut("gap", dx, s.len())?,
            s,
        )
    }

    fn linear_forward(
        &self,
        s: LinearShape,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let (n, inp, out) = (s.batch, s.in_features, s.out_features);
        linear::cuda::forward(&self.stream, &view("linear", x, n * inp)?, w, b, &mut view_mut("linear", y, n * out)?, s)
    }

    fn linear_backward(
        &self,
        s: LinearShape,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        dy: &CudaSlice<f32>,
        grads: LinearGrads<'_, CudaSlice<f32>>,
    ) -> Result<()> {
        let (n, inp, out) = (s.batch, s.in_features, s.out_features);
        let LinearGrads { dx, dw, db } = grads;
        linear::cuda::backward(
            &self.stream,
            &view("linear", x, n * inp)?,
            w,
            &view("linear", dy, n * out)?,
            &mut view_mut("linear", dx, n * inp)?,
            dw,
            db,
            s,
        )
    }

    fn cross_entropy(
        &self,
        n: usize,
        classes: usize,
        logits: &CudaSlice<f32>,
        labels: &CudaSlice<i32>,
        weighting: &WeightedLoss<'_, CudaSlice<f32>>,
        grad: &mut CudaSlice<f32>,
    ) -> Result<f32> {
        let (weight, label_smoothing) = (weighting.weight, weighting.label_smoothing);
        let opts = Options { ignore_index: None, label_smoothing, reduction: Reduction::Mean };
        let mut loss = self.loss.borrow_mut();
        let wv = weight.as_view();
        let sv = weighting.scale.map(|s| s.as_view());
        let ov = weighting.offset.map(|o| o.as_view());
        let adjust = cross_entropy::cuda::LogitAdjust { scale: sv.as_ref(), offset: ov.as_ref() };
        cross_entropy::cuda::forward_backward_adjusted(
            &self.stream,
            &mut self.ws.borrow_mut(),
            &view("cross_entropy", logits, n * classes)?,
            &view("cross_entropy", labels, n)?,
            Some(&wv),
            &adjust,
            classes,
            &opts,
            &mut *loss,
            &mut view_mut("cross_entropy", grad, n * classes)?,
        )?;
        Ok(self.stream.clone_dtoh(&*loss).during("reading the loss")?[0])
    }

    #[allow(clippy::too_many_arguments)]
    fn cross_entropy_into(
        &self,
        n: usize,
        classes: usize,
        logits: &CudaSlice<f32>,
        labels: &CudaSlice<i32>,
        weighting: &WeightedLoss<'_, CudaSlice<f32>>,
        grad: &mut CudaSlice<f32>,
        losses: &mut CudaSlice<f32>,
        at: usize,
    ) -> Result<()> {
        let opts =
            Options { ignore_index: None, label_smoothing: weighting.label_smoothing, reduction: Reduction::Mean };
        let have = losses.len();
        let mut slot = losses
            .try_slice_mut(at..at + 1)
            .ok_or_else(|| Error::shape("cross_entropy", format!("loss {at} of {have}")))?;
        let wv = weighting.weight.as_view();
        let sv = weighting.scale.map(|s| s.as_view());
        let ov = weighting.offset.map(|o| o.as_view());
        let adjust = cross_entropy::cuda::LogitAdjust { scale: sv.as_ref(), offset: ov.as_ref() };
        cross_entropy::cuda::forward_backward_adjusted(
            &self.stream,
            &mut self.deferred_ws.borrow_mut(),
            &view("cross_entropy", logits, n * classes)?,
            &view("cross_entropy", labels, n)?,
            Some(&wv),
            &adjust,
            classes,
            &opts,
            &mut slot,
            &mut view_mut("cross_entropy", grad, n * classes)?,
        )
    }

    fn tally(&self, classes: usize, max_batch: usize) -> Result<Self::Tally> {
        // Set (tally_set) before the first tally_add reads them; row_stats written before read.
        Ok((
            self.alloc_unfilled(classes * classes)?,
            self.alloc_unfilled(3 * classes)?,
            self.alloc_unfilled(2 * max_batch)?,
        ))
    }
    fn tally_set(&self, tally: &mut Self::Tally, counts: &[u64], sums: &[f64]) -> Result<()> {
        if counts.len() != tally.0.len() || sums.len() != tally.1.len() {
            return Err(Error::shape("tally", "counts or sums of another number of classes"));
        }
        self.stream.memcpy_htod(counts, &mut tally.0).during("setting the tally")?;
        self.stream.memcpy_htod(sums, &mut tally.1).during("setting the tally")
    }
    fn tally_add(
        &self,
        tally: &mut Self::Tally,
        n: usize,
        logits: &CudaSlice<f32>,
        labels: &CudaSlice<i32>,
        smoothing: f32,
    ) -> Result<()> {
        let c = tally.1.len() / 3;
        let s = &self.stream;
        let (logits, labels) = (view("tally", logits, n * c)?, view("tally", labels, n)?);
        let flag = &mut self.step.borrow_mut().confusion_flag;
        confusion::cuda::count_logits_biased_with(s, &logits, None, &labels, &mut tally.0, c, None, flag, false)?;
        let mut rows = view_mut("tally", &mut tally.2, 2 * n)?;
        cross_entropy::cuda::class_sums(s, &logits, &labels, c, smoothing, &mut rows, &mut tally.1)
    }
    fn tally_read(&self, tally: &Self::Tally, counts: &mut [u64], sums: &mut [f64]) -> Result<()> {
        if counts.len() != tally.0.len() || sums.len() != tally.1.len() {
            return Err(Error::shape("tally", "counts or sums of another number of classes"));
        }
        self.stream.memcpy_dtoh(&tally.0, counts).during("reading the tally")?;
        self.stream.memcpy_dtoh(&tally.1, sums).during("reading the tally")
    }
    fn check_deferred(&self) -> Result<()> {
        let s = &self.stream;
        let mut bufs = self.step.borrow_mut();
        let batch = bufs.augment_flag.take(s)?;
        let target = self.deferred_ws.borrow_mut().take_bad_target(s)?;
        let counted = bufs.confusion_flag.take(s)?;
        let what = match (batch, target, counted) {
            (None, None, None) => return Ok(()),
            (Some(b), _, _) => format!("a bad sample index or crop offset at batch position {b}"),
            (_, Some(t), _) | (_, _, Some(t)) => format!("a label out of range at batch position {t}"),
        };
        Err(Error::shape("train (cuda)", format!("a step that did not wait met {what}")))
    }

    fn sgd(
        &self,
        step: &SgdStep,
        param: &mut CudaSlice<f32>,
        grad: &CudaSlice<f32>,
        momentum: &mut CudaSlice<f32>,
        len: usize,
    ) -> Result<()> {
        optim::cuda::sgd_step(
            &self.stream,
            &mut view_mut("sgd", param, len)?,
            &view("sgd", grad, len)?,
            &mut view_mut("sgd", momentum, len)?,
            &sgd_config(step),
            step.lr,
        )
    }

    fn confusion(
        &self,
        n: usize,
        logits: &CudaSlice<f32>,
        labels: &CudaSlice<i32>,
        bias: Option<&CudaSlice<f32>>,
        counts: &mut ConfusionMatrix,
    ) -> Result<()> {
        let c = counts.classes();
        let s = &self.stream;
        let mut bufs = self.step.borrow_mut();
        let StepBuffers { counts: d, confusion_flag, .. } = &mut *bufs;
        let mut d = grown(s, d, c * c)?;
        s.memset_zeros(&mut d).during("zeroing confusion counts")?;
        let bias = bias.map(|b| view("confusion bias", b, c)).transpose()?;
        confusion::cuda::count_logits_biased_with(
            s,
            &view("confusion", logits, n * c)?,
            bias.as_ref(),
            &view("confusion", labels, n)?,
            &mut d,
            c,
            None,
            confusion_flag,
            true,
        )?;
        let batch = s.clone_dtoh(&d).during("reading confusion counts")?;
        for (a, b) in counts.counts_mut().iter_mut().zip(batch) {
            *a += b;
        }
        Ok(())
    }
}
