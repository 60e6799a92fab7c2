//! The CUDA plumbing shared by every kernel family: buffers from another device are refused, the
//! per-launch synchronization switch, and the error for a driver too old for the kernels.
mod common;

use common::{assert_close, rng, uniform, POISON};
use evenclass::softmax::{cuda as sm, Kind};
use evenclass::Error;

#[test]
fn driver_too_old_error_names_both_versions_and_the_fix() {
    let e = Error::DriverTooOld {
        built: "13.0".into(),
        driver: "12.4".into(),
        source: cudarc::driver::DriverError(cudarc::driver::sys::CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION),
    };
    let msg = e.to_string();
    for part in ["CUDA 13.0", "supports CUDA 12.4", "580", "NVCC"] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
}

#[test]
#[ignore = "needs two CUDA devices (the emulated driver has two)"]
fn buffers_from_another_device_are_refused() {
    let n = evenclass::cuda::device_count().expect("a CUDA driver");
    assert!(n >= 2, "this test needs two devices, found {n}");
    let s0 = evenclass::cuda::open(0).unwrap().default_stream();
    let s1 = evenclass::cuda::open(1).unwrap().default_stream();
    let x0 = s0.clone_htod(&[1.0f32, 2.0, 3.0]).unwrap();
    let x1 = s1.clone_htod(&[1.0f32, 2.0, 3.0]).unwrap();
    let mut y0 = s0.clone_htod(&[POISON; 3]).unwrap();
    let mut y1 = s1.clone_htod(&[POISON; 3]).unwrap();
    // Input on device 1, output and stream on device 0: refused before any launch, naming `x`.
    let err = sm::forward(&s0, &x1, &mut y0, 1, 3, Kind::Softmax).unwrap_err();
    assert!(
        matches!(&err, Error::WrongDevice { what, buffer: 1, stream: 0, .. } if what == "x"),
        "unexpected error: {err}"
    );
    // Output on the other device.
    let err = sm::forward(&s0, &x0, &mut y1, 1, 3, Kind::Softmax).unwrap_err();
    assert!(matches!(&err, Error::WrongDevice { what, .. } if what == "y"), "unexpected error: {err}");
    assert_eq!(s0.clone_dtoh(&y0).unwrap(), vec![POISON; 3], "nothing was written");
    // Same device: fine.
    sm::forward(&s1, &x1, &mut y1, 1, 3, Kind::Softmax).unwrap();
}

#[test]
#[ignore = "needs a CUDA device"]
fn sync_launches_switch_gives_the_same_results() {
    let stream = common::gpu();
    let (rows, cols) = (37, 1500); // a block per row
    let x = uniform(&mut rng(11), rows * cols, -4.0, 4.0);
    let xd = stream.clone_htod(&x).unwrap();
    let run = |sync: bool| {
        evenclass::cuda::set_sync_launches(sync);
        assert_eq!(evenclass::cuda::sync_launches(), sync);
        let mut y = stream.clone_htod(&vec![POISON; rows * cols]).unwrap();
        sm::forward(&stream, &xd, &mut y, rows, cols, Kind::LogSoftmax).unwrap();
        stream.clone_dtoh(&y).unwrap()
    };
    let (on, off) = (run(true), run(false));
    assert_close("log_softmax", &on, &off, 0.0, 0.0);
}
