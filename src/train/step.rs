//! One training step, written once: the trainer ([`super::train_with`]) and `benches/train_step.rs`
//! run [`TrainStep::run_deferred`], `examples/speed.rs` (CPU) [`TrainStep::run`], the same
//! operations, so the published speed numbers time the step the trainer runs.
//!
//! A step is: the batch plan (random crop offsets and flips drawn from the run's RNG,
//! [`TrainStep::plan`]), the augmented batch built on the backend, the forward pass in training
//! mode, the class-weighted cross-entropy with its gradient, the backward pass and one SGD update
//! of every parameter. What the epoch log needs per class (confusion counts, per-class loss and
//! gradient sums) is counted too. [`TrainStep::run`] reads the loss back and stops before the
//! update when it is not finite; with a [`ClassTally`] it also counts on the host (the logits
//! downloaded). [`TrainStep::run_deferred`] keeps the loss and the tally on the backend, in an
//! [`EpochStats`] read once an epoch, so that on a GPU a step neither waits nor allocates.
use rand::RngExt;
use rand_pcg::Pcg64;

use super::backend::{Backend, BatchPlan, Normalize, SgdStep, WeightedLoss};
use super::config::TrainConfig;
use super::model::Model;
use crate::confusion::ConfusionMatrix;
use crate::{Error, Result};

/// CIFAR-10's per-channel mean and standard deviation (of the training set, RGB).
pub const CIFAR10_NORMALIZE: Normalize = Normalize { mean: [0.4914, 0.4822, 0.4465], std: [0.2470, 0.2435, 0.2616] };

/// Bytes of one 3 x 32 x 32 u8 image.
const IMAGE_BYTES: usize = 3 * 32 * 32;

/// A dataset resident on the backend: images there, labels on the host.
pub struct DeviceData<B: Backend> {
    pub images: B::Images,
    pub labels: Vec<u8>,
}

