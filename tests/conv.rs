//! 2-D convolution: shape validation, the im2col + GEMM CPU path against direct loops, both
//! backward passes (and the bias gradient) against finite differences of an f64 loss, and the CUDA
//! kernels (both variants) against the CPU path.
mod common;

use common::{assert_close, rng, uniform, POISON};
use evenclass::conv::{cpu, Conv2dOpts, Conv2dShape};
use evenclass::Error;
use ndarray::{Array1, Array4, ShapeBuilder};

/// `[n, c, h, w]`, `[k, c, r, s]` (the filter's c taken from the input), stride, pad, dilation.
type Case = ([usize; 4], [usize; 3], [usize; 2], [usize; 2], [usize; 2]);

fn shape_of(case: Case) -> Conv2dShape {
    let ([n, c, h, w], [k, r, s], stride, pad, dilation) = case;
    Conv2dShape::new([n, c, h, w], [k, c, r, s], Conv2dOpts { stride, pad, dilation }).unwrap()
}

/// Odd sizes, stride 2 on odd inputs, 1x1 filters (pointwise and strided), padding 0 and 1 (and
/// more than the filter), rectangular filters, strides and pads, dilation, tiny feature maps (which
/// the CPU path batches several images per GEMM for).
const GRID: &[Case] = &[
    ([2, 3, 7, 7], [4, 3, 3], [1, 1], [1, 1], [1, 1]),
    ([2, 3, 7, 7], [4, 3, 3], [2, 2], [1, 1], [1, 1]),
    ([3, 5, 9, 6], [6, 3, 3], [2, 2], [0, 0], [1, 1]),
    ([2, 4, 5, 5], [3, 1, 1], [1, 1], [0, 0], [1, 1]),
    ([2, 4, 7, 6], [8, 1, 1], [2, 2], [0, 0], [1, 1]),
    ([2, 3, 6, 9], [5, 3, 5], [2, 1], [1, 2], [1, 1]),
    ([1, 2, 8, 8], [3, 3, 3], [1, 1], [2, 2], [2, 2]),
    ([3, 2, 4, 5], [2, 2, 3], [1, 2], [0, 1], [1, 1]),
    ([5, 6, 2, 2], [7, 3, 3], [1, 1], [1, 1], [1, 1]),
    ([9, 5, 3, 3], [4, 3, 3], [2, 2], [1, 1], [1, 1]),
    ([1, 2, 3, 3], [2, 2, 2], [1, 1], [3, 3], [1, 1]),
    ([1, 1, 1, 1], [1, 1, 1], [1, 1], [0, 0], [1, 1]),
];

struct Data {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    dy: Vec<f32>,
}

fn data(sh: &Conv2dShape, seed: u64) -> Data {
    let mut r = rng(seed);
    Data {
        x: uniform(&mut r, sh.input_len(), -1.0, 1.0),
        w: uniform(&mut r, sh.filter_len(), -1.0, 1.0),
        b: uniform(&mut r, sh.k(), -1.0, 1.0),
        dy: uniform(&mut r, sh.output_len(), -1.0, 1.0),
    }
}

/// Tolerance for sums of `terms` products of values in [-1, 1].
fn atol(terms: usize) -> f32 {
    2e-5 * (terms as f32).sqrt() + 1e-6
}

// ---- shapes --------------------------------------------------------------------------------------

#[test]
fn output_dims_are_hand_worked() {
    let out = |input, filter, opts| Conv2dShape::new(input, filter, opts).unwrap().output_dims();
    assert_eq!(out([8, 3, 32, 32], [64, 3, 3, 3], Conv2dOpts::square(1, 1)), [8, 64, 32, 32]);
    assert_eq!(out([8, 128, 16, 16], [256, 128, 3, 3], Conv2dOpts::square(2, 1)), [8, 256, 8, 8]);
    assert_eq!(out([1, 64, 32, 32], [128, 64, 1, 1], Conv2dOpts::square(2, 0)), [1, 128, 16, 16]);
    assert_eq!(out([1, 1, 7, 7], [1, 1, 3, 3], Conv2dOpts::square(2, 0)), [1, 1, 3, 3]);
    // (6 + 2 - 3) / 2 + 1 = 3, (9 + 4 - 5) / 1 + 1 = 9
    let rect = Conv2dOpts { stride: [2, 1], pad: [1, 2], dilation: [1, 1] };
    assert_eq!(out([2, 3, 6, 9], [4, 3, 3, 5], rect), [2, 4, 3, 9]);
    // dilation 2: extent 5, (7 - 5) + 1 = 3
    assert_eq!(out([1, 1, 7, 7], [1, 1, 3, 3], Conv2dOpts::default().with_dilation(2)), [1, 1, 3, 3]);
    let sh = Conv2dShape::new([2, 3, 6, 9], [4, 3, 3, 5], rect).unwrap();
    assert_eq!((sh.input_len(), sh.filter_len(), sh.output_len()), (324, 180, 216));
    assert_eq!(sh.flops(), 2.0 * 216.0 * 45.0);
}

#[test]
fn bad_shapes_are_errors() {
    let bad = |input, filter, opts| match Conv2dShape::new(input, filter, opts) {
        Err(Error::Shape { msg, .. }) => msg,
        other => panic!("{input:?} {filter:?} {opts:?}: expected a shape error, got {other:?}"),
    };
    let d = Conv2dOpts::default();
    assert!(bad([2, 3, 8, 8], [4, 5, 3, 3], d).contains("channels"));
    // 2x2 input, 3x3 filter, no padding: output would be 0.
    assert!(bad([2, 3, 2, 2], [4, 3, 3, 3], d).contains("output height"));
    assert!(bad([2, 3, 8, 2], [4, 3, 3, 3], d).contains("output width"));
    // dilation 4 on a 3x3 filter: extent 9 > 8.
    bad([1, 1, 8, 8], [1, 1, 3, 3], d.with_dilation(4));
    bad([1, 1, 8, 8], [1, 1, 3, 3], Conv2dOpts::square(0, 1));
    bad([1, 1, 8, 8], [1, 1, 3, 3], d.with_dilation(0));
    bad([0, 1, 8, 8], [1, 1, 3, 3], d);
    bad([1, 1, 8, 0], [1, 1, 1, 1], d);
    bad([1, 1, 8, 8], [0, 1, 3, 3], d);
    bad([1, 1, 8, 8], [1, 1, 0, 3], d);
    let huge = usize::MAX / 4;
    assert!(bad([huge, 4, 8, 8], [1, 4, 1, 1], d).contains("too many"));
    bad([1, 1, 8, 8], [1, 1, 3, 3], Conv2dOpts::square(1, usize::MAX / 2 + 1));
    bad([1, 1, 8, 8], [1, 1, 3, 3], d.with_dilation(usize::MAX));
}

#[test]
fn wrong_buffer_lengths_are_errors() {
    let sh = shape_of(GRID[1]);
    let d = data(&sh, 1);
    let mut y = vec![0.0; sh.output_len()];
    let mut dx = vec![0.0; sh.input_len()];
    let mut dw = vec![0.0; sh.filter_len()];
    let mut db = vec![0.0; sh.k()];
    let short = |v: &[f32]| v[..v.len() - 1].to_vec();
    let is_shape = |r: evenclass::Result<()>| assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");
    is_shape(cpu::forward_into(&sh, &short(&d.x), &d.w, None, &mut y));
    is_shape(cpu::forward_into(&sh, &d.x, &short(&d.w), None, &mut y));
    is_shape(cpu::forward_into(&sh, &d.x, &d.w, Some(&short(&d.b)), &mut y));
    is_shape(cpu::forward_into(&sh, &d.x, &d.w, None, &mut y[1..]));
    is_shape(cpu::backward_data_into(&sh, &short(&d.dy), &d.w, &mut dx));
    is_shape(cpu::backward_data_into(&sh, &d.dy, &d.w, &mut dx[1..]));
    is_shape(cpu::backward_weight_into(&sh, &d.x, &short(&d.dy), &mut dw, 0.0));
    is_shape(cpu::backward_weight_into(&sh, &d.x, &d.dy, &mut dw[1..], 0.0));
    is_shape(cpu::bias_grad_into(&sh, &d.dy, &mut db[1..], 0.0));
    // The view API checks dimensions, not just lengths.
    let dy = Array4::from_shape_vec(sh.output_dims(), d.dy.clone()).unwrap();
    let w_wrong = Array4::from_shape_vec([sh.c(), sh.k(), sh.r(), sh.s()], d.w.clone()).unwrap();
    assert!(matches!(cpu::backward_data(&sh, dy.view(), w_wrong.view()), Err(Error::Shape { .. })));
    let x = Array4::from_shape_vec(sh.input_dims(), d.x.clone()).unwrap();
    assert!(matches!(cpu::backward_weight(&sh, dy.view(), dy.view()), Err(Error::Shape { .. })));
    assert!(matches!(cpu::forward(x.view(), w_wrong.view(), None, sh.opts()), Err(Error::Shape { .. })));
    // Nothing was written.
    assert!(y.iter().chain(&dx).chain(&dw).chain(&db).all(|&v| v == 0.0));
}

