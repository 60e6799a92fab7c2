//! CUDA plumbing shared by every kernel family: opening a device without panicking, the embedded
//! modules (loaded once per context and cached), the dtypes kernels are instantiated for, and the
//! device-side "first bad index" flag.
//!
//! Kernel wrappers live beside their CPU references (`softmax::cuda`, `cross_entropy::cuda`, ...);
//! they take the caller's [`CudaStream`] and device buffers, so other cudarc code can embed them.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, DeviceSlice, LaunchConfig,
};

use crate::error::{DriverContext, Error, Result};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
}

include!(concat!(env!("OUT_DIR"), "/param_layout.rs"));

/// Compile-time check of a kernel parameter struct against `kernels/params.def`, the one list that
/// the C side `static_assert`s too (`EC_CHECK_PARAMS`): a field changed on one side only fails to
/// compile.
macro_rules! check_params_layout {
    ($t:ident) => {
        const _: () = assert!(
            std::mem::size_of::<$t>() == $crate::cuda::param_layout::$t.0
                && std::mem::align_of::<$t>() == $crate::cuda::param_layout::$t.1,
            concat!(stringify!($t), " does not match kernels/params.def (and so its C twin in kernels/)")
        );
    };
}
pub(crate) use check_params_layout;

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

/// Why `--device auto` should not pick the GPU: no driver, no device, or kernels not compiled
/// into this build; `None` when the GPU is usable.
pub fn why_not_usable() -> Option<String> {
    match device_count() {
        Ok(n) if n > 0 => kernels_not_compiled().map(str::to_string),
        Ok(_) => Some("no CUDA device found".to_string()),
        Err(e) => Some(e.to_string()),
    }
}

/// Whether a command line's `--device` value asks for the GPU: `cuda` does, `cpu` does not, and
/// `auto` does when [`why_not_usable`] finds nothing against it (the reason it does not is
/// printed to stderr, so a user who expected the GPU learns why the CPU runs instead).
pub fn wants_gpu(device: &str) -> bool {
    if device != "auto" {
        return device == "cuda";
    }
    let why = why_not_usable();
    if let Some(why) = &why {
        eprintln!("device auto: {why}; using the CPU");
    }
    why.is_none()
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

/// Largest size or element count that a kernel indexes with 32-bit integers: `2^31 - 1 - 1024`.
/// The kernels form indices up to one tile (64) or one block-wide stride (at most 1024 threads) past
/// the last element before they compare it with the size, and that index must not overflow `i32`.
/// Every wrapper refuses larger sizes with [`Error::TooLarge`] before launching.
pub const MAX_INDEX: usize = i32::MAX as usize - 1024;

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

/// Element type of activation tensors (and their gradients) between layers: f32, or bf16 for
/// mixed-precision training. Sealed: the kernels exist for these two only.
pub trait ActDtype: Dtype + sealed::Sealed {
    /// Appended to a kernel's f32-activation name: "" for f32, "_abf16" for bf16.
    const ACT_SUFFIX: &'static str;
}

impl ActDtype for f32 {
    const ACT_SUFFIX: &'static str = "";
}

impl ActDtype for half::bf16 {
    const ACT_SUFFIX: &'static str = "_abf16";
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::bf16 {}
}

type ModuleKey = (usize, &'static str);

/// Loaded modules and looked-up functions, per context. Entries keep their context alive, so a
/// context handle is never reused for another context while it is cached.
#[derive(Default)]
struct Cache {
    modules: HashMap<ModuleKey, Arc<CudaModule>>,
    functions: HashMap<(usize, &'static str, String), Kernel>,
}

fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// A kernel entry point, with its name for error messages. Derefs to cudarc's [`CudaFunction`], so
/// `stream.launch_builder(&kernel)` works as usual.
#[derive(Clone)]
pub(crate) struct Kernel {
    func: CudaFunction,
    name: Arc<str>,
}

impl std::ops::Deref for Kernel {
    type Target = CudaFunction;
    fn deref(&self) -> &CudaFunction {
        &self.func
    }
}

/// The kernel `name` of module `module` (file stem of its `.cu`) in the stream's context; the
/// module is loaded on first use and cached for the life of the process.
pub(crate) fn function(stream: &Arc<CudaStream>, module: &'static str, name: &str) -> Result<Kernel> {
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
            let m = ctx.load_module(cudarc::nvrtc::Ptx::from_binary(image)).map_err(|e| module_load_error(ctx, e))?;
            cache.modules.insert((ctx_key, module), m.clone());
            m
        }
    };
    let func = m.load_function(name).during("looking up kernel")?;
    let kernel = Kernel { func, name: name.into() };
    cache.functions.insert((ctx_key, module, name.to_string()), kernel.clone());
    Ok(kernel)
}

/// The CUDA version the embedded kernels were built with (nvcc's release, e.g. `13.0`), when known.
pub fn kernels_cuda_version() -> Option<&'static str> {
    embedded::NVCC_RELEASE
}

/// A failed module load, explained: images built by a newer nvcc than the driver supports are the
/// common cause (PTX ISA too new, or no loadable image), so name both versions.
fn module_load_error(ctx: &Arc<CudaContext>, source: cudarc::driver::DriverError) -> Error {
    use cudarc::driver::sys::CUresult as R;
    let built = kernels_cuda_version().unwrap_or("unknown");
    let driver = driver_cuda_version(ctx).map_or_else(|| "unknown".to_string(), |(ma, mi)| format!("{ma}.{mi}"));
    match source.0 {
        R::CUDA_ERROR_UNSUPPORTED_PTX_VERSION
        | R::CUDA_ERROR_NO_BINARY_FOR_GPU
        | R::CUDA_ERROR_INVALID_PTX
        | R::CUDA_ERROR_INVALID_IMAGE
        | R::CUDA_ERROR_JIT_COMPILER_NOT_FOUND => Error::DriverTooOld { built: built.to_string(), driver, source },
        _ => Error::Driver { op: "loading kernel module", source },
    }
}

