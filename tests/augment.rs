mod common;

use common::{rng, POISON};
use evenclass::augment::{cpu, cuda, AugmentSpec};
use evenclass::Error;
use rand::RngExt;

fn small_spec() -> AugmentSpec {
    AugmentSpec { c: 3, h: 4, w: 5, pad: 2, mean: [0.5, 0.25, 0.0, 0.0], std: [0.5, 0.25, 2.0, 1.0] }
}

/// `count` images whose bytes are a recognizable pattern of (image, channel, row, column).
fn pattern_data(count: usize, s: &AugmentSpec) -> Vec<u8> {
    let mut d = vec![];
    for i in 0..count {
        for ch in 0..s.c {
            for y in 0..s.h {
                for x in 0..s.w {
                    d.push(((i * 97 + ch * 41 + y * 13 + x * 3) % 256) as u8);
                }
            }
        }
    }
    d
}

fn norm(s: &AugmentSpec, ch: usize, u: u8) -> f32 {
    (u as f32 / 255.0 - s.mean[ch]) / s.std[ch]
}

/// The documented formula, pixel by pixel.
fn naive(data: &[u8], idx: &[i32], crops: &[u8], flips: &[u8], s: &AugmentSpec) -> Vec<f32> {
    let (c, h, w, pad) = (s.c, s.h as i64, s.w as i64, s.pad as i64);
    let mut out = vec![];
    for b in 0..idx.len() {
        let (dy, dx) = (crops[2 * b] as i64, crops[2 * b + 1] as i64);
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let sy = y + dy - pad;
                    let sx = if flips[b] != 0 { w - 1 - x } else { x } + dx - pad;
                    out.push(if sy < 0 || sy >= h || sx < 0 || sx >= w {
                        0.0
                    } else {
                        norm(s, ch, data[idx[b] as usize * s.image_len() + ((ch as i64 * h + sy) * w + sx) as usize])
                    });
                }
            }
        }
    }
    out
}

#[test]
fn crops_at_the_extremes_and_flips() {
    let s = small_spec();
    let data = pattern_data(3, &s);
    let px = |img: usize, ch: usize, y: usize, x: usize| norm(&s, ch, data[img * 60 + (ch * 4 + y) * 5 + x]);
    let idx = [2, 0, 1, 2, 1];
    // (dy, dx): top-left extreme, bottom-right extreme, centred, top-left flipped, centred flipped.
    let crops = [0, 0, 4, 4, 2, 2, 0, 0, 2, 2];
    let flips = [0, 0, 0, 1, 1];
    let out = cpu::train_batch(&data, &idx, &crops, &flips, &s).unwrap();
    assert_eq!(out, naive(&data, &idx, &crops, &flips, &s));
    let at = |b: usize, ch: usize, y: usize, x: usize| out[((b * 3 + ch) * 4 + y) * 5 + x];
    for ch in 0..3 {
        // Offset (0, 0): the image sits 2 rows down and 2 columns right, padding above and left.
        assert_eq!(at(0, ch, 0, 0), 0.0);
        assert_eq!(at(0, ch, 1, 4), 0.0);
        assert_eq!(at(0, ch, 2, 2), px(2, ch, 0, 0));
        assert_eq!(at(0, ch, 3, 4), px(2, ch, 1, 2));
        // Offset (4, 4): shifted up-left by 2, padding below and right.
        assert_eq!(at(1, ch, 0, 0), px(0, ch, 2, 2));
        assert_eq!(at(1, ch, 1, 2), px(0, ch, 3, 4));
        assert_eq!(at(1, ch, 2, 0), 0.0);
        assert_eq!(at(1, ch, 0, 3), 0.0);
        // Centred: the image itself.
        assert_eq!(at(2, ch, 3, 4), px(1, ch, 3, 4));
        // Offset (0, 0) then flipped: the crop's columns reversed, so the padding is on the right.
        assert_eq!(at(3, ch, 2, 4), 0.0);
        assert_eq!(at(3, ch, 2, 2), px(2, ch, 0, 0));
        assert_eq!(at(3, ch, 3, 0), px(2, ch, 1, 2));
        // Centred and flipped: the mirror image.
        assert_eq!(at(4, ch, 1, 0), px(1, ch, 1, 4));
        assert_eq!(at(4, ch, 1, 4), px(1, ch, 1, 0));
    }
    // The pad value is exactly 0 after normalization (not -mean/std).
    assert!(px(2, 0, 0, 0) != 0.0);
}