// ---- CPU: hand-worked values and the im2col path against direct loops ----------------------------

#[test]
fn forward_hand_worked() {
    let x: Vec<f32> = (1..=9).map(|v| v as f32).collect();
    // y = x[i][j] - x[i+1][j+1] = -4 everywhere, plus the bias.
    let sh = Conv2dShape::new([1, 1, 3, 3], [1, 1, 2, 2], Conv2dOpts::default()).unwrap();
    let mut y = vec![POISON; 4];
    cpu::forward_into(&sh, &x, &[1.0, 0.0, 0.0, -1.0], Some(&[0.5]), &mut y).unwrap();
    assert_eq!(y, [-3.5; 4]);
    // All-ones 3x3, pad 1, stride 2: the sums of the 2x2 corners of the 3x3 input.
    let sh = Conv2dShape::new([1, 1, 3, 3], [1, 1, 3, 3], Conv2dOpts::square(2, 1)).unwrap();
    let mut y = vec![POISON; 4];
    cpu::forward_into(&sh, &x, &[1.0; 9], None, &mut y).unwrap();
    assert_eq!(y, [12.0, 16.0, 24.0, 28.0]);
    // Its input gradient for dy = 1: how many outputs read each input pixel.
    let mut dx = vec![POISON; 9];
    cpu::backward_data_into(&sh, &[1.0; 4], &[1.0; 9], &mut dx).unwrap();
    assert_eq!(dx, [1.0, 2.0, 1.0, 2.0, 4.0, 2.0, 1.0, 2.0, 1.0]);
    // Its filter gradient for dy = 1: tap (r, s) sums the pixels it reads over the 4 outputs.
    let mut dw = vec![POISON; 9];
    cpu::backward_weight_into(&sh, &x, &[1.0; 4], &mut dw, 0.0).unwrap();
    // tap (r, s) reads x[2p + r - 1][2q + s - 1]: rows {1}, {0, 2}, {1} for r = 0, 1, 2 (same for s).
    assert_eq!(dw, [5.0, 10.0, 5.0, 10.0, 20.0, 10.0, 5.0, 10.0, 5.0]);
    let mut db = vec![POISON];
    cpu::bias_grad_into(&sh, &[1.0, 2.0, 3.0, 4.5], &mut db, 0.0).unwrap();
    assert_eq!(db, [10.5]);
}

/// The fast path against the direct loops, for every pass, in pools of several sizes (the work
/// split depends on the thread count).
#[test]
fn im2col_path_matches_direct_loops() {
    for threads in [1, 3, 8] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            for (i, &case) in GRID.iter().enumerate() {
                let sh = shape_of(case);
                let d = data(&sh, 100 + i as u64);
                let what = |pass: &str| format!("{pass} {case:?} on {threads} threads");
                let crs = sh.c() * sh.r() * sh.s();
                let npq = sh.n() * sh.oh() * sh.ow();

                for bias in [None, Some(d.b.as_slice())] {
                    let mut y = vec![POISON; sh.output_len()];
                    cpu::forward_into(&sh, &d.x, &d.w, bias, &mut y).unwrap();
                    let want = cpu::naive::forward(&sh, &d.x, &d.w, bias).unwrap();
                    assert_close(&what("forward"), &y, &want, atol(crs), 1e-5);
                }

                let mut dx = vec![POISON; sh.input_len()];
                cpu::backward_data_into(&sh, &d.dy, &d.w, &mut dx).unwrap();
                let want = cpu::naive::backward_data(&sh, &d.dy, &d.w).unwrap();
                assert_close(&what("backward_data"), &dx, &want, atol(sh.k() * sh.r() * sh.s()), 1e-5);

                let want = cpu::naive::backward_weight(&sh, &d.x, &d.dy).unwrap();
                let mut dw = vec![f32::NAN; sh.filter_len()];
                cpu::backward_weight_into(&sh, &d.x, &d.dy, &mut dw, 0.0).unwrap();
                assert_close(&what("backward_weight"), &dw, &want, atol(npq), 1e-5);
                // Accumulating: dw = 0.5 * old + grad.
                let old = uniform(&mut rng(7), sh.filter_len(), -1.0, 1.0);
                let mut dw = old.clone();
                cpu::backward_weight_into(&sh, &d.x, &d.dy, &mut dw, 0.5).unwrap();
                let want_acc: Vec<f32> = want.iter().zip(&old).map(|(g, o)| g + 0.5 * o).collect();
                assert_close(&what("backward_weight beta"), &dw, &want_acc, atol(npq), 1e-5);

                let want = cpu::naive::bias_grad(&sh, &d.dy).unwrap();
                let mut db = vec![f32::NAN; sh.k()];
                cpu::bias_grad_into(&sh, &d.dy, &mut db, 0.0).unwrap();
                assert_close(&what("bias_grad"), &db, &want, atol(npq), 1e-5);
                let mut db2 = vec![2.0; sh.k()];
                cpu::bias_grad_into(&sh, &d.dy, &mut db2, -1.0).unwrap();
                let want2: Vec<f32> = want.iter().map(|g| g - 2.0).collect();
                assert_close(&what("bias_grad beta"), &db2, &want2, atol(npq), 1e-5);
            }
        });
    }
}

/// 3x3 stride-1 cases for the Winograd path: odd and even output sizes (partial 2x2 blocks), pads
/// 0, 1 and 2 (and 3, where the data gradient falls back to im2col), one-pixel maps, odd channel
/// and filter counts, and the trainer's 32x32 maps.
const WINOGRAD_GRID: &[Case] = &[
    ([2, 3, 7, 7], [4, 3, 3], [1, 1], [1, 1], [1, 1]),
    ([3, 5, 8, 6], [7, 3, 3], [1, 1], [0, 0], [1, 1]),
    ([2, 2, 5, 9], [3, 3, 3], [1, 1], [2, 2], [1, 1]),
    ([2, 2, 5, 4], [3, 3, 3], [1, 1], [2, 0], [1, 1]),
    ([1, 3, 4, 4], [2, 3, 3], [1, 1], [3, 3], [1, 1]),
    ([4, 6, 1, 1], [5, 3, 3], [1, 1], [1, 1], [1, 1]),
    ([3, 16, 32, 32], [16, 3, 3], [1, 1], [1, 1], [1, 1]),
    // 9 blocks an image: chunks of 8 images and a short last one of 3.
    ([11, 9, 6, 6], [5, 3, 3], [1, 1], [1, 1], [1, 1]),
    // The width of the layers the trainer sends to Winograd, several chunks.
    ([9, 64, 8, 8], [72, 3, 3], [1, 1], [1, 1], [1, 1]),
];

