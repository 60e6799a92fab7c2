//! 2-D convolution, NCHW activations and KCRS filters, f32 storage and accumulation: forward (with
//! optional bias), backward-data (gradient of the input), backward-weight (gradient of the filters)
//! and the bias gradient. Strides, zero padding and dilation may differ between height and width.
//!
//! - kernels: `kernels/conv.cu` (`conv2d_fwd_f32`, `conv2d_bwd_data_f32`, `conv2d_bwd_weight_f32`,
//!   `conv2d_bias_grad_f32`, and the direct `*_naive_f32` variants)
//! - CUDA wrapper: [`cuda`]; CPU path (im2col + GEMM, multi-threaded): [`cpu`], with the direct-loop
//!   oracle [`cpu::naive`], the register-blocked direct 3x3 path (`direct.rs`, [`cpu::CpuAlgo::Direct`])
//!   and Winograd F(2x2, 3x3) (`winograd.rs`), which the trainer picks between per layer
//!   ([`cpu::CpuAlgo::Auto`]); tests: `tests/conv.rs`; bench: `benches/conv.rs`
//!
//! Every entry point takes a [`Conv2dShape`], which can only be built through
//! [`Conv2dShape::new`], so its dimensions are consistent and its sizes do not overflow.
//!
//! Definitions (cross-correlation, as PyTorch's `conv2d`), with `oh`/`ow` from [`Conv2dShape`]:
//!
//! ```text
//! y[n,k,p,q]  = bias[k] + sum_{c,r,s} x[n,c, p*sh - ph + r*dh, q*sw - pw + s*dw] * w[k,c,r,s]
//! dx[n,c,i,j] = sum_{k,r,s,p,q : p*sh-ph+r*dh = i, q*sw-pw+s*dw = j} dy[n,k,p,q] * w[k,c,r,s]
//! dw[k,c,r,s] = sum_{n,p,q} dy[n,k,p,q] * x[n,c, p*sh - ph + r*dh, q*sw - pw + s*dw]
//! db[k]       = sum_{n,p,q} dy[n,k,p,q]
//! ```
//! where `x` outside the image reads as zero.
pub mod cpu;
pub mod cuda;
mod direct;
mod gemm_plan;
mod winograd;

use crate::error::{Error, Result};

const OP: &str = "conv2d";

/// The arithmetic a CUDA convolution pass runs on, chosen per call (storage and accumulation stay
/// f32 in every case; only the products' inputs are rounded).
///
/// - `Fp32`: the FFMA kernels, exact f32 products: the reference and the fallback.
/// - `Tf32`: tensor cores, inputs rounded to TF32 (10-bit mantissa, f32's range).
/// - `Bf16`: tensor cores, inputs rounded to bfloat16 (7-bit mantissa, f32's range).
/// - `Auto`: `Tf32` on devices of compute capability 8.0 or newer (the first with TF32 tensor
///   cores and `cp.async`), `Fp32` elsewhere. TF32 rather than BF16 because its products are 8
///   times more precise at the same f32 range, and a product of two TF32 values is exact in f32.
///
/// The forward pass and both gradients run on the algorithm asked for (see `kernels/conv.cu`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ConvAlgo {
    #[default]
    Auto,
    Tf32,
    Bf16,
    Fp32,
}

impl ConvAlgo {
    /// `auto`, `tf32`, `bf16` or `fp32`, as [`str::parse`] reads it.
    pub fn name(self) -> &'static str {
        match self {
            ConvAlgo::Auto => "auto",
            ConvAlgo::Tf32 => "tf32",
            ConvAlgo::Bf16 => "bf16",
            ConvAlgo::Fp32 => "fp32",
        }
    }

    /// The algorithm `Auto` stands for on a device of compute capability `major.minor`; any
    /// other value is returned as it is.
    pub fn resolve(self, major: i32) -> Self {
        match self {
            ConvAlgo::Auto if major >= 8 => ConvAlgo::Tf32,
            ConvAlgo::Auto => ConvAlgo::Fp32,
            other => other,
        }
    }
}

impl std::str::FromStr for ConvAlgo {
    type Err = Error;
    /// `auto`, `tf32`, `bf16` or `fp32`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(ConvAlgo::Auto),
            "tf32" => Ok(ConvAlgo::Tf32),
            "bf16" => Ok(ConvAlgo::Bf16),
            "fp32" => Ok(ConvAlgo::Fp32),
            _ => Err(Error::shape(OP, format!("unknown conv precision {s:?} (auto, tf32, bf16, fp32)"))),
        }
    }
}

/// Stride, zero padding and dilation, each as `[height, width]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dOpts {
    pub stride: [usize; 2],
    pub pad: [usize; 2],
    pub dilation: [usize; 2],
}

impl Default for Conv2dOpts {
    /// Stride 1, no padding, no dilation.
    fn default() -> Self {
        Self { stride: [1, 1], pad: [0, 0], dilation: [1, 1] }
    }
}

impl Conv2dOpts {
    /// The same stride and padding in both directions, no dilation.
    pub fn square(stride: usize, pad: usize) -> Self {
        Self { stride: [stride, stride], pad: [pad, pad], dilation: [1, 1] }
    }

    /// With `dilation` in both directions.
    pub fn with_dilation(self, dilation: usize) -> Self {
        Self { dilation: [dilation, dilation], ..self }
    }
}

