//! The training loop and evaluation, written once for every [`Backend`].
//!
//! SGD with Nesterov momentum and weight decay; the learning rate rises linearly from
//! `lr * warmup_start` to `lr` over the warm-up, then falls linearly to 0 at the last step; random
//! crop (zero padding 4) and horizontal flip; a seeded RNG for initialization, shuffling and
//! augmentation, so the same seed gives the same run on the CPU.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_pcg::Pcg64;

use super::backend::{Backend, BatchPlan};
use super::checkpoint::{first_non_finite, Checkpoint, CheckpointMeta, CHECKPOINT_FORMAT};
use super::config::TrainConfig;
use super::epoch_log::EpochLog;
use super::model::Model;
use super::step::{add_class_sums, ClassTally, DeviceData, EpochStats, LogitAdjustment, TrainStep, CIFAR10_NORMALIZE};
use crate::confusion::ConfusionMatrix;
use crate::error::Located;
use crate::json::{describe_diffs, diff_fields};
use crate::{Error, Result};

/// The per-epoch summary: `NAME epoch E/N  loss ...  img/s` when that fits 80 columns, else the
/// numbers indented, under a `NAME:` line printed before the first of them (`named` says whether
/// it has been).
fn epoch_line(name: &str, log: &EpochLog, epochs: usize, named: &mut bool) -> String {
    let held_out = |what: &str, a: Option<f64>| a.map(|a| format!("  {what} {:.1}%", 100.0 * a)).unwrap_or_default();
    let seconds = if log.seconds < 100.0 { format!("{:.1}s", log.seconds) } else { format!("{:.0}s", log.seconds) };
    let numbers = format!(
        "epoch {:>3}/{epochs}  loss {:.4}  train {:.1}%{}{}  lr {:.4}  {seconds}  {:.0} img/s",
        log.epoch,
        log.train_loss,
        100.0 * log.train_accuracy,
        held_out("val", log.val_accuracy),
        held_out("test", log.test_accuracy),
        log.lr,
        log.images_per_second
    );
    if name.chars().count() + 1 + numbers.chars().count() <= 80 {
        format!("{name} {numbers}")
    } else if *named {
        format!("  {numbers}")
    } else {
        *named = true;
        format!("{name}:\n  {numbers}")
    }
}

/// Shows progress bars (stderr, only on a terminal) and one summary line per epoch (stdout).
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    pub bars: bool,
    pub summaries: bool,
}

/// The held-out split that [`train_with`] evaluates after every epoch (with
/// [`TrainConfig::eval_each_epoch`]): the epoch log's `val_accuracy` or `test_accuracy`.
/// Monitor the validation split when there is one; the test set is then touched only by the
/// final report (and the evaluation is cheaper: a validation split is usually the smaller one).
pub enum Monitor<'a, B: Backend> {
    /// The validation split (the log's `val_accuracy`).
    Val(&'a DeviceData<B>),
    /// The test set (the log's `test_accuracy`), for runs without a validation split.
    Test(&'a DeviceData<B>),
}

impl<'a, B: Backend> Monitor<'a, B> {
    pub fn data(&self) -> &'a DeviceData<B> {
        match *self {
            Monitor::Val(d) | Monitor::Test(d) => d,
        }
    }
}

impl<B: Backend> Clone for Monitor<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend> Copy for Monitor<'_, B> {}

/// What an epoch hook sees at the end of an epoch.
pub struct EpochEnd<'a> {
    /// The epoch just finished (1-based).
    pub epoch: usize,
    /// The class weights it was trained with.
    pub weights: &'a [f32],
    /// Its log entry.
    pub log: &'a EpochLog,
    /// The monitored split's confusion matrix on the model as it is now, when it was evaluated
    /// (a hook that needs only counts on that split can use it instead of evaluating again).
    pub monitor: Option<&'a ConfusionMatrix>,
}