impl<B: Backend> DeviceData<B> {
    pub fn new(be: &B, images: &[u8], labels: &[u8]) -> Result<Self> {
        if images.len() != labels.len() * IMAGE_BYTES {
            return Err(Error::shape("dataset", format!("{} image bytes for {} labels", images.len(), labels.len())));
        }
        Ok(DeviceData { images: be.images(images, labels.len())?, labels: labels.to_vec() })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// What the epoch log needs per class, summed over the steps it is passed to: the confusion
/// counts of the training batches (the log's training accuracy) and, per class, the summed
/// cross-entropy, gradient norm at the logits and sample count (the log's per-class loss and
/// gradient shares).
#[derive(Clone, Debug, PartialEq)]
pub struct ClassTally {
    /// Predictions of the training batches as the network saw them (augmented, train mode).
    pub confusion: ConfusionMatrix,
    /// 3 x classes: cross-entropy, gradient norm at the logits `||softmax(z) - target||_2`,
    /// sample count. The target is the label-smoothed one the loss uses.
    pub sums: Vec<f64>,
}

impl ClassTally {
    /// An empty tally.
    pub fn new(classes: usize) -> Result<Self> {
        Ok(ClassTally { confusion: ConfusionMatrix::new(classes)?, sums: vec![0.0; 3 * classes] })
    }

    /// A tally continued from saved counts (classes x classes) and sums (3 x classes).
    pub fn from_parts(classes: usize, counts: Vec<u64>, sums: Vec<f64>) -> Result<Self> {
        if sums.len() != 3 * classes {
            return Err(Error::shape("class tally", format!("{} sums for {classes} classes", sums.len())));
        }
        Ok(ClassTally { confusion: ConfusionMatrix::from_counts(classes, counts)?, sums })
    }

    pub fn classes(&self) -> usize {
        self.confusion.classes()
    }

    /// Mean (unweighted) cross-entropy of each class's samples; NaN for a class without samples.
    pub fn class_loss(&self) -> Vec<f64> {
        let c = self.classes();
        (0..c)
            .map(|k| if self.sums[2 * c + k] > 0.0 { self.sums[k] / self.sums[2 * c + k] } else { f64::NAN })
            .collect()
    }

    /// Each class's share of the summed gradient norm at the logits, every sample scaled by
    /// `scale[class]`; NaN everywhere when nothing was summed.
    pub fn grad_share(&self, scale: &[f64]) -> Vec<f64> {
        let c = self.classes();
        let g: Vec<f64> = (0..c).map(|k| self.sums[c + k] * scale.get(k).copied().unwrap_or(f64::NAN)).collect();
        let total: f64 = g.iter().sum();
        g.into_iter().map(|x| if total > 0.0 { x / total } else { f64::NAN }).collect()
    }
}

/// Adds a batch's per-class sums to `sums` (see [`ClassTally::sums`]), from the logits on the
/// host: [`crate::cross_entropy::cpu::class_sums`]. Rows with a label out of range are skipped
/// (the loss rejects them before this runs). Computed in f64: a few microseconds per batch.
pub(super) fn add_class_sums(
    sums: &mut [f64],
    logits: &[f32],
    labels: &[i32],
    classes: usize,
    smoothing: f32,
) -> Result<()> {
    let x = ndarray::ArrayView2::from_shape((labels.len(), classes), logits)
        .map_err(|e| Error::shape("class sums", e.to_string()))?;
    crate::cross_entropy::cpu::class_sums(x, ndarray::ArrayView1::from(labels), smoothing, sums)
}

/// What the trainer's steps ([`TrainStep::run_deferred`]) accumulate on the backend during an
/// epoch, read by the host once, at the epoch's end (or when a caller asks, e.g. to write a
/// checkpoint): each step's loss, and the epoch log's [`ClassTally`].
pub struct EpochStats<B: Backend> {
    /// One loss per step of the epoch (zeros until written, so any prefix can be read).
    losses: B::Buf,
    steps: usize,
    tally: B::Tally,
    classes: usize,
}

impl<B: Backend> EpochStats<B> {
    /// Room for `steps` losses a epoch and a tally of `classes` for batches up to `max_batch`.
    pub fn new(be: &B, classes: usize, max_batch: usize, steps: usize) -> Result<Self> {
        Ok(EpochStats { losses: be.zeros(steps)?, steps, tally: be.tally(classes, max_batch)?, classes })
    }

    /// Starts (or continues, from a checkpoint) an epoch with this tally.
    pub fn start(&mut self, be: &B, tally: &ClassTally) -> Result<()> {
        if tally.classes() != self.classes {
            return Err(Error::shape("epoch stats", format!("a tally of {} classes", tally.classes())));
        }
        be.tally_set(&mut self.tally, tally.confusion.counts(), &tally.sums)
    }

    /// Waits for the device: errors when a step met a bad sample or label, else the losses of
    /// the first `steps` steps and the tally so far.
    pub fn read(&self, be: &B, steps: usize) -> Result<(Vec<f32>, ClassTally)> {
        be.check_deferred()?;
        if steps > self.steps {
            return Err(Error::shape("epoch stats", format!("{steps} losses of {}", self.steps)));
        }
        let losses = be.to_host(&self.losses, steps)?;
        let c = self.classes;
        let (mut counts, mut sums) = (vec![0; c * c], vec![0.0; 3 * c]);
        be.tally_read(&self.tally, &mut counts, &mut sums)?;
        Ok((losses, ClassTally::from_parts(c, counts, sums)?))
    }
}

/// Class weights must be one per class, finite and >= 0.
fn check_weights(w: &[f32], classes: usize) -> Result<()> {
    if w.len() != classes {
        return Err(Error::shape("train", format!("{} class weights for {classes} classes", w.len())));
    }
    if let Some(w) = w.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
        return Err(Error::shape("train", format!("class weight {w}: must be finite and >= 0")));
    }
    Ok(())
}

/// What one [`TrainStep::run`] did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StepOutcome {
    /// The parameters were updated; the batch's mean class-weighted loss.
    Updated { loss: f32 },
    /// The loss was not finite: the step stopped right after the loss, before the tally, the
    /// backward pass and the update, so the parameters and momentum are as they were (the
    /// forward pass has already moved the batch-norm running statistics).
    NonFiniteLoss { loss: f32 },
}

impl StepOutcome {
    /// The batch's loss, finite or not.
    pub fn loss(&self) -> f32 {
        match *self {
            StepOutcome::Updated { loss } | StepOutcome::NonFiniteLoss { loss } => loss,
        }
    }
}

/// The training step of one run: the run's augmentation, loss and optimizer settings (from its
/// [`TrainConfig`]), the class weights on the backend and the buffer of the logits' gradient.
pub struct TrainStep<B: Backend> {
    classes: usize,
    crop_pad: usize,
    flip: bool,
    label_smoothing: f32,
    momentum: f32,
    weight_decay: f32,
    nesterov: bool,
    weight: B::Buf,
    scale: Option<B::Buf>,
    offset: Option<B::Buf>,
    dlogits: B::Buf,
    /// The batch's labels, written into this buffer of the model's largest batch each step.
    labels: B::Labels,
}

/// A per-class logit scale and offset that the training loss applies (`u_c = scale_c * x_c +
/// offset_c`; `None`: 1 and 0), owned: VS-loss and class-dependent temperature (see
/// [`crate::methods::LogitRule`]). Evaluation always uses the plain logits.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogitAdjustment {
    pub scale: Option<Vec<f32>>,
    pub offset: Option<Vec<f32>>,
}

