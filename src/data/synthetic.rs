//! A deterministic synthetic stand-in for CIFAR-10, for machines without the data.
//!
//! Same shape as CIFAR-10 (32 x 32 x 3 bytes, CHW, 10 classes, balanced), generated from a seed.
//! Each class is a shape or texture drawn in a foreground colour over a noisy background with a
//! colour gradient, at a random position, scale and rotation, with colour jitter, pixel noise and
//! sometimes a small distractor blob. A small CNN learns it, but not all classes equally well:
//!
//! | label | class | cue |
//! |---|---|---|
//! | 0 | disk | filled circle |
//! | 1 | stripes (coarse) | near-horizontal grating, period 6.7-11 px |
//! | 2 | cross | plus sign |
//! | 3 | square | square outline |
//! | 4 | triangle | filled triangle |
//! | 5 | square with dot | square outline with a small dot at its centre: a subtle difference from 3 (as cat/dog) |
//! | 6 | checker | rotated checkerboard |
//! | 7 | diagonal stripes | grating at 30-60 degrees |
//! | 8 | ring | circle outline |
//! | 9 | stripes (fine) | as 1 with period 5-7.7 px: the periods overlap, so 1 and 9 are partly confusable |
//!
//! Foreground hues depend on the class only loosely (each class's hue range spans half the colour
//! circle, and 3/5 and 1/9 share theirs), so colour alone does not give the class away.
//!
//! Images are independent of each other (each has its own generator, seeded from the seed, the
//! split and its index) and generated in parallel, so the output depends only on the arguments
//! (on a given platform: the drawing uses `f32` trigonometry).
use rand::seq::SliceRandom;
use rand::{Rng, RngExt, SeedableRng};
use rand_pcg::Pcg64;
use rayon::prelude::*;

use super::{Dataset, IMAGE_BYTES, IMAGE_SIDE, NUM_CLASSES};

/// The name of both synthetic datasets: results on them are not CIFAR-10 results.
pub const NAME: &str = "synthetic (not CIFAR-10)";

/// Class names in label order; each says that it is synthetic.
pub const CLASS_NAMES: [&str; NUM_CLASSES] = [
    "synthetic-disk",
    "synthetic-stripes-coarse",
    "synthetic-cross",
    "synthetic-square",
    "synthetic-triangle",
    "synthetic-square-dot",
    "synthetic-checker",
    "synthetic-diagonal-stripes",
    "synthetic-ring",
    "synthetic-stripes-fine",
];

/// Centre of each class's foreground hue range (fractions of the colour circle; +-0.25 jitter).
const CLASS_HUE: [f32; NUM_CLASSES] = [0.0, 0.6, 0.3, 0.1, 0.8, 0.1, 0.45, 0.7, 0.9, 0.6];

/// Training and test sets of `n_train` and `n_test` images generated from `seed` (the two use
/// different streams, so they share no image). Labels are balanced (counts differ by at most one)
/// and shuffled.
pub fn synthetic(seed: u64, n_train: usize, n_test: usize) -> (Dataset, Dataset) {
    (generate(seed, 0, n_train), generate(seed, 1, n_test))
}

/// `n` images of stream `split` (0: train, 1: test, any other value: another disjoint set).
pub fn generate(seed: u64, split: u64, n: usize) -> Dataset {
    let mut labels: Vec<u8> = (0..n).map(|i| (i % NUM_CLASSES) as u8).collect();
    labels.shuffle(&mut Pcg64::seed_from_u64(mix(seed, split, u64::MAX)));
    let mut images = vec![0u8; n * IMAGE_BYTES];
    images.par_chunks_mut(IMAGE_BYTES).zip(labels.par_iter()).enumerate().for_each(|(i, (img, &label))| {
        let mut rng = Pcg64::seed_from_u64(mix(seed, split, i as u64));
        render(label as usize, &mut rng, img);
    });
    Dataset { images, labels, class_names: CLASS_NAMES.iter().map(|s| s.to_string()).collect(), name: NAME.into() }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A generator seed for item `i` of stream `split` under `seed`.
fn mix(seed: u64, split: u64, i: u64) -> u64 {
    splitmix64(splitmix64(seed) ^ splitmix64(splitmix64(split) ^ i))
}

/// RGB in [0, 1] from hue (fraction of the circle), saturation and value.
fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h6 = h.rem_euclid(1.0) * 6.0;
    let k = |n: f32| {
        let t = (n + h6) % 6.0;
        v - v * s * t.min(4.0 - t).clamp(0.0, 1.0)
    };
    [k(5.0), k(3.0), k(1.0)]
}

/// Euclidean length (`hypot` is careful about overflow, and several times slower).
fn len(x: f32, y: f32) -> f32 {
    (x * x + y * y).sqrt()
}

/// Coverage of a shape at signed distance `d` (pixels, negative inside), with a one-pixel ramp.
fn cover(d: f32) -> f32 {
    (0.5 - d).clamp(0.0, 1.0)
}

/// Where and how a class's pattern is drawn.
struct Shape {
    class: usize,
    cx: f32,
    cy: f32,
    /// Size: radius or half side, pixels.
    r: f32,
    /// Half stroke width, pixels.
    w: f32,
    cos: f32,
    sin: f32,
    /// Texture frequency (radians per pixel) and phase.
    freq: f32,
    phase: f32,
}

