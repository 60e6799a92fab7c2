//! The lean trainer: one model definition ([`Model`]) and one training loop ([`train`]) over a
//! [`Backend`], with a CPU backend on the references and a CUDA backend on the kernels.
mod backend;
mod checkpoint;
mod config;
mod cpu_backend;
mod crt;
mod cuda_backend;
mod epoch_log;
mod model;
mod step;
mod trainer;

use std::path::Path;

pub use backend::{Backend, BatchPlan, BnState, Chw, LinearGrads, Normalize, Saved, SgdStep, WeightedLoss};
pub use checkpoint::{Checkpoint, CheckpointMeta, CHECKPOINT_FORMAT};
pub use config::TrainConfig;
pub use cpu_backend::CpuBackend;
pub use crt::{features, retrain_classifier};
pub use cuda_backend::CudaBackend;
pub use epoch_log::EpochLog;
pub use model::{MemoryEstimate, Model, ModelConfig, Param, INPUT};
pub use step::{ClassTally, DeviceData, EpochStats, LogitAdjustment, StepOutcome, TrainStep, CIFAR10_NORMALIZE};
pub use trainer::{
    evaluate, evaluate_with, per_class_loss, train, train_with, EpochEnd, EpochHook, EvalOptions, Evaluation, Monitor,
    Progress, TrainControl, TrainJob, TrainOutcome,
};

use crate::{Error, Result};

/// [`Error::InvalidFile`] for a model file.
fn invalid_model(path: &Path, msg: impl std::fmt::Display) -> Error {
    Error::InvalidFile { what: "model", path: path.to_path_buf(), msg: msg.to_string() }
}

/// Saves the model's parameters and running statistics as safetensors (one 1-D f32 tensor per
/// entry of [`Model::state`], named `t000`, `t001`, ...; the config in the metadata), with
/// [`crate::fs::write_atomic`].
pub fn save_model<B: Backend>(path: &Path, model: &Model<B>, be: &B) -> Result<()> {
    let state = model.state(be)?;
    let bytes: Vec<Vec<u8>> = state.iter().map(|t| bytemuck::cast_slice(t).to_vec()).collect();
    let views = state
        .iter()
        .zip(&bytes)
        .enumerate()
        .map(|(i, (t, b))| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![t.len()], b)
                .map_err(|e| invalid_model(path, e))?;
            Ok((format!("t{i:03}"), v))
        })
        .collect::<Result<Vec<_>>>()?;
    let config = serde_json::to_string(&model.config).map_err(|e| invalid_model(path, e))?;
    let meta = std::collections::HashMap::from([("config".to_string(), config)]);
    let data = safetensors::serialize(views, Some(meta)).map_err(|e| invalid_model(path, e))?;
    crate::fs::write_atomic(path, &data)
}

/// Loads what [`save_model`] wrote into a model of the same config. A missing file is
/// [`Error::Io`]; a corrupt one, or one saved from another config, [`Error::InvalidFile`]. On
/// error the model is unchanged.
pub fn load_model<B: Backend>(path: &Path, model: &mut Model<B>, be: &B) -> Result<()> {
    let data = crate::fs::read(path)?;
    let what = |e: &dyn std::fmt::Display| invalid_model(path, e);
    let (_, meta) = safetensors::SafeTensors::read_metadata(&data).map_err(|e| what(&e))?;
    if let Some(saved) = meta.metadata().as_ref().and_then(|m| m.get("config")) {
        let saved: ModelConfig = serde_json::from_str(saved).map_err(|e| what(&format!("config metadata: {e}")))?;
        if saved != model.config {
            return Err(what(&format!("saved from a model of {saved:?}, loading into {:?}", model.config)));
        }
    }
    let st = safetensors::SafeTensors::deserialize(&data).map_err(|e| what(&e))?;
    // Tensors are named t000, t001, ... (more digits past 999): order them by number.
    let mut state: Vec<Option<Vec<f32>>> = vec![None; st.len()];
    for (name, t) in st.iter() {
        let i = name
            .strip_prefix('t')
            .and_then(|d| d.parse::<usize>().ok())
            .filter(|&i| i < state.len() && format!("t{i:03}") == name)
            .ok_or_else(|| what(&format!("unexpected tensor name {name:?}")))?;
        if t.dtype() != safetensors::Dtype::F32 || t.shape().len() != 1 {
            return Err(what(&format!("{name} is not a 1-D f32 tensor")));
        }
        state[i] = Some(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect());
    }
    // Names are distinct and in range, so every slot is filled.
    let state: Vec<Vec<f32>> = state.into_iter().flatten().collect();
    model.load_state(be, &state)
}
