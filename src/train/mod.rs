//! The lean trainer: one model definition ([`Model`]) and one training loop ([`train`]) over a
//! [`Backend`], with a CPU backend on the references and a CUDA backend on the kernels.
mod backend;
mod cpu_backend;
mod cuda_backend;
mod model;
mod trainer;

use std::path::Path;

pub use backend::{Backend, BatchPlan, BnState, Chw, Normalize, SgdStep};
pub use cpu_backend::CpuBackend;
pub use cuda_backend::CudaBackend;
pub use model::{Model, ModelConfig, Param, INPUT};
pub use trainer::{evaluate, train, DeviceData, Progress, TrainConfig, CIFAR10_NORMALIZE};

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

/// Loads what [`save_model`] wrote into a model of the same config.
pub fn load_model<B: Backend>(path: &Path, model: &mut Model<B>, be: &B) -> Result<()> {
    let op = "load_model";
    let data = std::fs::read(path).map_err(|e| Error::shape(op, format!("{}: {e}", path.display())))?;
    let st = safetensors::SafeTensors::deserialize(&data).map_err(|e| Error::shape(op, e.to_string()))?;
    let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    names.sort();
    let mut state = Vec::with_capacity(names.len());
    for name in names {
        let t = st.tensor(&name).map_err(|e| Error::shape(op, e.to_string()))?;
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(Error::shape(op, format!("{name} is not f32")));
        }
        state.push(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect());
    }
    model.load_state(be, &state)
}
