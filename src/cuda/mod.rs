//! CUDA plumbing shared by every kernel family: opening a device without panicking, the embedded
//! modules (loaded once per context and cached), the dtypes kernels are instantiated for, and the
//! device-side "first bad index" flag.
//!
//! Kernel wrappers live beside their CPU references (`softmax::cuda`, `cross_entropy::cuda`, ...);
//! they take the caller's [`CudaStream`] and device buffers, so other cudarc code can embed them.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, LaunchConfig};

use crate::error::{DriverContext, Error, Result};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

pub use cudarc;

/// Why the kernels are missing from this build, or `None` when build.rs compiled them.
pub fn kernels_not_compiled() -> Option<&'static str> {
    embedded::NOT_COMPILED
}

/// Names of the embedded kernel modules (one per `kernels/*.cu`), empty when none were compiled.
pub fn compiled_modules() -> impl Iterator<Item = (&'static str, &'static [u8])> {
    embedded::MODULES.iter().copied()
}

/// True when a CUDA driver library is present and reports at least one device.
pub fn is_available() -> bool {
    device_count().is_ok_and(|n| n > 0)
}

/// Number of CUDA devices, or an error when there is no usable driver.
pub fn device_count() -> Result<usize> {
    check_driver_library()?;
    CudaContext::device_count()
        .map(|n| n.max(0) as usize)
        .map_err(|e| Error::NoCuda(format!("cuInit/cuDeviceGetCount failed: {e}")))
}

/// Opens (retains the primary context of) device `ordinal`. Returns [`Error::NoCuda`] when there is
/// no driver library, no device or the ordinal is out of range; never panics.
pub fn open(ordinal: usize) -> Result<Arc<CudaContext>> {
    let n = device_count()?;
    if ordinal >= n {
        return Err(Error::NoCuda(format!("device {ordinal} requested but {n} device(s) found")));
    }
    CudaContext::new(ordinal).map_err(|e| Error::NoCuda(format!("opening device {ordinal}: {e}")))
}

fn check_driver_library() -> Result<()> {
    // cudarc panics on its first driver call when libcuda cannot be loaded, so look first.
    #[cfg(not(feature = "candle-cuda"))]
    // SAFETY: only tries to dlopen the driver library by name; no symbol is called.
    let present = unsafe { cudarc::driver::sys::is_culib_present() };
    // With candle's CUDA backend cudarc links libcuda at load time: the program runs, so it is there.
    #[cfg(feature = "candle-cuda")]
    let present = true;
    if present {
        Ok(())
    } else {
        Err(Error::NoCuda("no CUDA driver library (libcuda.so) could be loaded".into()))
    }
}

/// Storage types the kernels are instantiated for; arithmetic is always f32.
pub trait Dtype: DeviceRepr + Copy + Default + Send + Sync + 'static {
    /// Suffix of the `extern "C"` entry points: `softmax_fwd_f32`, `..._f16`, `..._bf16`.
    const SUFFIX: &'static str;
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
}

impl Dtype for f32 {
    const SUFFIX: &'static str = "f32";
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Dtype for half::f16 {
    const SUFFIX: &'static str = "f16";
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        half::f16::from_f32(v)
    }
}

impl Dtype for half::bf16 {
    const SUFFIX: &'static str = "bf16";
    fn to_f32(self) -> f32 {
        half::bf16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        half::bf16::from_f32(v)
    }
}

type ModuleKey = (usize, &'static str);

/// Loaded modules and looked-up functions, per context. Entries keep their context alive, so a
/// context handle is never reused for another context while it is cached.
#[derive(Default)]
struct Cache {
    modules: HashMap<ModuleKey, Arc<CudaModule>>,
    functions: HashMap<(usize, &'static str, String), CudaFunction>,
}

fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The kernel `name` of module `module` (file stem of its `.cu`) in the stream's context; the
/// module is loaded on first use and cached for the life of the process.
pub(crate) fn function(stream: &Arc<CudaStream>, module: &'static str, name: &str) -> Result<CudaFunction> {
    let ctx = stream.context();
    let ctx_key = ctx.cu_ctx() as usize;
    let mut cache = cache().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(f) = cache.functions.get(&(ctx_key, module, name.to_string())) {
        return Ok(f.clone());
    }
    let m = match cache.modules.get(&(ctx_key, module)) {
        Some(m) => m.clone(),
        None => {
            if let Some(why) = embedded::NOT_COMPILED {
                return Err(Error::KernelsNotCompiled(why.to_string()));
            }
            let image = embedded::MODULES
                .iter()
                .find(|(n, _)| *n == module)
                .map(|(_, bytes)| bytes.to_vec())
                .ok_or_else(|| Error::KernelsNotCompiled(format!("module {module} is not embedded")))?;
            let m = ctx.load_module(cudarc::nvrtc::Ptx::from_binary(image)).during("loading kernel module")?;
            cache.modules.insert((ctx_key, module), m.clone());
            m
        }
    };
    let f = m.load_function(name).during("looking up kernel")?;
    cache.functions.insert((ctx_key, module, name.to_string()), f.clone());
    Ok(f)
}

/// A one-element device flag that kernels set (`atomicMin`) to the smallest index of a bad input.
pub(crate) struct BadIndexFlag {
    buf: CudaSlice<i32>,
}

impl BadIndexFlag {
    pub(crate) const CLEAR: i32 = i32::MAX;

    pub(crate) fn new(stream: &Arc<CudaStream>) -> Result<Self> {
        let buf = stream.clone_htod(&[Self::CLEAR]).during("allocating the bad-index flag")?;
        Ok(Self { buf })
    }

    pub(crate) fn buf_mut(&mut self) -> &mut CudaSlice<i32> {
        &mut self.buf
    }

    /// Waits for the stream and returns the first bad index, if a kernel flagged one.
    pub(crate) fn read(&self, stream: &Arc<CudaStream>) -> Result<Option<usize>> {
        let v = stream.clone_dtoh(&self.buf).during("reading the bad-index flag")?;
        Ok((v[0] != Self::CLEAR).then_some(v[0] as usize))
    }
}

/// Reads one element of a device buffer (used to name the bad value in an error).
pub(crate) fn read_one<T: DeviceRepr + Default + Clone>(
    stream: &Arc<CudaStream>,
    src: &cudarc::driver::CudaView<'_, T>,
    index: usize,
) -> Result<T> {
    let one = src.slice(index..index + 1);
    let v = stream.clone_dtoh(&one).during("reading a device value")?;
    Ok(v[0].clone())
}

/// 1-D launch of `blocks` x `threads` with `smem` bytes of dynamic shared memory.
pub(crate) fn cfg(blocks: u32, threads: u32, smem: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: smem }
}

/// Blocks needed to cover `n` items with `per_block` items each, capped to the grid limit.
pub(crate) fn blocks_for(n: usize, per_block: usize) -> u32 {
    n.div_ceil(per_block).clamp(1, i32::MAX as usize) as u32
}

/// Checks that a device buffer has exactly `want` elements.
pub(crate) fn check_len(op: &'static str, what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::shape(op, format!("{what} has {got} elements, expected {want}")))
    }
}