#[test]
fn winograd_path_matches_direct_loops() {
    use cpu::CpuAlgo::Winograd;
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            for (i, &case) in WINOGRAD_GRID.iter().enumerate() {
                let sh = shape_of(case);
                let d = data(&sh, 500 + i as u64);
                let what = |pass: &str| format!("winograd {pass} {case:?} on {threads} threads");
                // The transforms add up to 16 inputs before multiplying: a slightly looser tolerance.
                let terms = 4 * sh.c() * 9;
                for bias in [None, Some(d.b.as_slice())] {
                    let mut y = vec![POISON; sh.output_len()];
                    cpu::forward_into_with(Winograd, &sh, &d.x, &d.w, bias, &mut y).unwrap();
                    let want = cpu::naive::forward(&sh, &d.x, &d.w, bias).unwrap();
                    assert_close(&what("forward"), &y, &want, atol(terms), 1e-5);
                }
                let mut dx = vec![POISON; sh.input_len()];
                cpu::backward_data_into_with(Winograd, &sh, &d.dy, &d.w, &mut dx).unwrap();
                let want = cpu::naive::backward_data(&sh, &d.dy, &d.w).unwrap();
                assert_close(&what("backward_data"), &dx, &want, atol(4 * sh.k() * 9), 1e-5);
                // The weight gradient sums over every output pixel of the batch, each term through
                // the transforms of a 4x4 input tile and a 2x2 gradient block.
                let npq = sh.n() * sh.oh() * sh.ow();
                let want = cpu::naive::backward_weight(&sh, &d.x, &d.dy).unwrap();
                let mut dw = vec![POISON; sh.filter_len()];
                cpu::backward_weight_into_with(Winograd, &sh, &d.x, &d.dy, &mut dw, 0.0).unwrap();
                assert_close(&what("backward_weight"), &dw, &want, atol(16 * npq), 1e-5);
                let old = uniform(&mut rng(9), sh.filter_len(), -1.0, 1.0);
                let mut dw = old.clone();
                cpu::backward_weight_into_with(Winograd, &sh, &d.x, &d.dy, &mut dw, 0.5).unwrap();
                let want_acc: Vec<f32> = want.iter().zip(&old).map(|(g, o)| g + 0.5 * o).collect();
                assert_close(&what("backward_weight beta"), &dw, &want_acc, atol(16 * npq), 1e-5);
            }
        });
    }
    // Shapes it does not apply to fall back to im2col (same result as the default path).
    let sh = shape_of(GRID[1]); // stride 2
    let d = data(&sh, 9);
    let (mut a, mut b) = (vec![POISON; sh.output_len()], vec![POISON; sh.output_len()]);
    cpu::forward_into_with(Winograd, &sh, &d.x, &d.w, None, &mut a).unwrap();
    cpu::forward_into(&sh, &d.x, &d.w, None, &mut b).unwrap();
    assert_eq!(a, b);
    // Bad lengths are errors on the Winograd path too.
    let sh = shape_of(WINOGRAD_GRID[0]);
    let d = data(&sh, 10);
    let mut y = vec![0.0; sh.output_len() - 1];
    assert!(matches!(cpu::forward_into_with(Winograd, &sh, &d.x, &d.w, None, &mut y), Err(Error::Shape { .. })));
    let mut dx = vec![0.0; sh.input_len()];
    assert!(matches!(cpu::backward_data_into_with(Winograd, &sh, &d.dy[1..], &d.w, &mut dx), Err(Error::Shape { .. })));
}

/// The Winograd path gives the same bits on any thread count: chunks of images are the unit of
/// parallel work, and the weight gradient adds its runs of images in order (the trainer's results
/// rely on that as they do for the direct kernels).
#[test]
fn winograd_results_do_not_depend_on_the_thread_count() {
    use cpu::CpuAlgo::Winograd;
    let sh = shape_of(([11, 64, 8, 8], [40, 3, 3], [1, 1], [1, 1], [1, 1]));
    let d = data(&sh, 12);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let (mut y, mut dx) = (vec![POISON; sh.output_len()], vec![POISON; sh.input_len()]);
        let mut dw = vec![POISON; sh.filter_len()];
        pool.install(|| {
            cpu::forward_into_with(Winograd, &sh, &d.x, &d.w, Some(&d.b), &mut y).unwrap();
            cpu::backward_data_into_with(Winograd, &sh, &d.dy, &d.w, &mut dx).unwrap();
            cpu::backward_weight_into_with(Winograd, &sh, &d.x, &d.dy, &mut dw, 0.0).unwrap();
        });
        (y, dx, dw)
    };
    let one = run(1);
    assert!(one.0.iter().chain(&one.1).chain(&one.2).all(|v| v.is_finite()), "every output written");
    for threads in [2, 3, 7] {
        let other = run(threads);
        assert!(one.0 == other.0, "forward differs on {threads} threads");
        assert!(one.1 == other.1, "data gradient differs on {threads} threads");
        assert!(one.2 == other.2, "weight gradient differs on {threads} threads");
    }
}

/// What the trainer's `Auto` runs: Winograd for wide layers only (a stricter bound for the weight
/// gradient), the direct kernels (or im2col) elsewhere.
#[test]
fn auto_sends_only_wide_layers_to_winograd() {
    use cpu::CpuAlgo::{Auto, Direct, Winograd};
    use cpu::Pass::{BackwardData, BackwardWeight, Forward};
    let layer = |c: usize, k: usize, hw: usize| shape_of(([256, c, hw, hw], [k, 3, 3], [1, 1], [1, 1], [1, 1]));
    let wide = [(64, 128, 32), (64, 128, 16), (128, 256, 8), (256, 512, 16), (512, 1024, 8), (128, 128, 8)];
    let narrow = [(3, 64, 32), (16, 32, 32), (32, 64, 16), (64, 128, 8), (128, 64, 8), (63, 256, 32)];
    for (c, k, hw) in wide {
        let sh = layer(c, k, hw);
        assert_eq!(Auto.resolve(&sh, Forward), Winograd, "{c}->{k} {hw}x{hw} forward");
        assert_eq!(Auto.resolve(&sh, BackwardData), Winograd, "{c}->{k} {hw}x{hw} data gradient");
        // The weight gradient only from 128 channels on both sides.
        let weight = if c.min(k) >= 128 { Winograd } else { Direct.resolve(&sh, BackwardWeight) };
        assert_eq!(Auto.resolve(&sh, BackwardWeight), weight, "{c}->{k} {hw}x{hw} weight gradient");
    }
    for (c, k, hw) in narrow {
        let sh = layer(c, k, hw);
        for pass in [Forward, BackwardData, BackwardWeight] {
            assert_eq!(Auto.resolve(&sh, pass), Direct.resolve(&sh, pass), "{c}->{k} {hw}x{hw} {pass:?}");
        }
    }
    // Stride 2: Winograd does not apply, whatever the width.
    let sh = shape_of(([4, 128, 16, 16], [128, 3, 3], [2, 2], [1, 1], [1, 1]));
    assert_ne!(Auto.resolve(&sh, Forward), Winograd);
    // Results through `Auto` are those of the algorithm it names.
    let sh = Conv2dShape::new([3, 64, 16, 16], [64, 64, 3, 3], Conv2dOpts::square(1, 1)).unwrap();
    let d = data(&sh, 13);
    let (mut a, mut b) = (vec![POISON; sh.output_len()], vec![POISON; sh.output_len()]);
    cpu::forward_into_with(Auto, &sh, &d.x, &d.w, None, &mut a).unwrap();
    cpu::forward_into_with(Winograd, &sh, &d.x, &d.w, None, &mut b).unwrap();
    assert_eq!(a, b);
}

/// 3x3 stride-1 cases for the direct path: output widths 8, 16 and 24 (1, 2 and 3 vectors a row,
/// so every tail of the 3-vector blocks), pads 0, 1 and 2, filter counts that are not multiples of
/// 4, one input channel, rectangular maps, the trainer's four layers (batch cut down), and shapes
/// it does not apply to (width not a multiple of 8, stride 2, 5x5 filter, pad 3), which fall back.
const DIRECT_GRID: &[Case] = &[
    ([2, 3, 8, 8], [4, 3, 3], [1, 1], [1, 1], [1, 1]),
    ([3, 5, 6, 10], [7, 3, 3], [1, 1], [0, 0], [1, 1]),
    ([2, 2, 5, 20], [3, 3, 3], [1, 1], [2, 2], [1, 1]),
    ([2, 1, 9, 24], [5, 3, 3], [1, 1], [1, 1], [1, 1]),
    ([1, 6, 3, 16], [9, 3, 3], [1, 1], [1, 0], [1, 1]),
    ([2, 4, 4, 14], [2, 3, 3], [1, 1], [0, 2], [1, 1]),
    ([3, 3, 32, 32], [16, 3, 3], [1, 1], [1, 1], [1, 1]),
    ([2, 16, 32, 32], [32, 3, 3], [1, 1], [1, 1], [1, 1]),
    ([2, 32, 16, 16], [64, 3, 3], [1, 1], [1, 1], [1, 1]),
    ([9, 64, 8, 8], [128, 3, 3], [1, 1], [1, 1], [1, 1]),
    ([2, 3, 7, 7], [4, 3, 3], [1, 1], [1, 1], [1, 1]),
    ([2, 3, 8, 8], [4, 3, 3], [2, 2], [1, 1], [1, 1]),
    ([2, 3, 8, 8], [4, 5, 5], [1, 1], [2, 2], [1, 1]),
    ([1, 2, 4, 4], [2, 3, 3], [1, 1], [3, 3], [1, 1]),
];

