//! The CNN, defined once for every [`Backend`]: conv / max-pool / batch-norm+ReLU blocks, global
//! average pooling and a linear head.
//!
//! ```text
//! stem   conv3x3(3 -> w) @32x32, BN+ReLU
//! stage  conv3x3(c -> 2c) @HxW, max-pool 2x2, BN+ReLU     (x3: 32 -> 16 -> 8 -> 4, c = w, 2w, 4w)
//!        then (depth - 1) x [conv3x3(2c -> 2c), BN+ReLU] at the pooled size
//! head   global average pool (8w) -> linear(8w -> classes)
//! ```
//! Pooling before batch norm (as in fast CIFAR-10 trainers) makes the normalization 4x cheaper.
use rand::SeedableRng;
use rand_distr::{Distribution, Normal, Uniform};
use rand_pcg::Pcg64;

use super::backend::{Backend, BnState, Chw, LinearGrads, Saved, SgdStep};
use crate::conv::{Conv2dOpts, Conv2dShape};
use crate::linear::LinearShape;
use crate::{Error, Result};

/// Width (channels of the stem; stages double it three times), depth (convolutions per stage) and
/// number of classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    pub width: usize,
    pub depth: usize,
    pub classes: usize,
}

/// Input geometry: CIFAR-10 images.
pub const INPUT: Chw = Chw { c: 3, h: 32, w: 32 };

/// A trainable tensor with its gradient and SGD momentum.
pub struct Param<B: Backend> {
    pub value: B::Buf,
    pub grad: B::Buf,
    pub momentum: B::Buf,
    pub len: usize,
    /// Weight decay applies to conv and linear weights, not to biases and batch-norm parameters.
    pub decay: bool,
}

enum Op<B: Backend> {
    /// 3x3 (pad 1, stride 1) convolution without bias (a batch norm follows).
    Conv {
        cin: usize,
        cout: usize,
        h: usize,
        w: usize,
        weight: Param<B>,
    },
    MaxPool {
        g: Chw,
        idx: B::Argmax,
    },
    BnRelu {
        g: Chw,
        bn: BnState<B::Buf>,
        gamma_m: B::Buf,
        beta_m: B::Buf,
    },
    Gap {
        g: Chw,
    },
    Linear {
        inp: usize,
        out: usize,
        weight: Param<B>,
        bias: Param<B>,
    },
}

/// The network, its parameters and its activation buffers for batches of up to `max_batch`.
///
/// `ops` is the convolutional body (convolutions, batch norms, max-pools: activations in, activations
/// out, [`Backend::Act`]), then the global average pool and the linear head, whose features and
/// logits are f32 ([`Backend::Buf`]).
pub struct Model<B: Backend> {
    pub config: ModelConfig,
    ops: Vec<Op<B>>,
    /// acts[0] is the input batch, acts[i + 1] the output of body op ops[i]; the last is the
    /// global average pool's input.
    acts: Vec<B::Act>,
    /// The pooled features (the linear head's input) and the logits.
    features: B::Buf,
    logits: B::Buf,
    /// Sizes per image of acts, then of the features and the logits.
    sizes: Vec<usize>,
    /// Gradients of the body's activations (ping-pong: a pass reads one, writes the other), and
    /// of the features.
    grad_a: B::Act,
    grad_b: B::Act,
    grad_features: B::Buf,
    max_batch: usize,
    /// Batch size of the last training-mode forward, which `backward` needs (its activations and
    /// batch statistics); `None` after an eval-mode forward.
    trained_batch: Option<usize>,
}

