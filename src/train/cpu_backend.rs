//! [`Backend`] on the CPU references (rayon-parallel where it pays).
use ndarray::{ArrayView1, ArrayView2};

use super::backend::{
    augment_spec, bn_parts, plan_bytes, sgd_config, Backend, BatchPlan, BnState, Chw, LinearGrads, Normalize, Saved,
    SgdStep, WeightedLoss,
};
use crate::augment;
use crate::batchnorm;
use crate::confusion::{self, ConfusionMatrix};
use crate::conv::{self, Conv2dShape};
use crate::cross_entropy::{self, LogitAdjust, Options, Reduction};
use crate::linear::{self, LinearShape};
use crate::optim;
use crate::pool::{self, PoolShape};
use crate::{Error, Result};

/// The convolution algorithm of the CPU trainer: Winograd on the wide layers (from width 32 on),
/// the direct 3x3 kernels elsewhere (every convolution of the default network on an AVX2 + FMA
/// CPU), im2col + GEMM where neither applies.
const CONV_ALGO: conv::cpu::CpuAlgo = conv::cpu::CpuAlgo::Auto;

/// The CPU: buffers are `Vec`s, every op is the crate's CPU reference.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend {
    /// Round every activation an op writes to bf16 ([`CpuBackend::bf16_reference`]).
    bf16_acts: bool,
}

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend { bf16_acts: false }
    }

    /// The CPU reference of mixed precision ([`super::CudaBackend`] with bf16 activations): every
    /// op computes in f32 as [`CpuBackend::new`]'s, then rounds the activations it writes (the
    /// batch, convolution, pooling and batch-norm outputs and their input gradients) to bf16,
    /// nearest even, as the bf16 kernels store them. For checking those kernels end to end: it is
    /// no faster than f32, and the trainer's CPU path stays f32.
    pub fn bf16_reference() -> Self {
        CpuBackend { bf16_acts: true }
    }

    /// What an activation buffer holds after a write of `v`: `v`, or `v` rounded to bf16.
    fn store(&self, v: &mut [f32]) {
        if self.bf16_acts {
            for x in v {
                *x = half::bf16::from_f32(*x).to_f32();
            }
        }
    }
}

fn prefix<'a>(op: &'static str, v: &'a [f32], len: usize) -> Result<&'a [f32]> {
    v.get(..len).ok_or_else(|| Error::shape(op, format!("buffer of {} values, need {len}", v.len())))
}

