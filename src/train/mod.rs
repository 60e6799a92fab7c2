//! The lean trainer: one model definition ([`Model`]) and one training loop ([`train`]) over a
//! [`Backend`], with a CPU backend on the references and a CUDA backend on the kernels.
mod backend;
mod checkpoint;
mod cpu_backend;
mod cuda_backend;
mod model;
mod step;
mod trainer;

use std::path::Path;

pub use backend::{Backend, BatchPlan, BnState, Chw, Normalize, SgdStep};
pub use checkpoint::{write_atomic, Checkpoint, CheckpointMeta, CHECKPOINT_FORMAT};
pub use cpu_backend::CpuBackend;
pub use cuda_backend::CudaBackend;
pub use model::{MemoryEstimate, Model, ModelConfig, Param, INPUT};
pub use step::{ClassTally, DeviceData, StepOutcome, TrainStep, CIFAR10_NORMALIZE};
pub use trainer::{
    evaluate, evaluate_with, per_class_loss, train, train_with, EpochEnd, EpochHook, EvalOptions, Evaluation, Monitor,
    Progress, TrainConfig, TrainControl, TrainOutcome,
};

use crate::{Error, Result};

/// Saves the model's parameters and running statistics as safetensors (one 1-D f32 tensor per
/// entry of [`Model::state`], named `t000`, `t001`, ...; the config in the metadata).
pub fn save_model<B: Backend>(path: &Path, model: &Model<B>, be: &B) -> Result<()> {
    let state = model.state(be)?;
    let bytes: Vec<Vec<u8>> = state.iter().map(|t| bytemuck::cast_slice(t).to_vec()).collect();
    let views = state
        .iter()
        .zip(&bytes)
        .enumerate()
        .map(|(i, (t, b))| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![t.len()], b)
                .map_err(|e| Error::shape("save_model", e.to_string()))?;
            Ok((format!("t{i:03}"), v))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = std::collections::HashMap::from([(
        "config".to_string(),
        serde_json::to_string(&model.config).map_err(|e| Error::shape("save_model", e.to_string()))?,
    )]);
    let data = safetensors::serialize(views, Some(meta)).map_err(|e| Error::shape("save_model", e.to_string()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| Error::shape("save_model", format!("{}: {e}", path.display())))
}

/// Loads what [`save_model`] wrote into a model of the same config. A missing or corrupt file, or
/// one saved from another config, is an error and leaves the model unchanged.
pub fn load_model<B: Backend>(path: &Path, model: &mut Model<B>, be: &B) -> Result<()> {
    let op = "load_model";
    let data = std::fs::read(path).map_err(|e| Error::shape(op, format!("{}: {e}", path.display())))?;
    let what = |e: &dyn std::fmt::Display| Error::shape(op, format!("{}: {e}", path.display()));
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
