//! The convolution passes of the trainer's CPU network against this CPU's fused multiply-add
//! peak, both timed in the same run: per layer and pass, each round times the peak loop (on the
//! same threads) and then the pass, so a machine whose speed drifts from minute to minute (a
//! shared VM) still gives a fair percent of peak. The passes are the trainer's
//! (`CpuAlgo::Auto`, the input gradient skipped for the stem as the trainer skips it), on the
//! synthetic inputs of a training batch; `--algo direct` times the direct kernels everywhere.
//! A pass that runs Winograd is marked `w`: it does 2.25x fewer multiplies than the FLOPs counted,
//! so its percent of the peak is an effective one and can pass 100%.
//!
//! `cargo bench --bench roofline` (widths 16, 32, 64, 128; one thread and every rayon thread)
//! `cargo bench --bench roofline -- --widths 64 --threads 2 --rounds 7 --csv out.csv`
//!
//! It takes criterion's command line where the project's scripts pass one to every benchmark
//! binary: `--list` lists the one benchmark id, `roofline/cpu`; a filter that the id does not
//! contain (such as `gpu`) runs nothing; `--test` runs one round of width 16 on one thread at
//! batch 8 (a smoke check); criterion's timing options are accepted and ignored.
//!
//! The table reports, per pass, the median GFLOP/s over the rounds and the median of the rounds'
//! pass/peak ratios; the total row is the network's conv FLOPs over the sum of the median times.
//! FLOPs are direct-convolution FLOPs (`2 * outputs * cin * 9`), whatever the kernel does.
use std::io::Write;
use std::time::Instant;

use evenclass::conv::{cpu, Conv2dOpts, Conv2dShape};
use rayon::prelude::*;

mod common;

/// Each timed piece (the peak loop, or repeats of one pass) runs at least this long.
const MIN_SECONDS: f64 = 0.04;

/// The one benchmark id, for criterion-style `--list` and filters.
const ID: &str = "roofline/cpu";

struct Args {
    widths: Vec<usize>,
    threads: Vec<usize>,
    rounds: usize,
    batch: usize,
    csv: Option<String>,
    algo: cpu::CpuAlgo,
}

fn usage(msg: &str) -> ! {
    eprintln!("roofline: {msg}");
    eprintln!(
        "usage: cargo bench --bench roofline -- [--widths 16,32,64,128] [--threads 1,N] [--rounds 5] \
         [--batch 256] [--csv FILE] [--algo auto|direct]"
    );
    std::process::exit(2)
}

fn list(flag: &str, v: Option<String>) -> Vec<usize> {
    let v = v.unwrap_or_else(|| usage(&format!("{flag} needs a value")));
    let out: Option<Vec<usize>> = v.split(',').map(|s| s.trim().parse().ok().filter(|&n: &usize| n > 0)).collect();
    out.filter(|o| !o.is_empty()).unwrap_or_else(|| usage(&format!("{flag} {v:?}: expected positive integers")))
}

fn parse() -> Args {
    let all = rayon::current_num_threads().max(1);
    let mut a = Args {
        widths: vec![16, 32, 64, 128],
        threads: if all > 1 { vec![1, all] } else { vec![1] },
        rounds: 5,
        batch: 256,
        csv: None,
        algo: cpu::CpuAlgo::Auto,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--list" => {
                println!("{ID}: benchmark");
                std::process::exit(0)
            }
            "--test" => (a.widths, a.threads, a.rounds, a.batch) = (vec![16], vec![1], 1, 8),
            // criterion's options, passed by scripts that run every benchmark binary alike.
            "--warm-up-time" | "--measurement-time" | "--sample-size" | "--save-baseline" | "--baseline" => {
                it.next();
            }
            "--noplot" | "--exact" | "--quiet" => {}
            "--widths" => a.widths = list("--widths", it.next()),
            "--threads" => a.threads = list("--threads", it.next()),
            "--rounds" => a.rounds = list("--rounds", it.next())[0],
            "--batch" => a.batch = list("--batch", it.next())[0],
            "--csv" => a.csv = Some(it.next().unwrap_or_else(|| usage("--csv needs a file"))),
            "--algo" => {
                a.algo = match it.next().as_deref() {
                    Some("auto") => cpu::CpuAlgo::Auto,
                    Some("direct") => cpu::CpuAlgo::Direct,
                    other => usage(&format!("--algo {other:?}: expected auto or direct")),
                }
            }
            // cargo passes `--bench` to every benchmark binary.
            "--bench" => {}
            filter if !filter.starts_with('-') => {
                if !ID.contains(filter) {
                    eprintln!("roofline: {ID} does not match the filter {filter:?}; nothing to run");
                    std::process::exit(0)
                }
            }
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    if a.widths.iter().any(|&w| w > 1024) {
        usage("widths above 1024 are not a CIFAR-10 network");
    }
    a
}