fn prefix_mut<'a>(op: &'static str, v: &'a mut [f32], len: usize) -> Result<&'a mut [f32]> {
    let have = v.len();
    v.get_mut(..len).ok_or_else(|| Error::shape(op, format!("buffer of {have} values, need {len}")))
}

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    /// The CPU path stays f32 throughout.
    type Act = Vec<f32>;
    type Labels = Vec<i32>;
    type Images = Vec<u8>;
    type Argmax = Vec<u8>;
    type Tally = (ConfusionMatrix, Vec<f64>);

    fn describe(&self) -> String {
        let acts = if self.bf16_acts { ", bf16-rounded activations" } else { "" };
        format!("cpu ({} threads){acts}", rayon::current_num_threads())
    }
    fn precision(&self) -> String {
        // The reference of the GPU's mixed precision: what CudaBackend<bf16> says with FP32
        // convolutions.
        if self.bf16_acts {
            "fp32 convolutions, bf16 activations".into()
        } else {
            "f32".into()
        }
    }
    fn memory_available(&self) -> Option<u64> {
        // Linux: MemAvailable of /proc/meminfo (kB); elsewhere unknown.
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb.saturating_mul(1024))
    }
    fn zeros(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }
    fn upload(&self, data: &[f32]) -> Result<Vec<f32>> {
        Ok(data.to_vec())
    }
    fn to_host(&self, buf: &Vec<f32>, len: usize) -> Result<Vec<f32>> {
        Ok(prefix("to_host", buf, len)?.to_vec())
    }
    fn act_scratch(&self, len: usize) -> Result<Vec<f32>> {
        self.scratch(len)
    }
    fn act_to_host(&self, buf: &Vec<f32>, len: usize) -> Result<Vec<f32>> {
        self.to_host(buf, len)
    }
    fn labels(&self, data: &[i32]) -> Result<Vec<i32>> {
        Ok(data.to_vec())
    }
    fn write_labels(&self, data: &[i32], out: &mut Vec<i32>) -> Result<()> {
        let have = out.len();
        let o = out
            .get_mut(..data.len())
            .ok_or_else(|| Error::shape("write_labels", format!("buffer of {have} labels, need {}", data.len())))?;
        o.copy_from_slice(data);
        Ok(())
    }
    fn images(&self, data: &[u8], _count: usize) -> Result<Vec<u8>> {
        Ok(data.to_vec())
    }
    fn argmax_buf(&self, len: usize) -> Result<Vec<u8>> {
        Ok(vec![0; len])
    }

    fn build_batch(
        &self,
        images: &Vec<u8>,
        plan: &BatchPlan,
        pad: usize,
        norm: &Normalize,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let (crops, flips) = plan_bytes(plan);
        let out = prefix_mut("build_batch", out, plan.len() * 3 * 32 * 32)?;
        augment::cpu::train_batch_into(images, &plan.indices, &crops, &flips, out, &augment_spec(pad, norm))?;
        self.store(out);
        Ok(())
    }

    fn conv_forward(&self, p: &Conv2dShape, x: &Vec<f32>, w: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        let (x, y) = (prefix("conv", x, p.input_len())?, prefix_mut("conv", y, p.output_len())?);
        conv::cpu::forward_into_with(CONV_ALGO, p, x, w, None, y)?;
        self.store(y);
        Ok(())
    }

    fn conv_backward(
        &self,
        p: &Conv2dShape,
        x: &Vec<f32>,
        w: &Vec<f32>,
        dy: &Vec<f32>,
        dx: Option<&mut Vec<f32>>,
        dw: &mut Vec<f32>,
    ) -> Result<()> {
        let dy = prefix("conv", dy, p.output_len())?;
        conv::cpu::backward_weight_into_with(CONV_ALGO, p, prefix("conv", x, p.input_len())?, dy, dw, 0.0)?;
        if let Some(dx) = dx {
            let dx = prefix_mut("conv", dx, p.input_len())?;
            conv::cpu::backward_data_into_with(CONV_ALGO, p, dy, w, dx)?;
            self.store(dx);
        }
        Ok(())
    }

    fn max_pool_forward(&self, n: usize, g: Chw, x: &Vec<f32>, y: &mut Vec<f32>, argmax: &mut Vec<u8>) -> Result<()> {
        let s = PoolShape { n, c: g.c, h: g.h, w: g.w };
        let out = s.pooled_len();
        let am = argmax.get_mut(..out).ok_or_else(|| Error::shape("max_pool", "argmax buffer too small"))?;
        let y = prefix_mut("max_pool", y, out)?;
        pool::cpu::max_pool_forward_into(prefix("max_pool", x, s.len())?, y, am, s)?;
        self.store(y);
        Ok(())
    }

    fn max_pool_backward(&self, n: usize, g: Chw, argmax: &Vec<u8>, dy: &Vec<f32>, dx: &mut Vec<f32>) -> Result<()> {
        let s = PoolShape { n, c: g.c, h: g.h, w: g.w };
        let out = s.pooled_len();
        let am = argmax.get(..out).ok_or_else(|| Error::shape("max_pool", "argmax buffer too small"))?;
        let dx = prefix_mut("max_pool", dx, s.len())?;
        pool::cpu::max_pool_backward_into(prefix("max_pool", dy, out)?, am, dx, s)?;
        self.store(dx);
        Ok(())
    }

    fn bn_relu_forward_train(
        &self,
        n: usize,
        g: Chw,
        x: &Vec<f32>,
        bn: &mut BnState<Vec<f32>>,
        y: &mut Vec<f32>,
    ) -> Result<()> {
        let (shape, cfg) = bn_parts(n, g, bn);
        let len = n * g.len();
        let y = prefix_mut("batchnorm", y, len)?;
        batchnorm::cpu::relu_forward_train_into(
            prefix("batchnorm", x, len)?,
            &bn.gamma,
            &bn.beta,
            &mut bn.running_mean,
            &mut bn.running_var,
            y,
            &mut bn.save_mean,
            &mut bn.save_invstd,
            shape,
            cfg,
        )?;
        self.store(y);
        Ok(())
    }

    fn bn_relu_forward_eval(
        &self,
        n: usize,
        g: Chw,
        x: &Vec<f32>,
        bn: &BnState<Vec<f32>>,
        y: &mut Vec<f32>,
    ) -> Result<()> {
        let (shape, cfg) = bn_parts(n, g, bn);
        let len = n * g.len();
        let y = prefix_mut("batchnorm", y, len)?;
        batchnorm::cpu::relu_forward_eval_into(
            prefix("batchnorm", x, len)?,
            &bn.gamma,
            &bn.beta,
            &bn.running_mean,
            &bn.running_var,
            y,
            shape,
            cfg,
        )?;
        self.store(y);
        Ok(())
    }

    fn bn_relu_backward(
        &self,
        n: usize,
        g: Chw,
        saved: Saved<'_, Vec<f32>>,
        bn: &mut BnState<Vec<f32>>,
        dy: &Vec<f32>,
        dx: &mut Vec<f32>,
    ) -> Result<()> {
        let (x, y) = (saved.input, saved.output);
        let (shape, _) = bn_parts(n, g, bn);
        let len = n * g.len();
        let dx = prefix_mut("batchnorm", dx, len)?;
        batchnorm::cpu::relu_backward_into(
            prefix("batchnorm", x, len)?,
            prefix("batchnorm", y, len)?,
            prefix("batchnorm", dy, len)?,
            &bn.gamma,
            &bn.save_mean,
            &bn.save_invstd,
            dx,
            &mut bn.dgamma,
            &mut bn.dbeta,
            shape,
        )?;
        self.store(dx);
        Ok(())
    }

    fn global_avg_pool_forward(&self, n: usize, g: Chw, x: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        let s = PoolShape { n, c: g.c, h: g.h, w: g.w };
        pool::cpu::global_avg_pool_forward_into(prefix("gap", x, s.len())?, prefix_mut("gap", y, n * g.c)?, s)
    }

    fn global_avg_pool_backward(&self, n: usize, g: Chw, dy: &Vec<f32>, dx: &mut Vec<f32>) -> Result<()> {
        let s = PoolShape { n, c: g.c, h: g.h, w: g.w };
        let dx = prefix_mut("gap", dx, s.len())?;
        pool::cpu::global_avg_pool_backward_into(prefix("gap", dy, n * g.c)?, dx, s)?;
        self.store(dx);
        Ok(())
    }

    fn linear_forward(&self, s: LinearShape, x: &Vec<f32>, w: &Vec<f32>, b: &Vec<f32>, y: &mut Vec<f32>) -> Result<()> {
        let (n, inp, out) = (s.batch, s.in_features, s.out_features);
        linear::cpu::forward_into(prefix("linear", x, n * inp)?, w, b, prefix_mut("linear", y, n * out)?, s)
    }

    fn linear_backward(
        &self,
        s: LinearShape,
        x: &Vec<f32>,
        w: &Vec<f32>,
        dy: &Vec<f32>,
        grads: LinearGrads<'_, Vec<f32>>,
    ) -> Result<()> {
        let (n, inp, out) = (s.batch, s.in_features, s.out_features);
        let LinearGrads { dx, dw, db } = grads;
        linear::cpu::backward_into(
            prefix("linear", x, n * inp)?,
            w,
            prefix("linear", dy, n * out)?,
            prefix_mut("linear", dx, n * inp)?,
            dw,
            db,
            s,
        )
    }

    fn cross_entropy(
        &self,
        n: usize,
        classes: usize,
        logits: &Vec<f32>,
        labels: &Vec<i32>,
        weighting: &WeightedLoss<'_, Vec<f32>>,
        grad: &mut Vec<f32>,
    ) -> Result<f32> {
        let (weight, label_smoothing) = (weighting.weight, weighting.label_smoothing);
        let x = ArrayView2::from_shape((n, classes), prefix("cross_entropy", logits, n * classes)?)
            .map_err(|e| Error::shape("cross_entropy", e.to_string()))?;
        let opts = Options { ignore_index: None, label_smoothing, reduction: Reduction::Mean };
        let adjust =
            LogitAdjust { scale: weighting.scale.map(Vec::as_slice), offset: weighting.offset.map(Vec::as_slice) };
        let (loss, g) = cross_entropy::cpu::forward_backward_adjusted(
            x,
            ArrayView1::from(labels.get(..n).ok_or_else(|| Error::shape("cross_entropy", "fewer labels than rows"))?),
            Some(ArrayView1::from(weight)),
            &adjust,
            &opts,
        )?;
        let out = prefix_mut("cross_entropy", grad, n * classes)?;
        out.copy_from_slice(g.as_slice().expect("standard layout"));
        Ok(loss[0])
    }

    #[allow(clippy::too_many_arguments)]
    fn cross_entropy_into(
        &self,
        n: usize,
        classes: usize,
        logits: &Vec<f32>,
        labels: &Vec<i32>,
        weighting: &WeightedLoss<'_, Vec<f32>>,
        grad: &mut Vec<f32>,
        losses: &mut Vec<f32>,
        at: usize,
    ) -> Result<()> {
        let have = losses.len();
        let slot = losses.get_mut(at).ok_or_else(|| Error::shape("cross_entropy", format!("loss {at} of {have}")))?;
        *slot = self.cross_entropy(n, classes, logits, labels, weighting, grad)?;
        Ok(())
    }

    fn tally(&self, classes: usize, _max_batch: usize) -> Result<Self::Tally> {
        Ok((ConfusionMatrix::new(classes)?, vec![0.0; 3 * classes]))
    }
    fn tally_set(&self, tally: &mut Self::Tally, counts: &[u64], sums: &[f64]) -> Result<()> {
        let c = tally.0.classes();
        tally.0 = ConfusionMatrix::from_counts(c, counts.to_vec())?;
        if sums.len() != 3 * c {
            return Err(Error::shape("tally", format!("{} sums for {c} classes", sums.len())));
        }
        tally.1.copy_from_slice(sums);
        Ok(())
    }
    fn tally_add(
        &self,
        tally: &mut Self::Tally,
        n: usize,
        logits: &Vec<f32>,
        labels: &Vec<i32>,
        smoothing: f32,
    ) -> Result<()> {
        let c = tally.0.classes();
        self.confusion(n, logits, labels, None, &mut tally.0)?;
        let x = ArrayView2::from_shape((n, c), prefix("tally", logits, n * c)?)
            .map_err(|e| Error::shape("tally", e.to_string()))?;
        let y = labels.get(..n).ok_or_else(|| Error::shape("tally", "fewer labels than rows"))?;
        cross_entropy::cpu::class_sums(x, ArrayView1::from(y), smoothing, &mut tally.1)
    }
    fn tally_read(&self, tally: &Self::Tally, counts: &mut [u64], sums: &mut [f64]) -> Result<()> {
        if counts.len() != tally.0.counts().len() || sums.len() != tally.1.len() {
            return Err(Error::shape("tally", "counts or sums of another number of classes"));
        }
        counts.copy_from_slice(tally.0.counts());
        sums.copy_from_slice(&tally.1);
        Ok(())
    }

    fn sgd(
        &self,
        step: &SgdStep,
        param: &mut Vec<f32>,
        grad: &Vec<f32>,
        momentum: &mut Vec<f32>,
        len: usize,
    ) -> Result<()> {
        optim::cpu::sgd_step(
            prefix_mut("sgd", param, len)?,
            prefix("sgd", grad, len)?,
            prefix_mut("sgd", momentum, len)?,
            &sgd_config(step),
            step.lr,
        )
    }

    fn confusion(
        &self,
        n: usize,
        logits: &Vec<f32>,
        labels: &Vec<i32>,
        bias: Option<&Vec<f32>>,
        counts: &mut ConfusionMatrix,
    ) -> Result<()> {
        let c = counts.classes();
        let x = ArrayView2::from_shape((n, c), prefix("confusion", logits, n * c)?)
            .map_err(|e| Error::shape("confusion", e.to_string()))?;
        let bias = bias.map(Vec::as_slice);
        confusion::cpu::count_logits_biased(x, bias, &labels[..n.min(labels.len())], counts, None)
    }
}