/// Called at the end of every epoch but the last, before the checkpoint is written, with the
/// model (which it may run in eval mode, e.g. on a validation set); returns the class weights of
/// the following epochs, or `None` to keep them. Online reweighting rules live here (see
/// [`crate::cross_entropy::weights`]). The new weights are saved in the checkpoint, so a resumed
/// run continues with them.
pub type EpochHook<'a, B> = &'a dyn Fn(&B, &mut Model<B>, &EpochEnd<'_>) -> Result<Option<Vec<f32>>>;

/// Checkpointing, resuming, stopping and the epoch hook of [`train_with`]. The default does none
/// of them.
pub struct TrainControl<'a, B: Backend> {
    /// Write a checkpoint here at the end of every epoch and when stopped (atomically; see
    /// [`Checkpoint`]).
    pub checkpoint: Option<&'a Path>,
    /// Continue from this checkpoint (same configuration, weights and data size, else an error
    /// naming the field). The model's state and momentum are replaced by the checkpoint's.
    pub resume: Option<&'a Checkpoint>,
    /// Checked after every step: when set, the step in progress is finished, a checkpoint is
    /// written and [`TrainOutcome::Stopped`] returned.
    pub stop: Option<&'a AtomicBool>,
    /// See [`EpochHook`].
    pub on_epoch: Option<EpochHook<'a, B>>,
    /// The run this training belongs to: written into every checkpoint, and a `resume`
    /// checkpoint that names another run is refused, naming both (a file swapped in from another
    /// run with the same configuration would otherwise resume silently).
    pub run_id: Option<&'a str>,
}

impl<B: Backend> Default for TrainControl<'_, B> {
    fn default() -> Self {
        TrainControl { checkpoint: None, resume: None, stop: None, on_epoch: None, run_id: None }
    }
}

impl<B: Backend> Clone for TrainControl<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend> Copy for TrainControl<'_, B> {}

/// How [`train_with`] ended.
#[derive(Clone, Debug, PartialEq)]
pub enum TrainOutcome {
    /// Every epoch ran: one log entry per epoch, and the monitored split's confusion matrix on
    /// the final model when the last epoch evaluated it in this call (`None` otherwise, e.g.
    /// when resumed after the last epoch), so that the caller need not evaluate it again.
    Finished { logs: Vec<EpochLog>, monitor: Option<ConfusionMatrix> },
    /// Stopped on request after `step` steps (`epoch` 1-based, in progress); the checkpoint
    /// written, if any.
    Stopped { epoch: usize, step: usize, checkpoint: Option<PathBuf> },
}

/// One training: the data, the starting class weights, the hyper-parameters and the name of
/// what [`train`] or [`train_with`] runs. The backend and the model are passed beside it.
/// [`TrainJob::new`] gives the defaults: `TrainJob { monitor, ..TrainJob::new(..) }` sets one.
pub struct TrainJob<'a, B: Backend> {
    /// The training set (the last partial batch of each epoch is dropped).
    pub train_data: &'a DeviceData<B>,
    /// The held-out split evaluated after every epoch, if any (see [`Monitor`]).
    pub monitor: Option<Monitor<'a, B>>,
    /// Per-class loss weights, one per class, at the start (an [`EpochHook`] may change them).
    pub class_weights: &'a [f32],
    pub config: &'a TrainConfig,
    /// Names the training in the progress output, in errors and in its checkpoints (a
    /// checkpoint resumes only a training of the same name).
    pub name: &'a str,
    pub progress: Progress,
    /// The per-class logit scale and offset of the training loss, if any (VS-loss, CDT);
    /// recorded in the checkpoint, which resumes only the same adjustment.
    pub logit_adjust: Option<&'a LogitAdjustment>,
}

impl<'a, B: Backend> TrainJob<'a, B> {
    /// A training without a monitored split and without progress output.
    pub fn new(
        train_data: &'a DeviceData<B>,
        class_weights: &'a [f32],
        config: &'a TrainConfig,
        name: &'a str,
    ) -> Self {
        TrainJob {
            train_data,
            monitor: None,
            class_weights,
            config,
            name,
            progress: Progress::default(),
            logit_adjust: None,
        }
    }
}

impl<B: Backend> Clone for TrainJob<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend> Copy for TrainJob<'_, B> {}