#[test]
fn cifar_geometry_matches_the_formula() {
    let s = AugmentSpec::cifar10();
    let mut r = rng(51);
    let data: Vec<u8> = (0..5 * s.image_len()).map(|_| r.random_range(0..=255u8)).collect();
    let idx = [4, 0, 3, 3, 1, 2];
    let crops = [0, 8, 8, 0, 8, 8, 0, 0, 4, 4, 3, 7];
    let flips = [1, 0, 1, 0, 1, 1];
    let out = cpu::train_batch(&data, &idx, &crops, &flips, &s).unwrap();
    assert_eq!(out, naive(&data, &idx, &crops, &flips, &s));
}

#[test]
fn eval_is_gather_and_normalize() {
    let s = small_spec();
    let data = pattern_data(3, &s);
    let idx = [1, 1, 0];
    let out = cpu::eval_batch(&data, &idx, &s).unwrap();
    for (b, &i) in idx.iter().enumerate() {
        for k in 0..60 {
            assert_eq!(out[b * 60 + k], norm(&s, k / 20, data[i as usize * 60 + k]));
        }
    }
    let centred = cpu::train_batch(&data, &idx, &[2; 6], &[0; 3], &s).unwrap();
    assert_eq!(out, centred);
    let mut into = vec![POISON; out.len()];
    cpu::eval_batch_into(&data, &idx, &mut into, &s).unwrap();
    assert_eq!(into, out);
}

#[test]
fn bad_inputs_are_errors() {
    let s = small_spec();
    let data = pattern_data(3, &s);
    let (crops, flips) = ([2u8; 6], [0u8; 3]);
    match cpu::train_batch(&data, &[0, -1, 5], &crops, &flips, &s) {
        Err(Error::InvalidSample { index: 1, value: -1, count: 3, .. }) => {}
        other => panic!("expected InvalidSample at position 1, got {other:?}"),
    }
    match cpu::eval_batch(&data, &[0, 2, 3], &s) {
        Err(Error::InvalidSample { index: 2, value: 3, count: 3, .. }) => {}
        other => panic!("expected InvalidSample at position 2, got {other:?}"),
    }
    let shape_err = |r: Result<Vec<f32>, Error>| assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");
    shape_err(cpu::train_batch(&data, &[0, 1, 2], &[2, 2, 2, 5, 2, 2], &flips, &s)); // offset > 2 pad
    shape_err(cpu::train_batch(&data, &[0, 1, 2], &crops[..4], &flips, &s));
    shape_err(cpu::train_batch(&data, &[0, 1, 2], &crops, &flips[..2], &s));
    shape_err(cpu::eval_batch(&data[1..], &[0], &s)); // not whole images
    shape_err(cpu::eval_batch(&data, &[0], &AugmentSpec { c: 5, ..s }));
    shape_err(cpu::eval_batch(&data, &[0], &AugmentSpec { std: [0.0; 4], ..s }));
    let mut small = vec![0.0; 59];
    assert!(matches!(cpu::eval_batch_into(&data, &[0], &mut small, &s), Err(Error::Shape { .. })));
}

// ---- GPU vs CPU ----------------------------------------------------------------------------------

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_matches_cpu_bit_for_bit() {
    let st = common::gpu();
    let mut r = rng(53);
    for s in [AugmentSpec::cifar10(), small_spec()] {
        let count = 11;
        let data: Vec<u8> = (0..count * s.image_len()).map(|_| r.random_range(0..=255u8)).collect();
        let n = 37;
        let idx: Vec<i32> = (0..n).map(|_| r.random_range(0..count as i32)).collect();
        let crops: Vec<u8> = (0..2 * n).map(|_| r.random_range(0..=2 * s.pad as u8)).collect();
        let flips: Vec<u8> = (0..n).map(|_| r.random_range(0..2u8)).collect();
        let want = cpu::train_batch(&data, &idx, &crops, &flips, &s).unwrap();
        let dd = st.clone_htod(&data).unwrap();
        let (id, cd, fd) =
            (st.clone_htod(&idx).unwrap(), st.clone_htod(&crops).unwrap(), st.clone_htod(&flips).unwrap());
        let mut out = st.clone_htod(&vec![POISON; want.len()]).unwrap();
        cuda::train_batch(&st, &dd, &id, &cd, &fd, &mut out, &s).unwrap();
        assert_eq!(st.clone_dtoh(&out).unwrap(), want, "train batch {s:?}");
        let want = cpu::eval_batch(&data, &idx, &s).unwrap();
        let mut out = st.clone_htod(&vec![POISON; want.len()]).unwrap();
        cuda::eval_batch(&st, &dd, &id, &mut out, &s).unwrap();
        assert_eq!(st.clone_dtoh(&out).unwrap(), want, "eval batch {s:?}");
    }
}