#[test]
fn direct_path_matches_direct_loops() {
    use cpu::{CpuAlgo::Direct, Pass};
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            for (i, &case) in DIRECT_GRID.iter().enumerate() {
                let sh = shape_of(case);
                let d = data(&sh, 700 + i as u64);
                let what = |pass: &str| format!("direct {pass} {case:?} on {threads} threads");
                let npq = sh.n() * sh.oh() * sh.ow();
                for bias in [None, Some(d.b.as_slice())] {
                    let mut y = vec![POISON; sh.output_len()];
                    cpu::forward_into_with(Direct, &sh, &d.x, &d.w, bias, &mut y).unwrap();
                    let want = cpu::naive::forward(&sh, &d.x, &d.w, bias).unwrap();
                    assert_close(&what("forward"), &y, &want, atol(sh.c() * 9), 1e-5);
                }
                let mut dx = vec![POISON; sh.input_len()];
                cpu::backward_data_into_with(Direct, &sh, &d.dy, &d.w, &mut dx).unwrap();
                let want = cpu::naive::backward_data(&sh, &d.dy, &d.w).unwrap();
                assert_close(&what("backward_data"), &dx, &want, atol(sh.k() * sh.r() * sh.s()), 1e-5);

                let want = cpu::naive::backward_weight(&sh, &d.x, &d.dy).unwrap();
                let mut dw = vec![f32::NAN; sh.filter_len()];
                cpu::backward_weight_into_with(Direct, &sh, &d.x, &d.dy, &mut dw, 0.0).unwrap();
                assert_close(&what("backward_weight"), &dw, &want, atol(npq), 1e-5);
                let old = uniform(&mut rng(8), sh.filter_len(), -1.0, 1.0);
                let mut dw = old.clone();
                cpu::backward_weight_into_with(Direct, &sh, &d.x, &d.dy, &mut dw, 0.5).unwrap();
                let want_acc: Vec<f32> = want.iter().zip(&old).map(|(g, o)| g + 0.5 * o).collect();
                assert_close(&what("backward_weight beta"), &dw, &want_acc, atol(npq), 1e-5);
            }
        });
    }
    // The weight gradient does not depend on the thread count (threads split the filters, or the
    // (channel, tap) pairs: never a sum); im2col's does, so this holds only where the direct path
    // runs.
    let sh = shape_of(DIRECT_GRID[9]);
    let d = data(&sh, 11);
    let dw_with = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let mut dw = vec![0.0; sh.filter_len()];
        pool.install(|| cpu::backward_weight_into_with(Direct, &sh, &d.x, &d.dy, &mut dw, 0.0)).unwrap();
        dw
    };
    let runs = Direct.resolve(&sh, Pass::BackwardWeight) == Direct;
    eprintln!("direct path on this CPU: {}", if runs { "runs" } else { "not supported, im2col ran" });
    if runs {
        assert_eq!(dw_with(1), dw_with(5));
    }
    // Shapes it cannot take fall back to im2col (the same result as the default path).
    for &case in &DIRECT_GRID[10..] {
        let sh = shape_of(case);
        assert_eq!(Direct.resolve(&sh, Pass::Forward), cpu::CpuAlgo::Im2col, "{case:?}");
        let d = data(&sh, 12);
        let (mut a, mut b) = (vec![POISON; sh.output_len()], vec![POISON; sh.output_len()]);
        cpu::forward_into_with(Direct, &sh, &d.x, &d.w, None, &mut a).unwrap();
        cpu::forward_into(&sh, &d.x, &d.w, None, &mut b).unwrap();
        assert_eq!(a, b);
    }
    // Bad lengths are errors on the direct path too.
    let sh = shape_of(DIRECT_GRID[0]);
    let d = data(&sh, 13);
    let mut y = vec![0.0; sh.output_len() - 1];
    assert!(matches!(cpu::forward_into_with(Direct, &sh, &d.x, &d.w, None, &mut y), Err(Error::Shape { .. })));
    let mut dx = vec![0.0; sh.input_len()];
    assert!(matches!(cpu::backward_data_into_with(Direct, &sh, &d.dy[1..], &d.w, &mut dx), Err(Error::Shape { .. })));
    let mut dw = vec![0.0; sh.filter_len() + 1];
    assert!(matches!(cpu::backward_weight_into_with(Direct, &sh, &d.x, &d.dy, &mut dw, 0.0), Err(Error::Shape { .. })));
}

#[test]
fn view_api_matches_slice_api_and_takes_any_layout() {
    let sh = shape_of(GRID[5]);
    let d = data(&sh, 5);
    // x in Fortran order: same logical array, different memory layout.
    let x = Array4::from_shape_vec(sh.input_dims(), d.x.clone()).unwrap();
    let mut xf = Array4::zeros(sh.input_dims().f());
    xf.assign(&x);
    let w = Array4::from_shape_vec(sh.filter_dims(), d.w.clone()).unwrap();
    let b = Array1::from_vec(d.b.clone());
    let y = cpu::forward(xf.view(), w.view(), Some(b.view()), sh.opts()).unwrap();
    let mut want = vec![0.0; sh.output_len()];
    cpu::forward_into(&sh, &d.x, &d.w, Some(&d.b), &mut want).unwrap();
    assert_eq!(y.as_slice().unwrap(), &want[..]);

    let dy = Array4::from_shape_vec(sh.output_dims(), d.dy.clone()).unwrap();
    let dx = cpu::backward_data(&sh, dy.view(), w.view()).unwrap();
    let mut want = vec![0.0; sh.input_len()];
    cpu::backward_data_into(&sh, &d.dy, &d.w, &mut want).unwrap();
    assert_eq!(dx.as_slice().unwrap(), &want[..]);

    let dw = cpu::backward_weight(&sh, xf.view(), dy.view()).unwrap();
    let mut want = vec![0.0; sh.filter_len()];
    cpu::backward_weight_into(&sh, &d.x, &d.dy, &mut want, 0.0).unwrap();
    assert_eq!(dw.as_slice().unwrap(), &want[..]);

    let db = cpu::bias_grad(dy.view());
    let want = cpu::naive::bias_grad(&sh, &d.dy).unwrap();
    assert_close("bias_grad view", db.as_slice().unwrap(), &want, 1e-5, 1e-6);
}

// ---- CPU: finite differences -------------------------------------------------------------------

/// `L = sum(dy * conv(x, w) + bias)` in f64, by direct loops.
fn loss(sh: &Conv2dShape, x: &[f64], w: &[f64], b: &[f64], dy: &[f32]) -> f64 {
    let o = sh.opts();
    let (c, h, wd, k, r, s, oh, ow) = (sh.c(), sh.h(), sh.w(), sh.k(), sh.r(), sh.s(), sh.oh(), sh.ow());
    let mut total = 0.0;
    for n in 0..sh.n() {
        for kk in 0..k {
            for p in 0..oh {
                for q in 0..ow {
                    let mut y = b[kk];
                    for cc in 0..c {
                        for rr in 0..r {
                            for ss in 0..s {
                                let ih = (p * o.stride[0] + rr * o.dilation[0]) as isize - o.pad[0] as isize;
                                let iw = (q * o.stride[1] + ss * o.dilation[1]) as isize - o.pad[1] as isize;
                                if ih >= 0 && iw >= 0 && (ih as usize) < h && (iw as usize) < wd {
                                    let xi = ((n * c + cc) * h + ih as usize) * wd + iw as usize;
                                    y += x[xi] * w[((kk * c + cc) * r + rr) * s + ss];
                                }
                            }
                        }
                    }
                    total += y * f64::from(dy[((n * k + kk) * oh + p) * ow + q]);
                }
            }
        }
    }
    total
}

/// Central difference of `loss` with respect to element `i` of whichever of x / w / b `pick` selects.
fn fd(sh: &Conv2dShape, vals: (&[f64], &[f64], &[f64]), dy: &[f32], pick: usize, i: usize) -> f32 {
    let eps = 0.25; // the loss is linear in each argument: no truncation error, only rounding
    let mut args = [vals.0.to_vec(), vals.1.to_vec(), vals.2.to_vec()];
    args[pick][i] += eps;
    let plus = loss(sh, &args[0], &args[1], &args[2], dy);
    args[pick][i] -= 2.0 * eps;
    let minus = loss(sh, &args[0], &args[1], &args[2], dy);
    ((plus - minus) / (2.0 * eps)) as f32
}

