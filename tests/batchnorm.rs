mod common;

use common::{assert_close, rng, uniform, POISON};
use evenclass::batchnorm::{cpu, cuda, BnConfig, BnShape};
use evenclass::Error;

const CFG: BnConfig = BnConfig { eps: 1e-5, momentum: 0.1 };

/// Two channels, two images, two values per plane. Channel 0 holds {1, 2, 3, 4}: mean 2.5,
/// biased var 1.25, unbiased 5/3. Channel 1 holds {10, 10, 10, 14}: mean 11, var 3, unbiased 4.
fn two_channel_case() -> (Vec<f32>, BnShape) {
    // NCHW: [img0 ch0 | img0 ch1 | img1 ch0 | img1 ch1]
    (vec![1.0, 2.0, 10.0, 10.0, 3.0, 4.0, 10.0, 14.0], BnShape { n: 2, c: 2, hw: 2 })
}

#[test]
fn train_forward_hand_worked() {
    let (x, shape) = two_channel_case();
    let (gamma, beta) = ([2.0, -1.0], [0.5, 3.0]);
    let (mut rm, mut rv) = (vec![0.0, 1.0], vec![1.0, 2.0]);
    let out = cpu::forward_train(&x, &gamma, &beta, &mut rm, &mut rv, shape, CFG).unwrap();
    let is0 = 1.0 / (1.25f32 + 1e-5).sqrt();
    let is1 = 1.0 / (3.0f32 + 1e-5).sqrt();
    assert_close("save_mean", &out.save_mean, &[2.5, 11.0], 1e-6, 1e-6);
    assert_close("save_invstd", &out.save_invstd, &[is0, is1], 1e-6, 1e-5);
    let want: Vec<f32> = [(1.0, 0), (2.0, 0), (10.0, 1), (10.0, 1), (3.0, 0), (4.0, 0), (10.0, 1), (14.0, 1)]
        .iter()
        .map(|&(v, c)| if c == 0 { 2.0 * (v - 2.5) * is0 + 0.5 } else { -(v - 11.0) * is1 + 3.0 })
        .collect();
    assert_close("y", &out.y, &want, 1e-5, 1e-5);
    // Running statistics: momentum 0.1 and the unbiased variance.
    assert_close("running_mean", &rm, &[0.25, 0.9 + 1.1], 1e-6, 1e-6);
    assert_close("running_var", &rv, &[0.9 + 0.1 * 5.0 / 3.0, 1.8 + 0.4], 1e-6, 1e-6);
}

#[test]
fn relu_forward_train_clamps_the_output() {
    let (x, shape) = two_channel_case();
    let (gamma, beta) = ([2.0, -1.0], [0.5, 3.0]);
    let (mut rm, mut rv) = (vec![0.0; 2], vec![1.0; 2]);
    let plain = cpu::forward_train(&x, &gamma, &beta, &mut rm.clone(), &mut rv.clone(), shape, CFG).unwrap();
    let fused = cpu::relu_forward_train(&x, &gamma, &beta, &mut rm, &mut rv, shape, CFG).unwrap();
    let want: Vec<f32> = plain.y.iter().map(|&v| v.max(0.0)).collect();
    assert!(plain.y.iter().any(|&v| v < 0.0), "the case must have negative outputs");
    assert_eq!(fused.y, want);
    assert_eq!(fused.save_mean, plain.save_mean);
    assert_eq!(fused.save_invstd, plain.save_invstd);
}

#[test]
fn eval_forward_hand_worked() {
    let (x, shape) = two_channel_case();
    let (gamma, beta) = ([2.0, -1.0], [0.5, 3.0]);
    let (rm, rv) = ([1.0, 12.0], [4.0 - 1e-5, 0.25 - 1e-5]); // invstd 0.5 and 2
    let y = cpu::forward_eval(&x, &gamma, &beta, &rm, &rv, shape, CFG).unwrap();
    let want: Vec<f32> = [(1.0, 0), (2.0, 0), (10.0, 1), (10.0, 1), (3.0, 0), (4.0, 0), (10.0, 1), (14.0, 1)]
        .iter()
        .map(|&(v, c)| if c == 0 { 2.0 * (v - 1.0) * 0.5 + 0.5 } else { -(v - 12.0) * 2.0 + 3.0 })
        .collect();
    assert_close("y", &y, &want, 1e-5, 1e-5);
    let yr = cpu::relu_forward_eval(&x, &gamma, &beta, &rm, &rv, shape, CFG).unwrap();
    let want_r: Vec<f32> = want.iter().map(|&v| v.max(0.0)).collect();
    assert_close("relu y", &yr, &want_r, 1e-5, 1e-5);
}

/// `sum w * y` in f64 for the finite differences.
fn weighted(y: &[f32], w: &[f32]) -> f64 {
    y.iter().zip(w).map(|(&a, &b)| a as f64 * b as f64).sum()
}

struct Case {
    x: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    w: Vec<f32>,
    shape: BnShape,
}

