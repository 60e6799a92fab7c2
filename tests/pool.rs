mod common;

use common::{assert_close, rng, uniform, POISON};
use evenclass::pool::{cpu, cuda, PoolShape};
use evenclass::Error;

#[test]
fn max_pool_hand_worked() {
    let nan = f32::NAN;
    #[rustfmt::skip]
    let x = [
        1.0, 2.0,  5.0,  0.0,
        3.0, 4.0,  5.0,  5.0,
        0.0, nan, -1.0, -2.0,
        1.0, 2.0, -0.5, -4.0,
    ];
    let shape = PoolShape { n: 1, c: 1, h: 4, w: 4 };
    let (y, am) = cpu::max_pool_forward(&x, shape).unwrap();
    // Max 4 at the bottom right; a tie goes to the first; NaN wins; -0.5 at the bottom left.
    assert_eq!(am, vec![3, 0, 1, 2]);
    assert_eq!((y[0], y[1], y[3]), (4.0, 5.0, -0.5));
    assert!(y[2].is_nan());
    let dx = cpu::max_pool_backward(&[10.0, 20.0, 30.0, 40.0], &am, shape).unwrap();
    #[rustfmt::skip]
    let want = vec![
        0.0, 0.0,  20.0, 0.0,
        0.0, 10.0, 0.0,  0.0,
        0.0, 30.0, 0.0,  0.0,
        0.0, 0.0,  40.0, 0.0,
    ];
    assert_eq!(dx, want);
}

/// Straightforward max-pool (floor mode) for comparison, with PyTorch's rule written out: the first
/// of equal maxima, and the last NaN if there is one.
fn naive_max_pool(x: &[f32], s: PoolShape) -> (Vec<f32>, Vec<u8>) {
    let (oh, ow) = (s.h / 2, s.w / 2);
    let (mut y, mut am) = (vec![], vec![]);
    for p in 0..s.n * s.c {
        for oy in 0..oh {
            for ox in 0..ow {
                let at = |k: usize| x[p * s.h * s.w + (2 * oy + k / 2) * s.w + 2 * ox + k % 2];
                let k = match (0..4).rev().find(|&k| at(k).is_nan()) {
                    Some(k) => k,
                    None => (0..4).fold(0, |best, k| if at(k) > at(best) { k } else { best }),
                };
                y.push(at(k));
                am.push(k as u8);
            }
        }
    }
    (y, am)
}

#[test]
fn max_pool_ties_nans_and_widths_that_split_into_fours_and_a_rest() {
    // Values from a small set so that ties (0.0 against -0.0 included), NaNs and infinities are
    // common in every window; widths whose rows are whole groups of 4 windows, groups and a
    // rest, and an odd width with a dropped column, so both the 4-window path and the one-window
    // path run.
    let pick = [-1.0, -0.0, 0.0, 0.5, 1.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.0, 0.5];
    let mut r = rng(11);
    for (h, w) in [(4, 16), (5, 18), (6, 19), (2, 8), (3, 9), (2, 2)] {
        let shape = PoolShape { n: 2, c: 3, h, w };
        let idx = uniform(&mut r, shape.len(), 0.0, pick.len() as f32);
        let x: Vec<f32> = idx.iter().map(|&v| pick[(v as usize).min(pick.len() - 1)]).collect();
        let (y, am) = cpu::max_pool_forward(&x, shape).unwrap();
        let (want_y, want_am) = naive_max_pool(&x, shape);
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(am, want_am, "argmax, {h} x {w}");
        assert_eq!(bits(&y), bits(&want_y), "values, {h} x {w}");
    }
}