/// A validated convolution problem: input `n x c x h x w`, filters `k x c x r x s`, output
/// `n x k x oh x ow`. Built only by [`Conv2dShape::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dShape {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    k: usize,
    r: usize,
    s: usize,
    opts: Conv2dOpts,
    oh: usize,
    ow: usize,
}

impl Conv2dShape {
    /// Validates `input = [n, c, h, w]` against `filter = [k, c, r, s]` and `opts`, and computes the
    /// output size. Errors ([`Error::Shape`]) when a dimension, stride or dilation is zero, the
    /// channel counts differ, the (dilated) filter does not fit in the padded input, or an element
    /// count would overflow.
    pub fn new(input: [usize; 4], filter: [usize; 4], opts: Conv2dOpts) -> Result<Self> {
        let [n, c, h, w] = input;
        let [k, fc, r, s] = filter;
        for (what, v) in [("batch n", n), ("channels c", c), ("height h", h), ("width w", w)] {
            if v == 0 {
                return Err(Error::shape(OP, format!("input {what} is 0 (input {input:?})")));
            }
        }
        for (what, v) in [("count k", k), ("channels", fc), ("height r", r), ("width s", s)] {
            if v == 0 {
                return Err(Error::shape(OP, format!("filter {what} is 0 (filter {filter:?})")));
            }
        }
        if fc != c {
            return Err(Error::shape(
                OP,
                format!("filter has {fc} input channels but the input has {c} (input {input:?}, filter {filter:?})"),
            ));
        }
        if opts.stride.contains(&0) || opts.dilation.contains(&0) {
            return Err(Error::shape(OP, format!("stride and dilation must be at least 1 ({opts:?})")));
        }
        let oh = out_size("height", h, r, opts.stride[0], opts.pad[0], opts.dilation[0])?;
        let ow = out_size("width", w, s, opts.stride[1], opts.pad[1], opts.dilation[1])?;
        let shape = Self { n, c, h, w, k, r, s, opts, oh, ow };
        // Every count a kernel or buffer uses, including the im2col matrix of one image, must fit
        // (in bytes) in an isize.
        let limit = isize::MAX as usize / 4;
        for (what, dims) in [
            ("input", &input[..]),
            ("filter", &filter[..]),
            ("output", &[n, k, oh, ow][..]),
            ("im2col matrix of one image", &[c, r, s, oh, ow][..]),
        ] {
            if dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).is_none_or(|len| len > limit) {
                return Err(Error::shape(OP, format!("{what} {dims:?} has too many elements")));
            }
        }
        Ok(shape)
    }

    pub fn n(&self) -> usize {
        self.n
    }
    /// Input channels.
    pub fn c(&self) -> usize {
        self.c
    }
    pub fn h(&self) -> usize {
        self.h
    }
    pub fn w(&self) -> usize {
        self.w
    }
    /// Output channels (number of filters).
    pub fn k(&self) -> usize {
        self.k
    }
    /// Filter height.
    pub fn r(&self) -> usize {
        self.r
    }
    /// Filter width.
    pub fn s(&self) -> usize {
        self.s
    }
    pub fn opts(&self) -> Conv2dOpts {
        self.opts
    }
    /// Output height.
    pub fn oh(&self) -> usize {
        self.oh
    }
    /// Output width.
    pub fn ow(&self) -> usize {
        self.ow
    }

    /// `[n, c, h, w]`
    pub fn input_dims(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }
    /// `[k, c, r, s]`
    pub fn filter_dims(&self) -> [usize; 4] {
        [self.k, self.c, self.r, self.s]
    }
    /// `[n, k, oh, ow]`
    pub fn output_dims(&self) -> [usize; 4] {
        [self.n, self.k, self.oh, self.ow]
    }
    pub fn input_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    pub fn filter_len(&self) -> usize {
        self.k * self.c * self.r * self.s
    }
    pub fn output_len(&self) -> usize {
        self.n * self.k * self.oh * self.ow
    }

    /// Floating-point operations of one forward pass (2 per multiply-add, bias not counted); each
    /// backward pass costs the same.
    pub fn flops(&self) -> f64 {
        2.0 * self.output_len() as f64 * (self.c * self.r * self.s) as f64
    }

    /// True for a 1x1 filter with stride 1 and no padding: the im2col matrix is the input itself.
    pub(crate) fn is_pointwise(&self) -> bool {
        self.r == 1 && self.s == 1 && self.opts.stride == [1, 1] && self.opts.pad == [0, 0]
    }
}

fn out_size(what: &str, len: usize, f: usize, stride: usize, pad: usize, dil: usize) -> Result<usize> {
    let too_big = || Error::shape(OP, format!("{what}: size {len}, filter {f}, pad {pad}, dilation {dil} overflow"));
    let extent = (f - 1).checked_mul(dil).and_then(|e| e.checked_add(1)).ok_or_else(too_big)?;
    let padded = pad.checked_mul(2).and_then(|p| p.checked_add(len)).ok_or_else(too_big)?;
    if padded < extent {
        return Err(Error::shape(
            OP,
            format!(
                "output {what} would be < 1: input {len} + 2 * pad {pad} is smaller than the filter's extent {extent} \
                 (filter {f}, dilation {dil})"
            ),
        ));
    }
    Ok((padded - extent) / stride + 1)
}