#[test]
fn backward_passes_match_finite_differences() {
    for (ci, &case) in GRID.iter().enumerate() {
        let sh = shape_of(case);
        let d = data(&sh, 200 + ci as u64);
        let f64s = |v: &[f32]| v.iter().map(|&a| f64::from(a)).collect::<Vec<f64>>();
        let (x, w, b) = (f64s(&d.x), f64s(&d.w), f64s(&d.b));
        let vals = (x.as_slice(), w.as_slice(), b.as_slice());

        let mut dx = vec![POISON; sh.input_len()];
        cpu::backward_data_into(&sh, &d.dy, &d.w, &mut dx).unwrap();
        let mut dw = vec![POISON; sh.filter_len()];
        cpu::backward_weight_into(&sh, &d.x, &d.dy, &mut dw, 0.0).unwrap();
        let mut db = vec![POISON; sh.k()];
        cpu::bias_grad_into(&sh, &d.dy, &mut db, 0.0).unwrap();

        // Every element on these small shapes, but at most ~60 per tensor to stay quick.
        let sample = |len: usize| (0..len).step_by(len.div_ceil(60).max(1));
        for i in sample(dx.len()) {
            let want = fd(&sh, vals, &d.dy, 0, i);
            assert!((dx[i] - want).abs() <= 1e-4 + 1e-4 * want.abs(), "dx[{i}] {case:?}: {} vs fd {want}", dx[i]);
        }
        for i in sample(dw.len()) {
            let want = fd(&sh, vals, &d.dy, 1, i);
            assert!((dw[i] - want).abs() <= 1e-4 + 1e-4 * want.abs(), "dw[{i}] {case:?}: {} vs fd {want}", dw[i]);
        }
        for (i, &got) in db.iter().enumerate() {
            let want = fd(&sh, vals, &d.dy, 2, i);
            assert!((got - want).abs() <= 1e-4 + 1e-4 * want.abs(), "db[{i}] {case:?}: {got} vs fd {want}");
        }
    }
}

// ---- GPU against the CPU path ----------------------------------------------------------------------

#[test]
fn conv_algo_parses_and_resolves() {
    use evenclass::conv::ConvAlgo;
    for (s, a) in
        [("auto", ConvAlgo::Auto), ("tf32", ConvAlgo::Tf32), ("bf16", ConvAlgo::Bf16), ("fp32", ConvAlgo::Fp32)]
    {
        assert_eq!(s.parse::<ConvAlgo>().unwrap(), a);
    }
    assert!(matches!("TF32".parse::<ConvAlgo>(), Err(Error::Shape { .. })));
    assert_eq!(ConvAlgo::Auto.resolve(9), ConvAlgo::Tf32);
    assert_eq!(ConvAlgo::Auto.resolve(8), ConvAlgo::Tf32);
    assert_eq!(ConvAlgo::Auto.resolve(7), ConvAlgo::Fp32);
    assert_eq!(ConvAlgo::Bf16.resolve(7), ConvAlgo::Bf16);
}

mod gpu {
    use super::*;
    use cudarc::driver::CudaStream;
    use evenclass::conv::cuda::{self, Algo, NO_BIAS};
    use evenclass::conv::ConvAlgo;
    use half::bf16;
    use std::sync::Arc;

    /// CIFAR-10 CNN layers at small batches, and sizes that are no multiple of the tiles.
    const CIFAR: &[Case] = &[
        ([7, 3, 32, 32], [64, 3, 3], [1, 1], [1, 1], [1, 1]),
        ([3, 64, 32, 32], [64, 3, 3], [1, 1], [1, 1], [1, 1]),
        ([5, 128, 16, 16], [256, 3, 3], [2, 2], [1, 1], [1, 1]),
        ([3, 512, 4, 4], [512, 3, 3], [1, 1], [1, 1], [1, 1]),
        ([4, 512, 2, 2], [512, 3, 3], [1, 1], [1, 1], [1, 1]),
        ([6, 64, 32, 32], [128, 1, 1], [2, 2], [0, 0], [1, 1]),
        ([2, 256, 8, 8], [512, 1, 1], [1, 1], [0, 0], [1, 1]),
        ([3, 37, 13, 11], [70, 3, 3], [1, 1], [1, 1], [1, 1]),
        ([2, 19, 15, 17], [33, 5, 3], [2, 1], [2, 1], [1, 2]),
    ];

    fn check_case(case: Case, seed: u64) {
        let stream = common::gpu();
        let sh = shape_of(case);
        let d = data(&sh, seed);
        let crs = sh.c() * sh.r() * sh.s();
        let krs = sh.k() * sh.r() * sh.s();
        let npq = sh.n() * sh.oh() * sh.ow();

        let mut y_ref = vec![0.0; sh.output_len()];
        cpu::forward_into(&sh, &d.x, &d.w, Some(&d.b), &mut y_ref).unwrap();
        let mut y_nob = vec![0.0; sh.output_len()];
        cpu::forward_into(&sh, &d.x, &d.w, None, &mut y_nob).unwrap();
        let mut dx_ref = vec![0.0; sh.input_len()];
        cpu::backward_data_into(&sh, &d.dy, &d.w, &mut dx_ref).unwrap();
        let mut dw_ref = vec![0.0; sh.filter_len()];
        cpu::backward_weight_into(&sh, &d.x, &d.dy, &mut dw_ref, 0.0).unwrap();
        let old = uniform(&mut rng(seed + 1), sh.filter_len(), -1.0, 1.0);
        let dw_acc: Vec<f32> = dw_ref.iter().zip(&old).map(|(g, o)| g + 0.75 * o).collect();
        let mut db_ref = vec![0.0; sh.k()];
        cpu::bias_grad_into(&sh, &d.dy, &mut db_ref, 0.0).unwrap();

        let x = stream.clone_htod(&d.x).unwrap();
        let w = stream.clone_htod(&d.w).unwrap();
        let b = stream.clone_htod(&d.b).unwrap();
        let dy = stream.clone_htod(&d.dy).unwrap();
        for algo in [Algo::ImplicitGemm, Algo::Naive] {
            let what = |pass: &str| format!("{pass} {algo:?} {case:?}");
            let mut y = stream.clone_htod(&vec![POISON; sh.output_len()]).unwrap();
            cuda::forward_with(&stream, algo, &sh, &x, &w, Some(&b), &mut y).unwrap();
            assert_close(&what("forward"), &stream.clone_dtoh(&y).unwrap(), &y_ref, atol(crs), 1e-4);
            let mut y = stream.clone_htod(&vec![POISON; sh.output_len()]).unwrap();
            cuda::forward_with(&stream, algo, &sh, &x, &w, NO_BIAS, &mut y).unwrap();
            assert_close(&what("forward no bias"), &stream.clone_dtoh(&y).unwrap(), &y_nob, atol(crs), 1e-4);

            let mut dx = stream.clone_htod(&vec![POISON; sh.input_len()]).unwrap();
            cuda::backward_data_with(&stream, algo, &sh, &dy, &w, &mut dx).unwrap();
            assert_close(&what("backward_data"), &stream.clone_dtoh(&dx).unwrap(), &dx_ref, atol(krs), 1e-4);

            let mut dw = stream.clone_htod(&vec![f32::NAN; sh.filter_len()]).unwrap();
            cuda::backward_weight_with(&stream, algo, &sh, &x, &dy, &mut dw, 0.0).unwrap();
            assert_close(&what("backward_weight"), &stream.clone_dtoh(&dw).unwrap(), &dw_ref, atol(npq), 1e-4);
            let mut dw = stream.clone_htod(&old).unwrap();
            cuda::backward_weight_with(&stream, algo, &sh, &x, &dy, &mut dw, 0.75).unwrap();
            assert_close(&what("backward_weight beta"), &stream.clone_dtoh(&dw).unwrap(), &dw_acc, atol(npq), 1e-4);
        }
        let mut db = stream.clone_htod(&vec![f32::NAN; sh.k()]).unwrap();
        cuda::bias_grad(&stream, &sh, &dy, &mut db, 0.0).unwrap();
        assert_close(&format!("bias_grad {case:?}"), &stream.clone_dtoh(&db).unwrap(), &db_ref, atol(npq), 1e-4);
        let mut db = stream.clone_htod(&vec![1.0; sh.k()]).unwrap();
        cuda::bias_grad(&stream, &sh, &dy, &mut db, 2.0).unwrap();
        let want: Vec<f32> = db_ref.iter().map(|g| g + 2.0).collect();
        assert_close(&format!("bias_grad beta {case:?}"), &stream.clone_dtoh(&db).unwrap(), &want, atol(npq), 1e-4);
    }