/// A random case; with `relu`, the first seed whose pre-activations all keep a margin from the
/// kink (so the central differences never straddle it).
fn fd_case(relu: bool) -> Case {
    let shape = BnShape { n: 3, c: 2, hw: 5 };
    for seed in 0.. {
        let mut r = rng(100 + seed);
        let c = Case {
            x: uniform(&mut r, shape.len(), -1.0, 1.0),
            gamma: uniform(&mut r, shape.c, 0.5, 1.5),
            beta: uniform(&mut r, shape.c, -0.5, 0.5),
            w: uniform(&mut r, shape.len(), -1.0, 1.0),
            shape,
        };
        let out = cpu::forward_train(&c.x, &c.gamma, &c.beta, &mut [0.0; 2], &mut [1.0; 2], shape, CFG).unwrap();
        if !relu || out.y.iter().all(|v| v.abs() > 0.1) {
            return c;
        }
    }
    unreachable!()
}

fn loss(c: &Case, x: &[f32], gamma: &[f32], beta: &[f32], relu: bool) -> f64 {
    let (mut rm, mut rv) = (vec![0.0; c.shape.c], vec![1.0; c.shape.c]);
    let f = if relu { cpu::relu_forward_train } else { cpu::forward_train };
    weighted(&f(x, gamma, beta, &mut rm, &mut rv, c.shape, CFG).unwrap().y, &c.w)
}

fn check_backward_fd(relu: bool) {
    let c = fd_case(relu);
    let (mut rm, mut rv) = (vec![0.0; c.shape.c], vec![1.0; c.shape.c]);
    let fwd = if relu { cpu::relu_forward_train } else { cpu::forward_train };
    let out = fwd(&c.x, &c.gamma, &c.beta, &mut rm, &mut rv, c.shape, CFG).unwrap();
    // dL/dy = w.
    let g = if relu {
        cpu::relu_backward(&c.x, &out.y, &c.w, &c.gamma, &out.save_mean, &out.save_invstd, c.shape).unwrap()
    } else {
        cpu::backward(&c.x, &c.w, &c.gamma, &out.save_mean, &out.save_invstd, c.shape).unwrap()
    };
    // Observed agreement is ~3e-5; the tolerances leave a 10x margin and still catch a 1% error.
    let h = 1e-2f32;
    let fd = |v: &[f32], i: usize, eval: &dyn Fn(&[f32]) -> f64| {
        let (mut a, mut b) = (v.to_vec(), v.to_vec());
        a[i] += h;
        b[i] -= h;
        ((eval(&a) - eval(&b)) / (2.0 * h as f64)) as f32
    };
    let num_dx: Vec<f32> = (0..c.x.len()).map(|i| fd(&c.x, i, &|x| loss(&c, x, &c.gamma, &c.beta, relu))).collect();
    let num_dg: Vec<f32> = (0..c.shape.c).map(|i| fd(&c.gamma, i, &|gm| loss(&c, &c.x, gm, &c.beta, relu))).collect();
    let num_db: Vec<f32> = (0..c.shape.c).map(|i| fd(&c.beta, i, &|bt| loss(&c, &c.x, &c.gamma, bt, relu))).collect();
    assert_close("dx vs finite differences", &g.dx, &num_dx, 3e-4, 2e-3);
    assert_close("dgamma vs finite differences", &g.dgamma, &num_dg, 3e-4, 2e-3);
    assert_close("dbeta vs finite differences", &g.dbeta, &num_db, 3e-4, 2e-3);
    if relu {
        assert!(out.y.contains(&0.0), "the relu case must have clamped outputs");
    }
}

#[test]
fn backward_matches_finite_differences() {
    check_backward_fd(false);
}

#[test]
fn relu_backward_matches_finite_differences() {
    check_backward_fd(true);
}

#[test]
fn into_forms_match_allocating_forms() {
    let mut r = rng(7);
    let shape = BnShape { n: 4, c: 3, hw: 9 };
    let x = uniform(&mut r, shape.len(), -2.0, 2.0);
    let dy = uniform(&mut r, shape.len(), -1.0, 1.0);
    let (gamma, beta) = (uniform(&mut r, 3, 0.5, 1.5), uniform(&mut r, 3, -0.5, 0.5));
    let (mut rm1, mut rv1) = (vec![0.0; 3], vec![1.0; 3]);
    let (mut rm2, mut rv2) = (rm1.clone(), rv1.clone());
    let a = cpu::relu_forward_train(&x, &gamma, &beta, &mut rm1, &mut rv1, shape, CFG).unwrap();
    let (mut y, mut sm, mut si) = (vec![POISON; shape.len()], vec![POISON; 3], vec![POISON; 3]);
    cpu::relu_forward_train_into(&x, &gamma, &beta, &mut rm2, &mut rv2, &mut y, &mut sm, &mut si, shape, CFG).unwrap();
    assert_eq!((a.y.clone(), a.save_mean.clone(), a.save_invstd.clone(), rm1, rv1), (y.clone(), sm, si, rm2, rv2));
    let g = cpu::relu_backward(&x, &a.y, &dy, &gamma, &a.save_mean, &a.save_invstd, shape).unwrap();
    let (mut dx, mut dg, mut db) = (vec![POISON; shape.len()], vec![POISON; 3], vec![POISON; 3]);
    cpu::relu_backward_into(&x, &y, &dy, &gamma, &a.save_mean, &a.save_invstd, &mut dx, &mut dg, &mut db, shape)
        .unwrap();
    assert_eq!((g.dx, g.dgamma, g.dbeta), (dx, dg, db));
}

