//! What one training step asks of the CUDA driver: kernel launches, allocations, frees, copies and
//! host synchronizations, counted by the emulated driver (`tests/emulator/`, docs/emulator.md).
//!
//! Runs only under that driver (`scripts/emulated-gpu-tests.sh`); with any other `libcuda` (or
//! none) it says so and checks nothing. The counts are host-side decisions, so the default GPU
//! network (`examples/cifar10.rs`: width 64, depth 2, batch 512), far too large to emulate in
//! reasonable time, is counted in a dry run (launches checked and counted, kernels not executed).
//! That a dry run counts exactly what a real run does is checked here on a small network.
use std::fmt;

use evenclass::cuda::ActDtype;
use evenclass::train::{self, CudaBackend, DeviceData, Model, ModelConfig, TrainConfig, TrainJob};

/// Mirrors `evenclass_emu_counters_t` in tests/emulator/driver.cpp.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    launches: u64,
    allocs: u64,
    frees: u64,
    htod_copies: u64,
    htod_bytes: u64,
    dtoh_copies: u64,
    dtoh_bytes: u64,
    dtod_copies: u64,
    memsets: u64,
    host_syncs: u64,
    stream_syncs: u64,
    ctx_syncs: u64,
    event_syncs: u64,
    dtoh_waits: u64,
    events_recorded: u64,
    stream_waits: u64,
    module_loads: u64,
}

impl std::ops::Sub for Counters {
    type Output = Counters;
    fn sub(self, o: Counters) -> Counters {
        let (a, b) = (self.fields(), o.fields());
        let mut out = [0u64; N];
        for i in 0..N {
            out[i] = a[i].checked_sub(b[i]).expect("counters only grow");
        }
        Counters::from_fields(out)
    }
}

impl Counters {
    fn fields(&self) -> [u64; N] {
        // SAFETY: `Counters` is `repr(C)` with exactly N u64 fields and no padding.
        unsafe { std::mem::transmute_copy(self) }
    }
    fn from_fields(f: [u64; N]) -> Self {
        // SAFETY: as above.
        unsafe { std::mem::transmute_copy(&f) }
    }
}

/// Fields of [`Counters`].
const N: usize = 17;
const _: () = assert!(std::mem::size_of::<Counters>() == N * 8);

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} launches, {} allocs, {} frees, {} HtoD copies ({} B), {} DtoH copies ({} B), {} DtoD copies, \
             {} memsets, {} host syncs ({} stream, {} context, {} event, {} DtoH copies), {} events recorded, \
             {} stream waits",
            self.launches,
            self.allocs,
            self.frees,
            self.htod_copies,
            self.htod_bytes,
            self.dtoh_copies,
            self.dtoh_bytes,
            self.dtod_copies,
            self.memsets,
            self.host_syncs,
            self.stream_syncs,
            self.ctx_syncs,
            self.event_syncs,
            self.dtoh_waits,
            self.events_recorded,
            self.stream_waits
        )
    }
}

/// The emulated driver's counter functions, from the `libcuda` cudarc loaded.
struct Emulator {
    _lib: libloading::Library,
    counters: unsafe extern "C" fn(*mut Counters, usize) -> usize,
    reset: unsafe extern "C" fn(),
    dry_run: unsafe extern "C" fn(i32) -> i32,
}

impl Emulator {
    fn open() -> Option<Self> {
        // SAFETY: dlopen of the driver library cudarc uses (the same file, already loaded by the
        // time this runs); its initializers are the driver's own.
        let lib = unsafe { libloading::Library::new("libcuda.so") }.ok()?;
        // SAFETY: the signatures match tests/emulator/driver.cpp; the pointers stay valid while
        // `_lib` holds the library open.
        unsafe {
            let counters = *lib.get(b"evenclass_emu_counters\0").ok()?;
            let reset = *lib.get(b"evenclass_emu_reset_counters\0").ok()?;
            let dry_run = *lib.get(b"evenclass_emu_set_dry_run\0").ok()?;
            Some(Emulator { _lib: lib, counters, reset, dry_run })
        }
    }

