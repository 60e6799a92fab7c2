//! The hyper-parameters of one training run ([`TrainConfig`]): what the trainer runs with and
//! what a checkpoint records, so that a resumed run can be checked against the one it continues.
use serde::{Deserialize, Serialize};

/// Hyper-parameters of one training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// Evaluate the monitored split ([`Monitor`](super::Monitor)) after every epoch (for the log).
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