impl LogitAdjustment {
    /// Errors unless each given part holds one finite value per class, and each scale is > 0
    /// (a scale of 0 or less would erase or flip the class's logit).
    pub fn check(&self, classes: usize) -> Result<()> {
        for (name, v) in [("scale", &self.scale), ("offset", &self.offset)] {
            let Some(v) = v else { continue };
            if v.len() != classes {
                return Err(Error::shape("train", format!("{} logit {name}s for {classes} classes", v.len())));
            }
            if let Some(x) = v.iter().find(|x| !x.is_finite() || (name == "scale" && **x <= 0.0)) {
                return Err(Error::shape("train", format!("logit {name} {x}: must be finite (a scale > 0)")));
            }
        }
        Ok(())
    }
}

impl<B: Backend> TrainStep<B> {
    /// The step of `cfg` for `model` (its classes and largest batch), with these class weights
    /// (one per class, finite and >= 0).
    pub fn new(be: &B, model: &Model<B>, cfg: &TrainConfig, class_weights: &[f32]) -> Result<Self> {
        let classes = model.config.classes;
        check_weights(class_weights, classes)?;
        if cfg.crop_pad > 8 {
            return Err(Error::shape("train", format!("crop padding {} > 8", cfg.crop_pad)));
        }
        Ok(TrainStep {
            classes,
            crop_pad: cfg.crop_pad,
            flip: cfg.flip,
            label_smoothing: cfg.label_smoothing,
            momentum: cfg.momentum,
            weight_decay: cfg.weight_decay,
            nesterov: cfg.nesterov,
            weight: be.upload(class_weights)?,
            scale: None,
            offset: None,
            dlogits: be.scratch(model.max_batch() * classes)?,
            labels: be.labels(&vec![0; model.max_batch()])?,
        })
    }

    /// Replaces the class weights of the following steps (checked as in [`TrainStep::new`]).
    pub fn set_class_weights(&mut self, be: &B, class_weights: &[f32]) -> Result<()> {
        check_weights(class_weights, self.classes)?;
        self.weight = be.upload(class_weights)?;
        Ok(())
    }

    /// Sets the logit adjustment of the following steps' loss (checked by
    /// [`LogitAdjustment::check`]).
    pub fn set_logit_adjustment(&mut self, be: &B, adjust: &LogitAdjustment) -> Result<()> {
        adjust.check(self.classes)?;
        self.scale = adjust.scale.as_deref().map(|s| be.upload(s)).transpose()?;
        self.offset = adjust.offset.as_deref().map(|o| be.upload(o)).transpose()?;
        Ok(())
    }

    /// The batch plan of the dataset images `indices`: per image a crop offset in
    /// `[0, 2 * crop_pad]` squared (none when the padding is 0) and a coin-flip horizontal flip
    /// (when flipping is on), drawn from `rng` in that order.
    pub fn plan(&self, rng: &mut Pcg64, indices: &[i32]) -> BatchPlan {
        let pad = self.crop_pad as u8;
        let mut plan =
            BatchPlan { indices: indices.to_vec(), offsets: Vec::with_capacity(indices.len()), flips: Vec::new() };
        for _ in indices {
            let dy = if pad > 0 { rng.random_range(0..=2 * pad) } else { 0 };
            let dx = if pad > 0 { rng.random_range(0..=2 * pad) } else { 0 };
            plan.offsets.push((dy, dx));
            plan.flips.push(self.flip && rng.random_bool(0.5));
        }
        plan
    }

    /// One step on the planned batch of `data` at learning rate `lr` (see the module
    /// documentation); with `tally`, also adds the batch's confusion counts and per-class sums
    /// to it. A batch that is empty, larger than the model's buffers or indexes past `data` is
    /// an error.
    pub fn run(
        &mut self,
        be: &B,
        model: &mut Model<B>,
        data: &DeviceData<B>,
        plan: &BatchPlan,
        lr: f32,
        tally: Option<&mut ClassTally>,
    ) -> Result<StepOutcome> {
        let classes = self.classes;
        self.check_plan(model, data, plan)?;
        if tally.as_ref().is_some_and(|t| t.classes() != classes || t.sums.len() != 3 * classes) {
            return Err(Error::shape("train step", format!("a class tally that is not of {classes} classes")));
        }
        self.step_on(be, model, data, plan, lr, tally)
    }

    /// Errors unless the plan is a batch of 1 to the model's largest batch images, each in `data`.
    fn check_plan(&self, model: &Model<B>, data: &DeviceData<B>, plan: &BatchPlan) -> Result<()> {
        let n = plan.len();
        if n == 0 || n > model.max_batch() || plan.offsets.len() != n || plan.flips.len() != n {
            return Err(Error::shape(
                "train step",
                format!(
                    "a plan of {n} images ({} offsets, {} flips) for buffers of {}",
                    plan.offsets.len(),
                    plan.flips.len(),
                    model.max_batch()
                ),
            ));
        }
        if let Some(i) = plan.indices.iter().find(|&&i| i < 0 || i as usize >= data.len()) {
            return Err(Error::shape("train step", format!("image {i} of a dataset of {}", data.len())));
        }
        Ok(())
    }