    fn read(&self) -> Counters {
        let mut c = Counters::default();
        // SAFETY: writes at most size_of::<Counters>() bytes into `c`.
        let size = unsafe { (self.counters)(&mut c, std::mem::size_of::<Counters>()) };
        assert_eq!(size, std::mem::size_of::<Counters>(), "the emulator's counter struct changed");
        c
    }

    fn reset(&self) {
        // SAFETY: no arguments, no preconditions.
        unsafe { (self.reset)() }
    }

    fn set_dry_run(&self, on: bool) {
        // SAFETY: no preconditions.
        unsafe { (self.dry_run)(on as i32) };
    }
}

struct Net {
    config: ModelConfig,
    batch: usize,
}

/// Random images and labels for `n` samples (the values do not matter for counting).
fn data<A: ActDtype>(be: &CudaBackend<A>, n: usize) -> DeviceData<CudaBackend<A>> {
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let images: Vec<u8> = (0..n * 3 * 32 * 32).map(|_| next() as u8).collect();
    let labels: Vec<u8> = (0..n).map(|_| (next() % 10) as u8).collect();
    DeviceData::new(be, &images, &labels).unwrap()
}

/// Counts of `train()` over `steps` full batches (its setup included), after a warm-up run that
/// loads the modules.
fn count_train<A: ActDtype>(emu: &Emulator, be: &CudaBackend<A>, net: &Net, steps: usize, dry: bool) -> Counters {
    let cfg = TrainConfig {
        epochs: 1,
        batch_size: net.batch,
        lr: 0.2 * net.batch as f32 / 256.0,
        eval_each_epoch: false,
        ..TrainConfig::default()
    };
    let set = data(be, net.batch * steps);
    let mut model = Model::new(be, net.config, net.batch, 7).unwrap();
    emu.set_dry_run(dry);
    emu.reset();
    train::train(be, &mut model, &TrainJob::new(&set, &[1.0; 10], &cfg, "count")).unwrap();
    let c = emu.read();
    emu.set_dry_run(false);
    c
}

/// (train() with one step, one more step): the second is the steady state of the loop.
fn per_step<A: ActDtype>(emu: &Emulator, be: &CudaBackend<A>, net: &Net, dry: bool) -> (Counters, Counters) {
    count_train(emu, be, net, 1, dry); // warm-up: modules load, lazily created state exists
    let one = count_train(emu, be, net, 1, dry);
    let two = count_train(emu, be, net, 2, dry);
    (one, two - one)
}

/// docs/emulator.md's table of the counts (`scripts/emulator-counter-table.sh` pastes it there),
/// between marker lines: columns train() with one step and each further step, for the small
/// network executed and the default one in a dry run.
fn markdown_table(c: &[Counters; 4]) -> String {
    let row = |name: &str, f: &dyn Fn(&Counters) -> String| {
        format!("| {name} | {} |\n", c.iter().map(f).collect::<Vec<_>>().join(" | "))
    };
    let mut t = String::from("<!-- counter table: begin -->\n");
    t += "| | small: train(), 1 step | small: each further step | default: train(), 1 step | default: each further step |\n";
    t += "|---|---:|---:|---:|---:|\n";
    t += &row("kernel launches", &|c| c.launches.to_string());
    t += &row("allocations / frees", &|c| format!("{} / {}", c.allocs, c.frees));
    t += &row("host-to-device copies", &|c| format!("{} ({} B)", c.htod_copies, c.htod_bytes));
    t += &row("device-to-host copies", &|c| format!("{} ({} B)", c.dtoh_copies, c.dtoh_bytes));
    t += &row("memsets", &|c| c.memsets.to_string());
    t += &row("host waits (all device-to-host copies)", &|c| format!("{} ({})", c.host_syncs, c.dtoh_waits));
    t += &row("stream / context / event synchronizes", &|c| {
        format!("{} / {} / {}", c.stream_syncs, c.ctx_syncs, c.event_syncs)
    });
    t += &row("events recorded / stream waits (cudarc)", &|c| format!("{} / {}", c.events_recorded, c.stream_waits));
    t + "<!-- counter table: end -->"
}