#[test]
fn max_pool_odd_sizes_drop_the_last_row_and_column() {
    let mut r = rng(5);
    let shape = PoolShape { n: 2, c: 3, h: 5, w: 7 };
    let x = uniform(&mut r, shape.len(), -1.0, 1.0);
    let (y, am) = cpu::max_pool_forward(&x, shape).unwrap();
    assert_eq!(y.len(), 2 * 3 * 2 * 3);
    assert_eq!((y.clone(), am.clone()), naive_max_pool(&x, shape));
    let dy = uniform(&mut r, y.len(), -1.0, 1.0);
    let mut dx = vec![POISON; shape.len()];
    cpu::max_pool_backward_into(&dy, &am, &mut dx, shape).unwrap();
    for p in 0..6 {
        for yy in 0..5 {
            for xx in 0..7 {
                let v = dx[(p * 5 + yy) * 7 + xx];
                if yy == 4 || xx == 6 {
                    assert_eq!(v, 0.0, "dropped row/column gets no gradient");
                } else {
                    let o = (p * 2 + yy / 2) * 3 + xx / 2;
                    let mine = am[o] as usize == (yy % 2) * 2 + xx % 2;
                    assert_eq!(v, if mine { dy[o] } else { 0.0 });
                }
            }
        }
    }
}

#[test]
fn max_pool_backward_matches_finite_differences() {
    let shape = PoolShape { n: 2, c: 2, h: 4, w: 6 };
    let len = shape.len();
    // Distinct values 0.01 apart (a permutation), so no window's max changes under a 1e-3 step.
    let x: Vec<f32> = (0..len).map(|i| ((i * 37) % len) as f32 * 0.01 - 0.4).collect();
    let w = uniform(&mut rng(9), shape.pooled_len(), -1.0, 1.0);
    let (_, am) = cpu::max_pool_forward(&x, shape).unwrap();
    let dx = cpu::max_pool_backward(&w, &am, shape).unwrap();
    let loss = |x: &[f32]| {
        let (y, _) = cpu::max_pool_forward(x, shape).unwrap();
        y.iter().zip(&w).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>()
    };
    let h = 1e-3;
    for i in 0..len {
        let (mut a, mut b) = (x.clone(), x.clone());
        a[i] += h;
        b[i] -= h;
        let num = ((loss(&a) - loss(&b)) / (2.0 * h as f64)) as f32;
        assert!((num - dx[i]).abs() < 1e-3, "dx[{i}]: {} vs {num}", dx[i]);
    }
    assert_eq!(dx.iter().filter(|&&v| v != 0.0).count(), shape.pooled_len());
}

#[test]
fn max_pool_backward_ignores_garbage_argmax() {
    let shape = PoolShape { n: 1, c: 1, h: 2, w: 2 };
    let dx = cpu::max_pool_backward(&[5.0], &[200], shape).unwrap();
    assert_eq!(dx, vec![0.0; 4]);
}

#[test]
fn global_avg_pool_hand_worked() {
    let shape = PoolShape { n: 1, c: 2, h: 2, w: 2 };
    let y = cpu::global_avg_pool_forward(&[1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, -8.0], shape).unwrap();
    assert_eq!(y, vec![2.5, -2.0]);
    let dx = cpu::global_avg_pool_backward(&[4.0, -8.0], shape).unwrap();
    assert_eq!(dx, vec![1.0, 1.0, 1.0, 1.0, -2.0, -2.0, -2.0, -2.0]);
}

#[test]
fn global_avg_pool_backward_matches_finite_differences() {
    let shape = PoolShape { n: 2, c: 3, h: 3, w: 5 };
    let mut r = rng(13);
    let x = uniform(&mut r, shape.len(), -1.0, 1.0);
    let w = uniform(&mut r, shape.planes(), -1.0, 1.0);
    let dx = cpu::global_avg_pool_backward(&w, shape).unwrap();
    let loss = |x: &[f32]| {
        let y = cpu::global_avg_pool_forward(x, shape).unwrap();
        y.iter().zip(&w).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>()
    };
    let h = 1e-2;
    for i in 0..shape.len() {
        let (mut a, mut b) = (x.clone(), x.clone());
        a[i] += h;
        b[i] -= h;
        let num = ((loss(&a) - loss(&b)) / (2.0 * h as f64)) as f32;
        assert!((num - dx[i]).abs() < 1e-4, "dx[{i}]: {} vs {num}", dx[i]);
    }
}

