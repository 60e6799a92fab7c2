//! CPU reference of `kernels/softmax.cu`.
use ndarray::{Array2, ArrayView2, ArrayViewMut2, Axis, Zip};

use super::Kind;
use crate::error::{Error, Result};

const OP: &str = "softmax (cpu)";

/// Softmax or log-softmax of every row of `x` (N x C).
pub fn forward(x: ArrayView2<'_, f32>, kind: Kind) -> Array2<f32> {
    let mut y = Array2::zeros(x.raw_dim());
    forward_into(x, y.view_mut(), kind).expect("shapes match by construction");
    y
}

/// [`forward`] into a caller-provided output of the same shape.
pub fn forward_into(x: ArrayView2<'_, f32>, mut y: ArrayViewMut2<'_, f32>, kind: Kind) -> Result<()> {
    same_shape("y", y.dim(), x.dim())?;
    Zip::from(x.axis_iter(Axis(0))).and(y.axis_iter_mut(Axis(0))).for_each(|xr, mut yr| {
        let m = xr.iter().copied().fold(f32::NEG_INFINITY, nan_max);
        let s: f32 = xr.iter().map(|&v| (v - m).exp()).sum();
        match kind {
            Kind::Softmax => yr.zip_mut_with(&xr, |o, &v| *o = (v - m).exp() / s),
            Kind::LogSoftmax => {
                let ls = s.ln();
                yr.zip_mut_with(&xr, |o, &v| *o = v - m - ls)
            }
        }
    });
    Ok(())
}

/// Gradient of the input given the forward output `y` and the output gradient `dy`.
pub fn backward(y: ArrayView2<'_, f32>, dy: ArrayView2<'_, f32>, kind: Kind) -> Result<Array2<f32>> {
    same_shape("dy", dy.dim(), y.dim())?;
    let mut dx = Array2::zeros(y.raw_dim());
    Zip::from(y.axis_iter(Axis(0))).and(dy.axis_iter(Axis(0))).and(dx.axis_iter_mut(Axis(0))).for_each(
        |yr, dyr, mut dxr| match kind {
            Kind::Softmax => {
                let s: f32 = yr.iter().zip(dyr.iter()).map(|(a, b)| a * b).sum();
                Zip::from(&mut dxr).and(&yr).and(&dyr).for_each(|o, &yc, &dyc| *o = yc * (dyc - s));
            }
            Kind::LogSoftmax => {
                let s: f32 = dyr.sum();
                Zip::from(&mut dxr).and(&yr).and(&dyr).for_each(|o, &yc, &dyc| *o = dyc - yc.exp() * s);
            }
        },
    );
    Ok(dx)
}

/// Max that propagates NaN, as the kernels do.
pub(crate) fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || a > b {
        a
    } else {
        b
    }
}

fn same_shape(what: &str, got: (usize, usize), want: (usize, usize)) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(Error::shape(OP, format!("{what} is {got:?}, expected {want:?}")))
    }
}
