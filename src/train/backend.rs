//! The operations a training step needs, implemented once per device: [`super::cpu_backend`] on
//! the CPU references, [`super::cuda_backend`] on the kernels. The model and the training loop are
//! written once against this trait.
//!
//! Buffers are allocated for the largest batch; calls take the batch size `n` and use the prefix
//! of each buffer that `n` needs.
//!
//! The helpers at the end translate the trait's types into the kernel families' own, for both
//! backends.
use crate::augment::AugmentSpec;
use crate::batchnorm::{BnConfig, BnShape};
use crate::confusion::ConfusionMatrix;
use crate::conv::Conv2dShape;
use crate::linear::LinearShape;
use crate::optim::SgdConfig;
use crate::Result;

/// Where a batch's images come from and how each is augmented (chosen on the host from the seeded
/// RNG, so both devices build the same batch).
#[derive(Clone, Debug, Default)]
pub struct BatchPlan {
    /// Dataset index of each image.
    pub indices: Vec<i32>,
    /// Crop offsets `(dy, dx)` in `[0, 2 * pad]` into the zero-padded image; `(pad, pad)` = no crop.
    pub offsets: Vec<(u8, u8)>,
    /// Horizontal flip per image.
    pub flips: Vec<bool>,
}

impl BatchPlan {
    pub fn len(&self) -> usize {
        self.indices.len()
    }
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// Per-channel normalization of the u8 images: `(v / 255 - mean) / std`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Normalize {
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// Geometry of a feature map: channels, height, width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chw {
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Chw {
    pub fn len(&self) -> usize {
        self.c * self.h * self.w
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// SGD hyper-parameters of one step (PyTorch's `torch.optim.SGD`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdStep {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
}

pub trait Backend {
    /// f32 buffer: parameters, their gradients and optimizer state, the pooled features and the
    /// logits (the loss is always computed in f32).
    type Buf;
    /// Activations and their gradients between layers, from the input batch to the last feature
    /// map (the global average pool's input): f32 on the CPU; on a GPU f32, or bf16 in mixed
    /// precision ([`super::CudaBackend`]'s type parameter).
    type Act;
    /// i32 labels of a batch.
    type Labels;
    /// The dataset's u8 images, resident where the batches are built.
    type Images;
    /// Per-output argmax of a max-pool window (u8).
    type Argmax;
    /// The epoch log's training statistics, accumulated where the step runs: the confusion
    /// counts (classes x classes) and the per-class sums (3 x classes) of
    /// [`crate::cross_entropy::cpu::class_sums`]. See [`Backend::tally_add`].
    type Tally;

    /// "cpu (2 threads)" or "cuda: NVIDIA H200 (sm_90), fp32 convolutions".
    fn describe(&self) -> String;
    /// The step's arithmetic where it is not f32 throughout: "tf32 convolutions, f32
    /// activations", "bf16 convolutions, bf16 activations"; `"f32"` when it is (the default). Runs
    /// in different precisions are different experiments: an interrupted run resumes only in its
    /// own, whatever the device.
    fn precision(&self) -> String {
        "f32".into()
    }
    /// Bytes of one element of [`Backend::Act`] (4, or 2 for bf16), for
    /// [`MemoryEstimate::with_activation_bytes`](super::MemoryEstimate::with_activation_bytes).
    fn activation_bytes(&self) -> usize {
        4
    }
    /// Bytes that can still be allocated where the buffers live (host RAM or device memory), if
    /// known; checked against [`MemoryEstimate`](super::MemoryEstimate) before a run allocates.
    fn memory_available(&self) -> Option<u64> {
        None
    }
    /// `len` zeros: for what is read before anything writes it (a parameter starting at 0,
    /// momentum, running statistics, an accumulator).
    fn zeros(&self, len: usize) -> Result<Self::Buf>;
    /// `len` values that every use writes before reading them (activations, gradients that a
    /// pass overwrites, workspaces): on a GPU allocated without [`Backend::zeros`]' fill, so
    /// that a read of a value nothing wrote is garbage there and an error under the emulated
    /// driver's init check, instead of a silent zero. The default is [`Backend::zeros`].
    fn scratch(&self, len: usize) -> Result<Self::Buf> {
        self.zeros(len)
    }
    fn upload(&self, data: &[f32]) -> Result<Self::Buf>;
    fn to_host(&self, buf: &Self::Buf, len: usize) -> Result<Vec<f32>>;
    /// `len` activations that every use writes before reading them (see [`Backend::scratch`]).
    fn act_scratch(&self, len: usize) -> Result<Self::Act>;
    /// The first `len` activations, widened to f32 on the host.
    fn act_to_host(&self, buf: &Self::Act, len: usize) -> Result<Vec<f32>>;
    fn labels(&self, data: &[i32]) -> Result<Self::Labels>;
    /// Copies `data` into the first `data.len()` labels of `out` (a buffer made by
    /// [`Backend::labels`]), without allocating; an error when `out` is shorter.
    fn write_labels(&self, data: &[i32], out: &mut Self::Labels) -> Result<()>;
    fn images(&self, data: &[u8], count: usize) -> Result<Self::Images>;
    fn argmax_buf(&self, len: usize) -> Result<Self::Argmax>;

    /// Gathers, crops (zero padding `pad`), flips and normalizes the planned images into `out`
    /// (n x 3 x 32 x 32).
    fn build_batch(
        &self,
        images: &Self::Images,
        plan: &BatchPlan,
        pad: usize,
        norm: &Normalize,
        out: &mut Self::Act,
    ) -> Result<()>;

    /// [`Backend::build_batch`] without waiting for the device: a bad index or crop offset
    /// (which never makes it read outside `images`) is reported by [`Backend::check_deferred`].
    fn build_batch_deferred(
        &self,
        images: &Self::Images,
        plan: &BatchPlan,
        pad: usize,
        norm: &Normalize,
        out: &mut Self::Act,
    ) -> Result<()> {
        self.build_batch(images, plan, pad, norm, out)
    }

    fn conv_forward(&self, p: &Conv2dShape, x: &Self::Act, w: &Self::Buf, y: &mut Self::Act) -> Result<()>;
    /// Gradients of the filters (overwritten) and, when `dx` is given, of the input (overwritten).
    fn conv_backward(
        &self,
        p: &Conv2dShape,
        x: &Self::Act,
        w: &Self::Buf,
        dy: &Self::Act,
        dx: Option<&mut Self::Act>,
        dw: &mut Self::Buf,
    ) -> Result<()>;

    /// 2x2 max pooling, stride 2, of an `n x g` input; records each window's argmax.
    fn max_pool_forward(
        &self,
        n: usize,
        g: Chw,
        x: &Self::Act,
        y: &mut Self::Act,
        argmax: &mut Self::Argmax,
    ) -> Result<()>;
    /// Routes each output gradient to its window's argmax (`dx` overwritten).
    fn max_pool_backward(
        &self,
        n: usize,
        g: Chw,
        argmax: &Self::Argmax,
        dy: &Self::Act,
        dx: &mut Self::Act,
    ) -> Result<()>;

    /// Training-mode batch norm followed by ReLU; saves the batch statistics for backward and
    /// updates the running statistics.
    fn bn_relu_forward_train(
        &self,
        n: usize,
        g: Chw,
        x: &Self::Act,
        bn: &mut BnState<Self::Buf>,
        y: &mut Self::Act,
    ) -> Result<()>;
    fn bn_relu_forward_eval(
        &self,
        n: usize,
        g: Chw,
        x: &Self::Act,
        bn: &BnState<Self::Buf>,
        y: &mut Self::Act,
    ) -> Result<()>;
    /// `dx` overwritten; `bn.dgamma`, `bn.dbeta` overwritten. `saved`: the forward pass's input
    /// and output.
    fn bn_relu_backward(
        &self,
        n: usize,
        g: Chw,
        saved: Saved<'_, Self::Act>,
        bn: &mut BnState<Self::Buf>,
        dy: &Self::Act,
        dx: &mut Self::Act,
    ) -> Result<()>;

    /// The last feature map (activations) averaged to f32 features, `n x g.c`.
    fn global_avg_pool_forward(&self, n: usize, g: Chw, x: &Self::Act, y: &mut Self::Buf) -> Result<()>;
    fn global_avg_pool_backward(&self, n: usize, g: Chw, dy: &Self::Buf, dx: &mut Self::Act) -> Result<()>;

    /// `y = x W^T + b`, x: batch x in_features, W: out_features x in_features.
    fn linear_forward(
        &self,
        s: LinearShape,
        x: &Self::Buf,
        w: &Self::Buf,
        b: &Self::Buf,
        y: &mut Self::Buf,
    ) -> Result<()>;
    /// The gradients of [`Backend::linear_forward`]'s input, weight and bias from the output's
    /// `dy` (each overwritten).
    fn linear_backward(
        &self,
        s: LinearShape,
        x: &Self::Buf,
        w: &Self::Buf,
        dy: &Self::Buf,
        grads: LinearGrads<'_, Self::Buf>,
    ) -> Result<()>;

    /// Mean class-weighted cross-entropy of the batch (`n x classes` logits) and its gradient
    /// (one fused pass); returns the loss value.
    fn cross_entropy(
        &self,
        n: usize,
        classes: usize,
        logits: &Self::Buf,
        labels: &Self::Labels,
        weighting: &WeightedLoss<'_, Self::Buf>,
        grad: &mut Self::Buf,
    ) -> Result<f32>;

    /// [`Backend::cross_entropy`] that writes the loss to `losses[at]` and returns without
    /// waiting for the device: the loss stays where it was computed, and a bad target (whose row
    /// gets loss and gradient 0) is reported by [`Backend::check_deferred`].
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy_into(
        &self,
        n: usize,
        classes: usize,
        logits: &Self::Buf,
        labels: &Self::Labels,
        weighting: &WeightedLoss<'_, Self::Buf>,
        grad: &mut Self::Buf,
        losses: &mut Self::Buf,
        at: usize,
    ) -> Result<()>;

    /// An empty tally of `classes` for batches of up to `max_batch` images.
    fn tally(&self, classes: usize, max_batch: usize) -> Result<Self::Tally>;
    /// Sets the tally's counts (classes x classes) and sums (3 x classes), e.g. to zeros at the
    /// start of an epoch or to a checkpoint's partial-epoch values.
    fn tally_set(&self, tally: &mut Self::Tally, counts: &[u64], sums: &[f64]) -> Result<()>;
    /// Adds the batch's confusion counts (prediction: the logits' argmax) and per-class sums
    /// (label smoothing `smoothing`) to the tally, without waiting for the device; rows whose
    /// label is out of range are not counted (reported by [`Backend::check_deferred`]).
    fn tally_add(
        &self,
        tally: &mut Self::Tally,
        n: usize,
        logits: &Self::Buf,
        labels: &Self::Labels,
        smoothing: f32,
    ) -> Result<()>;
    /// Copies the tally's counts and sums out (overwriting `counts` and `sums`).
    fn tally_read(&self, tally: &Self::Tally, counts: &mut [u64], sums: &mut [f64]) -> Result<()>;
    /// Waits for the device; errors when a call that did not wait
    /// ([`Backend::cross_entropy_into`], [`Backend::tally_add`], the batch builder) met a bad
    /// sample index, crop offset or label since the last check.
    fn check_deferred(&self) -> Result<()> {
        Ok(())
    }

    /// In-place SGD update of a flat parameter buffer.
    fn sgd(
        &self,
        step: &SgdStep,
        param: &mut Self::Buf,
        grad: &Self::Buf,
        momentum: &mut Self::Buf,
        len: usize,
    ) -> Result<()>;

    /// Adds the batch's (true, predicted) counts to `counts`; the prediction is
    /// `argmax_c(logit_c + bias[c])` when a per-class `bias` (length `classes`) is given.
    fn confusion(
        &self,
        n: usize,
        logits: &Self::Buf,
        labels: &Self::Labels,
        bias: Option<&Self::Buf>,
        counts: &mut ConfusionMatrix,
    ) -> Result<()>;
}

/// What a layer's forward pass read and wrote, for its backward pass.
#[derive(Clone, Copy)]
pub struct Saved<'a, B> {
    pub input: &'a B,
    pub output: &'a B,
}

/// Where [`Backend::linear_backward`] writes the gradients (each overwritten).
pub struct LinearGrads<'a, B> {
    /// Of the input (`batch x in_features`).
    pub dx: &'a mut B,
    /// Of the weight (`out_features x in_features`).
    pub dw: &'a mut B,
    /// Of the bias (`out_features`).
    pub db: &'a mut B,
}