#[derive(Clone, Copy, PartialEq)]
enum Pass {
    Forward,
    Data,
    Weight,
}

impl Pass {
    const ALL: [Pass; 3] = [Pass::Forward, Pass::Data, Pass::Weight];
    fn name(self) -> &'static str {
        match self {
            Pass::Forward => "forward",
            Pass::Data => "data_grad",
            Pass::Weight => "weight_grad",
        }
    }
    fn conv_pass(self) -> cpu::Pass {
        match self {
            Pass::Forward => cpu::Pass::Forward,
            Pass::Data => cpu::Pass::BackwardData,
            Pass::Weight => cpu::Pass::BackwardWeight,
        }
    }
}

/// The FMA loop of the widest vector unit the CPU has: FLOP per iteration per thread and the loop.
type PeakLoop = (&'static str, f64, fn(usize, f32) -> f32);

fn peak_loop() -> Option<PeakLoop> {
    #[cfg(target_arch = "x86_64")]
    {
        use common::peak;
        if is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above).
            return Some(("AVX-512", 32.0 * peak::CHAINS_512 as f64, |n, s| unsafe { peak::fma512(n, s) }));
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            return Some(("AVX2", 16.0 * peak::CHAINS_256 as f64, |n, s| unsafe { peak::fma256(n, s) }));
        }
    }
    None
}

