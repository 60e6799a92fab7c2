//! Compiles every `kernels/*.cu` with nvcc into a fatbin in `OUT_DIR` and writes
//! `OUT_DIR/kernels.rs`, which embeds them (`include_bytes!`) for `src/cuda/module.rs`.
//!
//! Environment:
//! - `NVCC`: path of nvcc; else `CUDA_HOME`/`CUDA_PATH` + `/bin/nvcc`; else `nvcc` on `PATH`.
//! - `EVENCLASS_CUDA_ARCHS`: comma-separated SM versions to build machine code for (default
//!   `80,90`); PTX of the last one is embedded too, so newer chips JIT it.
//! - `EVENCLASS_REQUIRE_NVCC=1`: a missing nvcc or a kernel that fails to compile fails the build
//!   (CI sets it). Without it the build succeeds with a warning and the CUDA path reports at run
//!   time that the kernels were not compiled.
//! - `EVENCLASS_KERNEL_CACHE=0`: compile even when `target/evenclass-kernel-cache` has the fatbins
//!   of the same sources, flags, architectures and nvcc (see `compile_cached`).
use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const DEFAULT_ARCHS: &str = "80,90";

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    let kernel_dir = manifest.join("kernels");

    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=kernels");
    for var in ["NVCC", "CUDA_HOME", "CUDA_PATH", "PATH", "EVENCLASS_CUDA_ARCHS", "EVENCLASS_REQUIRE_NVCC"] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let strict = env::var("EVENCLASS_REQUIRE_NVCC").is_ok_and(|v| !v.is_empty() && v != "0");
    let mut sources = Vec::new();
    for entry in fs::read_dir(&kernel_dir).expect("kernels/ must exist") {
        let path = entry.expect("readable kernels/ entry").path();
        // Every file (headers too) is tracked, so any edit rebuilds.
        println!("cargo:rerun-if-changed={}", path.display());
        if path.extension().is_some_and(|e| e == "cu") {
            sources.push(path);
        }
    }
    sources.sort();
    write_param_layout(&kernel_dir, &sources, &out_dir);

    let archs = parse_archs(&env::var("EVENCLASS_CUDA_ARCHS").unwrap_or_else(|_| DEFAULT_ARCHS.into()));
    let nvcc = find_nvcc();
    // Exposed to the crate so the kernel-compile test can use the very same compiler.
    println!("cargo:rustc-env=EVENCLASS_NVCC={}", nvcc.as_ref().map(|p| p.display().to_string()).unwrap_or_default());
    println!("cargo:rustc-env=EVENCLASS_KERNEL_DIR={}", kernel_dir.display());
    // `cfg(evenclass_nvcc)`: tests/kernels_compile.rs is ignored (with the reason) without nvcc,
    // instead of passing without checking anything.
    println!("cargo:rustc-check-cfg=cfg(evenclass_nvcc)");
    if nvcc.is_some() {
        println!("cargo:rustc-cfg=evenclass_nvcc");
    }

    let outcome: Result<Vec<(String, PathBuf)>, String> = match &nvcc {
        None => Err("nvcc was not found (set NVCC or CUDA_HOME, or put nvcc on PATH)".into()),
        Some(nvcc) => compile_cached(nvcc, &sources, &kernel_dir, &out_dir, &archs),
    };

    let generated = match outcome {
        Ok(modules) => {
            let release = nvcc.as_deref().and_then(nvcc_release);
            let mut s = format!(
                "/// Set when build.rs compiled the kernels.\npub const NOT_COMPILED: Option<&str> = None;\n\
                 /// nvcc's release (`13.0`) that built the kernels.\npub const NVCC_RELEASE: Option<&str> = {release:?};\n"
            );
            s.push_str(
                "/// (module name, fatbin) for every `kernels/*.cu`.\npub static MODULES: &[(&str, &[u8])] = &[\n",
            );
            for (name, path) in &modules {
                s.push_str(&format!("    ({name:?}, include_bytes!({:?})),\n", path.display().to_string()));
            }
            s.push_str("];\n");
            s
        }
        Err(why) => {
            if strict {
                panic!("EVENCLASS_REQUIRE_NVCC is set and the CUDA kernels could not be built: {why}");
            }
            for line in why.lines().take(20) {
                println!("cargo:warning=evenclass: CUDA kernels not compiled: {line}");
            }
            format!(
                "/// Set when build.rs compiled the kernels.\npub const NOT_COMPILED: Option<&str> = Some({why:?});\n\
                 /// nvcc's release that built the kernels.\npub const NVCC_RELEASE: Option<&str> = None;\n\
                 /// (module name, fatbin) for every `kernels/*.cu`.\npub static MODULES: &[(&str, &[u8])] = &[];\n"
            )
        }
    };
    fs::write(out_dir.join("kernels.rs"), generated).expect("write kernels.rs");
}