impl<B: Backend> Model<B> {
    /// Builds the network with seeded initialization: Kaiming-normal convolutions (fan-in, ReLU
    /// gain), PyTorch's default uniform linear layer, batch-norm gamma 1 and beta 0.
    pub fn new(be: &B, config: ModelConfig, max_batch: usize, seed: u64) -> Result<Self> {
        check_config(config, max_batch)?;
        let mut rng = Pcg64::seed_from_u64(seed);
        let mut ops = Vec::new();
        let mut sizes = vec![INPUT.len()];
        let conv = |be: &B, rng: &mut Pcg64, cin: usize, cout: usize, h: usize, w: usize| -> Result<Op<B>> {
            let fan_in = (cin * 9) as f64;
            let normal = Normal::new(0.0, (2.0 / fan_in).sqrt()).expect("positive std");
            let init: Vec<f32> = (0..cout * cin * 9).map(|_| normal.sample(rng) as f32).collect();
            Ok(Op::Conv { cin, cout, h, w, weight: param(be, &init, true)? })
        };
        let bn = |be: &B, g: Chw| -> Result<Op<B>> {
            Ok(Op::BnRelu {
                g,
                bn: BnState {
                    gamma: be.upload(&vec![1.0; g.c])?,
                    beta: be.zeros(g.c)?,
                    dgamma: be.scratch(g.c)?,
                    dbeta: be.scratch(g.c)?,
                    running_mean: be.zeros(g.c)?,
                    running_var: be.upload(&vec![1.0; g.c])?,
                    save_mean: be.scratch(g.c)?,
                    save_invstd: be.scratch(g.c)?,
                    momentum: 0.1,
                    eps: 1e-5,
                },
                gamma_m: be.zeros(g.c)?,
                beta_m: be.zeros(g.c)?,
            })
        };
        let w0 = config.width;
        ops.push(conv(be, &mut rng, 3, w0, 32, 32)?);
        sizes.push(w0 * 32 * 32);
        ops.push(bn(be, Chw { c: w0, h: 32, w: 32 })?);
        sizes.push(w0 * 32 * 32);
        let (mut c, mut hw) = (w0, 32);
        for _stage in 0..3 {
            let cout = 2 * c;
            ops.push(conv(be, &mut rng, c, cout, hw, hw)?);
            sizes.push(cout * hw * hw);
            let g = Chw { c: cout, h: hw, w: hw };
            ops.push(Op::MaxPool { g, idx: be.argmax_buf(max_batch * cout * (hw / 2) * (hw / 2))? });
            hw /= 2;
            sizes.push(cout * hw * hw);
            ops.push(bn(be, Chw { c: cout, h: hw, w: hw })?);
            sizes.push(cout * hw * hw);
            for _ in 1..config.depth {
                ops.push(conv(be, &mut rng, cout, cout, hw, hw)?);
                sizes.push(cout * hw * hw);
                ops.push(bn(be, Chw { c: cout, h: hw, w: hw })?);
                sizes.push(cout * hw * hw);
            }
            c = cout;
        }
        ops.push(Op::Gap { g: Chw { c, h: hw, w: hw } });
        sizes.push(c);
        let bound = 1.0 / (c as f64).sqrt();
        let uni = Uniform::new(-bound, bound).expect("valid range");
        let wl: Vec<f32> = (0..config.classes * c).map(|_| uni.sample(&mut rng) as f32).collect();
        let bl: Vec<f32> = (0..config.classes).map(|_| uni.sample(&mut rng) as f32).collect();
        ops.push(Op::Linear {
            inp: c,
            out: config.classes,
            weight: param(be, &wl, true)?,
            bias: param(be, &bl, false)?,
        });
        sizes.push(config.classes);

        debug_assert_eq!(sizes, activation_sizes(config));
        // Activations and their gradients: each pass writes them before the next reads them.
        let body = &sizes[..sizes.len() - 2];
        let acts = body.iter().map(|&s| be.act_scratch(s * max_batch)).collect::<Result<Vec<_>>>()?;
        let max_act = body.iter().copied().max().unwrap_or(1) * max_batch;
        let feature_len = sizes[sizes.len() - 2];
        Ok(Model {
            config,
            ops,
            acts,
            features: be.scratch(feature_len * max_batch)?,
            logits: be.scratch(config.classes * max_batch)?,
            sizes,
            grad_a: be.act_scratch(max_act)?,
            grad_b: be.act_scratch(max_act)?,
            grad_features: be.scratch(feature_len * max_batch)?,
            max_batch,
            trained_batch: None,
        })
    }