/// The backward in f64 from its definition, with PyTorch's ReLU mask (`y <= 0` drops the
/// gradient; a NaN output keeps it): `(dx, dgamma, dbeta)`.
fn backward_f64(
    x: &[f32],
    y: Option<&[f32]>,
    dy: &[f32],
    gamma: &[f32],
    mean: &[f32],
    invstd: &[f32],
    s: BnShape,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let m = s.per_channel() as f64;
    let at = |i: usize, ch: usize, k: usize| (i * s.c + ch) * s.hw + k;
    let g = |j: usize| match y {
        Some(y) if y[j] <= 0.0 => 0.0,
        _ => dy[j] as f64,
    };
    let (mut dx, mut dg, mut db) = (vec![0.0; x.len()], vec![0.0; s.c], vec![0.0; s.c]);
    for ch in 0..s.c {
        let (mu, is) = (mean[ch] as f64, invstd[ch] as f64);
        let (mut sg, mut sgx) = (0.0, 0.0);
        for i in 0..s.n {
            for k in 0..s.hw {
                let j = at(i, ch, k);
                sg += g(j);
                sgx += g(j) * (x[j] as f64 - mu);
            }
        }
        db[ch] = sg as f32;
        dg[ch] = (sgx * is) as f32;
        for i in 0..s.n {
            for k in 0..s.hw {
                let j = at(i, ch, k);
                let xhat = (x[j] as f64 - mu) * is;
                dx[j] = (gamma[ch] as f64 * is * (g(j) - sg / m - xhat * sgx * is / m)) as f32;
            }
        }
    }
    (dx, dg, db)
}

#[test]
fn backward_matches_the_definition_at_planes_of_8_and_a_rest() {
    // Planes of 16 and 21 values: whole groups of 8 (the vector path of the sums) and a rest of 5
    // (the scalar one). The ReLU outputs include zeros, negative values and NaNs.
    for hw in [16, 21, 3] {
        let shape = BnShape { n: 3, c: 2, hw };
        let mut r = rng(40 + hw as u64);
        let x = uniform(&mut r, shape.len(), -2.0, 2.0);
        let dy = uniform(&mut r, shape.len(), -1.0, 1.0);
        let (gamma, beta) = (uniform(&mut r, 2, 0.5, 1.5), uniform(&mut r, 2, -0.5, 0.5));
        let out = cpu::relu_forward_train(&x, &gamma, &beta, &mut [0.0; 2], &mut [1.0; 2], shape, CFG).unwrap();
        let mut y = out.y.clone();
        y[1] = -0.5;
        y[hw + 2] = f32::NAN;
        y[2 * hw - 1] = f32::NAN;
        assert!(y.contains(&0.0), "some outputs must be clamped");
        for relu in [true, false] {
            let yy = relu.then_some(&y[..]);
            let g = match yy {
                Some(y) => cpu::relu_backward(&x, y, &dy, &gamma, &out.save_mean, &out.save_invstd, shape),
                None => cpu::backward(&x, &dy, &gamma, &out.save_mean, &out.save_invstd, shape),
            }
            .unwrap();
            let (dx, dg, db) = backward_f64(&x, yy, &dy, &gamma, &out.save_mean, &out.save_invstd, shape);
            // f32 sums of 48-63 terms of size <= 2 (errors near 1e-6 observed); 1e-4 allows
            // the worst case of such sums and still catches one dropped or unmasked term (>= 1e-3).
            let what = format!("hw {hw}, relu {relu}");
            assert_close(&format!("{what} dbeta"), &g.dbeta, &db, 1e-4, 1e-5);
            assert_close(&format!("{what} dgamma"), &g.dgamma, &dg, 1e-4, 1e-5);
            assert_close(&format!("{what} dx"), &g.dx, &dx, 1e-4, 1e-5);
        }
    }
}

#[test]
fn results_are_the_same_bits_with_any_thread_count() {
    // Per-plane partial sums added in image order: the split over threads must not matter.
    let shape = BnShape { n: 37, c: 5, hw: 29 };
    let mut r = rng(9);
    let x = uniform(&mut r, shape.len(), -3.0, 5.0);
    let dy = uniform(&mut r, shape.len(), -1.0, 1.0);
    let (gamma, beta) = (uniform(&mut r, 5, 0.5, 1.5), uniform(&mut r, 5, -0.5, 0.5));
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let (mut rm, mut rv) = (vec![0.1; 5], vec![0.9; 5]);
            let out = cpu::relu_forward_train(&x, &gamma, &beta, &mut rm, &mut rv, shape, CFG).unwrap();
            let g = cpu::relu_backward(&x, &out.y, &dy, &gamma, &out.save_mean, &out.save_invstd, shape).unwrap();
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            [out.y, out.save_mean, out.save_invstd, rm, rv, g.dx, g.dgamma, g.dbeta].map(|v| bits(&v))
        })
    };
    let one = run(1);
    assert_eq!(run(3), one);
    assert_eq!(run(8), one);
}

#[track_caller]
fn shape_err<T>(r: Result<T, Error>) {
    assert!(matches!(r, Err(Error::Shape { .. })), "expected a shape error");
}