/// Trains `model` as `job` says; returns one log entry per epoch. [`train_with`] without
/// checkpoints, resume, stop flag or epoch hook.
pub fn train<B: Backend>(be: &B, model: &mut Model<B>, job: &TrainJob<'_, B>) -> Result<Vec<EpochLog>> {
    match train_with(be, model, job, TrainControl::default())? {
        TrainOutcome::Finished { logs, .. } => Ok(logs),
        // Only a stop flag stops a training, and the default control has none.
        TrainOutcome::Stopped { epoch, step, .. } => {
            Err(Error::shape("train", format!("stopped in epoch {epoch} after step {step} without a stop flag")))
        }
    }
}

/// [`train`] with checkpoints, resume, a stop flag and an epoch hook ([`TrainControl`]).
///
/// Resuming from a checkpoint continues with the same RNG state, sample order, momentum, step
/// count and partial-epoch sums, so on the CPU (same thread count) the final model is
/// bit-identical to that of an uninterrupted run.
///
/// A non-finite loss or a non-finite parameter, running statistic or momentum is
/// [`Error::Diverged`], naming the training, epoch and step and the last good checkpoint, which
/// is left in place. Both are checked at the end of every epoch (and when stopped), before the
/// checkpoint is written: the steps keep their losses and the epoch log's counts on the backend
/// and the host reads them once an epoch ([`TrainStep::run_deferred`]), so that a GPU step never
/// waits. A NaN loss is therefore noticed at the end of its epoch, not at its step (the steps
/// after it train on, to no effect on any checkpoint), and the error names the first step whose
/// loss was not finite.
pub fn train_with<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    job: &TrainJob<'_, B>,
    control: TrainControl<'_, B>,
) -> Result<TrainOutcome> {
    let TrainJob { train_data: train, monitor, class_weights, config: cfg, name: stage, progress, logit_adjust } = *job;
    let classes = model.config.classes;
    if class_weights.len() != classes {
        return Err(Error::shape("train", format!("{} class weights for {classes} classes", class_weights.len())));
    }
    if cfg.epochs == 0 {
        return Err(Error::shape("train", "0 epochs: nothing would be trained"));
    }
    if cfg.batch_size == 0 {
        return Err(Error::shape("train", "batch size 0"));
    }
    if cfg.batch_size > model.max_batch() {
        return Err(Error::shape(
            "train",
            format!(
                "batch size {} is larger than the model's buffers ({} images, set when it was built)",
                cfg.batch_size,
                model.max_batch()
            ),
        ));
    }
    if train.len() < cfg.batch_size {
        return Err(Error::shape(
            "train",
            format!("{} training images, fewer than one batch of {}", train.len(), cfg.batch_size),
        ));
    }
    if train.len() > i32::MAX as usize {
        return Err(Error::shape("train", format!("{} training images, at most {}", train.len(), i32::MAX)));
    }
    if cfg.crop_pad > 8 {
        return Err(Error::shape("train", format!("crop padding {} > 8", cfg.crop_pad)));
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return Err(Error::shape("train", format!("learning rate {}: must be finite and > 0", cfg.lr)));
    }
    let setup = || "setup".to_string();
    let mut step = TrainStep::new(be, model, cfg, class_weights).at(stage, setup)?;
    if let Some(a) = logit_adjust {
        step.set_logit_adjustment(be, a).at(stage, setup)?;
    }
    // The last partial batch is dropped: every step sees a full batch (batch-norm statistics).
    let steps_per_epoch = train.len() / cfg.batch_size;
    let total = steps_per_epoch * cfg.epochs;
    let mut stats = EpochStats::new(be, classes, model.max_batch(), steps_per_epoch).at(stage, setup)?;

    let mut meta = CheckpointMeta {
        format: CHECKPOINT_FORMAT,
        stage: stage.to_string(),
        model: model.config,
        train: cfg.clone(),
        class_weights: class_weights.to_vec(),
        train_images: train.len(),
        epoch: 0,
        batch: 0,
        step: 0,
        rng: Pcg64::seed_from_u64(cfg.seed ^ 0x5eed_0000_0000_0001),
        loss_sum: 0.0,
        counts: vec![0; classes * classes],
        epoch_seconds: 0.0,
        lr: cfg.lr,
        logs: Vec::with_capacity(cfg.epochs),
        weights_now: None,
        class_sums: vec![0.0; 3 * classes],
        logit_adjust: logit_adjust.cloned(),
        run_id: control.run_id.map(str::to_string),
    };
    let mut order: Vec<i32> = (0..train.len() as i32).collect();
    let mut last_good: Option<PathBuf> = None;
    if let Some(ck) = control.resume {
        check_resume(&ck.meta, &meta, ck.source.as_deref())?;
        if ck.order.len() != train.len() || ck.order.iter().any(|&i| i < 0 || i as usize >= train.len()) {
            return Err(Error::shape("resume", "checkpoint's sample order does not fit the training set"));
        }
        if ck.meta.counts.len() != classes * classes || ck.meta.batch >= steps_per_epoch.max(1) {
            return Err(Error::shape("resume", "checkpoint's position does not fit the configuration"));
        }
        if ck.meta.class_sums.len() != 3 * classes {
            return Err(Error::shape(
                "resume",
                format!(
                    "checkpoint has {} per-class sums, {} expected for {classes} classes",
                    ck.meta.class_sums.len(),
                    3 * classes
                ),
            ));
        }
        let resuming = || format!("resuming after step {}", ck.meta.step);
        model.load_state(be, &ck.state).at(stage, resuming)?;
        model.load_optimizer_state(be, &ck.optim).at(stage, resuming)?;
        // An older build's checkpoint has no run id: the ones written from here on do.
        meta = CheckpointMeta { run_id: meta.run_id.take(), ..ck.meta.clone() };
        order = ck.order.clone();
        if let Some(w) = &meta.weights_now {
            step.set_class_weights(be, w).at(stage, resuming)?;
        }
        last_good = control.checkpoint.map(Path::to_path_buf);
    }

    // The monitored split's confusion after the latest epoch of this call (no hook runs after
    // the last epoch, so at the end it is the final model's).
    let mut last_monitor: Option<ConfusionMatrix> = None;
    let mut named = false; // the epoch lines' `NAME:` header is printed
    while meta.epoch < cfg.epochs {
        let epoch = meta.epoch;
        if meta.batch == 0 {
            order.shuffle(&mut meta.rng);
            meta.loss_sum = 0.0;
            meta.counts.iter_mut().for_each(|c| *c = 0);
            meta.class_sums.iter_mut().for_each(|c| *c = 0.0);
            meta.epoch_seconds = 0.0;
        }
        // The bar names the stage by its first two words ("stage 1") to stay within 80 columns.
        let short: String = stage.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        let bar = bar(progress.bars, steps_per_epoch as u64, format!("{short} ep {}/{}", epoch + 1, cfg.epochs));
        bar.set_position(meta.batch as u64);
        let started = Instant::now();
        let seconds_before = meta.epoch_seconds;
        let tally =
            ClassTally::from_parts(classes, std::mem::take(&mut meta.counts), std::mem::take(&mut meta.class_sums))?;
        stats.start(be, &tally).at(stage, || format!("start of epoch {}", epoch + 1))?;
        let (first_batch, first_step) = (meta.batch, meta.step);
        let mut stopped = false;
        while meta.batch < steps_per_epoch {
            let b = meta.batch;
            let plan = step.plan(&mut meta.rng, &order[b * cfg.batch_size..(b + 1) * cfg.batch_size]);
            let lr = cfg.lr_at(meta.step, total, steps_per_epoch);
            let place = || format!("epoch {}, step {} of {steps_per_epoch}", epoch + 1, b + 1);
            step.run_deferred(be, model, train, &plan, lr, &mut stats, b).at(stage, place)?;
            meta.lr = lr;
            meta.step += 1;
            meta.batch += 1;
            bar.inc(1);
            let secs = seconds_before + started.elapsed().as_secs_f64();
            // The loss is read at the end of the epoch, not here: reading it would wait for the GPU.
            bar.set_message(format!("{:.0} img/s", (meta.batch * cfg.batch_size) as f64 / secs.max(1e-9)));
            if control.stop.is_some_and(|s| s.load(Ordering::SeqCst)) && meta.batch < steps_per_epoch {
                stopped = true;
                break;
            }
        }
        // The one read of the epoch's losses and tally (the device's work is done after it).
        let (losses, tally) = stats.read(be, meta.batch).at(stage, || format!("end of epoch {}", epoch + 1))?;
        for (i, &loss) in losses.iter().enumerate().skip(first_batch) {
            if !loss.is_finite() {
                return Err(Error::Diverged {
                    stage: stage.to_string(),
                    epoch: epoch + 1,
                    step: first_step + (i - first_batch),
                    what: format!("the loss is {loss} (batch {} of the epoch)", i + 1),
                    last_good,
                });
            }
            meta.loss_sum += loss as f64;
        }
        bar.finish_and_clear();
        meta.epoch_seconds = seconds_before + started.elapsed().as_secs_f64();
        if stopped {
            meta.counts = tally.confusion.into_counts();
            meta.class_sums = tally.sums;
            let place = || format!("checkpoint in epoch {} (stopped)", epoch + 1);
            let written =
                write_checkpoint(be, model, &meta, &order, control.checkpoint, &last_good, stage).at(stage, place)?;
            return Ok(TrainOutcome::Stopped { epoch: epoch + 1, step: meta.step, checkpoint: written });
        }
        let seconds = meta.epoch_seconds;
        let seen = steps_per_epoch * cfg.batch_size;
        let monitored = match (cfg.eval_each_epoch, monitor) {
            (true, Some(m)) => Some(
                evaluate(be, model, m.data(), cfg.eval_batch_size, false)
                    .at(stage, || format!("evaluation after epoch {}", epoch + 1))?,
            ),
            _ => None,
        };
        let accuracy = |want_val: bool| match (monitor, &monitored) {
            (Some(Monitor::Val(_)), Some(c)) if want_val => Some(c.accuracy()),
            (Some(Monitor::Test(_)), Some(c)) if !want_val => Some(c.accuracy()),
            _ => None,
        };
        let weights_now: Vec<f32> = meta.weights_now.clone().unwrap_or_else(|| class_weights.to_vec());
        let weights_f64: Vec<f64> = weights_now.iter().map(|&w| w as f64).collect();
        let log = EpochLog {
            epoch: epoch + 1,
            lr: meta.lr as f64,
            train_loss: meta.loss_sum / steps_per_epoch as f64,
            train_accuracy: tally.confusion.accuracy(),
            seconds,
            images_per_second: seen as f64 / seconds.max(1e-9),
            test_accuracy: accuracy(false),
            val_accuracy: accuracy(true),
            class_loss: tally.class_loss(),
            grad_share_uniform: tally.grad_share(&vec![1.0; classes]),
            grad_share_weighted: tally.grad_share(&weights_f64),
            class_weights: weights_f64,
        };
        if progress.summaries {
            println!("{}", epoch_line(stage, &log, cfg.epochs, &mut named));
        }
        let hook_log = log.clone();
        meta.logs.push(log);
        meta.epoch += 1;
        meta.batch = 0;
        meta.counts = tally.confusion.into_counts();
        meta.class_sums = tally.sums;
        if let (Some(hook), true) = (control.on_epoch, meta.epoch < cfg.epochs) {
            let end =
                EpochEnd { epoch: meta.epoch, weights: &weights_now, log: &hook_log, monitor: monitored.as_ref() };
            let place = || format!("end of epoch {}", epoch + 1);
            if let Some(w) = hook(be, model, &end).at(stage, place)? {
                step.set_class_weights(be, &w).at(stage, place)?;
                if progress.summaries {
                    println!(
                        "{stage} class weights from epoch {}: {}",
                        meta.epoch + 1,
                        w.iter().map(|w| format!("{w:.3}")).collect::<Vec<_>>().join(" ")
                    );
                }
                meta.weights_now = Some(w);
            }
        }
        if let Some(path) = control.checkpoint {
            write_checkpoint(be, model, &meta, &order, Some(path), &last_good, stage)
                .at(stage, || format!("checkpoint after epoch {}", epoch + 1))?;
            last_good = Some(path.to_path_buf());
        } else {
            // No checkpoint to write, but a run must still not go on with garbage parameters.
            let place = || format!("checking the parameters after epoch {}", epoch + 1);
            if let Some(what) = non_finite_state(be, model).at(stage, place)? {
                return Err(Error::Diverged {
                    stage: stage.to_string(),
                    epoch: epoch + 1,
                    step: meta.step,
                    what,
                    last_good,
                });
            }
        }
        if control.stop.is_some_and(|s| s.load(Ordering::SeqCst)) && meta.epoch < cfg.epochs {
            return Ok(TrainOutcome::Stopped {
                epoch: meta.epoch + 1,
                step: meta.step,
                checkpoint: control.checkpoint.map(Path::to_path_buf),
            });
        }
        last_monitor = monitored;
    }
    Ok(TrainOutcome::Finished { logs: meta.logs, monitor: last_monitor })
}