    /// Number of trainable scalars.
    pub fn parameter_count(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Conv { weight, .. } => weight.len,
                Op::BnRelu { g, .. } => 2 * g.c,
                Op::Linear { weight, bias, .. } => weight.len + bias.len,
                _ => 0,
            })
            .sum()
    }

    /// Multiply-accumulates of one image's forward pass through the convolutions and the head.
    pub fn forward_macs(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Conv { cin, cout, h, w, .. } => cin * 9 * cout * h * w,
                Op::Linear { inp, out, .. } => inp * out,
                _ => 0,
            })
            .sum()
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// The input buffer of the next forward pass (n x 3 x 32 x 32).
    pub fn input_mut(&mut self) -> &mut B::Act {
        &mut self.acts[0]
    }

    /// The logits of the last forward pass (n x classes).
    pub fn logits(&self) -> &B::Buf {
        &self.logits
    }

    /// Forward pass of `n` images already in [`Model::input_mut`]; `train` selects batch
    /// statistics (and updates the running ones) instead of the running statistics.
    pub fn forward(&mut self, be: &B, n: usize, train: bool) -> Result<()> {
        self.check_batch(n)?;
        self.trained_batch = None;
        for (i, op) in self.ops.iter_mut().enumerate() {
            // The body's ops read acts[i] and write acts[i + 1]; the head (the last two ops) has
            // buffers of its own.
            match op {
                Op::Conv { cin, cout, h, w, weight } => {
                    let (x, y) = input_output(&mut self.acts, i);
                    be.conv_forward(&conv_params(n, *cin, *cout, *h, *w)?, x, &weight.value, y)?
                }
                Op::MaxPool { g, idx } => {
                    let (x, y) = input_output(&mut self.acts, i);
                    be.max_pool_forward(n, *g, x, y, idx)?
                }
                Op::BnRelu { g, bn, .. } => {
                    let (x, y) = input_output(&mut self.acts, i);
                    if train {
                        be.bn_relu_forward_train(n, *g, x, bn, y)?
                    } else {
                        be.bn_relu_forward_eval(n, *g, x, bn, y)?
                    }
                }
                Op::Gap { g } => be.global_avg_pool_forward(n, *g, &self.acts[i], &mut self.features)?,
                Op::Linear { inp, out, weight, bias } => be.linear_forward(
                    linear_shape(n, *inp, *out),
                    &self.features,
                    &weight.value,
                    &bias.value,
                    &mut self.logits,
                )?,
            }
        }
        if train {
            self.trained_batch = Some(n);
        }
        Ok(())
    }

    /// Backward pass after a training forward of `n` images, from the logits' gradient in
    /// `dlogits`; leaves every parameter's gradient in place.
    pub fn backward(&mut self, be: &B, n: usize, dlogits: &B::Buf) -> Result<()> {
        self.check_batch(n)?;
        if self.trained_batch != Some(n) {
            return Err(Error::shape(
                "model",
                format!("backward of a batch of {n} needs a training-mode forward of that batch first"),
            ));
        }
        for i in (0..self.ops.len()).rev() {
            // The head: the logits' gradient gives the features' (grad_features), which gives the
            // last feature map's (grad_a). Then each body op reads its output's gradient from
            // grad_a and writes its input's into grad_b (not needed for the input batch, i == 0),
            // and the two swap.
            let (dy, dx) = (&self.grad_a, &mut self.grad_b);
            match &mut self.ops[i] {
                Op::Linear { inp, out, weight, bias } => {
                    let grads = LinearGrads { dx: &mut self.grad_features, dw: &mut weight.grad, db: &mut bias.grad };
                    be.linear_backward(linear_shape(n, *inp, *out), &self.features, &weight.value, dlogits, grads)?;
                    continue;
                }
                Op::Gap { g } => {
                    be.global_avg_pool_backward(n, *g, &self.grad_features, &mut self.grad_a)?;
                    continue;
                }
                Op::Conv { cin, cout, h, w, weight } => {
                    let p = conv_params(n, *cin, *cout, *h, *w)?;
                    be.conv_backward(&p, &self.acts[i], &weight.value, dy, (i > 0).then_some(dx), &mut weight.grad)?
                }
                Op::MaxPool { g, idx } => be.max_pool_backward(n, *g, idx, dy, dx)?,
                Op::BnRelu { g, bn, .. } => {
                    let saved = Saved { input: &self.acts[i], output: &self.acts[i + 1] };
                    be.bn_relu_backward(n, *g, saved, bn, dy, dx)?
                }
            }
            std::mem::swap(&mut self.grad_a, &mut self.grad_b);
        }
        Ok(())
    }

    /// One SGD step on every parameter (weight decay only where [`Param::decay`]).
    pub fn sgd_step(&mut self, be: &B, step: &SgdStep) -> Result<()> {
        let no_decay = SgdStep { weight_decay: 0.0, ..*step };
        for op in &mut self.ops {
            match op {
                Op::Conv { weight, .. } => update(be, step, weight)?,
                Op::Linear { weight, bias, .. } => {
                    update(be, step, weight)?;
                    update(be, &no_decay, bias)?;
                }
                Op::BnRelu { g, bn, gamma_m, beta_m } => {
                    be.sgd(&no_decay, &mut bn.gamma, &bn.dgamma, gamma_m, g.c)?;
                    be.sgd(&no_decay, &mut bn.beta, &bn.dbeta, beta_m, g.c)?;
                }
                Op::MaxPool { .. } | Op::Gap { .. } => {}
            }
        }
        Ok(())
    }

    /// Every trainable and running value, in layer order, copied to the host (for saving and for
    /// comparing devices).
    pub fn state(&self, be: &B) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::new();
        for op in &self.ops {
            match op {
                Op::Conv { weight, .. } => out.push(be.to_host(&weight.value, weight.len)?),
                Op::Linear { weight, bias, .. } => {
                    out.push(be.to_host(&weight.value, weight.len)?);
                    out.push(be.to_host(&bias.value, bias.len)?);
                }
                Op::BnRelu { g, bn, .. } => {
                    for b in [&bn.gamma, &bn.beta, &bn.running_mean, &bn.running_var] {
                        out.push(be.to_host(b, g.c)?);
                    }
                }
                Op::MaxPool { .. } | Op::Gap { .. } => {}
            }
        }
        Ok(out)
    }

    /// Lengths of the tensors of [`Model::state`], in its order.
    pub fn state_lens(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for op in &self.ops {
            match op {
                Op::Conv { weight, .. } => out.push(weight.len),
                Op::Linear { weight, bias, .. } => out.extend([weight.len, bias.len]),
                Op::BnRelu { g, .. } => out.extend([g.c; 4]),
                Op::MaxPool { .. } | Op::Gap { .. } => {}
            }
        }
        out
    }

    /// Loads what [`Model::state`] returned (same config). Every length is checked and every
    /// tensor uploaded before the first is replaced, so on an error the model is unchanged.
    pub fn load_state(&mut self, be: &B, state: &[Vec<f32>]) -> Result<()> {
        let lens = self.state_lens();
        if state.len() != lens.len() {
            return Err(Error::shape(
                "load_state",
                format!("state has {} tensors, the model {} ({:?})", state.len(), lens.len(), self.config),
            ));
        }
        if let Some((i, (v, len))) = state.iter().zip(&lens).enumerate().find(|(_, (v, &len))| v.len() != len) {
            return Err(Error::shape(
                "load_state",
                format!("tensor {i} has {} values, the model's {len} ({:?})", v.len(), self.config),
            ));
        }
        let bufs = state.iter().map(|v| be.upload(v)).collect::<Result<Vec<_>>>()?;
        let mut it = bufs.into_iter();
        let mut next = || it.next().expect("one buffer per state tensor, counted above");
        for op in &mut self.ops {
            match op {
                Op::Conv { weight, .. } => weight.value = next(),
                Op::Linear { weight, bias, .. } => {
                    weight.value = next();
                    bias.value = next();
                }
                Op::BnRelu { bn, .. } => {
                    bn.gamma = next();
                    bn.beta = next();
                    bn.running_mean = next();
                    bn.running_var = next();
                }
                Op::MaxPool { .. } | Op::Gap { .. } => {}
            }
        }
        Ok(())
    }

    /// SGD momentum of every trainable tensor, in the order of [`Model::gradients`] (conv/linear
    /// weights, biases, batch-norm gamma and beta): with [`Model::state`], what a checkpoint needs
    /// to continue training exactly.
    pub fn optimizer_state(&self, be: &B) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::new();
        for op in &self.ops {
            match op {
                Op::Conv { weight, .. } => out.push(be.to_host(&weight.momentum, weight.len)?),
                Op::Linear { weight, bias, .. } => {
                    out.push(be.to_host(&weight.momentum, weight.len)?);
                    out.push(be.to_host(&bias.momentum, bias.len)?);
                }
                Op::BnRelu { g, gamma_m, beta_m, .. } => {
                    out.push(be.to_host(gamma_m, g.c)?);
                    out.push(be.to_host(beta_m, g.c)?);
                }
                Op::MaxPool { .. } | Op::Gap { .. } => {}
            }
        }
        Ok(out)
    }

    /// The features of the last forward pass: the input of the final linear layer, after the
    /// global average pool (n x [`Model::feature_len`]).
    pub fn features(&self) -> &B::Buf {
        &self.features
    }

    /// Features per image: the final linear layer's input size.
    pub fn feature_len(&self) -> usize {
        self.sizes[self.sizes.len() - 2]
    }

    /// The final linear layer's weight (classes x features) and bias, for retraining the
    /// classifier alone ([`super::retrain_classifier`]).
    pub fn head_mut(&mut self) -> Result<(&mut Param<B>, &mut Param<B>)> {
        match self.ops.last_mut() {
            Some(Op::Linear { weight, bias, .. }) => Ok((weight, bias)),
            _ => Err(Error::shape("model", "the last layer is not linear")),
        }
    }

    /// Lengths of the tensors of [`Model::optimizer_state`], in its order.
    pub fn optimizer_state_lens(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for op in &self.ops {
            match op {
                Op::Conv { weight, .. } => out.push(weight.len),
                Op::Linear { weight, bias, .. } => out.extend([weight.len, bias.len]),
                Op::BnRelu { g, .. } => out.extend([g.c; 2]),
                Op::MaxPool { .. } | Op::Gap { .. } => {}
            }
        }
        out
    }

    /// Loads what [`Model::optimizer_state`] returned. Lengths are checked and every tensor is
    /// uploaded before the first is replaced, so on an error the model is unchanged.
    pub fn load_optimizer_state(&mut self, be: &B, state: &[Vec<f32>]) -> Result<()> {
        let lens = self.optimizer_state_lens();
        if state.len() != lens.len() {
            return Err(Error::shape(
                "load_optimizer_state",
                format!("state has {} tensors, the model {} ({:?})", state.len(), lens.len(), self.config),
            ));
        }
        if let Some((i, (v, len))) = state.iter().zip(&lens).enumerate().find(|(_, (v, &len))| v.len() != len) {
            return Err(Error::shape(
                "load_optimizer_state",
                format!("tensor {i} has {} values, the model's {len} ({:?})", v.len(), self.config),
            ));
        }
        let bufs = state.iter().map(|v| be.upload(v)).collect::<Result<Vec<_>>>()?;
        let mut it = bufs.into_iter();
        let mut next = || it.next().expect("one buffer per optimizer tensor, counted above");
        for op in &mut self.ops {
            match op {
                Op::Conv { weight, .. } => weight.momentum = next(),
                Op::Linear { weight, bias, .. } => {
                    weight.momentum = next();
                    bias.momentum = next();
                }
                Op::BnRelu { gamma_m, beta_m, .. } => {
                    *gamma_m = next();
                    *beta_m = next();
                }
                Op::MaxPool { .. } | Op::Gap { .. } => {}
            }
        }
        Ok(())
    }

    /// Gradients of every parameter, in the order of [`Model::state`]'s trainable tensors
    /// (conv/linear weights, biases, gamma, beta), for gradient checks.
    pub fn gradients(&self, be: &B) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::new();
        for op in &self.ops {
            match op {
                Op::Conv { weight, .. } => out.push(be.to_host(&weight.grad, weight.len)?),
                Op::Linear { weight, bias, .. } => {
                    out.push(be.to_host(&weight.grad, weight.len)?);
                    out.push(be.to_host(&bias.grad, bias.len)?);
                }
                Op::BnRelu { g, bn, .. } => {
                    out.push(be.to_host(&bn.dgamma, g.c)?);
                    out.push(be.to_host(&bn.dbeta, g.c)?);
                }
                Op::MaxPool { .. } | Op::Gap { .. } => {}
            }
        }
        Ok(out)
    }

    fn check_batch(&self, n: usize) -> Result<()> {
        if n == 0 || n > self.max_batch {
            return Err(Error::shape(
                "model",
                format!("batch of {n}, the model holds buffers for 1..={}", self.max_batch),
            ));
        }
        let _ = &self.sizes;
        Ok(())
    }
}