#[test]
fn bad_inputs_are_errors() {
    let shape = BnShape { n: 2, c: 2, hw: 3 };
    let x = vec![0.5; shape.len()];
    let (g, b) = ([1.0; 2], [0.0; 2]);
    shape_err(cpu::forward_train(&x[1..], &g, &b, &mut [0.0; 2], &mut [1.0; 2], shape, CFG));
    shape_err(cpu::forward_train(&x, &g[..1], &b, &mut [0.0; 2], &mut [1.0; 2], shape, CFG));
    shape_err(cpu::forward_train(&x, &g, &b, &mut [0.0; 3], &mut [1.0; 2], shape, CFG));
    shape_err(cpu::forward_eval(&x, &g, &b, &[0.0; 2], &[1.0; 1], shape, CFG));
    shape_err(cpu::backward(&x, &x[1..], &g, &[0.0; 2], &[1.0; 2], shape));
    shape_err(cpu::relu_backward(&x, &x[2..], &x, &g, &[0.0; 2], &[1.0; 2], shape));
    // One value per channel cannot be normalized with batch statistics (PyTorch refuses too) ...
    let one = BnShape { n: 1, c: 2, hw: 1 };
    shape_err(cpu::forward_train(&[1.0, 2.0], &g, &b, &mut [0.0; 2], &mut [1.0; 2], one, CFG));
    // ... but eval mode is fine.
    assert!(cpu::forward_eval(&[1.0, 2.0], &g, &b, &[0.0; 2], &[1.0; 2], one, CFG).is_ok());
}

// ---- GPU vs CPU ----------------------------------------------------------------------------------

fn gpu_case(shape: BnShape, seed: u64) {
    let mut r = rng(seed);
    let x = uniform(&mut r, shape.len(), -3.0, 5.0);
    gpu_case_x(shape, &x, seed, 0);
}