/// The CUDA version the installed driver supports, `(major, minor)`.
pub fn driver_cuda_version(_ctx: &Arc<CudaContext>) -> Option<(i32, i32)> {
    let mut v = 0i32;
    // SAFETY: the context exists, so the driver library is loaded and initialised; the call only
    // writes one int through a valid pointer.
    let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
    (r == cudarc::driver::sys::CUresult::CUDA_SUCCESS).then_some((v / 1000, (v % 1000) / 10))
}

/// Whether every launch is followed by a synchronization that checks for a kernel fault (debug
/// switch). Off by default; `EVENCLASS_SYNC_LAUNCHES=1` turns it on for the process, like
/// `CUDA_LAUNCH_BLOCKING`, and [`set_sync_launches`] overrides it.
pub fn sync_launches() -> bool {
    match SYNC_LAUNCHES.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var("EVENCLASS_SYNC_LAUNCHES").is_ok_and(|v| !v.is_empty() && v != "0");
            // A concurrent set_sync_launches wins over the environment.
            let _ = SYNC_LAUNCHES.compare_exchange(0, if on { 2 } else { 1 }, Ordering::Relaxed, Ordering::Relaxed);
            SYNC_LAUNCHES.load(Ordering::Relaxed) == 2
        }
        v => v == 2,
    }
}

/// Turns the per-launch synchronization of [`sync_launches`] on or off for the whole process. With
/// it on, a kernel that faults is reported by its own launch, naming the kernel, instead of by
/// whichever later call next waits for the GPU. It costs one host wait per launch.
pub fn set_sync_launches(on: bool) {
    SYNC_LAUNCHES.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

static SYNC_LAUNCHES: AtomicU8 = AtomicU8::new(0);

/// Called right after every launch: with [`sync_launches`] on, waits for the stream and turns a
/// fault into an error that names the kernel.
pub(crate) fn after_launch(stream: &Arc<CudaStream>, op: &'static str, kernel: &Kernel) -> Result<()> {
    if sync_launches() {
        stream.synchronize().map_err(|source| Error::KernelFailed { op, kernel: kernel.name.to_string(), source })?;
    }
    Ok(())
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

    /// [`BadIndexFlag::read`], then clears a raised flag, so that one flag serves call after call.
    pub(crate) fn take(&mut self, stream: &Arc<CudaStream>) -> Result<Option<usize>> {
        let v = self.read(stream)?;
        if v.is_some() {
            stream.memcpy_htod(&[Self::CLEAR], &mut self.buf).during("clearing the bad-index flag")?;
        }
        Ok(v)
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

/// Checks that a device buffer lives in the stream's context (the same device): a buffer allocated
/// on another device would be read or written through an address that is meaningless there.
pub(crate) fn check_device<T, S: DeviceSlice<T> + ?Sized>(
    op: &'static str,
    stream: &Arc<CudaStream>,
    what: &str,
    buf: &S,
) -> Result<()> {
    let (ours, theirs) = (stream.context(), buf.stream().context());
    if ours.cu_ctx() == theirs.cu_ctx() {
        Ok(())
    } else {
        Err(Error::WrongDevice { op, what: what.to_string(), buffer: theirs.ordinal(), stream: ours.ordinal() })
    }
}

/// [`check_device`] for each named buffer (`&` or `&mut`), returning the first error.
macro_rules! check_devices {
    ($op:expr, $stream:expr, $($buf:ident),+ $(,)?) => {
        $( $crate::cuda::check_device($op, $stream, stringify!($buf), &*$buf)?; )+
    };
}
pub(crate) use check_devices;

/// Device scratch of f32s kept across calls and grown once: a training loop that passes the same
/// one to a family's `_in` functions allocates it the first time a size is seen, never again for
/// that size. Never zeroed: its users (the convolutions' split-K weight gradient, batch norm's
/// per-slice partials) read only elements the launch before them on the stream wrote. Use it on
/// one stream.
#[derive(Default)]
pub struct Scratch {
    buf: Option<CudaSlice<f32>>,
}

impl Scratch {
    /// An empty scratch (nothing allocated until a call needs it).
    pub fn new() -> Self {
        Scratch::default()
    }

    /// f32s allocated now.
    pub fn len(&self) -> usize {
        self.buf.as_ref().map_or(0, |b| b.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// At least `len` f32s on `stream`'s device, allocated (unfilled) only when the current
    /// buffer is shorter or absent. Errors name the user's `op`, and `allocating` (e.g.
    /// "allocating the batch-norm workspace") when the allocation fails.
    pub(crate) fn at_least(
        &mut self,
        stream: &Arc<CudaStream>,
        len: usize,
        op: &'static str,
        allocating: &'static str,
    ) -> Result<&mut CudaSlice<f32>> {
        if let Some(b) = &self.buf {
            check_device(op, stream, "its workspace", b)?;
        }
        if self.len() < len {
            self.buf = None; // freed before the larger one is allocated
                             // SAFETY: f32 is valid for every bit pattern, and every launch that reads the scratch
                             // reads only elements the launch before it on the stream wrote (see the type's
                             // documentation; the emulated driver's init check fails any other read).
            let b = unsafe { stream.alloc::<f32>(len) }.during(allocating)?;
            self.buf = Some(b);
        }
        Ok(self.buf.as_mut().expect("allocated above"))
    }
}

/// Checks that a device buffer has exactly `want` elements.
pub(crate) fn check_len(op: &'static str, what: &str, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::shape(op, format!("{what} has {got} elements, expected {want}")))
    }
}
