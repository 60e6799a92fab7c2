mod common;

use common::{rng, uniform};
use evenclass::optim::{cpu, cuda, SgdConfig};
use evenclass::Error;

/// One step of torch.optim.SGD's algorithm literally, in f32: the buffer is created as a clone of
/// `d` on the first step (`None` before it).
fn pytorch_step(p: &mut f32, buf: &mut Option<f32>, g: f32, lr: f32, cfg: &SgdConfig) {
    let mut d = g;
    if cfg.weight_decay != 0.0 {
        d += cfg.weight_decay * *p;
    }
    if cfg.momentum != 0.0 {
        let b = match *buf {
            None => d,
            Some(b) => cfg.momentum * b + d,
        };
        *buf = Some(b);
        d = if cfg.nesterov { d + cfg.momentum * b } else { b };
    }
    *p -= lr * d;
}

#[test]
fn momentum_steps_worked_by_hand() {
    // lr 0.5, momentum 0.5, weight decay 0.25, p = 2, grads 1, 1, -2:
    //   step 1: d = 1 + 0.25 * 2 = 1.5, buf = 1.5 (PyTorch: clone of d), p = 2 - 0.75 = 1.25
    //   step 2: d = 1 + 0.3125 = 1.3125, buf = 0.75 + 1.3125 = 2.0625, p = 1.25 - 1.03125 = 0.21875
    //   step 3: d = -2 + 0.0546875 = -1.9453125, buf = 1.03125 - 1.9453125 = -0.9140625,
    //           p = 0.21875 + 0.45703125 = 0.67578125
    let cfg = SgdConfig { momentum: 0.5, weight_decay: 0.25, nesterov: false };
    let (mut p, mut buf) = (vec![2.0f32], vec![0.0f32]);
    let want = [(1.25, 1.5), (0.21875, 2.0625), (0.67578125, -0.9140625)];
    for (g, (wp, wb)) in [1.0f32, 1.0, -2.0].into_iter().zip(want) {
        cpu::sgd_step(&mut p, &[g], &mut buf, &cfg, 0.5).unwrap();
        assert_eq!((p[0], buf[0]), (wp, wb));
    }
}

#[test]
fn nesterov_steps_worked_by_hand() {
    // As above with Nesterov: d = d + momentum * buf after the buffer update.
    //   step 1: d = 1.5, buf = 1.5, d = 2.25, p = 2 - 1.125 = 0.875
    //   step 2: d = 1.21875, buf = 1.96875, d = 2.203125, p = -0.2265625
    //   step 3: d = -2.056640625, buf = -1.072265625, d = -2.5927734375, p = 1.06982421875
    let cfg = SgdConfig { momentum: 0.5, weight_decay: 0.25, nesterov: true };
    let (mut p, mut buf) = (vec![2.0f32], vec![0.0f32]);
    let want = [(0.875, 1.5), (-0.2265625, 1.96875), (2191.0 / 2048.0, -549.0 / 512.0)]; // 1.06982421875, -1.072265625;
    for (g, (wp, wb)) in [1.0f32, 1.0, -2.0].into_iter().zip(want) {
        cpu::sgd_step(&mut p, &[g], &mut buf, &cfg, 0.5).unwrap();
        assert_eq!((p[0], buf[0]), (wp, wb));
    }
}

#[test]
fn matches_pytorch_algorithm_with_first_step_clone() {
    // Random parameters and gradients, every combination of settings, a learning rate that changes
    // between calls: the zero-filled buffer reproduces PyTorch's clone-on-first-step exactly.
    let mut r = rng(43);
    let n = 37;
    for (momentum, weight_decay, nesterov) in
        [(0.9, 0.0, false), (0.9, 5e-4, false), (0.75, 0.125, true), (0.0, 0.25, false)]
    {
        let cfg = SgdConfig { momentum, weight_decay, nesterov };
        let p0 = uniform(&mut r, n, -1.0, 1.0);
        let (mut p, mut buf) = (p0.clone(), vec![0.0f32; n]);
        let (mut rp, mut rb) = (p0, vec![None; n]);
        for (step, lr) in [0.5f32, 0.1, 0.0173, 0.3].into_iter().enumerate() {
            let g = uniform(&mut r, n, -2.0, 2.0);
            cpu::sgd_step(&mut p, &g, &mut buf, &cfg, lr).unwrap();
            for i in 0..n {
                pytorch_step(&mut rp[i], &mut rb[i], g[i], lr, &cfg);
            }
            assert_eq!(p, rp, "params after step {step}, {cfg:?}");
            let want_buf: Vec<f32> = rb.iter().map(|b| b.unwrap_or(0.0)).collect();
            assert_eq!(buf, want_buf, "buf after step {step}, {cfg:?}");
        }
    }
}

#[test]
fn plain_sgd_leaves_the_buffer_alone() {
    let cfg = SgdConfig { momentum: 0.0, weight_decay: 0.25, nesterov: false };
    let (mut p, mut buf) = (vec![2.0f32], vec![7.0f32]);
    cpu::sgd_step(&mut p, &[1.0], &mut buf, &cfg, 0.5).unwrap();
    assert_eq!((p[0], buf[0]), (1.25, 7.0));
}

#[test]
fn bad_inputs_are_errors() {
    let ok = SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: true };
    let (mut p, mut b) = (vec![1.0f32; 3], vec![0.0f32; 3]);
    let shape_err = |r: Result<(), Error>| assert!(matches!(r, Err(Error::Shape { .. })), "expected an error");
    shape_err(cpu::sgd_step(&mut p, &[1.0; 2], &mut b, &ok, 0.1));
    shape_err(cpu::sgd_step(&mut p, &[1.0; 3], &mut b[..2], &ok, 0.1));
    shape_err(cpu::sgd_step(&mut p, &[1.0; 3], &mut b, &ok, -0.1));
    shape_err(cpu::sgd_step(&mut p, &[1.0; 3], &mut b, &ok, f32::NAN));
    shape_err(cpu::sgd_step(&mut p, &[1.0; 3], &mut b, &SgdConfig { momentum: 0.0, ..ok }, 0.1));
    shape_err(cpu::sgd_step(&mut p, &[1.0; 3], &mut b, &SgdConfig { weight_decay: -1.0, ..ok }, 0.1));
    assert_eq!(p, vec![1.0; 3], "nothing stepped on error");
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_matches_cpu_bit_for_bit() {
    let s = common::gpu();
    let mut r = rng(41);
    let n = 100_003;
    for cfg in [
        SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: true },
        SgdConfig { momentum: 0.9, weight_decay: 5e-4, nesterov: false },
        SgdConfig { momentum: 0.0, weight_decay: 0.0, nesterov: false },
    ] {
        let mut p = uniform(&mut r, n, -1.0, 1.0);
        let mut buf = vec![0.0f32; n];
        let mut pd = s.clone_htod(&p).unwrap();
        let mut bd = s.clone_htod(&buf).unwrap();
        for (step, lr) in [0.1f32, 0.05, 0.0123].into_iter().enumerate() {
            let g = uniform(&mut r, n, -1.0, 1.0);
            cpu::sgd_step(&mut p, &g, &mut buf, &cfg, lr).unwrap();
            cuda::sgd_step(&s, &mut pd, &s.clone_htod(&g).unwrap(), &mut bd, &cfg, lr).unwrap();
            assert_eq!(s.clone_dtoh(&pd).unwrap(), p, "params after step {step}, {cfg:?}");
            assert_eq!(s.clone_dtoh(&bd).unwrap(), buf, "buf after step {step}, {cfg:?}");
        }
    }
}
