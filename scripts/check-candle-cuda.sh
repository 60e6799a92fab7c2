#!/usr/bin/env bash
# Type-checks (clippy, -D warnings) every target with `--features candle-cuda`, i.e. candle's CPU
# and CUDA backends, src/candle/ and tests/candle.rs, the candle example and bench (candle-cuda
# includes the candle feature, so this one check covers both).
#
# A real build of candle's CUDA backend compiles candle's own kernels with nvcc (dozens of heavy
# .cu files, many CPU-minutes) and links cuBLAS, cuRAND, NVRTC and the driver, which the pip nvcc
# of scripts/cuda-env.sh does not have. A type-check needs neither: this script puts a wrapper
# first as NVCC that forwards every call to the real nvcc (so this crate's kernels are compiled
# for real) except the ones for candle-kernels' sources, whose outputs it only creates empty.
# Nothing built here is linked or run. On a machine with a full CUDA toolkit, build and run
# instead: `cargo test --release --features candle-cuda --test candle -- --include-ignored`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cuda-env.sh
# A stable path (NVCC is part of the build scripts' fingerprints): reruns reuse the last check.
wrap="$PWD/target/check-candle-cuda"
mkdir -p "$wrap"
cat > "$wrap/nvcc" <<'WRAPPER'
#!/usr/bin/env bash
case "$*" in
  *candle-kernels*)
    outdir=""; out=""; lib=0; prev=""; last=""
    for a in "$@"; do
      [ "$prev" = "--output-directory" ] && outdir="$a"
      [ "$prev" = "-o" ] && out="$a"
      [ "$a" = "--lib" ] && lib=1
      prev="$a"; last="$a"
    done
    if [ -n "$outdir" ]; then : > "$outdir/$(basename "$last" .cu).ptx"; fi
    if [ -n "$out" ]; then if [ "$lib" = 1 ]; then rm -f "$out"; ar rcs "$out"; else : > "$out"; fi; fi
    exit 0 ;;
  *) exec "$REAL_NVCC" "$@" ;;
esac
WRAPPER
chmod +x "$wrap/nvcc"
export REAL_NVCC="$NVCC" NVCC="$wrap/nvcc"
# candle-kernels asks nvidia-smi for the GPU's compute capability unless told.
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
cargo clippy --all-targets --features candle-cuda -- -D warnings
echo "candle, candle-cuda: every target type-checked and clippy clean (not linked, not run)"