/// Mean cross-entropy (no smoothing, unweighted) of each class's samples, from logits
/// (N x classes, row-major) and labels; NaN for a class without samples. The per-class signal
/// of online reweighting rules.
pub fn per_class_loss(logits: &[f32], labels: &[i32], classes: usize) -> Result<Vec<f64>> {
    if classes == 0 || logits.len() != labels.len() * classes {
        return Err(Error::shape(
            "per_class_loss",
            format!("{} logits for {} labels of {classes} classes", logits.len(), labels.len()),
        ));
    }
    if let Some(y) = labels.iter().find(|&&y| y < 0 || y as usize >= classes) {
        return Err(Error::shape("per_class_loss", format!("label {y} is not below {classes} classes")));
    }
    let mut sums = vec![0.0; 3 * classes];
    add_class_sums(&mut sums, logits, labels, classes, 0.0)?;
    Ok((0..classes)
        .map(|k| if sums[2 * classes + k] > 0.0 { sums[k] / sums[2 * classes + k] } else { f64::NAN })
        .collect())
}

/// The first non-finite value of the model's parameters, statistics or momentum, if any.
fn non_finite_state<B: Backend>(be: &B, model: &Model<B>) -> Result<Option<String>> {
    Ok(first_non_finite(&model.state(be)?, &model.optimizer_state(be)?))
}

