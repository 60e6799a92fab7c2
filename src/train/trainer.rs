//! The training loop and evaluation, written once for every [`Backend`].
//!
//! SGD with Nesterov momentum and weight decay; the learning rate rises linearly from
//! `lr * warmup_start` to `lr` over the warm-up, then falls linearly to 0 at the last step; random
//! crop (zero padding 4) and horizontal flip; a seeded RNG for initialization, shuffling and
//! augmentation, so the same seed gives the same run on the CPU.
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64;

use super::backend::{Backend, BatchPlan, Normalize, SgdStep};
use super::model::Model;
use crate::confusion::ConfusionMatrix;
use crate::report::EpochLog;
use crate::{Error, Result};

/// CIFAR-10's per-channel mean and standard deviation (of the training set, RGB).
pub const CIFAR10_NORMALIZE: Normalize = Normalize { mean: [0.4914, 0.4822, 0.4465], std: [0.2470, 0.2435, 0.2616] };

/// Hyper-parameters of one training run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f32,
    pub momentum: f32,
    pub nesterov: bool,
    pub weight_decay: f32,
    /// Warm-up length in epochs (may be fractional).
    pub warmup_epochs: f32,
    /// The warm-up starts at `lr * warmup_start`.
    pub warmup_start: f32,
    pub label_smoothing: f32,
    /// Zero padding of the random crop; 0 disables cropping.
    pub crop_pad: usize,
    pub flip: bool,
    pub seed: u64,
    /// Evaluate on the test set after every epoch (for the log).
    pub eval_each_epoch: bool,
    pub eval_batch_size: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: 256,
            lr: 0.2,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
            warmup_epochs: 1.0,
            warmup_start: 0.1,
            label_smoothing: 0.0,
            crop_pad: 4,
            flip: true,
            seed: 0,
            eval_each_epoch: true,
            eval_batch_size: 500,
        }
    }
}

impl TrainConfig {
    /// Learning rate at `step` of `total` steps (0-based).
    pub fn lr_at(&self, step: usize, total: usize, steps_per_epoch: usize) -> f32 {
        let warm = ((self.warmup_epochs * steps_per_epoch as f32).round() as usize).min(total);
        if step < warm {
            let t = step as f32 / warm as f32;
            self.lr * (self.warmup_start + (1.0 - self.warmup_start) * t)
        } else {
            let rest = (total - warm).max(1) as f32;
            self.lr * (1.0 - (step - warm) as f32 / rest).max(0.0)
        }
    }
}

/// A dataset resident on the backend: images there, labels on the host.
pub struct DeviceData<B: Backend> {
    pub images: B::Images,
    pub labels: Vec<u8>,
}

