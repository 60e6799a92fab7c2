//! Training checkpoints: everything [`train_with`](super::train_with) needs to continue a run
//! and end with exactly the model an uninterrupted run would have.
//!
//! A checkpoint is one safetensors file: the model's state (`state.t000`, ...: parameters and
//! batch-norm running statistics), the SGD momentum (`optim.t000`, ...), the shuffled sample
//! order of the epoch in progress (`order`, i32), and in the metadata key `checkpoint` a JSON
//! [`CheckpointMeta`]: configuration, position (epoch, batch, global step), the RNG's state, the
//! running loss sum and confusion counts of a partial epoch, and the epoch log so far.
//!
//! Files are written with [`crate::fs::write_atomic`]: a crash leaves either the previous
//! checkpoint or the new one, never a torn file. The metadata key `checksum` holds the MD5 of the
//! JSON metadata and of every tensor's bytes (state, optim, order, in that order): a file changed
//! on disk afterwards (truncated, a flipped bit, another run's checkpoint under this name) is
//! refused by [`Checkpoint::load`] naming the file, never resumed from.
use std::path::Path;

use rand_pcg::Pcg64;
use serde::{Deserialize, Serialize};

use super::backend::Backend;
use super::config::TrainConfig;
use super::epoch_log::EpochLog;
use super::model::{Model, ModelConfig};
use super::step::LogitAdjustment;
use crate::{Error, Result};

/// Version of the checkpoint layout; a file of another version is [`Error::FormatVersion`].
pub const CHECKPOINT_FORMAT: u32 = 3;

/// The JSON part of a checkpoint (see the module documentation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format: u32,
    /// The stage name given to the trainer.
    pub stage: String,
    pub model: ModelConfig,
    pub train: TrainConfig,
    pub class_weights: Vec<f32>,
    pub train_images: usize,
    /// 0-based epoch in progress (or the next one when `batch` is 0; `train.epochs` when done).
    pub epoch: usize,
    /// Next batch within `epoch`; 0 means the epoch has not started (its shuffle is still due).
    pub batch: usize,
    /// Optimizer steps taken so far.
    pub step: usize,
    pub rng: Pcg64,
    /// Sum of the losses of the batches of `epoch` done so far.
    pub loss_sum: f64,
    /// Training confusion counts of those batches (classes x classes).
    pub counts: Vec<u64>,
    /// Seconds spent on `epoch` so far.
    pub epoch_seconds: f64,
    /// Learning rate of the last step.
    pub lr: f32,
    pub logs: Vec<EpochLog>,
    /// The class weights in force (they differ from `class_weights`, the starting ones, once an
    /// epoch hook has changed them); `None` while they are the starting ones.
    pub weights_now: Option<Vec<f32>>,
    /// Per-class sums of the epoch in progress: loss, gradient norm, sample count (3 x classes;
    /// see [`EpochLog::class_loss`]).
    pub class_sums: Vec<f64>,
    /// The training loss's logit adjustment (VS-loss, CDT), if any; absent from checkpoints of
    /// trainings without one (and of versions before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_adjust: Option<LogitAdjustment>,
    /// The run the checkpoint belongs to ([`super::TrainControl::run_id`]), so that another
    /// run's checkpoint of the same configuration is refused on resume; absent when the trainer
    /// was given none, and in checkpoints of older builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

/// A checkpoint in memory.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    pub meta: CheckpointMeta,
    pub state: Vec<Vec<f32>>,
    pub optim: Vec<Vec<f32>>,
    pub order: Vec<i32>,
    /// The file it was loaded from ([`Checkpoint::load`]), to name it in errors; `None` when
    /// captured in memory.
    pub source: Option<std::path::PathBuf>,
}

fn err(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::InvalidFile { what: "checkpoint", path: path.to_path_buf(), msg: msg.to_string() }
}

impl Checkpoint {
    /// Captures `model`'s state and optimizer state with `meta` and `order`.
    pub fn capture<B: Backend>(be: &B, model: &Model<B>, meta: CheckpointMeta, order: Vec<i32>) -> Result<Self> {
        Ok(Checkpoint { meta, state: model.state(be)?, optim: model.optimizer_state(be)?, order, source: None })
    }

    /// The first non-finite value of the model's state or momentum, as a description.
    pub fn first_non_finite(&self) -> Option<String> {
        first_non_finite(&self.state, &self.optim)
    }

    /// Writes the checkpoint to `path` atomically (see the module documentation).
    pub fn save(&self, path: &Path) -> Result<()> {
        let meta = serde_json::to_string(&self.meta).map_err(|e| err(path, e))?;
        let mut bytes: Vec<(String, Vec<u8>, safetensors::Dtype)> = Vec::new();
        for (prefix, tensors) in [("state", &self.state), ("optim", &self.optim)] {
            for (i, t) in tensors.iter().enumerate() {
                bytes.push((format!("{prefix}.t{i:03}"), bytemuck::cast_slice(t).to_vec(), safetensors::Dtype::F32));
            }
        }
        bytes.push(("order".into(), bytemuck::cast_slice(&self.order).to_vec(), safetensors::Dtype::I32));
        let views = bytes
            .iter()
            .map(|(name, b, dtype)| {
                let v = safetensors::tensor::TensorView::new(*dtype, vec![b.len() / 4], b).map_err(|e| err(path, e))?;
                Ok((name.clone(), v))
            })
            .collect::<Result<Vec<_>>>()?;
        let checksum = checksum(&meta, bytes.iter().map(|(_, b, _)| b.as_slice()));
        let meta =
            std::collections::HashMap::from([("checkpoint".to_string(), meta), ("checksum".to_string(), checksum)]);
        let data = safetensors::serialize(views, Some(meta)).map_err(|e| err(path, e))?;
        crate::fs::write_atomic(path, &data)
    }

