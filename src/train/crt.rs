//! Classifier retraining on frozen features (cRT of Kang et al., ICLR 2020, "Decoupling
//! Representation and Classifier for Long-Tailed Recognition"): the features of the training
//! images (the input of the final linear layer) are computed once, in eval mode and without
//! augmentation; the final linear layer is re-initialised (seeded) and trained alone with the
//! class-weighted cross-entropy, on the backend's linear and cross-entropy kernels. Every other
//! layer, running batch-norm statistics included, is left bit for bit as it was.
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_distr::{Distribution, Uniform};
use rand_pcg::Pcg64;

use super::backend::{Backend, BatchPlan, LinearGrads, SgdStep, WeightedLoss};
use super::config::TrainConfig;
use super::model::Model;
use super::step::{DeviceData, CIFAR10_NORMALIZE};
use crate::linear::LinearShape;
use crate::{Error, Result};

/// Keeps the retraining's random stream (initialisation and batch order) apart from the
/// training's, which starts from the same seed.
const CRT_STREAM: u64 = 0xc27_0000_0000_0001;

/// The features of every image of `data` in eval mode, no augmentation (n x feature_len, row
/// major, on the host): the same batches as [`super::evaluate`].
pub fn features<B: Backend>(be: &B, model: &mut Model<B>, data: &DeviceData<B>, batch: usize) -> Result<Vec<f32>> {
    let batch = batch.clamp(1, model.max_batch());
    let len = model.feature_len();
    let mut out = Vec::with_capacity(data.len() * len);
    for start in (0..data.len()).step_by(batch) {
        let end = (start + batch).min(data.len());
        let idx: Vec<i32> = (start as i32..end as i32).collect();
        let plan = BatchPlan { offsets: vec![(4, 4); idx.len()], flips: vec![false; idx.len()], indices: idx };
        be.build_batch(&data.images, &plan, 4, &CIFAR10_NORMALIZE, model.input_mut())?;
        model.forward(be, end - start, false)?;
        out.extend(be.to_host(model.features(), (end - start) * len)?);
    }
    Ok(out)
}

/// Re-initialises `model`'s final linear layer (seeded by `cfg.seed`, PyTorch's default uniform
/// initialisation as [`Model::new`]) and trains it alone on the frozen features of `data` for
/// `cfg.epochs` epochs: class-weighted cross-entropy (`class_weights`, one per class), SGD with
/// `cfg`'s momentum, weight decay (on the weight, not the bias) and learning-rate schedule
/// (warm-up, then linear decay to 0), batches of `cfg.batch_size` in a seeded order; no
/// augmentation (the features are computed once). Returns the mean loss of each epoch.
pub fn retrain_classifier<B: Backend>(
    be: &B,
    model: &mut Model<B>,
    data: &DeviceData<B>,
    class_weights: &[f32],
    cfg: &TrainConfig,
) -> Result<Vec<f32>> {
    let classes = model.config.classes;
    if class_weights.len() != classes {
        return Err(Error::shape("crt", format!("{} class weights for {classes} classes", class_weights.len())));
    }
    if class_weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
        return Err(Error::shape("crt", "class weights must be finite and non-negative"));
    }
    if cfg.epochs == 0 || data.is_empty() {
        return Err(Error::shape("crt", "retraining needs at least one epoch and one image"));
    }
    if let Some((i, &l)) = data.labels.iter().enumerate().find(|(_, &l)| usize::from(l) >= classes) {
        return Err(Error::InvalidTarget { op: "crt", index: i, value: i64::from(l), classes });
    }
    let n = data.len();
    let inp = model.feature_len();
    let feats = features(be, model, data, cfg.eval_batch_size)?;

    let mut rng = Pcg64::seed_from_u64(cfg.seed ^ CRT_STREAM);
    let bound = 1.0 / (inp as f64).sqrt();
    let uni = Uniform::new(-bound, bound).map_err(|e| Error::shape("crt", e.to_string()))?;
    let w0: Vec<f32> = (0..classes * inp).map(|_| uni.sample(&mut rng) as f32).collect();
    let b0: Vec<f32> = (0..classes).map(|_| uni.sample(&mut rng) as f32).collect();

    let batch = cfg.batch_size.clamp(1, n);
    let mut w = be.upload(&w0)?;
    let mut b = be.upload(&b0)?;
    let (mut dw, mut db) = (be.zeros(w0.len())?, be.zeros(classes)?);
    let (mut w_m, mut b_m) = (be.zeros(w0.len())?, be.zeros(classes)?);
    let mut logits = be.scratch(batch * classes)?;
    let mut grad = be.scratch(batch * classes)?;
    let mut dx = be.scratch(batch * inp)?;
    let weight = be.upload(class_weights)?;
    let weighting = WeightedLoss { weight: &weight, label_smoothing: cfg.label_smoothing, scale: None, offset: None };

    let steps_per_epoch = n.div_ceil(batch);
    let total = cfg.epochs * steps_per_epoch;
    let mut order: Vec<usize> = (0..n).collect();
    let mut losses = Vec::with_capacity(cfg.epochs);
    let mut rows = Vec::with_capacity(batch * inp);
    for epoch in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let mut sum = 0.0f64;
        for (k, idx) in order.chunks(batch).enumerate() {
            rows.clear();
            idx.iter().for_each(|&i| rows.extend_from_slice(&feats[i * inp..(i + 1) * inp]));
            let x = be.upload(&rows)?;
            let labels: Vec<i32> = idx.iter().map(|&i| i32::from(data.labels[i])).collect();
            let labels = be.labels(&labels)?;
            let s = LinearShape { batch: idx.len(), in_features: inp, out_features: classes };
            be.linear_forward(s, &x, &w, &b, &mut logits)?;
            let loss = be.cross_entropy(idx.len(), classes, &logits, &labels, &weighting, &mut grad)?;
            if !loss.is_finite() {
                return Err(Error::Diverged {
                    stage: "crt".into(),
                    epoch: epoch + 1,
                    step: epoch * steps_per_epoch + k,
                    what: format!("loss {loss}"),
                    last_good: None,
                });
            }
            sum += f64::from(loss) * idx.len() as f64;
            be.linear_backward(s, &x, &w, &grad, LinearGrads { dx: &mut dx, dw: &mut dw, db: &mut db })?;
            let step = SgdStep {
                lr: cfg.lr_at(epoch * steps_per_epoch + k, total, steps_per_epoch),
                momentum: cfg.momentum,
                weight_decay: cfg.weight_decay,
                nesterov: cfg.nesterov,
            };
            be.sgd(&step, &mut w, &dw, &mut w_m, w0.len())?;
            be.sgd(&SgdStep { weight_decay: 0.0, ..step }, &mut b, &db, &mut b_m, classes)?;
        }
        losses.push((sum / n as f64) as f32);
    }
    let (head_w, head_b) = model.head_mut()?;
    head_w.value = w;
    head_b.value = b;
    Ok(losses)
}