/// Times `f` repeated until it has run [`MIN_SECONDS`] (at least once): seconds per call.
fn per_call(mut f: impl FnMut()) -> f64 {
    let (t, mut calls) = (Instant::now(), 0u32);
    loop {
        f();
        calls += 1;
        let s = t.elapsed().as_secs_f64();
        if s >= MIN_SECONDS {
            return s / calls as f64;
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Measured {
    gflops: f64,
    of_peak: f64,
    seconds: f64,
}

/// Peak GFLOP/s on every thread of the current pool: `iters` sized to about [`MIN_SECONDS`].
fn peak_gflops(lp: &PeakLoop, iters: usize) -> f64 {
    let threads = rayon::current_num_threads();
    let t = Instant::now();
    let s: f32 = (0..threads).into_par_iter().map(|i| (lp.2)(std::hint::black_box(iters), i as f32)).sum();
    std::hint::black_box(s);
    lp.1 * iters as f64 * threads as f64 / t.elapsed().as_secs_f64() / 1e9
}

fn measure(lp: &PeakLoop, iters: usize, rounds: usize, flops: f64, mut pass: impl FnMut()) -> Measured {
    pass(); // warm-up: page faults, the kernels' one-time setup
    let (mut gf, mut ratio, mut secs) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let peak = peak_gflops(lp, iters);
        let s = per_call(&mut pass);
        gf.push(flops / s / 1e9);
        ratio.push(flops / s / 1e9 / peak);
        secs.push(s);
    }
    Measured { gflops: median(&mut gf), of_peak: median(&mut ratio), seconds: median(&mut secs) }
}

/// The convolutions of the trainer's network at depth 1 (`src/train/model.rs`): the stem, then one
/// `c -> 2c` stage per plane size.
fn layers(width: usize, batch: usize) -> Vec<(String, Conv2dShape)> {
    let shape = |c: usize, k: usize, hw: usize| {
        Conv2dShape::new([batch, c, hw, hw], [k, c, 3, 3], Conv2dOpts::square(1, 1)).expect("a valid layer")
    };
    let mut out = vec![(format!("3->{width} 32x32"), shape(3, width, 32))];
    for (c, hw) in [(width, 32), (2 * width, 16), (4 * width, 8)] {
        out.push((format!("{c}->{} {hw}x{hw}", 2 * c), shape(c, 2 * c, hw)));
    }
    out
}

fn main() {
    let args = parse();
    let Some(lp) = peak_loop() else {
        eprintln!("roofline: this CPU has neither AVX-512 nor AVX2 + FMA; nothing to compare against");
        return;
    };
    let mut csv = args.csv.as_ref().map(|p| {
        let mut f = std::fs::File::create(p).unwrap_or_else(|e| usage(&format!("cannot create {p}: {e}")));
        writeln!(f, "threads,width,layer,pass,gflops,peak_gflops,of_peak,seconds").expect("write the CSV header");
        f
    });
    for &threads in &args.threads {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a rayon pool");
        pool.install(|| {
            // Size the peak loop to about MIN_SECONDS on this machine.
            let iters = {
                let probe = 1 << 16;
                let g = peak_gflops(&lp, probe);
                ((MIN_SECONDS * g * 1e9 / threads as f64 / lp.1) as usize).max(probe)
            };
            let mut peaks: Vec<f64> = Vec::new();
            for &width in &args.widths {
                println!();
                println!("{threads} thread(s), width {width}, batch {}, {} rounds", args.batch, args.rounds);
                println!("{:<18}{:>20}{:>20}{:>20}", "", "forward", "data grad", "weight grad");
                println!("{:<18}{}", "layer", "   GFLOP/s   of peak".repeat(3));
                let (mut flops_all, mut secs_all, mut peak_sum, mut n) = (0.0, 0.0, 0.0, 0.0);
                for (name, sh) in layers(width, args.batch) {
                    let x = common::uniform(1, sh.input_len(), -1.0, 1.0);
                    let w = common::uniform(2, sh.filter_len(), -0.1, 0.1);
                    let dy = common::uniform(3, sh.output_len(), -1.0, 1.0);
                    let (mut y, mut dx, mut dw) =
                        (vec![0.0; sh.output_len()], vec![0.0; sh.input_len()], vec![0.0; sh.filter_len()]);
                    let algo = args.algo;
                    let mut line = format!("{name:<18}");
                    for pass in Pass::ALL {
                        if pass == Pass::Data && sh.c() == 3 {
                            line.push_str(&format!("{:>20}", "-"));
                            continue;
                        }
                        let m = measure(&lp, iters, args.rounds, sh.flops(), || {
                            match pass {
                                Pass::Forward => cpu::forward_into_with(algo, &sh, &x, &w, None, &mut y),
                                Pass::Data => cpu::backward_data_into_with(algo, &sh, &dy, &w, &mut dx),
                                Pass::Weight => cpu::backward_weight_into_with(algo, &sh, &x, &dy, &mut dw, 0.0),
                            }
                            .expect("a valid pass")
                        });
                        let peak = m.gflops / m.of_peak;
                        peaks.push(peak);
                        (flops_all, secs_all, peak_sum, n) =
                            (flops_all + sh.flops(), secs_all + m.seconds, peak_sum + peak, n + 1.0);
                        let ran = algo.resolve(&sh, pass.conv_pass());
                        let mark = if ran == cpu::CpuAlgo::Winograd { "w" } else { " " };
                        line.push_str(&format!("{:>10.0}{:>8.0}%{mark}", m.gflops, 100.0 * m.of_peak));
                        if let Some(f) = csv.as_mut() {
                            writeln!(
                                f,
                                "{threads},{width},{name},{},{:.2},{:.2},{:.4},{:.6}",
                                pass.name(),
                                m.gflops,
                                peak,
                                m.of_peak,
                                m.seconds
                            )
                            .expect("write a CSV row");
                        }
                    }
                    println!("{}", line.trim_end());
                }
                let total = flops_all / secs_all / 1e9;
                println!(
                    "all passes: {total:.0} GFLOP/s, {:.0}% of the mean peak ({:.0} GFLOP/s); {:.3} s a batch",
                    100.0 * total / (peak_sum / n),
                    peak_sum / n,
                    secs_all
                );
            }
            let (lo, hi) = peaks.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &p| (lo.min(p), hi.max(p)));
            println!("{threads} thread(s): the {} FMA peak ranged {lo:.0}-{hi:.0} GFLOP/s over the rounds", lp.0);
        });
    }
}
