//! One training epoch's log entry ([`EpochLog`]): what the trainer returns per epoch, keeps in
//! its checkpoints and what a report publishes.
use serde::{Deserialize, Serialize};

/// One training epoch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// 0-based or 1-based, as the trainer counts; written as given.
    pub epoch: usize,
    #[serde(deserialize_with = "crate::json::nan::f64_or_nan")]
    pub lr: f64,
    /// May be NaN if training diverged (written as `null`, read back as NaN).
    #[serde(deserialize_with = "crate::json::nan::f64_or_nan")]
    pub train_loss: f64,
    #[serde(deserialize_with = "crate::json::nan::f64_or_nan")]
    pub train_accuracy: f64,
    #[serde(deserialize_with = "crate::json::nan::f64_or_nan")]
    pub seconds: f64,
    #[serde(deserialize_with = "crate::json::nan::f64_or_nan")]
    pub images_per_second: f64,
    /// Present on epochs where the test set was evaluated (runs monitored on the test set: those
    /// without a validation split).
    pub test_accuracy: Option<f64>,
    /// Present on epochs where the validation split was evaluated.
    pub val_accuracy: Option<f64>,
    /// The class weights of the loss during this epoch (they change between epochs under an
    /// online rule). Empty when not recorded.
    #[serde(deserialize_with = "crate::json::nan::vec_f64_or_nan")]
    pub class_weights: Vec<f64>,
    /// Per class: mean (unweighted) cross-entropy of its training samples over the epoch, as
    /// the network saw them (augmented, train-mode batch norm). Empty when not recorded.
    #[serde(deserialize_with = "crate::json::nan::vec_f64_or_nan")]
    pub class_loss: Vec<f64>,
    /// Per class: its share of the summed gradient norm at the logits, `sum_i ||p_i - y_i||`
    /// over its samples, with every class weighted 1 (what a uniform loss would push). Sums to 1.
    #[serde(deserialize_with = "crate::json::nan::vec_f64_or_nan")]
    pub grad_share_uniform: Vec<f64>,
    /// The same share with each sample scaled by its class weight (what this epoch's weighted
    /// loss actually pushed). Equal to `grad_share_uniform` when the weights are uniform.
    #[serde(deserialize_with = "crate::json::nan::vec_f64_or_nan")]
    pub grad_share_weighted: Vec<f64>,
}
