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
    use cudarc::driver::CudaSlice;
    let s = common::gpu();
    let mut r = rng(seed);
    let c = shape.c;
    let x = uniform(&mut r, shape.len(), -3.0, 5.0);
    let dy = uniform(&mut r, shape.len(), -1.0, 1.0);
    let gamma = uniform(&mut r, c, 0.5, 1.5);
    let beta = uniform(&mut r, c, -0.5, 0.5);
    let rm0 = uniform(&mut r, c, -0.5, 0.5);
    let rv0 = uniform(&mut r, c, 0.5, 2.0);
    let up = |v: &[f32]| s.clone_htod(v).unwrap();
    let poison = |n: usize| s.clone_htod(&vec![POISON; n]).unwrap();
    let down = |d: &CudaSlice<f32>| s.clone_dtoh(d).unwrap();
    let (xd, dyd, gd, bd) = (up(&x), up(&dy), up(&gamma), up(&beta));

    for relu in [false, true] {
        let what = if relu { "relu" } else { "plain" };
        // Training forward.
        let (mut rm, mut rv) = (rm0.clone(), rv0.clone());
        let f = if relu { cpu::relu_forward_train } else { cpu::forward_train };
        let want = f(&x, &gamma, &beta, &mut rm, &mut rv, shape, CFG).unwrap();
        let (mut rmd, mut rvd) = (up(&rm0), up(&rv0));
        let (mut yd, mut smd, mut sid) = (poison(shape.len()), poison(c), poison(c));
        if relu {
            cuda::relu_forward_train(&s, &xd, &gd, &bd, &mut rmd, &mut rvd, &mut yd, &mut smd, &mut sid, shape, CFG)
        } else {
            cuda::forward_train(&s, &xd, &gd, &bd, &mut rmd, &mut rvd, &mut yd, &mut smd, &mut sid, shape, CFG)
        }
        .unwrap();
        assert_close(&format!("{what} y"), &down(&yd), &want.y, 1e-4, 1e-4);
        assert_close(&format!("{what} save_mean"), &down(&smd), &want.save_mean, 1e-5, 1e-5);
        assert_close(&format!("{what} save_invstd"), &down(&sid), &want.save_invstd, 1e-5, 1e-4);
        assert_close(&format!("{what} running_mean"), &down(&rmd), &rm, 1e-5, 1e-5);
        assert_close(&format!("{what} running_var"), &down(&rvd), &rv, 1e-5, 1e-4);

        // Eval forward from the (CPU-updated) running statistics.
        let fe = if relu { cpu::relu_forward_eval } else { cpu::forward_eval };
        let want_eval = fe(&x, &gamma, &beta, &rm, &rv, shape, CFG).unwrap();
        let mut yed = poison(shape.len());
        let (rmd, rvd) = (up(&rm), up(&rv));
        if relu {
            cuda::relu_forward_eval(&s, &xd, &gd, &bd, &rmd, &rvd, &mut yed, shape, CFG)
        } else {
            cuda::forward_eval(&s, &xd, &gd, &bd, &rmd, &rvd, &mut yed, shape, CFG)
        }
        .unwrap();
        assert_close(&format!("{what} eval y"), &down(&yed), &want_eval, 1e-5, 1e-5);

        // Backward, from the CPU's saved statistics and output so both sides see the same mask.
        let want_g = if relu {
            cpu::relu_backward(&x, &want.y, &dy, &gamma, &want.save_mean, &want.save_invstd, shape).unwrap()
        } else {
            cpu::backward(&x, &dy, &gamma, &want.save_mean, &want.save_invstd, shape).unwrap()
        };
        let (smd, sid) = (up(&want.save_mean), up(&want.save_invstd));
        let (mut dxd, mut dgd, mut dbd) = (poison(shape.len()), poison(c), poison(c));
        if relu {
            let yd = up(&want.y);
            cuda::relu_backward(&s, &xd, &yd, &dyd, &gd, &smd, &sid, &mut dxd, &mut dgd, &mut dbd, shape).unwrap();
        } else {
            cuda::backward(&s, &xd, &dyd, &gd, &smd, &sid, &mut dxd, &mut dgd, &mut dbd, shape).unwrap();
        }
        // Sums of m values in different orders: the absolute tolerance grows with m.
        let sum_tol = 1e-5 + 1e-6 * shape.per_channel() as f32;
        assert_close(&format!("{what} dbeta"), &down(&dbd), &want_g.dbeta, sum_tol, 1e-4);
        assert_close(&format!("{what} dgamma"), &down(&dgd), &want_g.dgamma, sum_tol, 1e-4);
        assert_close(&format!("{what} dx"), &down(&dxd), &want_g.dx, 1e-4, 1e-3);
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
    // n * hw >= 32768 takes the 512-thread reduction.
    gpu_case(BnShape { n: 37, c: 2, hw: 31 * 31 }, 3);
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