/// The bf16 batch (mixed precision) is the f32 batch rounded once: the kernel normalizes in f32
/// exactly as the CPU does (the test above: bit for bit), then rounds to nearest even, as
/// `half::bf16::from_f32` does; so the two agree bit for bit too.
#[test]
#[ignore = "needs a CUDA device"]
fn gpu_bf16_batch_is_the_rounded_f32_batch() {
    use common::{bf16_round, from_bf16};
    let st = common::gpu();
    let mut r = rng(54);
    let s = AugmentSpec::cifar10();
    let count = 7;
    let data: Vec<u8> = (0..count * s.image_len()).map(|_| r.random_range(0..=255u8)).collect();
    let n = 13;
    let idx: Vec<i32> = (0..n).map(|_| r.random_range(0..count as i32)).collect();
    let crops: Vec<u8> = (0..2 * n).map(|_| r.random_range(0..=2 * s.pad as u8)).collect();
    let flips: Vec<u8> = (0..n).map(|_| r.random_range(0..2u8)).collect();
    let dd = st.clone_htod(&data).unwrap();
    let (id, cd, fd) = (st.clone_htod(&idx).unwrap(), st.clone_htod(&crops).unwrap(), st.clone_htod(&flips).unwrap());
    let want = bf16_round(&cpu::train_batch(&data, &idx, &crops, &flips, &s).unwrap());
    let mut out = st.clone_htod(&vec![half::bf16::NAN; want.len()]).unwrap();
    cuda::train_batch(&st, &dd, &id, &cd, &fd, &mut out, &s).unwrap();
    assert_eq!(from_bf16(&st.clone_dtoh(&out).unwrap()), want, "bf16 train batch");
    let want = bf16_round(&cpu::eval_batch(&data, &idx, &s).unwrap());
    let mut out = st.clone_htod(&vec![half::bf16::NAN; want.len()]).unwrap();
    cuda::eval_batch(&st, &dd, &id, &mut out, &s).unwrap();
    assert_eq!(from_bf16(&st.clone_dtoh(&out).unwrap()), want, "bf16 eval batch");
}

#[test]
#[ignore = "needs a CUDA device"]
fn gpu_bad_indices_and_offsets_are_errors() {
    let st = common::gpu();
    let s = small_spec();
    let dd = st.clone_htod(&pattern_data(3, &s)).unwrap();
    let fd = st.clone_htod(&[0u8; 4]).unwrap();
    let good_crops = st.clone_htod(&[2u8; 8]).unwrap();
    let mut out = st.clone_htod(&vec![POISON; 4 * 60]).unwrap();
    // The smallest bad batch position is reported, with its value.
    let id = st.clone_htod(&[0i32, 7, -3, 1]).unwrap();
    match cuda::train_batch(&st, &dd, &id, &good_crops, &fd, &mut out, &s) {
        Err(Error::InvalidSample { index: 1, value: 7, count: 3, .. }) => {}
        other => panic!("expected InvalidSample at position 1, got {other:?}"),
    }
    match cuda::eval_batch(&st, &dd, &id, &mut out, &s) {
        Err(Error::InvalidSample { index: 1, value: 7, count: 3, .. }) => {}
        other => panic!("expected InvalidSample at position 1, got {other:?}"),
    }
    let id = st.clone_htod(&[0i32, 1, 2, 1]).unwrap();
    let bad_crops = st.clone_htod(&[2u8, 2, 2, 2, 2, 2, 2, 9]).unwrap();
    assert!(matches!(cuda::train_batch(&st, &dd, &id, &bad_crops, &fd, &mut out, &s), Err(Error::Shape { .. })));
    // And a good batch still works afterwards.
    cuda::train_batch(&st, &dd, &id, &good_crops, &fd, &mut out, &s).unwrap();
    let want = cpu::eval_batch(&pattern_data(3, &s), &[0, 1, 2, 1], &s).unwrap();
    assert_eq!(st.clone_dtoh(&out).unwrap(), want);
}