impl Shape {
    fn new(class: usize, rng: &mut Pcg64) -> Shape {
        use std::f32::consts::{PI, TAU};
        let r = rng.random_range(5.0..10.5f32);
        let angle = match class {
            // Near-horizontal gratings.
            1 | 9 => rng.random_range(-PI / 12.0..PI / 12.0),
            // Diagonal gratings, either diagonal.
            7 => rng.random_range(PI / 6.0..PI / 3.0) + if rng.random_bool(0.5) { PI / 2.0 } else { 0.0 },
            _ => rng.random_range(0.0..TAU),
        };
        let period = match class {
            1 => rng.random_range(6.7..11.0f32),
            9 => rng.random_range(5.0..7.7f32),
            7 => rng.random_range(5.5..10.0f32),
            // Checker cell size (half period).
            6 => rng.random_range(3.5..6.0f32),
            _ => 8.0,
        };
        Shape {
            class,
            cx: rng.random_range(10.0..22.0),
            cy: rng.random_range(10.0..22.0),
            r,
            w: rng.random_range(0.75..1.6),
            cos: angle.cos(),
            sin: angle.sin(),
            freq: TAU / period,
            phase: rng.random_range(0.0..TAU),
        }
    }

    /// Foreground coverage in [0, 1] at pixel centre (x, y).
    fn mask(&self, x: f32, y: f32) -> f32 {
        let (px, py) = (x - self.cx, y - self.cy);
        // Rotated into the shape's frame.
        let qx = self.cos * px + self.sin * py;
        let qy = -self.sin * px + self.cos * py;
        let (r, w) = (self.r, self.w);
        let grating = |t: f32| 0.5 + 0.5 * (self.freq * t + self.phase).sin();
        match self.class {
            0 => cover(len(px, py) - r),
            1 | 9 | 7 => grating(qy),
            2 => cover((qx.abs() - r).max(qy.abs() - w * 1.5).min((qy.abs() - r).max(qx.abs() - w * 1.5))),
            3 => cover((qx.abs().max(qy.abs()) - r).abs() - w),
            4 => {
                // Three half-planes at 90, 210 and 330 degrees; inradius r / 2.
                const N: [(f32, f32); 3] = [(0.0, 1.0), (-0.866_025_4, -0.5), (0.866_025_4, -0.5)];
                let d = N.iter().map(|&(nx, ny)| nx * qx + ny * qy).fold(f32::MIN, f32::max);
                cover(d - r * 0.5)
            }
            5 => {
                let outline = (qx.abs().max(qy.abs()) - r).abs() - w;
                let dot = len(px, py) - (0.22 * r).max(1.2);
                cover(outline.min(dot))
            }
            6 => {
                let f = self.freq * 0.5;
                let v = (f * qx + self.phase).sin() * (f * qy).sin();
                (0.5 + 2.0 * v).clamp(0.0, 1.0)
            }
            _ => cover((len(px, py) - r).abs() - w),
        }
    }
}

/// Draws one image of `class` into `out` (CHW bytes).
fn render(class: usize, rng: &mut Pcg64, out: &mut [u8]) {
    const PLANE: usize = IMAGE_SIDE * IMAGE_SIDE;
    let bg = hsv(rng.random(), rng.random_range(0.0..0.6), rng.random_range(0.05..0.45));
    let fg = hsv(
        CLASS_HUE[class] + rng.random_range(-0.25..0.25f32),
        rng.random_range(0.45..1.0),
        rng.random_range(0.6..1.0),
    );
    // Background gradient: direction and strength.
    let ga = rng.random_range(0.0..std::f32::consts::TAU);
    let gs = rng.random_range(0.0..0.2f32) / IMAGE_SIDE as f32;
    let (gx, gy) = (ga.cos() * gs, ga.sin() * gs);
    let noise = rng.random_range(0.02..0.10f32);
    let shape = Shape::new(class, rng);
    // Sometimes a small blob of another colour, anywhere.
    let blob = rng.random_bool(0.5).then(|| {
        let c = hsv(rng.random(), rng.random_range(0.3..1.0), rng.random_range(0.3..1.0));
        (rng.random_range(2.0..30.0f32), rng.random_range(2.0..30.0f32), rng.random_range(1.2..2.8f32), c)
    });
    let half = IMAGE_SIDE as f32 / 2.0;
    for y in 0..IMAGE_SIDE {
        for x in 0..IMAGE_SIDE {
            let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
            let m = shape.mask(fx, fy);
            let g = gx * (fx - half) + gy * (fy - half);
            let (bm, bc) = match &blob {
                Some((bx, by, br, c)) => (cover(len(fx - bx, fy - by) - br), *c),
                None => (0.0, [0.0; 3]),
            };
            // One draw gives the three channels' noise, uniform in [-1, 1) in steps of 2^-15.
            let bits = rng.next_u64();
            for c in 0..3 {
                let u = ((bits >> (16 * c)) & 0xFFFF) as f32 * (1.0 / 32768.0) - 1.0;
                let v = (bg[c] + g) * (1.0 - m) + fg[c] * m;
                let v = v * (1.0 - bm) + bc[c] * bm + noise * u;
                // Round to nearest (`round` is a slow libm call here; `as` truncates the non-negative sum).
                out[c * PLANE + y * IMAGE_SIDE + x] = (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8;
            }
        }
    }
}