    #[test]
    #[ignore = "needs a CUDA device"]
    fn kernels_match_cpu_on_the_grid() {
        for (i, &case) in GRID.iter().enumerate() {
            check_case(case, 300 + i as u64);
        }
    }

    #[test]
    #[ignore = "needs a CUDA device"]
    fn kernels_match_cpu_on_cifar_layers() {
        for (i, &case) in CIFAR.iter().enumerate() {
            check_case(case, 400 + i as u64);
        }
    }

    /// The tensor-core cases (the grid's have fewer than 16 channels: the forward's stem path):
    /// the grid plus channel counts, filter counts and pixel counts that are
    /// no multiple of the 64 x 64 x 16 tiles, several channel tiles, and a strided, padded,
    /// dilated rectangular filter.
    const TC: &[Case] = &[
        ([3, 37, 13, 11], [70, 3, 3], [1, 1], [1, 1], [1, 1]),
        ([2, 19, 15, 17], [33, 5, 3], [2, 1], [2, 1], [1, 2]),
        ([2, 40, 9, 7], [65, 3, 2], [2, 3], [1, 0], [2, 1]),
        // N*OH*OW = 1600: the weight gradient splits its reduction (4 splits of 400).
        ([4, 5, 20, 20], [6, 3, 3], [1, 1], [1, 1], [1, 1]),
        // At least 16 channels (the forward's channel-tiled path, not the stem's): strided 1x1,
        // padding wider than the filter.
        ([2, 17, 5, 5], [3, 1, 1], [2, 2], [0, 0], [1, 1]),
        ([1, 16, 3, 3], [2, 2, 2], [1, 1], [3, 3], [1, 1]),
        // The CIFAR stem (3 channels, 27 reduction terms: two tiles) at a small batch.
        ([3, 3, 10, 9], [70, 3, 3], [1, 1], [1, 1], [1, 1]),
    ];

    /// Rigorous bound for a `terms`-term dot product of values in [-1, 1] whose inputs are rounded
    /// to nearest with `mant` explicit mantissa bits: each rounded input is within 2^-(mant+1)
    /// relatively, so each product within (1 + 2^-(mant+1))^2 - 1 < 2^-mant + 2^-(2 mant + 2),
    /// at most 2^-mant * 1.01 absolutely; summed over `terms` products, plus the f32 reference's and
    /// the kernel's own f32 accumulation errors (`atol`, the FP32 kernels' tolerance).
    /// TF32 (10 bits): terms * 2^-10; BF16 (7 bits): terms * 2^-7.
    fn rounded_atol(terms: usize, mant: i32) -> f32 {
        terms as f32 * 2f32.powi(-mant) * 1.01 + atol(terms)
    }

    fn tc_forward(stream: &Arc<CudaStream>, algo: ConvAlgo, sh: &Conv2dShape, d: &Data, bias: bool) -> Vec<f32> {
        let x = stream.clone_htod(&d.x).unwrap();
        let w = stream.clone_htod(&d.w).unwrap();
        let b = stream.clone_htod(&d.b).unwrap();
        let mut y = stream.clone_htod(&vec![POISON; sh.output_len()]).unwrap();
        let b = bias.then_some(&b);
        cuda::forward_algo(stream, algo, sh, &x, &w, b, &mut y).unwrap();
        stream.clone_dtoh(&y).unwrap()
    }

    fn tc_backward_data(stream: &Arc<CudaStream>, algo: ConvAlgo, sh: &Conv2dShape, d: &Data) -> Vec<f32> {
        let dy = stream.clone_htod(&d.dy).unwrap();
        let w = stream.clone_htod(&d.w).unwrap();
        let mut dx = stream.clone_htod(&vec![POISON; sh.input_len()]).unwrap();
        cuda::backward_data_algo(stream, algo, sh, &dy, &w, &mut dx).unwrap();
        stream.clone_dtoh(&dx).unwrap()
    }

    /// With `beta`, `dw` starts as `old` (else NaN, which must never be read).
    fn tc_backward_weight(
        stream: &Arc<CudaStream>,
        algo: ConvAlgo,
        sh: &Conv2dShape,
        d: &Data,
        old: &[f32],
        beta: f32,
    ) -> Vec<f32> {
        let x = stream.clone_htod(&d.x).unwrap();
        let dy = stream.clone_htod(&d.dy).unwrap();
        let start = if beta == 0.0 { vec![f32::NAN; sh.filter_len()] } else { old.to_vec() };
        let mut dw = stream.clone_htod(&start).unwrap();
        cuda::backward_weight_algo(stream, algo, sh, &x, &dy, &mut dw, beta).unwrap();
        stream.clone_dtoh(&dw).unwrap()
    }

    /// CPU references: forward (with or without bias), data gradient, weight gradient (beta 0).
    fn references(sh: &Conv2dShape, d: &Data, bias: bool) -> [Vec<f32>; 3] {
        let mut y = vec![0.0; sh.output_len()];
        cpu::forward_into(sh, &d.x, &d.w, bias.then_some(&d.b[..]), &mut y).unwrap();
        let mut dx = vec![0.0; sh.input_len()];
        cpu::backward_data_into(sh, &d.dy, &d.w, &mut dx).unwrap();
        let mut dw = vec![0.0; sh.filter_len()];
        cpu::backward_weight_into(sh, &d.x, &d.dy, &mut dw, 0.0).unwrap();
        [y, dx, dw]
    }

    #[test]
    #[ignore = "needs a CUDA device"]
    fn tensor_core_passes_match_cpu_within_the_rounding_bound() {
        let stream = common::gpu();
        for (i, &case) in GRID.iter().chain(TC).enumerate() {
            let sh = shape_of(case);
            let d = data(&sh, 700 + i as u64);
            let [y, dx, dw] = references(&sh, &d, true);
            let old = uniform(&mut rng(750 + i as u64), sh.filter_len(), -1.0, 1.0);
            let dw_acc: Vec<f32> = dw.iter().zip(&old).map(|(g, o)| g + 0.5 * o).collect();
            let crs = sh.c() * sh.r() * sh.s();
            let krs = sh.k() * sh.r() * sh.s();
            let npq = sh.n() * sh.oh() * sh.ow();
            for (algo, mant) in [(ConvAlgo::Tf32, 10), (ConvAlgo::Bf16, 7)] {
                let what = |pass: &str| format!("{pass} {algo:?} {case:?}");
                let got = tc_forward(&stream, algo, &sh, &d, true);
                assert_close(&what("forward"), &got, &y, rounded_atol(crs, mant), 0.0);
                let got = tc_backward_data(&stream, algo, &sh, &d);
                assert_close(&what("backward_data"), &got, &dx, rounded_atol(krs, mant), 0.0);
                let got = tc_backward_weight(&stream, algo, &sh, &d, &old, 0.0);
                assert_close(&what("backward_weight"), &got, &dw, rounded_atol(npq, mant), 0.0);
                // beta * old is added in f32 (old is not rounded): the same bound, plus an ulp.
                let got = tc_backward_weight(&stream, algo, &sh, &d, &old, 0.5);
                assert_close(&what("backward_weight beta"), &got, &dw_acc, rounded_atol(npq, mant), 1e-6);
            }
        }
    }

    /// Integers in [-4, 4] are exact in TF32 and BF16, their products (at most 16) and every partial
    /// sum (at most 16 * terms + 4 < 2^24 here) exact in f32: whatever the order of the sums, the
    /// tensor cores must give the reference's values exactly, which proves the gathers, the
    /// fragment layouts, the split-K reduction and the epilogues' indexing (a swapped or missed
    /// term changes an integer).
    #[test]
    #[ignore = "needs a CUDA device"]
    fn tensor_core_passes_are_exact_on_integers() {
        let stream = common::gpu();
        let ints = |v: Vec<f32>| -> Vec<f32> { v.into_iter().map(|a| (a * 4.0).round()).collect() };
        for (i, &case) in GRID.iter().chain(TC).enumerate() {
            let sh = shape_of(case);
            let d = data(&sh, 800 + i as u64);
            let d = Data { x: ints(d.x), w: ints(d.w), b: ints(d.b), dy: ints(d.dy) };
            assert!(d.x.iter().any(|&v| v != 0.0) && d.w.iter().any(|&v| v != 0.0));
            for bias in [true, false] {
                let [y, dx, dw] = references(&sh, &d, bias);
                for algo in [ConvAlgo::Tf32, ConvAlgo::Bf16] {
                    let what = |pass: &str| format!("{pass} {algo:?} bias {bias} {case:?}");
                    let got = tc_forward(&stream, algo, &sh, &d, bias);
                    assert_close(&what("forward"), &got, &y, 0.0, 0.0);
                    if bias {
                        continue;
                    }
                    let got = tc_backward_data(&stream, algo, &sh, &d);
                    assert_close(&what("backward_data"), &got, &dx, 0.0, 0.0);
                    let got = tc_backward_weight(&stream, algo, &sh, &d, &[], 0.0);
                    assert_close(&what("backward_weight"), &got, &dw, 0.0, 0.0);
                }
            }
        }
    }