#[test]
#[ignore = "needs the emulated CUDA driver (scripts/emulated-gpu-tests.sh)"]
fn driver_calls_of_one_training_step() {
    let Some(emu) = Emulator::open() else {
        eprintln!("skipped: the loaded libcuda is not the emulated driver (no evenclass_emu_counters)");
        return;
    };
    let be = CudaBackend::new(0).unwrap();

    // A dry run counts what a real run does (small enough to execute).
    let small = Net { config: ModelConfig { width: 4, depth: 1, classes: 10 }, batch: 16 };
    let (real_one, real_step) = per_step(&emu, &be, &small, false);
    let (dry_one, dry_step) = per_step(&emu, &be, &small, true);
    assert_eq!(real_one, dry_one, "dry run vs real run, train() with one step");
    assert_eq!(real_step, dry_step, "dry run vs real run, one more step");

    // The default GPU network of examples/cifar10.rs.
    let default = Net { config: ModelConfig { width: 64, depth: 2, classes: 10 }, batch: 512 };
    let (one, step) = per_step(&emu, &be, &default, true);
    // The same with bf16 activations (mixed precision): the same ops on other kernels.
    let bf16 = CudaBackend::<half::bf16>::open(0).unwrap();
    let (bf16_one, bf16_step) = per_step(&emu, &bf16, &default, true);
    println!("{}", markdown_table(&[real_one, real_step, one, step]));
    println!("small network (width 4, depth 1, batch 16), executed:");
    println!("  train() with one step: {real_one}");
    println!("  each further step:     {real_step}");
    println!("default GPU network (width 64, depth 2, batch 512), dry run:");
    println!("  train() with one step: {one}");
    println!("  each further step:     {step}");

    // A steady-state step (docs/emulator.md, "What one training step asks of the driver"; a change
    // in either direction shows here: update that section).
    for (what, step, launches) in [("small", real_step, 64), ("default", step, 96), ("default, bf16", bf16_step, 96)] {
        assert_eq!((step.allocs, step.frees), (0, 0), "{what}: a step after the first allocates and frees nothing");
        // The launches of the ops the step runs (batch, forward, loss, confusion counts, the two
        // class-sum launches, backward, SGD); no memset either.
        assert_eq!((step.launches, step.memsets), (launches, 0), "{what}: launches and memsets per step");
        // The batch plan (indices, crop offsets, flips) and the labels, into kept buffers.
        assert_eq!(step.htod_copies, 4, "{what}: host-to-device copies per step");
        // No host waits and nothing copied back: the loss and the epoch log's counts and sums
        // stay on the device until the end of the epoch (TrainStep::run_deferred).
        assert_eq!((step.host_syncs, step.dtoh_copies), (0, 0), "{what}: host waits per step");
        // Event tracking is off: one stream owns every buffer (CudaBackend::new).
        assert_eq!((step.events_recorded, step.stream_waits), (0, 0), "{what}: cudarc events per step");
        assert_eq!(step.ctx_syncs + step.event_syncs + step.stream_syncs, 0, "{what}: the loop only copies back");
        assert_eq!(step.module_loads, 0, "{what}: modules are loaded once");
    }
    // train() with one step allocates, beyond the step, the class weights, the logits' gradient,
    // the step's labels, the epoch's losses and its tally (counts, sums, per-row scratch); the
    // backend's step buffers exist from the warm-up run on.
    assert_eq!((real_one.allocs, one.allocs, bf16_one.allocs), (7, 7, 7), "allocations of train() with one step");
    // Host waits of an epoch (the step adds none, above): 6 reads of the epoch's statistics (the
    // three deferred bad-input flags, the losses, the confusion counts, the class sums), then the
    // end-of-epoch check for non-finite values, one read per tensor of the model's state and
    // momentum.
    for (what, net, one) in
        [("small", &small, real_one), ("default", &default, one), ("default, bf16", &default, bf16_one)]
    {
        let model = Model::new(&be, net.config, net.batch, 7).unwrap();
        let tensors = model.state(&be).unwrap().len() + model.optimizer_state(&be).unwrap().len();
        assert_eq!(one.host_syncs, 6 + tensors as u64, "{what}: host waits of an epoch ({tensors} tensors)");
        assert_eq!(one.host_syncs, one.dtoh_waits, "{what}: every wait is a read-back");
    }
}