    /// [`TrainStep::run`] after its checks.
    fn step_on(
        &mut self,
        be: &B,
        model: &mut Model<B>,
        data: &DeviceData<B>,
        plan: &BatchPlan,
        lr: f32,
        tally: Option<&mut ClassTally>,
    ) -> Result<StepOutcome> {
        let (n, classes) = (plan.len(), self.classes);
        let labels: Vec<i32> = plan.indices.iter().map(|&i| data.labels[i as usize] as i32).collect();
        be.build_batch(&data.images, plan, self.crop_pad, &CIFAR10_NORMALIZE, model.input_mut())?;
        model.forward(be, n, true)?;
        be.write_labels(&labels, &mut self.labels)?;
        let dl = &self.labels;
        let loss = be.cross_entropy(
            n,
            classes,
            model.logits(),
            dl,
            &WeightedLoss {
                weight: &self.weight,
                label_smoothing: self.label_smoothing,
                scale: self.scale.as_ref(),
                offset: self.offset.as_ref(),
            },
            &mut self.dlogits,
        )?;
        if !loss.is_finite() {
            return Ok(StepOutcome::NonFiniteLoss { loss });
        }
        if let Some(tally) = tally {
            be.confusion(n, model.logits(), dl, None, &mut tally.confusion)?;
            let host_logits = be.to_host(model.logits(), n * classes)?;
            add_class_sums(&mut tally.sums, &host_logits, &labels, classes, self.label_smoothing)?;
        }
        model.backward(be, n, &self.dlogits)?;
        let sgd = SgdStep { lr, momentum: self.momentum, weight_decay: self.weight_decay, nesterov: self.nesterov };
        model.sgd_step(be, &sgd)?;
        Ok(StepOutcome::Updated { loss })
    }

    /// [`TrainStep::run`] as the trainer runs it: the step's loss goes to step `at` of `stats`
    /// and the batch's confusion counts and per-class sums to its tally, all on the backend, and
    /// the step returns without waiting for the device (on a GPU it only queues work, and
    /// allocates nothing after the first step). So a non-finite loss is not seen here: the step
    /// updates the parameters whatever the loss, and the caller checks the losses when it reads
    /// `stats` ([`EpochStats::read`]). The plan and its labels are checked on the host first.
    #[allow(clippy::too_many_arguments)]
    pub fn run_deferred(
        &mut self,
        be: &B,
        model: &mut Model<B>,
        data: &DeviceData<B>,
        plan: &BatchPlan,
        lr: f32,
        stats: &mut EpochStats<B>,
        at: usize,
    ) -> Result<()> {
        let (n, classes) = (plan.len(), self.classes);
        self.check_plan(model, data, plan)?;
        if stats.classes != classes || at >= stats.steps {
            return Err(Error::shape("train step", format!("step {at} of epoch stats of {} steps", stats.steps)));
        }
        let labels: Vec<i32> = plan.indices.iter().map(|&i| data.labels[i as usize] as i32).collect();
        if let Some((index, &y)) = labels.iter().enumerate().find(|(_, &y)| y < 0 || y as usize >= classes) {
            return Err(Error::InvalidTarget { op: "train step", index, value: y as i64, classes });
        }
        let most = 2 * self.crop_pad as u8;
        if let Some(&(dy, dx)) = plan.offsets.iter().find(|&&(dy, dx)| dy > most || dx > most) {
            return Err(Error::shape("train step", format!("crop offset ({dy}, {dx}) exceeds 2 * pad = {most}")));
        }
        be.build_batch_deferred(&data.images, plan, self.crop_pad, &CIFAR10_NORMALIZE, model.input_mut())?;
        model.forward(be, n, true)?;
        be.write_labels(&labels, &mut self.labels)?;
        let weighting = WeightedLoss {
            weight: &self.weight,
            label_smoothing: self.label_smoothing,
            scale: self.scale.as_ref(),
            offset: self.offset.as_ref(),
        };
        be.cross_entropy_into(
            n,
            classes,
            model.logits(),
            &self.labels,
            &weighting,
            &mut self.dlogits,
            &mut stats.losses,
            at,
        )?;
        be.tally_add(&mut stats.tally, n, model.logits(), &self.labels, self.label_smoothing)?;
        model.backward(be, n, &self.dlogits)?;
        let sgd = SgdStep { lr, momentum: self.momentum, weight_decay: self.weight_decay, nesterov: self.nesterov };
        model.sgd_step(be, &sgd)
    }
}
