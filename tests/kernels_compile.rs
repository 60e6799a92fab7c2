//! Every kernel compiles with the nvcc build.rs found, to PTX a CUDA 13.0 driver accepts, and the
//! embedded images are real fatbins. Built without nvcc, both tests are *ignored* with the reason
//! (`cfg(evenclass_nvcc)` from build.rs), never a silent pass; with EVENCLASS_REQUIRE_NVCC=1 (CI)
//! a build without nvcc fails instead. The one remaining skip is a test binary copied to a machine
//! without the kernel sources (the GPU bundle), which says so on stderr.
use std::path::Path;
use std::process::Command;

const NVCC: &str = env!("EVENCLASS_NVCC");
const KERNEL_DIR: &str = env!("EVENCLASS_KERNEL_DIR");
/// A CUDA 13.0 driver JITs PTX up to ISA 9.0.
const MAX_PTX_ISA: (u32, u32) = (9, 0);

fn required() -> bool {
    std::env::var("EVENCLASS_REQUIRE_NVCC").is_ok_and(|v| !v.is_empty() && v != "0")
}

#[test]
#[cfg_attr(
    not(evenclass_nvcc),
    ignore = "nvcc was not found when this was built: kernel compilation is not checked (source scripts/cuda-env.sh)"
)]
fn every_kernel_compiles_to_loadable_ptx() {
    if NVCC.is_empty() || !Path::new(NVCC).exists() || !Path::new(KERNEL_DIR).is_dir() {
        // Also the case of a test binary copied to another machine (the GPU bundle).
        assert!(!required(), "EVENCLASS_REQUIRE_NVCC is set but there is no nvcc ({NVCC:?}) or no {KERNEL_DIR}");
        eprintln!("no nvcc or kernel sources here: kernel compilation not checked");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let mut count = 0;
    for entry in std::fs::read_dir(KERNEL_DIR).unwrap() {
        let src = entry.unwrap().path();
        if src.extension().is_none_or(|e| e != "cu") {
            continue;
        }
        count += 1;
        let ptx = out.path().join(src.file_stem().unwrap()).with_extension("ptx");
        let o = Command::new(NVCC)
            .args(["--ptx", "-O3", "-std=c++17", "-arch=compute_90", "-I", KERNEL_DIR, "-o"])
            .arg(&ptx)
            .arg(&src)
            .output()
            .unwrap();
        assert!(o.status.success(), "{} failed to compile:\n{}", src.display(), String::from_utf8_lossy(&o.stderr));
        let text = std::fs::read_to_string(&ptx).unwrap();
        let version = text.lines().find_map(|l| l.strip_prefix(".version ")).expect("PTX has a .version line");
        let (maj, min) = version.trim().split_once('.').unwrap();
        let v = (maj.parse::<u32>().unwrap(), min.parse::<u32>().unwrap());
        assert!(v <= MAX_PTX_ISA, "{}: PTX ISA {v:?} is newer than a CUDA 13.0 driver accepts", src.display());
        assert!(text.contains(".entry"), "{}: no kernel entry point", src.display());
    }
    assert!(count > 0, "no kernels found in {KERNEL_DIR}");
}

#[test]
#[cfg_attr(not(evenclass_nvcc), ignore = "nvcc was not found when this was built: no kernels are embedded")]
fn embedded_modules_are_fatbins() {
    let modules: Vec<_> = evenclass::cuda::compiled_modules().collect();
    if let Some(why) = evenclass::cuda::kernels_not_compiled() {
        assert!(!required(), "kernels not compiled: {why}");
        assert!(modules.is_empty());
        return;
    }
    for name in ["softmax", "cross_entropy"] {
        assert!(modules.iter().any(|(n, _)| *n == name), "module {name} missing");
    }
    for (name, bytes) in modules {
        // Fatbin magic 0xBA55ED50, little-endian.
        assert!(bytes.len() > 16 && bytes[..4] == [0x50, 0xED, 0x55, 0xBA], "{name} is not a fatbin");
        assert!(!Path::new(KERNEL_DIR).is_dir() || Path::new(KERNEL_DIR).join(format!("{name}.cu")).exists());
    }
}