fn param<B: Backend>(be: &B, init: &[f32], decay: bool) -> Result<Param<B>> {
    Ok(Param {
        value: be.upload(init)?,
        grad: be.zeros(init.len())?,
        momentum: be.zeros(init.len())?,
        len: init.len(),
        decay,
    })
}

fn update<B: Backend>(be: &B, step: &SgdStep, p: &mut Param<B>) -> Result<()> {
    let s = if p.decay { *step } else { SgdStep { weight_decay: 0.0, ..*step } };
    be.sgd(&s, &mut p.value, &p.grad, &mut p.momentum, p.len)
}

fn conv_params(n: usize, cin: usize, cout: usize, h: usize, w: usize) -> Result<Conv2dShape> {
    Conv2dShape::new([n, cin, h, w], [cout, cin, 3, 3], Conv2dOpts::square(1, 1))
}

/// Rejects configurations that do not describe a network, naming the field.
fn check_config(config: ModelConfig, max_batch: usize) -> Result<()> {
    let bad = if config.width == 0 {
        Some("width 0: the stem needs at least 1 channel")
    } else if config.depth == 0 {
        Some("depth 0: each stage needs at least 1 convolution")
    } else if config.classes < 2 {
        Some("fewer than 2 classes")
    } else if max_batch == 0 {
        Some("max_batch 0")
    } else {
        None
    };
    match bad {
        Some(why) => Err(Error::shape("model", why)),
        None => Ok(()),
    }
}

