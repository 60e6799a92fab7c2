//! What the candle ops and both of their device files share: the result type, the ops' names in
//! errors and the conversion of this crate's errors. A leaf, so that `mod.rs` can dispatch into
//! `cpu.rs` and `cuda.rs` while they use these.
use crate::error::Error;

/// candle's result type, which every function of this module returns.
pub type Result<T> = candle_core::Result<T>;

pub(super) const CE_OP: &str = "cross_entropy (candle)";
pub(super) const SM_OP: &str = "softmax (candle)";
pub(super) const CM_OP: &str = "confusion (candle)";

/// Converts this crate's typed error into a candle error at the boundary.
pub(crate) fn to_candle(e: Error) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

pub(super) fn shape_err(op: &'static str, msg: impl Into<String>) -> candle_core::Error {
    to_candle(Error::shape(op, msg))
}