    /// The weight gradient's split-K sum has a fixed order: two runs on random (rounded, so not
    /// exactly summable) inputs agree bit for bit, on a shape that splits.
    #[test]
    #[ignore = "needs a CUDA device"]
    fn tensor_core_weight_gradient_is_deterministic() {
        let stream = common::gpu();
        let sh = shape_of(TC[3]);
        let d = data(&sh, 950);
        for algo in [ConvAlgo::Tf32, ConvAlgo::Bf16] {
            let bits = || -> Vec<u32> {
                tc_backward_weight(&stream, algo, &sh, &d, &[], 0.0).iter().map(|v| v.to_bits()).collect()
            };
            assert_eq!(bits(), bits(), "{algo:?}");
        }
    }

    /// `Auto` is TF32 on the (compute capability 8.0+) test device and `Fp32` runs the FFMA kernel:
    /// on values that TF32 would round, `Fp32` matches the FP32 kernel bit for bit and `Auto`
    /// matches `Tf32` bit for bit.
    #[test]
    #[ignore = "needs a CUDA device"]
    fn conv_algo_picks_the_kernel() {
        let stream = common::gpu();
        let (major, _) = stream.context().compute_capability().unwrap();
        let sh = shape_of(TC[0]);
        let d = data(&sh, 900);
        let fp32 = tc_forward(&stream, ConvAlgo::Fp32, &sh, &d, true);
        let x = stream.clone_htod(&d.x).unwrap();
        let w = stream.clone_htod(&d.w).unwrap();
        let b = stream.clone_htod(&d.b).unwrap();
        let mut y = stream.clone_htod(&vec![POISON; sh.output_len()]).unwrap();
        cuda::forward_with(&stream, Algo::ImplicitGemm, &sh, &x, &w, Some(&b), &mut y).unwrap();
        assert_eq!(fp32, stream.clone_dtoh(&y).unwrap());
        let tf32 = tc_forward(&stream, ConvAlgo::Tf32, &sh, &d, true);
        assert_ne!(tf32, fp32, "TF32 rounds these inputs, so some output must differ");
        let auto = tc_forward(&stream, ConvAlgo::Auto, &sh, &d, true);
        assert_eq!(auto, if major >= 8 { tf32 } else { fp32 });
        assert_eq!(cuda::resolve_algo(&stream, ConvAlgo::Auto).unwrap(), ConvAlgo::Auto.resolve(major));
        // The trainer's backend: FP32 unless asked, `Auto` resolved for the device.
        let be = evenclass::train::CudaBackend::new(0).unwrap();
        assert_eq!(be.conv_algo(), ConvAlgo::Fp32);
        assert_eq!(be.with_conv_algo(ConvAlgo::Auto).unwrap().conv_algo(), ConvAlgo::Auto.resolve(major));
    }

    // ---- bf16 activations (mixed precision: f32 weights, bf16 activations and gradients) --------

    /// Rounds to bf16 (to nearest even, as the kernels store) and back: the values a bf16
    /// activation tensor holds.
    fn bf16_round(v: &[f32]) -> Vec<f32> {
        v.iter().map(|&a| bf16::from_f32(a).to_f32()).collect()
    }

    fn to_bf16(v: &[f32]) -> Vec<bf16> {
        v.iter().map(|&a| bf16::from_f32(a)).collect()
    }

    fn from_bf16(v: &[bf16]) -> Vec<f32> {
        v.iter().map(|a| a.to_f32()).collect()
    }

    /// `d` with the activations (x, dy) rounded to bf16 on the host; the filters and the bias stay f32.
    fn act_rounded(d: &Data) -> Data {
        Data { x: bf16_round(&d.x), w: d.w.clone(), b: d.b.clone(), dy: bf16_round(&d.dy) }
    }

    /// The three passes of `algo` with bf16 activations, as f32: y (with the bias when `bias`) and
    /// dx are bf16 tensors poisoned with NaN bits before the launch, dw is f32 and starts as NaN
    /// (beta 0, so never read). `d.x` and `d.dy` must be bf16 values already (exact conversions).
    fn bf16_act_passes(
        stream: &Arc<CudaStream>,
        algo: ConvAlgo,
        sh: &Conv2dShape,
        d: &Data,
        bias: bool,
    ) -> [Vec<f32>; 3] {
        let x = stream.clone_htod(&to_bf16(&d.x)).unwrap();
        let dy = stream.clone_htod(&to_bf16(&d.dy)).unwrap();
        let w = stream.clone_htod(&d.w).unwrap();
        let b = stream.clone_htod(&d.b).unwrap();
        let mut y = stream.clone_htod(&vec![bf16::NAN; sh.output_len()]).unwrap();
        cuda::forward_algo(stream, algo, sh, &x, &w, bias.then_some(&b), &mut y).unwrap();
        let mut dx = stream.clone_htod(&vec![bf16::NAN; sh.input_len()]).unwrap();
        cuda::backward_data_algo(stream, algo, sh, &dy, &w, &mut dx).unwrap();
        let mut dw = stream.clone_htod(&vec![f32::NAN; sh.filter_len()]).unwrap();
        let mut ws = cuda::WeightWorkspace::new();
        cuda::backward_weight_algo_in(stream, algo, sh, &x, &dy, &mut dw, 0.0, &mut ws).unwrap();
        [
            from_bf16(&stream.clone_dtoh(&y).unwrap()),
            from_bf16(&stream.clone_dtoh(&dx).unwrap()),
            stream.clone_dtoh(&dw).unwrap(),
        ]
    }

    /// What each algorithm's f32-activation kernels are allowed, as (atol, rtol) for a sum of
    /// `terms` products (the tolerances of the f32 tests above): FP32 `atol(terms)` and 1e-4, the
    /// tensor cores `rounded_atol(terms, mant)` and 0.
    fn algo_tol(algo: ConvAlgo, terms: usize) -> (f32, f32) {
        match algo {
            ConvAlgo::Tf32 => (rounded_atol(terms, 10), 0.0),
            ConvAlgo::Bf16 => (rounded_atol(terms, 7), 0.0),
            _ => (atol(terms), 1e-4),
        }
    }

    /// (atol, rtol) of a bf16 output: the kernel's f32 result g is within a + r|w| of the reference
    /// w (the algorithm's tolerance), and rounding g to bf16 (8 significant bits, to nearest) moves
    /// it by at most 2^-8 |g| <= 2^-8 (|w| + a + r|w|). So a(1 + 2^-8) and r + 2^-8 (1 + r).
    fn bf16_out_tol((a, r): (f32, f32)) -> (f32, f32) {
        let u = 2f32.powi(-8);
        (a * (1.0 + u), r + u * (1.0 + r))
    }

    /// The bf16-activation cases: every tensor-core case (odd sizes, the 3-channel stem, strided,
    /// padded, dilated and split-K layers) and the grid's 3-channel stride-2 layer.
    fn bf16_cases() -> impl Iterator<Item = Case> {
        TC.iter().copied().chain([GRID[1], GRID[5]])
    }