/// Floats per image of every activation buffer of [`Model::new`] (input first, logits last);
/// saturating, so absurd configurations give huge numbers, not an overflow.
/// `acts[i]` and `acts[i + 1]`: a body op's input and output.
fn input_output<T>(acts: &mut [T], i: usize) -> (&T, &mut T) {
    let (before, after) = acts.split_at_mut(i + 1);
    (&before[i], &mut after[0])
}

fn activation_sizes(config: ModelConfig) -> Vec<usize> {
    let w0 = config.width;
    let plane = |c: usize, hw: usize| c.saturating_mul(hw * hw);
    let mut sizes = vec![INPUT.len(), plane(w0, 32), plane(w0, 32)];
    let (mut c, mut hw) = (w0, 32);
    for _stage in 0..3 {
        let cout = c.saturating_mul(2);
        sizes.push(plane(cout, hw));
        hw /= 2;
        sizes.extend([plane(cout, hw); 2]);
        for _ in 1..config.depth.min(1 << 16) {
            sizes.extend([plane(cout, hw); 2]);
        }
        c = cout;
    }
    sizes.push(c);
    sizes.push(config.classes);
    sizes
}

/// What [`Model::new`] and a training run allocate, in bytes, computed without allocating (so a
/// configuration that cannot fit is refused with numbers instead of being killed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Parameters, their gradients and SGD momentum (3 floats each; batch norm's running
    /// statistics and saved batch statistics included).
    pub parameters: u64,
    /// Activation buffers for `max_batch` images, the two gradient buffers and max-pool indices.
    pub activations: u64,
    /// The datasets' images as bytes (on the device that trains).
    pub data: u64,
}