    /// Reads a checkpoint written by [`Checkpoint::save`]. A missing file is [`Error::Io`], a
    /// torn or foreign one [`Error::InvalidFile`], one of another format version
    /// [`Error::FormatVersion`]; each names the file.
    pub fn load(path: &Path) -> Result<Self> {
        let data = crate::fs::read(path)?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&data).map_err(|e| err(path, e))?;
        let meta = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("checkpoint"))
            .ok_or_else(|| err(path, "not a training checkpoint (no `checkpoint` metadata)"))?;
        // The version first, so that an old file gets this error rather than a missing field.
        #[derive(Deserialize)]
        struct Version {
            format: Option<u32>,
        }
        let version: Version = serde_json::from_str(meta).map_err(|e| err(path, format!("metadata: {e}")))?;
        if version.format != Some(CHECKPOINT_FORMAT) {
            return Err(Error::FormatVersion {
                what: "checkpoint",
                path: path.to_path_buf(),
                found: version.format,
                expected: CHECKPOINT_FORMAT,
            });
        }
        let recorded = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("checksum"))
            .ok_or_else(|| err(path, "no `checksum` metadata"))?
            .clone();
        let meta_json = meta.clone();
        let meta: CheckpointMeta = serde_json::from_str(meta).map_err(|e| err(path, format!("metadata: {e}")))?;
        let st = safetensors::SafeTensors::deserialize(&data).map_err(|e| err(path, e))?;
        // The tensors in the order `save` hashed them.
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        let rank = |n: &str| match n.split_once(".t") {
            Some(("state", i)) => (0, i.parse::<usize>().unwrap_or(usize::MAX)),
            Some(("optim", i)) => (1, i.parse::<usize>().unwrap_or(usize::MAX)),
            _ => (2, 0),
        };
        names.sort_by_key(|n| rank(n));
        let tensors =
            names.iter().map(|n| st.tensor(n).map(|t| t.data().to_vec())).collect::<std::result::Result<Vec<_>, _>>();
        let tensors = tensors.map_err(|e| err(path, e))?;
        let found = checksum(&meta_json, tensors.iter().map(Vec::as_slice));
        if found != recorded {
            return Err(err(
                path,
                format!(
                    "corrupted: its contents hash to {found}, but it was written with {recorded} (truncated, \
                     changed or replaced since); run again from the start with --overwrite"
                ),
            ));
        }
        let mut state: Vec<Option<Vec<f32>>> = Vec::new();
        let mut optim: Vec<Option<Vec<f32>>> = Vec::new();
        let mut order = None;
        for (name, t) in st.iter() {
            if t.shape().len() != 1 {
                return Err(err(path, format!("{name} is not 1-D")));
            }
            let words = t.data().chunks_exact(4).map(|b| [b[0], b[1], b[2], b[3]]);
            if name == "order" {
                if t.dtype() != safetensors::Dtype::I32 {
                    return Err(err(path, "order is not i32"));
                }
                order = Some(words.map(i32::from_le_bytes).collect());
                continue;
            }
            let (list, idx) = match name.split_once(".t") {
                Some(("state", d)) => (&mut state, d),
                Some(("optim", d)) => (&mut optim, d),
                _ => return Err(err(path, format!("unexpected tensor {name:?}"))),
            };
            let i: usize = idx.parse().map_err(|_| err(path, format!("unexpected tensor {name:?}")))?;
            if t.dtype() != safetensors::Dtype::F32 || i > 100_000 {
                return Err(err(path, format!("unexpected tensor {name:?}")));
            }
            if list.len() <= i {
                list.resize(i + 1, None);
            }
            list[i] = Some(words.map(f32::from_le_bytes).collect());
        }
        let complete = |v: Vec<Option<Vec<f32>>>, what: &str| -> Result<Vec<Vec<f32>>> {
            let n = v.len();
            let out: Vec<Vec<f32>> = v.into_iter().flatten().collect();
            if out.len() != n {
                return Err(err(path, format!("{what} tensors are not numbered 0..{n}")));
            }
            Ok(out)
        };
        Ok(Checkpoint {
            meta,
            state: complete(state, "state")?,
            optim: complete(optim, "optim")?,
            order: order.ok_or_else(|| err(path, "no `order` tensor"))?,
            source: Some(path.to_path_buf()),
        })
    }
}

/// MD5 (hex) of the metadata JSON and the tensors' bytes, in order.
fn checksum<'a>(meta: &str, tensors: impl Iterator<Item = &'a [u8]>) -> String {
    use md5::{Digest, Md5};
    let mut h = Md5::new();
    h.update(meta.as_bytes());
    for t in tensors {
        h.update((t.len() as u64).to_le_bytes());
        h.update(t);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The first non-finite value of `state` (parameters, statistics) or `optim` (momentum).
pub(crate) fn first_non_finite(state: &[Vec<f32>], optim: &[Vec<f32>]) -> Option<String> {
    for (what, tensors) in [("parameter/statistics tensor", state), ("momentum tensor", optim)] {
        for (i, t) in tensors.iter().enumerate() {
            if let Some((j, v)) = t.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Some(format!("{what} {i} holds {v} at index {j}"));
            }
        }
    }
    None
}