/// How [`Backend::cross_entropy`] weighs the loss: one weight per class (on the device), the
/// label smoothing and the optional per-class logit scale and offset the loss applies to the
/// logits (`u_c = scale_c * x_c + offset_c`, see [`crate::cross_entropy::LogitAdjust`]; `None`:
/// 1 and 0). The gradient is of the loss with respect to the plain logits.
#[derive(Clone, Copy)]
pub struct WeightedLoss<'a, B> {
    pub weight: &'a B,
    pub label_smoothing: f32,
    pub scale: Option<&'a B>,
    pub offset: Option<&'a B>,
}

/// Parameters, running statistics and saved batch statistics of a batch-norm layer.
pub struct BnState<B> {
    pub gamma: B,
    pub beta: B,
    pub dgamma: B,
    pub dbeta: B,
    pub running_mean: B,
    pub running_var: B,
    pub save_mean: B,
    pub save_invstd: B,
    pub momentum: f32,
    pub eps: f32,
}

/// The augmentation kernels' spec of a batch of 3 x 32 x 32 images.
pub(super) fn augment_spec(pad: usize, norm: &Normalize) -> AugmentSpec {
    AugmentSpec {
        c: 3,
        h: 32,
        w: 32,
        pad,
        mean: [norm.mean[0], norm.mean[1], norm.mean[2], 0.0],
        std: [norm.std[0], norm.std[1], norm.std[2], 1.0],
    }
}

/// A plan's crop offsets (`dy, dx` per image) and flips as the bytes the kernels read.
pub(super) fn plan_bytes(plan: &BatchPlan) -> (Vec<u8>, Vec<u8>) {
    let crops = plan.offsets.iter().flat_map(|&(dy, dx)| [dy, dx]).collect();
    let flips = plan.flips.iter().map(|&f| f as u8).collect();
    (crops, flips)
}

/// The batch-norm kernels' shape and config of a layer on `n` images of geometry `g`.
pub(super) fn bn_parts(n: usize, g: Chw, bn: &BnState<impl Sized>) -> (BnShape, BnConfig) {
    (BnShape { n, c: g.c, hw: g.h * g.w }, BnConfig { eps: bn.eps, momentum: bn.momentum })
}

/// The SGD kernels' config of a step.
pub(super) fn sgd_config(step: &SgdStep) -> SgdConfig {
    SgdConfig { momentum: step.momentum, weight_decay: step.weight_decay, nesterov: step.nesterov }
}