/// Turns `kernels/params.def` into `OUT_DIR/param_layout.rs`: one `(size, align)` constant per
/// kernel parameter struct, which `check_params_layout!` compares with the Rust twin. Also checks
/// that every listed struct is `EC_CHECK_PARAMS`-ed by some kernel source, so neither side can
/// drift from the list unnoticed.
fn write_param_layout(kernel_dir: &Path, sources: &[PathBuf], out_dir: &Path) {
    let def = kernel_dir.join("params.def");
    let text = fs::read_to_string(&def).unwrap_or_else(|e| panic!("reading {}: {e}", def.display()));
    let all_sources: String = sources.iter().map(|p| fs::read_to_string(p).expect("readable kernel source")).collect();
    let mut out = String::from(
        "/// `(size, align)` in bytes of each kernel parameter struct, from `kernels/params.def`.\n\
         #[allow(non_upper_case_globals)]\npub(crate) mod param_layout {\n",
    );
    for (lineno, line) in text.lines().enumerate() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("EC_PARAMS(") else {
            assert!(line.is_empty() || line.starts_with("//"), "params.def:{}: unexpected line {line:?}", lineno + 1);
            continue;
        };
        let fields: Vec<&str> = rest.trim_end_matches(')').split(',').map(str::trim).collect();
        let parsed = match fields.as_slice() {
            [name, size, align] => size.parse::<usize>().ok().zip(align.parse::<usize>().ok()).map(|sa| (*name, sa)),
            _ => None,
        };
        let Some((name, (size, align))) = parsed else {
            panic!("params.def:{}: expected EC_PARAMS(Name, size, align), got {line:?}", lineno + 1)
        };
        assert!(
            all_sources.contains(&format!("EC_CHECK_PARAMS({name});")),
            "params.def lists {name}, but no kernels/*.cu has `EC_CHECK_PARAMS({name});` after its struct"
        );
        out.push_str(&format!("    pub(crate) const {name}: (usize, usize) = ({size}, {align});\n"));
    }
    out.push_str("}\n");
    fs::write(out_dir.join("param_layout.rs"), out).expect("write param_layout.rs");
}

/// `13.0` from nvcc's `--version` line `Cuda compilation tools, release 13.0, V13.0.88`.
fn nvcc_release(nvcc: &Path) -> Option<String> {
    let out = Command::new(nvcc).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rest = &text[text.find("release ")? + "release ".len()..];
    Some(rest.split(',').next()?.trim().to_string())
}

fn parse_archs(spec: &str) -> Vec<String> {
    let archs: Vec<String> =
        spec.split(',').map(|s| s.trim().trim_start_matches("sm_").to_string()).filter(|s| !s.is_empty()).collect();
    for a in &archs {
        assert!(
            a.chars().next().is_some_and(|c| c.is_ascii_digit()) && a.chars().all(|c| c.is_ascii_alphanumeric()),
            "EVENCLASS_CUDA_ARCHS: {a:?} is not an SM version such as 80 or 90a"
        );
    }
    assert!(!archs.is_empty(), "EVENCLASS_CUDA_ARCHS names no architecture");
    archs
}