#[test]
fn bad_inputs_are_errors() {
    let s = PoolShape { n: 1, c: 1, h: 4, w: 4 };
    let x = vec![0.0; 16];
    let is_shape = |r: bool| assert!(r, "expected a shape error");
    is_shape(matches!(cpu::max_pool_forward(&x[1..], s), Err(Error::Shape { .. })));
    is_shape(matches!(cpu::max_pool_forward(&x[..4], PoolShape { h: 1, w: 4, ..s }), Err(Error::Shape { .. })));
    is_shape(matches!(cpu::max_pool_forward_into(&x, &mut [0.0; 4], &mut [0; 3], s), Err(Error::Shape { .. })));
    is_shape(matches!(cpu::max_pool_backward(&[0.0; 4], &[0; 5], s), Err(Error::Shape { .. })));
    is_shape(matches!(cpu::global_avg_pool_forward(&[], PoolShape { h: 0, ..s }), Err(Error::Shape { .. })));
    is_shape(matches!(cpu::global_avg_pool_backward(&[0.0; 2], s), Err(Error::Shape { .. })));
    let huge = PoolShape { n: usize::MAX, c: 2, h: 2, w: 2 };
    assert!(matches!(cpu::max_pool_forward(&x, huge), Err(Error::TooLarge { .. })));
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_matches_cpu() {
    let s = common::gpu();
    let mut r = rng(21);
    for shape in [
        PoolShape { n: 3, c: 5, h: 7, w: 9 },
        PoolShape { n: 2, c: 3, h: 32, w: 32 },
        PoolShape { n: 1, c: 7, h: 2, w: 3 },
        PoolShape { n: 2, c: 3, h: 33, w: 35 },
    ] {
        let x = uniform(&mut r, shape.len(), -2.0, 2.0);
        let xd = s.clone_htod(&x).unwrap();
        // Max-pool forward.
        let (y, am) = cpu::max_pool_forward(&x, shape).unwrap();
        let mut yd = s.clone_htod(&vec![POISON; shape.pooled_len()]).unwrap();
        let mut amd = s.clone_htod(&vec![0xABu8; shape.pooled_len()]).unwrap();
        cuda::max_pool_forward(&s, &xd, &mut yd, &mut amd, shape).unwrap();
        assert_eq!(s.clone_dtoh(&yd).unwrap(), y, "max-pool y {shape:?}");
        assert_eq!(s.clone_dtoh(&amd).unwrap(), am, "max-pool argmax {shape:?}");
        // Max-pool backward.
        let dy = uniform(&mut r, shape.pooled_len(), -1.0, 1.0);
        let dx = cpu::max_pool_backward(&dy, &am, shape).unwrap();
        let (dyd, amd) = (s.clone_htod(&dy).unwrap(), s.clone_htod(&am).unwrap());
        let mut dxd = s.clone_htod(&vec![POISON; shape.len()]).unwrap();
        cuda::max_pool_backward(&s, &dyd, &amd, &mut dxd, shape).unwrap();
        assert_eq!(s.clone_dtoh(&dxd).unwrap(), dx, "max-pool dx {shape:?}");
        // Global average pool.
        let g = cpu::global_avg_pool_forward(&x, shape).unwrap();
        let mut gd = s.clone_htod(&vec![POISON; shape.planes()]).unwrap();
        cuda::global_avg_pool_forward(&s, &xd, &mut gd, shape).unwrap();
        assert_close(&format!("gap y {shape:?}"), &s.clone_dtoh(&gd).unwrap(), &g, 1e-6, 1e-5);
        let dg = uniform(&mut r, shape.planes(), -1.0, 1.0);
        let dgx = cpu::global_avg_pool_backward(&dg, shape).unwrap();
        let dgd = s.clone_htod(&dg).unwrap();
        let mut dgxd = s.clone_htod(&vec![POISON; shape.len()]).unwrap();
        cuda::global_avg_pool_backward(&s, &dgd, &mut dgxd, shape).unwrap();
        assert_eq!(s.clone_dtoh(&dgxd).unwrap(), dgx, "gap dx {shape:?}");
    }
    // A bad shape is an error before any launch.
    let xd = s.clone_htod(&[0.0f32; 3]).unwrap();
    let (mut yd, mut amd) = (s.clone_htod(&[0.0f32; 1]).unwrap(), s.clone_htod(&[0u8; 1]).unwrap());
    let bad = PoolShape { n: 1, c: 1, h: 1, w: 3 };
    assert!(matches!(cuda::max_pool_forward(&s, &xd, &mut yd, &mut amd, bad), Err(Error::Shape { .. })));
}

/// bf16 activations (mixed precision): the kernels read bf16, compute in f32 and round what they
/// write. Inputs are bf16 values, so the CPU reference runs on exactly what the GPU reads; the
/// max-pool and both backward passes then agree bit for bit (a maximum is one of its inputs, a
/// routed gradient a copy, and dy / hw is one f32 division rounded the same way on both sides),
/// and the global average (an f32 output) to the f32 kernel's tolerance.
#[test]
#[ignore = "needs a CUDA device"]
fn gpu_bf16_activations_match_cpu() {
    use common::{bf16_round, from_bf16, to_bf16};
    use half::bf16;
    let s = common::gpu();
    let mut r = rng(22);
    let poison = bf16::NAN;
    for shape in [PoolShape { n: 3, c: 5, h: 7, w: 9 }, PoolShape { n: 2, c: 3, h: 33, w: 35 }] {
        let x = bf16_round(&uniform(&mut r, shape.len(), -2.0, 2.0));
        let xd = s.clone_htod(&to_bf16(&x)).unwrap();
        let (y, am) = cpu::max_pool_forward(&x, shape).unwrap();
        let mut yd = s.clone_htod(&vec![poison; shape.pooled_len()]).unwrap();
        let mut amd = s.clone_htod(&vec![0xABu8; shape.pooled_len()]).unwrap();
        cuda::max_pool_forward(&s, &xd, &mut yd, &mut amd, shape).unwrap();
        assert_eq!(from_bf16(&s.clone_dtoh(&yd).unwrap()), y, "bf16 max-pool y {shape:?}");
        assert_eq!(s.clone_dtoh(&amd).unwrap(), am, "bf16 max-pool argmax {shape:?}");

        let dy = bf16_round(&uniform(&mut r, shape.pooled_len(), -1.0, 1.0));
        let dx = cpu::max_pool_backward(&dy, &am, shape).unwrap();
        let dyd = s.clone_htod(&to_bf16(&dy)).unwrap();
        let mut dxd = s.clone_htod(&vec![poison; shape.len()]).unwrap();
        cuda::max_pool_backward(&s, &dyd, &amd, &mut dxd, shape).unwrap();
        assert_eq!(from_bf16(&s.clone_dtoh(&dxd).unwrap()), dx, "bf16 max-pool dx {shape:?}");

        let g = cpu::global_avg_pool_forward(&x, shape).unwrap();
        let mut gd = s.clone_htod(&vec![POISON; shape.planes()]).unwrap();
        cuda::global_avg_pool_forward(&s, &xd, &mut gd, shape).unwrap();
        assert_close(&format!("bf16 gap y {shape:?}"), &s.clone_dtoh(&gd).unwrap(), &g, 1e-6, 1e-5);
        let dg = uniform(&mut r, shape.planes(), -1.0, 1.0);
        let dgx = bf16_round(&cpu::global_avg_pool_backward(&dg, shape).unwrap());
        let dgd = s.clone_htod(&dg).unwrap();
        let mut dgxd = s.clone_htod(&vec![poison; shape.len()]).unwrap();
        cuda::global_avg_pool_backward(&s, &dgd, &mut dgxd, shape).unwrap();
        assert_eq!(from_bf16(&s.clone_dtoh(&dgxd).unwrap()), dgx, "bf16 gap dx {shape:?}");
    }
}