impl<B: Backend> DeviceData<B> {
    pub fn new(be: &B, images: &[u8], labels: &[u8]) -> Result<Self> {
        const IMAGE: usize = 3 * 32 * 32;
        if images.len() != labels.len() * IMAGE {
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

/// Shows progress bars (stderr, only on a terminal) and one summary line per epoch (stdout).
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    pub bars: bool,
    pub summaries: bool,
}

/// Trains `model` on `train` with per-class loss weights `class_weights`; returns one log entry
/// per epoch. `stage` names the run in the progress output.
#[allow(clippy::too_many_arguments)]
pub fn train<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    train: &DeviceData<B>,
    test: Option<&DeviceData<B>>,
    class_weights: &[f32],
    cfg: &TrainConfig,
    stage: &str,
    progress: Progress,
) -> Result<Vec<EpochLog>> {
    let classes = model.config.classes;
    if class_weights.len() != classes {
        return Err(Error::shape("train", format!("{} class weights for {classes} classes", class_weights.len())));
    }
    if cfg.batch_size == 0 || cfg.batch_size > model.max_batch() {
        return Err(Error::shape(
            "train",
            format!("batch size {} (model holds {})", cfg.batch_size, model.max_batch()),
        ));
    }
    if train.len() < cfg.batch_size {
        return Err(Error::shape(
            "train",
            format!("{} training images, fewer than one batch of {}", train.len(), cfg.batch_size),
        ));
    }
    if cfg.crop_pad > 8 {
        return Err(Error::shape("train", format!("crop padding {} > 8", cfg.crop_pad)));
    }
    let weight = be.upload(class_weights)?;
    let mut dlogits = be.zeros(model.max_batch() * classes)?;
    // The last partial batch is dropped: every step sees a full batch (batch-norm statistics).
    let steps_per_epoch = train.len() / cfg.batch_size;
    let total = steps_per_epoch * cfg.epochs;
    let mut rng = Pcg64::seed_from_u64(cfg.seed ^ 0x5eed_0000_0000_0001);
    let mut order: Vec<i32> = (0..train.len() as i32).collect();
    let mut logs = Vec::with_capacity(cfg.epochs);
    let mut step = 0;
    for epoch in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let bar = bar(progress.bars, steps_per_epoch as u64, format!("{stage} epoch {}/{}", epoch + 1, cfg.epochs));
        let started = Instant::now();
        let (mut loss_sum, mut counts) = (0.0f64, ConfusionMatrix::new(classes)?);
        let mut lr = cfg.lr;
        for b in 0..steps_per_epoch {
            let idx = &order[b * cfg.batch_size..(b + 1) * cfg.batch_size];
            let plan = augment_plan(&mut rng, idx, cfg);
            let labels: Vec<i32> = idx.iter().map(|&i| train.labels[i as usize] as i32).collect();
            be.build_batch(&train.images, &plan, cfg.crop_pad, &CIFAR10_NORMALIZE, model.input_mut())?;
            let n = cfg.batch_size;
            model.forward(be, n, true)?;
            let dl = be.labels(&labels)?;
            let loss = be.cross_entropy(n, classes, model.logits(), &dl, &weight, cfg.label_smoothing, &mut dlogits)?;
            if !loss.is_finite() {
                return Err(Error::shape(
                    "train",
                    format!("{stage}: loss became {loss} at epoch {} step {b}", epoch + 1),
                ));
            }
            be.confusion(n, model.logits(), &dl, &mut counts)?;
            model.backward(be, n, &dlogits)?;
            lr = cfg.lr_at(step, total, steps_per_epoch);
            model.sgd_step(
                be,
                &SgdStep { lr, momentum: cfg.momentum, weight_decay: cfg.weight_decay, nesterov: cfg.nesterov },
            )?;
            step += 1;
            loss_sum += loss as f64;
            bar.inc(1);
            let secs = started.elapsed().as_secs_f64();
            bar.set_message(format!(
                "loss {:.4}  {:.0} img/s",
                loss_sum / (b + 1) as f64,
                ((b + 1) * cfg.batch_size) as f64 / secs.max(1e-9)
            ));
        }
        bar.finish_and_clear();
        let seconds = started.elapsed().as_secs_f64();
        let seen = steps_per_epoch * cfg.batch_size;
        let test_accuracy = match (cfg.eval_each_epoch, test) {
            (true, Some(t)) => Some(evaluate(be, model, t, cfg.eval_batch_size, false)?.accuracy()),
            _ => None,
        };
        let log = EpochLog {
            epoch: epoch + 1,
            lr: lr as f64,
            train_loss: loss_sum / steps_per_epoch as f64,
            train_accuracy: counts.accuracy(),
            seconds,
            images_per_second: seen as f64 / seconds.max(1e-9),
            test_accuracy,
        };
        if progress.summaries {
            println!(
                "{stage} epoch {:>3}/{}: loss {:.4}  train acc {:5.1}%{}  lr {:.4}  {:.1}s  {:.0} img/s",
                log.epoch,
                cfg.epochs,
                log.train_loss,
                100.0 * log.train_accuracy,
                log.test_accuracy.map(|a| format!("  test acc {:5.1}%", 100.0 * a)).unwrap_or_default(),
                log.lr,
                log.seconds,
                log.images_per_second
            );
        }
        logs.push(log);
    }
    Ok(logs)
}

/// Confusion counts (classes x classes, row = true class) of `model` on `data`, in eval mode
/// (running batch-norm statistics), no augmentation.
pub fn evaluate<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    data: &DeviceData<B>,
    batch_size: usize,
    show_bar: bool,
) -> Result<ConfusionMatrix> {
    let classes = model.config.classes;
    let batch = batch_size.clamp(1, model.max_batch());
    let mut counts = ConfusionMatrix::new(classes)?;
    let bar = bar(show_bar, data.len().div_ceil(batch) as u64, "evaluating".into());
    for start in (0..data.len()).step_by(batch) {
        let end = (start + batch).min(data.len());
        let idx: Vec<i32> = (start as i32..end as i32).collect();
        let plan = BatchPlan { offsets: vec![(4, 4); idx.len()], flips: vec![false; idx.len()], indices: idx };
        be.build_batch(&data.images, &plan, 4, &CIFAR10_NORMALIZE, model.input_mut())?;
        model.forward(be, end - start, false)?;
        let labels: Vec<i32> = data.labels[start..end].iter().map(|&l| l as i32).collect();
        be.confusion(end - start, model.logits(), &be.labels(&labels)?, &mut counts)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(counts)
}

fn augment_plan(rng: &mut Pcg64, idx: &[i32], cfg: &TrainConfig) -> BatchPlan {
    let pad = cfg.crop_pad as u8;
    let mut plan = BatchPlan { indices: idx.to_vec(), offsets: Vec::with_capacity(idx.len()), flips: Vec::new() };
    for _ in idx {
        let dy = if pad > 0 { rng.random_range(0..=2 * pad) } else { 0 };
        let dx = if pad > 0 { rng.random_range(0..=2 * pad) } else { 0 };
        plan.offsets.push((dy, dx));
        plan.flips.push(cfg.flip && rng.random_bool(0.5));
    }
    plan
}

fn bar(show: bool, len: u64, prefix: String) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    bar
}