fn find_nvcc() -> Option<PathBuf> {
    if let Ok(p) = env::var("NVCC") {
        if !p.is_empty() {
            return Some(PathBuf::from(p));
        }
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(home) = env::var(var) {
            let p = Path::new(&home).join("bin").join("nvcc");
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|d| d.join("nvcc"))
        .find(|p| p.is_file())
        // A symlinked nvcc (e.g. /usr/bin/nvcc) must run from its real folder to find its tools.
        .map(|p| fs::canonicalize(&p).unwrap_or(p))
}

/// Flags of every kernel compile (with the `-gencode` pairs of `archs`); part of the cache key.
const NVCC_FLAGS: [&str; 4] = ["-O3", "-std=c++17", "-lineinfo", "--expt-relaxed-constexpr"];

/// `compile_all` through a cache shared by every profile and feature set of one target folder:
/// cargo runs this script once per profile and feature set (check, release, bench, `--features
/// candle`, ...), and each run would otherwise spend the same minute or two in nvcc. The key
/// hashes every file of `kernels/`, the flags, the architectures and nvcc's `--version`, so any
/// change misses the cache. Entries are written to a temporary folder and renamed into
/// place, so concurrent builds never see half an entry. `EVENCLASS_KERNEL_CACHE=0` turns it off.
fn compile_cached(
    nvcc: &Path,
    sources: &[PathBuf],
    kernel_dir: &Path,
    out_dir: &Path,
    archs: &[String],
) -> Result<Vec<(String, PathBuf)>, String> {
    println!("cargo:rerun-if-env-changed=EVENCLASS_KERNEL_CACHE");
    let enabled = env::var("EVENCLASS_KERNEL_CACHE").map_or(true, |v| v != "0");
    let Some(cache_root) = target_dir(out_dir).filter(|_| enabled).map(|t| t.join("evenclass-kernel-cache")) else {
        return compile_all(nvcc, sources, kernel_dir, out_dir, archs);
    };
    let Some(key) = cache_key(nvcc, kernel_dir, archs) else {
        return compile_all(nvcc, sources, kernel_dir, out_dir, archs);
    };
    let entry = cache_root.join(&key);
    let names: Vec<String> = sources.iter().map(|s| s.file_stem().unwrap().to_string_lossy().into_owned()).collect();
    let cached = |dir: &Path| names.iter().all(|n| dir.join(format!("{n}.fatbin")).is_file());
    if !cached(&entry) {
        let tmp = cache_root.join(format!("{key}.tmp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
        let built = compile_all(nvcc, sources, kernel_dir, &tmp, archs);
        if built.is_err() {
            let _ = fs::remove_dir_all(&tmp);
            return built;
        }
        // Another build may have renamed the same entry in first: theirs is identical.
        if fs::rename(&tmp, &entry).is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        if !cached(&entry) {
            return compile_all(nvcc, sources, kernel_dir, out_dir, archs);
        }
    }
    // Copied, not linked, into OUT_DIR: `include_bytes!` paths must stay valid when the cache is
    // cleaned.
    names
        .into_iter()
        .map(|n| {
            let file = format!("{n}.fatbin");
            let dst = out_dir.join(&file);
            fs::copy(entry.join(&file), &dst).map_err(|e| format!("copying cached {file}: {e}"))?;
            Ok((n, dst))
        })
        .collect()
}

/// The target folder above `OUT_DIR` (`target/<profile>/build/<pkg>/out`): the first ancestor
/// holding cargo's `CACHEDIR.TAG`.
fn target_dir(out_dir: &Path) -> Option<PathBuf> {
    out_dir.ancestors().find(|d| d.join("CACHEDIR.TAG").is_file()).map(Path::to_path_buf)
}

/// Hex key over every file of `kernels/` (names and bytes), the flags, the architectures and
/// nvcc's `--version` output. `None` when nvcc cannot report its version.
fn cache_key(nvcc: &Path, kernel_dir: &Path, archs: &[String]) -> Option<String> {
    use std::collections::hash_map::DefaultHasher;
    use std::hash::{Hash, Hasher};
    let version = Command::new(nvcc).arg("--version").output().ok().filter(|o| o.status.success())?.stdout;
    let mut files: Vec<PathBuf> = fs::read_dir(kernel_dir).ok()?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    files.sort();
    // Two differently seeded SipHash states: a 128-bit key.
    let mut hashers = [DefaultHasher::new(), DefaultHasher::new()];
    1u8.hash(&mut hashers[1]);
    for h in &mut hashers {
        // nvcc's path is left out: a wrapper that forwards to the same nvcc (scripts/
        // check-candle-cuda.sh) reports the same version and builds the same fatbins.
        version.hash(h);
        NVCC_FLAGS.hash(h);
        archs.hash(h);
        for f in &files {
            f.file_name().hash(h);
            fs::read(f).ok()?.hash(h);
        }
    }
    Some(format!("{:016x}{:016x}", hashers[0].finish(), hashers[1].finish()))
}

fn compile_all(
    nvcc: &Path,
    sources: &[PathBuf],
    kernel_dir: &Path,
    out_dir: &Path,
    archs: &[String],
) -> Result<Vec<(String, PathBuf)>, String> {
    // nvcc is single-threaded per file: compile the files in parallel.
    let results: Vec<Result<(String, PathBuf), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> =
            sources.iter().map(|src| scope.spawn(move || compile_one(nvcc, src, kernel_dir, out_dir, archs))).collect();
        handles.into_iter().map(|h| h.join().expect("compile thread")).collect()
    });
    let errors: Vec<String> = results.iter().filter_map(|r| r.as_ref().err().cloned()).collect();
    if errors.is_empty() {
        Ok(results.into_iter().map(Result::unwrap).collect())
    } else {
        Err(errors.join("\n"))
    }
}

fn compile_one(
    nvcc: &Path,
    src: &Path,
    kernel_dir: &Path,
    out_dir: &Path,
    archs: &[String],
) -> Result<(String, PathBuf), String> {
    let name = src.file_stem().unwrap().to_string_lossy().into_owned();
    let out = out_dir.join(format!("{name}.fatbin"));
    let mut cmd = Command::new(nvcc);
    cmd.arg("--fatbin").args(NVCC_FLAGS).arg("-I").arg(kernel_dir);
    for a in archs {
        cmd.arg(format!("-gencode=arch=compute_{a},code=sm_{a}"));
    }
    let last = archs.last().unwrap();
    cmd.arg(format!("-gencode=arch=compute_{last},code=compute_{last}"));
    cmd.arg("-o").arg(&out).arg(src);
    let output = cmd.output().map_err(|e| format!("could not run {}: {e}", nvcc.display()))?;
    if !output.status.success() {
        return Err(format!(
            "nvcc failed on {}:\n{}{}",
            src.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok((name, out))
}