/// The GPU against the CPU reference on `x` (other inputs drawn from `seed`): training forward
/// (plain with a fresh workspace a call, fused ReLU with one workspace for every call), eval
/// forward, backward. `offset` > 0 places every tensor that many floats into its buffer, so
/// that the pointers are not 16-byte aligned and the kernels take the scalar path.
fn gpu_case_x(shape: BnShape, x: &[f32], seed: u64, offset: usize) {
    use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
    let s = common::gpu();
    let mut r = rng(seed ^ 0x5eed);
    let c = shape.c;
    let len = shape.len();
    let dy = uniform(&mut r, len, -1.0, 1.0);
    let gamma = uniform(&mut r, c, 0.5, 1.5);
    let beta = uniform(&mut r, c, -0.5, 0.5);
    let rm0 = uniform(&mut r, c, -0.5, 0.5);
    let rv0 = uniform(&mut r, c, 0.5, 2.0);
    let up = |v: &[f32]| s.clone_htod(v).unwrap();
    // A tensor behind `offset` poisoned floats (written, so never read uninitialized).
    let up_at = |v: &[f32]| {
        let mut b = vec![POISON; offset];
        b.extend_from_slice(v);
        s.clone_htod(&b).unwrap()
    };
    let poison = |n: usize| s.clone_htod(&vec![POISON; n]).unwrap();
    let down = |d: &CudaSlice<f32>| s.clone_dtoh(d).unwrap();
    let down_at = |d: &CudaSlice<f32>| s.clone_dtoh(d).unwrap()[offset..].to_vec();
    fn at(d: &CudaSlice<f32>, offset: usize) -> CudaView<'_, f32> {
        d.slice(offset..)
    }
    fn at_mut(d: &mut CudaSlice<f32>, offset: usize) -> CudaViewMut<'_, f32> {
        d.slice_mut(offset..)
    }
    let (xd, dyd, gd, bd) = (up_at(x), up_at(&dy), up(&gamma), up(&beta));
    let mut ws = cuda::Workspace::new();

    for relu in [false, true] {
        let what = format!("{shape:?} offset {offset} {}", if relu { "relu" } else { "plain" });
        // Training forward.
        let (mut rm, mut rv) = (rm0.clone(), rv0.clone());
        let f = if relu { cpu::relu_forward_train } else { cpu::forward_train };
        let want = f(x, &gamma, &beta, &mut rm, &mut rv, shape, CFG).unwrap();
        let (mut rmd, mut rvd) = (up(&rm0), up(&rv0));
        let (mut yd, mut smd, mut sid) = (poison(len + offset), poison(c), poison(c));
        let (xv, mut yv) = (at(&xd, offset), at_mut(&mut yd, offset));
        if relu {
            cuda::relu_forward_train_in(
                &s, &xv, &gd, &bd, &mut rmd, &mut rvd, &mut yv, &mut smd, &mut sid, shape, CFG, &mut ws,
            )
        } else {
            cuda::forward_train(&s, &xv, &gd, &bd, &mut rmd, &mut rvd, &mut yv, &mut smd, &mut sid, shape, CFG)
        }
        .unwrap();
        // The GPU merges per-thread and per-slice moments, the CPU sums in two passes: both are
        // accurate to a few f32 roundings of the values' scale, far inside these tolerances.
        assert_close(&format!("{what} y"), &down_at(&yd), &want.y, 1e-4, 1e-4);
        assert_close(&format!("{what} save_mean"), &down(&smd), &want.save_mean, 1e-5, 1e-5);
        assert_close(&format!("{what} save_invstd"), &down(&sid), &want.save_invstd, 1e-5, 1e-4);
        assert_close(&format!("{what} running_mean"), &down(&rmd), &rm, 1e-5, 1e-5);
        assert_close(&format!("{what} running_var"), &down(&rvd), &rv, 1e-5, 1e-4);
        if offset > 0 {
            assert!(down(&yd)[..offset].iter().all(|&v| v == POISON), "{what}: wrote before y");
        }

        // Eval forward from the (CPU-updated) running statistics.
        let fe = if relu { cpu::relu_forward_eval } else { cpu::forward_eval };
        let want_eval = fe(x, &gamma, &beta, &rm, &rv, shape, CFG).unwrap();
        let mut yed = poison(len + offset);
        let (rmd, rvd) = (up(&rm), up(&rv));
        let mut yev = at_mut(&mut yed, offset);
        if relu {
            cuda::relu_forward_eval(&s, &xv, &gd, &bd, &rmd, &rvd, &mut yev, shape, CFG)
        } else {
            cuda::forward_eval(&s, &xv, &gd, &bd, &rmd, &rvd, &mut yev, shape, CFG)
        }
        .unwrap();
        assert_close(&format!("{what} eval y"), &down_at(&yed), &want_eval, 1e-5, 1e-5);

        // Backward, from the CPU's saved statistics and output so both sides see the same mask.
        let want_g = if relu {
            cpu::relu_backward(x, &want.y, &dy, &gamma, &want.save_mean, &want.save_invstd, shape).unwrap()
        } else {
            cpu::backward(x, &dy, &gamma, &want.save_mean, &want.save_invstd, shape).unwrap()
        };
        let (smd, sid) = (up(&want.save_mean), up(&want.save_invstd));
        let (mut dxd, mut dgd, mut dbd) = (poison(len + offset), poison(c), poison(c));
        let (dyv, mut dxv) = (at(&dyd, offset), at_mut(&mut dxd, offset));
        if relu {
            let yd = up_at(&want.y);
            let yv = at(&yd, offset);
            cuda::relu_backward_in(&s, &xv, &yv, &dyv, &gd, &smd, &sid, &mut dxv, &mut dgd, &mut dbd, shape, &mut ws)
                .unwrap();
        } else {
            cuda::backward(&s, &xv, &dyv, &gd, &smd, &sid, &mut dxv, &mut dgd, &mut dbd, shape).unwrap();
        }
        // Sums of m values in different orders: the absolute tolerance grows with m.
        let sum_tol = 1e-5 + 1e-6 * shape.per_channel() as f32;
        assert_close(&format!("{what} dbeta"), &down(&dbd), &want_g.dbeta, sum_tol, 1e-4);
        assert_close(&format!("{what} dgamma"), &down(&dgd), &want_g.dgamma, sum_tol, 1e-4);
        assert_close(&format!("{what} dx"), &down_at(&dxd), &want_g.dx, 1e-4, 1e-3);
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_matches_cpu_small_odd() {
    gpu_case(BnShape { n: 3, c: 5, hw: 7 * 9 }, 1);
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_matches_cpu_planes_longer_than_a_block() {
    gpu_case(BnShape { n: 5, c: 3, hw: 33 * 33 }, 2);
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_matches_cpu_long_channels() {
    // m = 35,557 values a channel: 9 slices of 3,951 values or fewer (scalar path, hw odd).
    gpu_case(BnShape { n: 37, c: 2, hw: 31 * 31 }, 3);
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_matches_cpu_odd_planes() {
    // hw = 1, 3, 5x5, 7x7 with n = 1 and 3 (n * hw >= 2 for training): the scalar path, one slice.
    let mut seed = 10;
    for hw in [1, 3, 25, 49] {
        for n in [1, 3] {
            if n * hw >= 2 {
                gpu_case(BnShape { n, c: 3, hw }, seed);
                seed += 1;
            }
        }
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_matches_cpu_float4_slices_across_images() {
    // hw = 32x32 (float4 path): m = 7,168 in 2 slices of 3,584 values, so a slice ends in the
    // middle of an image; hw = 4 and 8x8 with tiny n: float4 groups, one slice.
    gpu_case(BnShape { n: 7, c: 2, hw: 32 * 32 }, 20);
    gpu_case(BnShape { n: 1, c: 3, hw: 4 }, 21);
    gpu_case(BnShape { n: 3, c: 70, hw: 8 * 8 }, 22);
    assert_eq!(cuda::split_plan(BnShape { n: 7, c: 2, hw: 32 * 32 }, true), cuda::SplitPlan { splits: 2, chunk: 3584 });
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_matches_cpu_unaligned_tensors() {
    // Tensors one float into their buffers: hw % 4 == 0 but the pointers are not 16-byte aligned,
    // so the kernels must take the scalar path (a float4 access there faults, on the emulated
    // driver as on a GPU).
    let shape = BnShape { n: 9, c: 2, hw: 32 * 32 };
    let x = uniform(&mut rng(30), shape.len(), -3.0, 5.0);
    gpu_case_x(shape, &x, 30, 1);
}

/// Standard normal values (Box-Muller on the test's uniform generator).
fn normal(r: &mut rand_pcg::Pcg64, n: usize) -> Vec<f64> {
    let u = uniform(r, 2 * n, 0.0, 1.0);
    u.chunks_exact(2)
        .map(|p| {
            let (a, b) = (f64::from(p[0]).max(1e-12), f64::from(p[1]));
            (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
        })
        .collect()
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_statistics_survive_a_large_mean() {
    // Channel 0 is 1e4 + N(0, 1), channel 1 is N(0, 1) * 1e-3 + 5: the variance is 1e-8 (ch 0)
    // and 4e-8 (ch 1) of the squared mean. In f32 the sum of squares minus the squared sum
    // cancels it away (ulp(1e8) = 8 against a variance of 1); Welford per thread and Chan's merge
    // square only deviations from running means. m = 20,736 values in 6 slices (float4 path).
    let shape = BnShape { n: 9, c: 2, hw: 48 * 48 };
    let mut r = rng(40);
    let z = normal(&mut r, shape.len());
    let x: Vec<f32> = (0..shape.len())
        .map(|i| {
            let ch = (i / shape.hw) % shape.c;
            if ch == 0 {
                (1e4 + z[i]) as f32
            } else {
                (5.0 + 1e-3 * z[i]) as f32
            }
        })
        .collect();
    // f64 reference of the f32 inputs.
    let m = shape.per_channel() as f64;
    let mut want_mean = [0.0f64; 2];
    let mut want_var = [0.0f64; 2];
    for ch in 0..2 {
        let vals: Vec<f64> = (0..shape.n)
            .flat_map(|i| x[(i * shape.c + ch) * shape.hw..][..shape.hw].iter().map(|&v| f64::from(v)))
            .collect();
        want_mean[ch] = vals.iter().sum::<f64>() / m;
        want_var[ch] = vals.iter().map(|v| (v - want_mean[ch]).powi(2)).sum::<f64>() / m;
    }
    let s = common::gpu();
    let up = |v: &[f32]| s.clone_htod(v).unwrap();
    let (xd, gd, bd) = (up(&x), up(&[1.0, 1.0]), up(&[0.0, 0.0]));
    let (mut rmd, mut rvd) = (up(&[0.0, 0.0]), up(&[1.0, 1.0]));
    let (mut yd, mut smd, mut sid) = (up(&vec![POISON; shape.len()]), up(&[POISON; 2]), up(&[POISON; 2]));
    let eps = 1e-12; // so that invstd measures the variance, not eps (1e-6 is channel 1's)
    let cfg = BnConfig { eps, momentum: 1.0 };
    cuda::forward_train(&s, &xd, &gd, &bd, &mut rmd, &mut rvd, &mut yd, &mut smd, &mut sid, shape, cfg).unwrap();
    let (mean, invstd, rv) = (s.clone_dtoh(&smd).unwrap(), s.clone_dtoh(&sid).unwrap(), s.clone_dtoh(&rvd).unwrap());
    for ch in 0..2 {
        let var = want_var[ch];
        // Mean: one f32 rounding of 1e4 is 5e-4 absolute; allow 4 (merges round it again).
        let mean_tol = 4.0 * f64::from(f32::EPSILON) * want_mean[ch].abs();
        assert!(
            (f64::from(mean[ch]) - want_mean[ch]).abs() <= mean_tol,
            "ch {ch}: mean {} vs {}",
            mean[ch],
            want_mean[ch]
        );
        // Variance: Welford and Chan square deviations from means that are off by a few f32
        // roundings of the mean (1e-3 absolute for channel 0), which enter through the merges'
        // squared mean differences; observed 1.6e-5 (channel 0) and 1.1e-6 (channel 1), the
        // invstd's own f32 rounding included. 1e-3 leaves a 60x margin for the device's different
        // rounding (fused multiply-adds) and is a million times below what the cancelling formula
        // gets wrong (4e3 relative here, checked below).
        let got_var = 1.0 / f64::from(invstd[ch]).powi(2) - f64::from(eps);
        assert!(((got_var - var) / var).abs() < 1e-3, "ch {ch}: var {got_var} vs {var}");
        let unbiased = var * m / (m - 1.0);
        let rel = (f64::from(rv[ch]) - unbiased) / unbiased;
        assert!(rel.abs() < 1e-3, "ch {ch}: running var {} vs {unbiased}", rv[ch]);
    }
    // The test has teeth: the one-pass sum of squares in f32 gets channel 0's variance wrong by
    // far more than the tolerance (observed: 4e3 times the variance).
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    for i in 0..shape.n {
        for &v in &x[(i * shape.c) * shape.hw..][..shape.hw] {
            s1 += v;
            s2 += v * v;
        }
    }
    let naive = f64::from(s2 / m as f32 - (s1 / m as f32).powi(2));
    assert!(((naive - want_var[0]) / want_var[0]).abs() > 1.0, "naive var {naive} vs {}", want_var[0]);
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_results_are_the_same_bits_every_run() {
    // Several slices a channel (9 and 3 here), scalar and float4 paths: the forward and the backward
    // twice each on the same inputs (the second with a reused, already-written workspace) give
    // the same bits; nothing depends on block timing.
    for shape in [BnShape { n: 37, c: 2, hw: 31 * 31 }, BnShape { n: 9, c: 3, hw: 32 * 32 }] {
        let s = common::gpu();
        let mut r = rng(50);
        let x = uniform(&mut r, shape.len(), -3.0, 5.0);
        let dy = uniform(&mut r, shape.len(), -1.0, 1.0);
        let c = shape.c;
        let up = |v: &[f32]| s.clone_htod(v).unwrap();
        let (xd, dyd, gd, bd) = (up(&x), up(&dy), up(&vec![1.2; c]), up(&vec![0.1; c]));
        let mut ws = cuda::Workspace::new();
        let mut run = || {
            let (mut rm, mut rv) = (up(&vec![0.0; c]), up(&vec![1.0; c]));
            let (mut y, mut sm, mut si) = (up(&vec![POISON; shape.len()]), up(&vec![POISON; c]), up(&vec![POISON; c]));
            cuda::relu_forward_train_in(
                &s, &xd, &gd, &bd, &mut rm, &mut rv, &mut y, &mut sm, &mut si, shape, CFG, &mut ws,
            )
            .unwrap();
            let (mut dx, mut dg, mut db) = (up(&vec![POISON; shape.len()]), up(&vec![POISON; c]), up(&vec![POISON; c]));
            cuda::relu_backward_in(&s, &xd, &y, &dyd, &gd, &sm, &si, &mut dx, &mut dg, &mut db, shape, &mut ws)
                .unwrap();
            let bits = |d: &cudarc::driver::CudaSlice<f32>| -> Vec<u32> {
                s.clone_dtoh(d).unwrap().iter().map(|v| v.to_bits()).collect()
            };
            [&y, &sm, &si, &rm, &rv, &dx, &dg, &db].map(bits)
        };
        let (a, b) = (run(), run());
        for (k, (a, b)) in a.iter().zip(&b).enumerate() {
            assert!(a == b, "{shape:?}: output {k} differs between two runs");
        }
        assert_eq!(ws.len(), 2 * c * cuda::split_plan(shape, shape.hw.is_multiple_of(4)).splits);
    }
}

#[test]
fn split_plan_cuts_every_channel_into_non_empty_slices() {
    for n in [1, 2, 3, 37, 512] {
        for hw in [1, 3, 4, 25, 49, 64, 1024] {
            for c in [1, 3, 64, 512, 5000] {
                for vec in [false, true] {
                    let shape = BnShape { n, c, hw };
                    let m = shape.per_channel();
                    let p = cuda::split_plan(shape, vec);
                    assert!((1..=cuda::MAX_SPLITS).contains(&p.splits), "{shape:?}: {p:?}");
                    assert!((p.splits - 1) * p.chunk < m && m <= p.splits * p.chunk, "{shape:?}: {p:?}");
                    assert!(!vec || p.chunk.is_multiple_of(4), "{shape:?}: {p:?}");
                }
            }
        }
    }
    // The default network's first layer (batch 512, 64 channels of 32x32): 16 slices of 32
    // images (1,024 blocks, one wave of 8 for each of 132 SMs); 512 channels of 4x4 (8,192
    // values each) get 2 slices (floor(1056 / 512)) of 4,096, the shortest a slice may be.
    let p = cuda::split_plan(BnShape { n: 512, c: 64, hw: 1024 }, true);
    assert_eq!((p.splits, p.chunk), (16, 32 * 1024));
    let p = cuda::split_plan(BnShape { n: 512, c: 512, hw: 16 }, true);
    assert_eq!((p.splits, p.chunk), (2, 4096));
    let p = cuda::split_plan(BnShape { n: 512, c: 1024, hw: 16 }, true);
    assert_eq!((p.splits, p.chunk), (1, 8192));
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_bad_lengths_are_errors() {
    let s = common::gpu();
    let shape = BnShape { n: 2, c: 2, hw: 3 };
    let x = s.clone_htod(&vec![1.0f32; shape.len() - 1]).unwrap();
    let g = s.clone_htod(&[1.0f32; 2]).unwrap();
    let (mut rm, mut rv) = (s.clone_htod(&[0.0f32; 2]).unwrap(), s.clone_htod(&[1.0f32; 2]).unwrap());
    let (mut y, mut sm, mut si) = (
        s.clone_htod(&vec![0.0f32; shape.len()]).unwrap(),
        s.clone_htod(&[0.0f32; 2]).unwrap(),
        s.clone_htod(&[0.0f32; 2]).unwrap(),
    );
    let r = cuda::forward_train(&s, &x, &g, &g, &mut rm, &mut rv, &mut y, &mut sm, &mut si, shape, CFG);
    assert!(matches!(r, Err(Error::Shape { .. })));
}

/// bf16 activations (mixed precision): x, y, dy and dx are bf16, the statistics, parameters and
/// math f32. The inputs are bf16 values, so the CPU reference (f32) runs on exactly what the GPU
/// reads. Tolerances: the f32 kernel's (the GPU's reduction order against the CPU's), plus one
/// bf16 ulp (2^-7 relative) on the bf16 outputs y and dx, whose f32 values on the two sides can
/// straddle a rounding boundary.
fn gpu_case_bf16(shape: BnShape, seed: u64, offset: usize) {
    use common::{bf16_round, from_bf16, to_bf16};
    use half::bf16;
    let s = common::gpu();
    let mut r = rng(seed);
    let (c, len) = (shape.c, shape.len());
    let x = bf16_round(&uniform(&mut r, len, -3.0, 5.0));
    let dy = bf16_round(&uniform(&mut r, len, -1.0, 1.0));
    let gamma = uniform(&mut r, c, 0.5, 1.5);
    let beta = uniform(&mut r, c, -0.5, 0.5);
    let rm0 = uniform(&mut r, c, -0.5, 0.5);
    let rv0 = uniform(&mut r, c, 0.5, 2.0);
    let up = |v: &[f32]| s.clone_htod(v).unwrap();
    // `offset` bf16 values before each activation tensor: 2 bytes each, so an odd offset leaves
    // the pointers unaligned for the 8-byte groups and the kernels take the scalar path.
    let up_act = |v: &[f32]| {
        let mut b = vec![bf16::NAN; offset];
        b.extend(to_bf16(v));
        s.clone_htod(&b).unwrap()
    };
    let poison_act = || s.clone_htod(&vec![bf16::NAN; len + offset]).unwrap();
    let down_act = |d: &cudarc::driver::CudaSlice<bf16>| from_bf16(&s.clone_dtoh(d).unwrap()[offset..]);
    let poison = |n: usize| s.clone_htod(&vec![POISON; n]).unwrap();
    let down = |d: &cudarc::driver::CudaSlice<f32>| s.clone_dtoh(d).unwrap();
    const ULP: f32 = 1.0 / 128.0;
    let (xd, dyd, gd, bd) = (up_act(&x), up_act(&dy), up(&gamma), up(&beta));
    let mut ws = cuda::Workspace::new();
    for relu in [false, true] {
        let what = format!("bf16 {shape:?} offset {offset} {}", if relu { "relu" } else { "plain" });
        let (mut rm, mut rv) = (rm0.clone(), rv0.clone());
        let f = if relu { cpu::relu_forward_train } else { cpu::forward_train };
        let want = f(&x, &gamma, &beta, &mut rm, &mut rv, shape, CFG).unwrap();
        let (mut rmd, mut rvd, mut yd, mut smd, mut sid) = (up(&rm0), up(&rv0), poison_act(), poison(c), poison(c));
        let xv = xd.slice(offset..);
        let mut yv = yd.slice_mut(offset..);
        if relu {
            cuda::relu_forward_train_in(
                &s, &xv, &gd, &bd, &mut rmd, &mut rvd, &mut yv, &mut smd, &mut sid, shape, CFG, &mut ws,
            )
        } else {
            cuda::forward_train_in(
                &s, &xv, &gd, &bd, &mut rmd, &mut rvd, &mut yv, &mut smd, &mut sid, shape, CFG, &mut ws,
            )
        }
        .unwrap();
        assert_close(&format!("{what} y"), &down_act(&yd), &want.y, 1e-4, 1e-4 + ULP);
        assert_close(&format!("{what} save_mean"), &down(&smd), &want.save_mean, 1e-5, 1e-5);
        assert_close(&format!("{what} save_invstd"), &down(&sid), &want.save_invstd, 1e-5, 1e-4);
        assert_close(&format!("{what} running_var"), &down(&rvd), &rv, 1e-5, 1e-4);

        let fe = if relu { cpu::relu_forward_eval } else { cpu::forward_eval };
        let want_eval = fe(&x, &gamma, &beta, &rm, &rv, shape, CFG).unwrap();
        let (rmd, rvd, mut yed) = (up(&rm), up(&rv), poison_act());
        let mut yev = yed.slice_mut(offset..);
        if relu {
            cuda::relu_forward_eval(&s, &xv, &gd, &bd, &rmd, &rvd, &mut yev, shape, CFG)
        } else {
            cuda::forward_eval(&s, &xv, &gd, &bd, &rmd, &rvd, &mut yev, shape, CFG)
        }
        .unwrap();
        assert_close(&format!("{what} eval y"), &down_act(&yed), &want_eval, 1e-5, 1e-5 + ULP);

        // Backward from the CPU's statistics and its output rounded as the GPU stores it: the
        // ReLU mask is the same on both sides (rounding keeps the sign and zero).
        let y_saved = bf16_round(&want.y);
        let want_g = if relu {
            cpu::relu_backward(&x, &y_saved, &dy, &gamma, &want.save_mean, &want.save_invstd, shape).unwrap()
        } else {
            cpu::backward(&x, &dy, &gamma, &want.save_mean, &want.save_invstd, shape).unwrap()
        };
        let (smd, sid, ysd) = (up(&want.save_mean), up(&want.save_invstd), up_act(&y_saved));
        let (mut dxd, mut dgd, mut dbd) = (poison_act(), poison(c), poison(c));
        let (dyv, ysv) = (dyd.slice(offset..), ysd.slice(offset..));
        let mut dxv = dxd.slice_mut(offset..);
        if relu {
            cuda::relu_backward_in(&s, &xv, &ysv, &dyv, &gd, &smd, &sid, &mut dxv, &mut dgd, &mut dbd, shape, &mut ws)
        } else {
            cuda::backward_in(&s, &xv, &dyv, &gd, &smd, &sid, &mut dxv, &mut dgd, &mut dbd, shape, &mut ws)
        }
        .unwrap();
        let sum_tol = 1e-5 + 1e-6 * shape.per_channel() as f32;
        assert_close(&format!("{what} dbeta"), &down(&dbd), &want_g.dbeta, sum_tol, 1e-4);
        assert_close(&format!("{what} dgamma"), &down(&dgd), &want_g.dgamma, sum_tol, 1e-4);
        assert_close(&format!("{what} dx"), &down_act(&dxd), &want_g.dx, 1e-4, 1e-3 + ULP);
        if offset > 0 {
            assert!(s.clone_dtoh(&dxd).unwrap()[..offset].iter().all(|v| v.is_nan()), "{what}: wrote before dx");
        }
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_bf16_activations_match_cpu() {
    // Vectorized (hw % 4 == 0, aligned; a channel cut into several slices), scalar (odd plane),
    // and unaligned (one bf16 into the buffers).
    gpu_case_bf16(BnShape { n: 9, c: 3, hw: 32 * 32 }, 40, 0);
    gpu_case_bf16(BnShape { n: 3, c: 5, hw: 7 * 9 }, 41, 0);
    gpu_case_bf16(BnShape { n: 5, c: 2, hw: 16 * 16 }, 42, 1);
}