/// Checks the model, then writes the checkpoint at `path` (if any); returns the path written.
/// A non-finite model is [`Error::Diverged`] and leaves the previous checkpoint in place.
fn write_checkpoint<B: Backend>(
    be: &B,
    model: &Model<B>,
    meta: &CheckpointMeta,
    order: &[i32],
    path: Option<&Path>,
    last_good: &Option<PathBuf>,
    stage: &str,
) -> Result<Option<PathBuf>> {
    let ck = Checkpoint::capture(be, model, meta.clone(), order.to_vec())?;
    if let Some(what) = ck.first_non_finite() {
        return Err(Error::Diverged {
            stage: stage.to_string(),
            epoch: meta.epoch + usize::from(meta.batch > 0),
            step: meta.step,
            what,
            last_good: last_good.clone(),
        });
    }
    match path {
        Some(p) => {
            ck.save(p)?;
            Ok(Some(p.to_path_buf()))
        }
        None => Ok(None),
    }
}

/// A checkpoint fits this run when stage, model, hyper-parameters, class weights and training-set
/// size are the same; otherwise an error naming each field that differs.
fn check_resume(saved: &CheckpointMeta, now: &CheckpointMeta, source: Option<&std::path::Path>) -> Result<()> {
    let pick = |m: &CheckpointMeta| {
        serde_json::json!({
            "stage": m.stage,
            "model": m.model,
            "train": m.train,
            "class_weights": m.class_weights.iter().map(|w| w.to_bits()).collect::<Vec<_>>(),
            "train_images": m.train_images,
            "logit_adjust": m.logit_adjust.as_ref().map(|a| {
                let bits = |v: &Option<Vec<f32>>| v.as_ref().map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>());
                serde_json::json!({ "scale": bits(&a.scale), "offset": bits(&a.offset) })
            }),
        })
    };
    let which = source.map_or("the checkpoint".to_string(), |p| format!("the checkpoint {}", p.display()));
    if let (Some(theirs), Some(ours)) = (&saved.run_id, &now.run_id) {
        if theirs != ours {
            return Err(Error::shape(
                "resume",
                format!("{which} was written by run {theirs}, not by this run ({ours}): another run's checkpoint"),
            ));
        }
    }
    let diffs = diff_fields(&pick(saved), &pick(now));
    if diffs.is_empty() && saved.epoch <= now.train.epochs && saved.logs.len() == saved.epoch {
        return Ok(());
    }
    let detail = if diffs.is_empty() {
        format!(
            "its position (epoch {}, {} log entries) does not fit {} epochs",
            saved.epoch,
            saved.logs.len(),
            now.train.epochs
        )
    } else {
        format!(
            "fields that differ (class weights and logit adjustments compared as f32 bits):\n{}",
            describe_diffs(&diffs)
        )
    };
    Err(Error::shape("resume", format!("{which} does not belong to this run: {detail}")))
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
    Ok(evaluate_with(be, model, data, &EvalOptions { batch_size, show_bar, ..EvalOptions::default() })?.confusion)
}