impl MemoryEstimate {
    /// Everything together.
    pub fn total(&self) -> u64 {
        self.parameters.saturating_add(self.activations).saturating_add(self.data)
    }

    /// Estimate for `config` with batches of up to `max_batch` and `images` dataset images
    /// (train and test together). Saturates instead of overflowing; errors like [`Model::new`]
    /// on a config that is not a network.
    pub fn new(config: ModelConfig, max_batch: usize, images: usize) -> Result<Self> {
        Self::with_activation_bytes(config, max_batch, images, 4)
    }

    /// [`MemoryEstimate::new`] with activations (and their gradients) of `bytes` each: 2 in
    /// mixed precision ([`Backend::activation_bytes`]). Parameters stay f32.
    pub fn with_activation_bytes(config: ModelConfig, max_batch: usize, images: usize, bytes: usize) -> Result<Self> {
        check_config(config, max_batch)?;
        let f = 4u64; // bytes per f32 parameter, gradient or momentum
        let a = bytes as u64;
        let b = max_batch as u64;
        let sizes = activation_sizes(config);
        let acts: u64 = sizes.iter().map(|&s| s as u64).fold(0u64, u64::saturating_add);
        let max_act = sizes.iter().copied().max().unwrap_or(1) as u64;
        // Max-pool argmax indices: one per pooled output of each of the three stages.
        let (mut pooled, mut c, mut hw) = (0u64, config.width as u64, 32u64);
        for _ in 0..3 {
            c = c.saturating_mul(2);
            hw /= 2;
            pooled = pooled.saturating_add(c.saturating_mul(hw * hw));
        }
        // Argmax indices are one byte each.
        let activations = a
            .saturating_mul(b)
            .saturating_mul(acts.saturating_add(max_act.saturating_mul(2)))
            .saturating_add(b.saturating_mul(pooled));
        // Trainable tensors x3 (value, gradient, momentum) plus batch norm's 4 extra vectors per
        // channel (running mean/var, saved mean/invstd).
        let (w, d, k) = (config.width as u64, config.depth as u64, config.classes as u64);
        let mut params = 27u64.saturating_mul(w); // stem conv
        let mut bn_channels = w;
        let mut c = w;
        for _ in 0..3 {
            let cout = c.saturating_mul(2);
            params = params.saturating_add(c.saturating_mul(cout).saturating_mul(9));
            params =
                params.saturating_add(d.saturating_sub(1).saturating_mul(cout.saturating_mul(cout).saturating_mul(9)));
            bn_channels = bn_channels.saturating_add(d.saturating_mul(cout));
            c = cout;
        }
        params = params.saturating_add(c.saturating_mul(k)).saturating_add(k);
        params = params.saturating_add(bn_channels.saturating_mul(2));
        let parameters = f.saturating_mul(params.saturating_mul(3).saturating_add(bn_channels.saturating_mul(4)));
        let data = (images as u64).saturating_mul(INPUT.len() as u64);
        Ok(MemoryEstimate { parameters, activations, data })
    }
}

impl std::fmt::Display for MemoryEstimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        write!(
            f,
            "{:.2} GiB (parameters, gradients and momentum {:.2} GiB, activations {:.2} GiB, images {:.2} GiB)",
            gib(self.total()),
            gib(self.parameters),
            gib(self.activations),
            gib(self.data)
        )
    }
}

/// The linear head's shape on a batch of `n`.
fn linear_shape(n: usize, inp: usize, out: usize) -> LinearShape {
    LinearShape { batch: n, in_features: inp, out_features: out }
}