    /// bf16 activations against the f32 CPU reference run on the same bf16-rounded inputs, for the
    /// FP32 and both tensor-core algorithms: y and dx within the algorithm's tolerance plus the
    /// bf16 rounding of the output (`bf16_out_tol`), dw (f32) within the algorithm's tolerance.
    /// Outputs start as NaN, so an element never written fails.
    #[test]
    #[ignore = "needs a CUDA device"]
    fn bf16_activations_match_cpu_on_rounded_inputs() {
        let stream = common::gpu();
        for (i, case) in bf16_cases().enumerate() {
            let sh = shape_of(case);
            let d = act_rounded(&data(&sh, 1000 + i as u64));
            let [y, dx, dw] = references(&sh, &d, true);
            let crs = sh.c() * sh.r() * sh.s();
            let krs = sh.k() * sh.r() * sh.s();
            let npq = sh.n() * sh.oh() * sh.ow();
            for algo in [ConvAlgo::Fp32, ConvAlgo::Tf32, ConvAlgo::Bf16] {
                let what = |pass: &str| format!("{pass} bf16 activations {algo:?} {case:?}");
                let [gy, gdx, gdw] = bf16_act_passes(&stream, algo, &sh, &d, true);
                let (a, r) = bf16_out_tol(algo_tol(algo, crs));
                assert_close(&what("forward"), &gy, &y, a, r);
                let (a, r) = bf16_out_tol(algo_tol(algo, krs));
                assert_close(&what("backward_data"), &gdx, &dx, a, r);
                let (a, r) = algo_tol(algo, npq);
                assert_close(&what("backward_weight"), &gdw, &dw, a, r);
            }
        }
    }

    /// The bf16-activation kernels are the f32 ones with an exact conversion on load and a
    /// rounding on store, the same arithmetic in the same order: on bf16-valued inputs, y and dx
    /// are the f32 kernels' results rounded to nearest even and dw (also with beta, and split-K)
    /// is theirs, bit for bit (tolerance 0). This pins every gather and epilogue of the bf16
    /// instantiations to the f32 ones, which the tests above check against the CPU.
    #[test]
    #[ignore = "needs a CUDA device"]
    fn bf16_activations_are_the_f32_kernels_rounded() {
        let stream = common::gpu();
        for (i, case) in bf16_cases().enumerate() {
            let sh = shape_of(case);
            let d = act_rounded(&data(&sh, 1100 + i as u64));
            let old = uniform(&mut rng(1150 + i as u64), sh.filter_len(), -1.0, 1.0);
            for algo in [ConvAlgo::Fp32, ConvAlgo::Tf32, ConvAlgo::Bf16] {
                let what = |pass: &str| format!("{pass} bf16 activations {algo:?} {case:?}");
                let bits = |v: &[f32]| -> Vec<u32> { v.iter().map(|a| a.to_bits()).collect() };
                let [gy, gdx, gdw] = bf16_act_passes(&stream, algo, &sh, &d, true);
                assert_eq!(
                    bits(&gy),
                    bits(&bf16_round(&tc_forward(&stream, algo, &sh, &d, true))),
                    "{}",
                    what("forward")
                );
                assert_eq!(
                    bits(&gdx),
                    bits(&bf16_round(&tc_backward_data(&stream, algo, &sh, &d))),
                    "{}",
                    what("backward_data")
                );
                assert_eq!(
                    bits(&gdw),
                    bits(&tc_backward_weight(&stream, algo, &sh, &d, &old, 0.0)),
                    "{}",
                    what("backward_weight")
                );
                // beta: dw = beta * old + grad, old f32 (the weights' gradient stays f32).
                let x = stream.clone_htod(&to_bf16(&d.x)).unwrap();
                let dy = stream.clone_htod(&to_bf16(&d.dy)).unwrap();
                let mut dw = stream.clone_htod(&old).unwrap();
                cuda::backward_weight_algo(&stream, algo, &sh, &x, &dy, &mut dw, 0.5).unwrap();
                let want = tc_backward_weight(&stream, algo, &sh, &d, &old, 0.5);
                assert_eq!(bits(&stream.clone_dtoh(&dw).unwrap()), bits(&want), "{}", what("backward_weight beta"));
            }
        }
    }

    /// Integers in [-4, 4] are exact in bf16 and every sum exact in f32 (as in
    /// `tensor_core_passes_are_exact_on_integers`): y and dx must be the reference rounded to bf16
    /// exactly, dw the reference exactly, for every algorithm, with and without the bias.
    #[test]
    #[ignore = "needs a CUDA device"]
    fn bf16_activations_are_exact_on_integers() {
        let stream = common::gpu();
        let ints = |v: Vec<f32>| -> Vec<f32> { v.into_iter().map(|a| (a * 4.0).round()).collect() };
        for (i, case) in bf16_cases().enumerate() {
            let sh = shape_of(case);
            let d = data(&sh, 1200 + i as u64);
            let d = Data { x: ints(d.x), w: ints(d.w), b: ints(d.b), dy: ints(d.dy) };
            for bias in [true, false] {
                let [y, dx, dw] = references(&sh, &d, bias);
                for algo in [ConvAlgo::Fp32, ConvAlgo::Tf32, ConvAlgo::Bf16] {
                    let what = |pass: &str| format!("{pass} bf16 activations {algo:?} bias {bias} {case:?}");
                    let [gy, gdx, gdw] = bf16_act_passes(&stream, algo, &sh, &d, bias);
                    assert_close(&what("forward"), &gy, &bf16_round(&y), 0.0, 0.0);
                    assert_close(&what("backward_data"), &gdx, &bf16_round(&dx), 0.0, 0.0);
                    assert_close(&what("backward_weight"), &gdw, &dw, 0.0, 0.0);
                }
            }
        }
    }

    /// The bf16 wrappers check lengths as the f32 ones do, before launching.
    #[test]
    #[ignore = "needs a CUDA device"]
    fn bf16_activation_buffer_lengths_are_errors() {
        let stream = common::gpu();
        let sh = shape_of(GRID[1]);
        let x = stream.alloc_zeros::<bf16>(sh.input_len()).unwrap();
        let short = stream.alloc_zeros::<bf16>(sh.input_len() - 1).unwrap();
        let w = stream.alloc_zeros::<f32>(sh.filter_len()).unwrap();
        let dy = stream.alloc_zeros::<bf16>(sh.output_len()).unwrap();
        let mut y = stream.alloc_zeros::<bf16>(sh.output_len() + 1).unwrap();
        let mut dx = stream.alloc_zeros::<bf16>(sh.input_len()).unwrap();
        let mut dw = stream.alloc_zeros::<f32>(sh.filter_len() - 1).unwrap();
        let is_shape = |r: evenclass::Result<()>| assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");
        for algo in [ConvAlgo::Fp32, ConvAlgo::Tf32, ConvAlgo::Bf16] {
            is_shape(cuda::forward_algo(&stream, algo, &sh, &x, &w, NO_BIAS, &mut y));
            is_shape(cuda::backward_data_algo(&stream, algo, &sh, &dy, &w, &mut y));
            is_shape(cuda::backward_data_algo(&stream, algo, &sh, &short, &w, &mut dx));
            is_shape(cuda::backward_weight_algo(&stream, algo, &sh, &x, &dy, &mut dw, 0.0));
        }
    }

    #[test]
    #[ignore = "needs a CUDA device"]
    fn wrong_device_buffer_lengths_are_errors() {
        let stream = common::gpu();
        let sh = shape_of(GRID[1]);
        let x = stream.alloc_zeros::<f32>(sh.input_len()).unwrap();
        let w = stream.alloc_zeros::<f32>(sh.filter_len()).unwrap();
        let dy = stream.alloc_zeros::<f32>(sh.output_len()).unwrap();
        let short = stream.alloc_zeros::<f32>(sh.input_len() - 1).unwrap();
        let mut y = stream.alloc_zeros::<f32>(sh.output_len() + 1).unwrap();
        let mut dx = stream.alloc_zeros::<f32>(sh.input_len()).unwrap();
        let mut dw = stream.alloc_zeros::<f32>(sh.filter_len()).unwrap();
        let mut db = stream.alloc_zeros::<f32>(sh.k() + 1).unwrap();
        let is_shape = |r: evenclass::Result<()>| assert!(matches!(r, Err(Error::Shape { .. })), "{r:?}");
        is_shape(cuda::forward(&stream, &sh, &x, &w, NO_BIAS, &mut y));
        is_shape(cuda::forward(&stream, &sh, &x, &w, Some(&dy), &mut dx));
        is_shape(cuda::backward_data(&stream, &sh, &dy, &w, &mut dw));
        is_shape(cuda::backward_data(&stream, &sh, &x, &w, &mut dx));
        is_shape(cuda::backward_weight(&stream, &sh, &short, &dy, &mut dw, 0.0));
        is_shape(cuda::backward_weight(&stream, &sh, &x, &dy, &mut dx, 0.0));
        is_shape(cuda::bias_grad(&stream, &sh, &dy, &mut db, 0.0));
    }
}