/// Options of [`evaluate_with`].
#[derive(Clone, Copy, Debug)]
pub struct EvalOptions<'a> {
    pub batch_size: usize,
    pub show_bar: bool,
    /// Predict `argmax_c(logit_c + bias[c])` (the fused argmax+confusion kernel takes the bias;
    /// see [`crate::confusion::bias`]); one value per class.
    pub bias: Option<&'a [f32]>,
    /// Also return every logit (N x classes, row-major), e.g. to fit a bias or a per-class loss.
    pub keep_logits: bool,
}

impl Default for EvalOptions<'_> {
    fn default() -> Self {
        EvalOptions { batch_size: 500, show_bar: false, bias: None, keep_logits: false }
    }
}

/// What [`evaluate_with`] measured.
#[derive(Clone, Debug)]
pub struct Evaluation {
    pub confusion: ConfusionMatrix,
    /// N x classes, row-major, when [`EvalOptions::keep_logits`] was set (else empty).
    pub logits: Vec<f32>,
}

/// [`evaluate`] with a per-class logit bias and/or the logits kept.
pub fn evaluate_with<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    data: &DeviceData<B>,
    opts: &EvalOptions<'_>,
) -> Result<Evaluation> {
    let classes = model.config.classes;
    let batch = opts.batch_size.clamp(1, model.max_batch());
    let bias = match opts.bias {
        Some(b) if b.len() != classes => {
            return Err(Error::shape("evaluate", format!("{} bias values for {classes} classes", b.len())))
        }
        Some(b) if b.iter().any(|v| !v.is_finite()) => {
            return Err(Error::shape("evaluate", "the bias holds a non-finite value"))
        }
        Some(b) => Some(be.upload(b)?),
        None => None,
    };
    let mut counts = ConfusionMatrix::new(classes)?;
    let mut logits = Vec::with_capacity(if opts.keep_logits { data.len() * classes } else { 0 });
    let bar = bar(opts.show_bar, data.len().div_ceil(batch) as u64, "evaluating".into());
    for start in (0..data.len()).step_by(batch) {
        let end = (start + batch).min(data.len());
        let idx: Vec<i32> = (start as i32..end as i32).collect();
        let plan = BatchPlan { offsets: vec![(4, 4); idx.len()], flips: vec![false; idx.len()], indices: idx };
        be.build_batch(&data.images, &plan, 4, &CIFAR10_NORMALIZE, model.input_mut())?;
        model.forward(be, end - start, false)?;
        let labels: Vec<i32> = data.labels[start..end].iter().map(|&l| l as i32).collect();
        be.confusion(end - start, model.logits(), &be.labels(&labels)?, bias.as_ref(), &mut counts)?;
        if opts.keep_logits {
            logits.extend(be.to_host(model.logits(), (end - start) * classes)?);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(Evaluation { confusion: counts, logits })
}

fn bar(show: bool, len: u64, prefix: String) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        // Fits an 80-column terminal: the prefix and message are cut to fixed widths and the bar
        // takes what is left of the terminal's width.
        ProgressStyle::with_template("{prefix:22!} [{wide_bar}] {pos:>4}/{len:4} {msg:24!} eta {eta:4}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    bar
}
