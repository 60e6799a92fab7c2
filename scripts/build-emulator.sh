#!/usr/bin/env bash
# Builds the emulated CUDA driver (test-only; see docs/emulator.md):
#
#   scripts/build-emulator.sh OUT_DIR [--asan]
#
# writes OUT_DIR/libcuda.so.1 (+ the libcuda.so symlink; cudarc dlopens "libcuda.so" first) and
# OUT_DIR/selftest. Every kernels/*.cu (and tests/emulator/selftest*.cu) goes through
#   1. nvcc for sm_90 with build.rs's flags and `-Xptxas -v --keep`: the PTX names the entry
#      points and their parameter sizes and __launch_bounds__, ptxas reports registers, spills and
#      static shared memory;
#   2. tests/emulator/gen_registry.py: a registry translation unit that includes the .cu;
#   3. g++ (-x c++, cuda_shim.h forced first) into an object of the library.
# A module is rebuilt only when its inputs or the flags changed. --asan builds everything with
# AddressSanitizer (run the result with the matching libasan preloaded into uninstrumented
# programs; scripts/emulated-gpu-tests.sh does).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: scripts/build-emulator.sh OUT_DIR [--asan]}
asan=0
[ "${2:-}" = "--asan" ] && asan=1
# shellcheck source=/dev/null
source "$root/scripts/cuda-env.sh"
mkdir -p "$out/obj"
out=$(cd "$out" && pwd)
emu="$root/tests/emulator"
CXX=${CXX:-g++}
jobs=${EMU_JOBS:-2}

# -march: the library is built where it runs (EMU_MARCH overrides); fmaf then compiles to the FMA
# instruction instead of a libm call. -ffp-contract=off keeps every other a * b + c unfused, so
# results do not depend on the instruction set.
cxxflags=(-std=c++17 -g -fPIC -march="${EMU_MARCH:-native}" -ffp-contract=off -Wall -Wextra -Wno-unused-parameter -Wno-unused-function -Wno-unknown-pragmas
    -I "$root/kernels" -I "$emu" -I "$CUDA_HOME/include")
if [ "$asan" = 1 ]; then
    cxxflags+=(-O1 -fsanitize=address -fno-omit-frame-pointer)
else
    cxxflags+=(-O3)
fi
# The kernels' loads and stores call tests/emulator/init_check.cpp (GCC's kernel-address sanitizer in
# outline mode: a call per access, no shadow memory or runtime of GCC's). Not with --asan: there
# AddressSanitizer instruments the same accesses.
kernelflags=()
if [ "$asan" = 0 ]; then
    kernelflags=(-fsanitize=kernel-address --param asan-instrumentation-with-call-threshold=0
        --param asan-stack=0 --param asan-globals=0)
fi
# build.rs's nvcc flags, for sm_90 only.
nvccflags=(-O3 -std=c++17 -lineinfo --expt-relaxed-constexpr -arch=sm_90 -I "$root/kernels")

common_inputs=("$root"/kernels/*.cuh "$emu/init_check.h" "$emu/cuda_shim.h" "$emu/emu.h" "$emu/tensor_core.h" "$emu/registry.h" "$emu/gen_registry.py"
    "$root/scripts/build-emulator.sh")

build_module() {
    local src=$1 module stamp want dir
    module=$(basename "$src" .cu)
    dir="$out/obj/$module"
    stamp="$dir/stamp"
    want=$( { cat "$src" "${common_inputs[@]}"; echo "${cxxflags[*]} ${kernelflags[*]} ${nvccflags[*]} $("$NVCC" --version | tail -n 1)"; } |
        sha256sum | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f "$dir/reg.o" ]; then
        return 0
    fi
    rm -rf "$dir" && mkdir -p "$dir"
    if ! "$NVCC" -cubin "${nvccflags[@]}" -Xptxas -v --keep --keep-dir "$dir" -o "$dir/$module.cubin" "$src" \
        >"$dir/ptxas.log" 2>&1; then
        cat "$dir/ptxas.log" >&2
        echo "build-emulator: nvcc failed on $src" >&2
        return 1
    fi
    python3 "$emu/gen_registry.py" "$module" "$src" "$dir/$module.ptx" "$dir/ptxas.log" "$dir/reg.cpp"
    # Every typed load and store of a kernel checks its alignment (tests/emulator/alignment.cpp), and
    # (plain build) calls the init check (tests/emulator/init_check.cpp).
    "$CXX" "${cxxflags[@]}" "${kernelflags[@]}" -fsanitize=alignment -fno-sanitize-recover=alignment \
        -include "$emu/cuda_shim.h" -c "$dir/reg.cpp" -o "$dir/reg.o"
    # Keep what the registry came from; drop nvcc's other intermediates.
    find "$dir" -maxdepth 1 -type f ! -name reg.cpp ! -name reg.o ! -name ptxas.log ! -name "$module.ptx" -delete
    echo "$want" >"$stamp"
}

sources=("$root"/kernels/*.cu "$emu/selftest_kernels.cu" "$emu/selftest_tensor_core.cu")
pids=()
fail=0
for src in "${sources[@]}"; do
    build_module "$src" &
    pids+=($!)
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || fail=1; done
done
for p in "${pids[@]}"; do wait "$p" || fail=1; done
[ "$fail" = 0 ] || { echo "build-emulator: a module failed to build" >&2; exit 1; }

"$CXX" "${cxxflags[@]}" -c "$emu/runtime.cpp" -o "$out/obj/runtime.o"
"$CXX" "${cxxflags[@]}" -c "$emu/driver.cpp" -o "$out/obj/driver.o"
"$CXX" "${cxxflags[@]}" -c "$emu/tensor_core.cpp" -o "$out/obj/tensor_core.o"
"$CXX" "${cxxflags[@]}" -c "$emu/shared_guard.cpp" -o "$out/obj/shared_guard.o"
"$CXX" "${cxxflags[@]}" -c "$emu/alignment.cpp" -o "$out/obj/alignment.o"
"$CXX" "${cxxflags[@]}" -c "$emu/image_check.cpp" -o "$out/obj/image_check.o"
"$CXX" "${cxxflags[@]}" -c "$emu/init_check.cpp" -o "$out/obj/init_check.o"
# runtime.o first: its guard opens the ec_shared section (shared_guard.h).
objs=("$out/obj/runtime.o" "$out/obj/driver.o" "$out/obj/tensor_core.o" "$out/obj/shared_guard.o" "$out/obj/alignment.o"
    "$out/obj/image_check.o" "$out/obj/init_check.o")
for src in "${sources[@]}"; do objs+=("$out/obj/$(basename "$src" .cu)/reg.o"); done
ldflags=(-shared -Wl,-soname,libcuda.so.1 -Wl,--no-undefined -lpthread -ldl)
[ "$asan" = 1 ] && ldflags+=(-fsanitize=address)
"$CXX" -o "$out/libcuda.so.1" "${objs[@]}" "${ldflags[@]}"
ln -sf libcuda.so.1 "$out/libcuda.so"

# The emulator's own tests: a program on the driver API, linked against this library.
selfflags=(-std=c++17 -g -O1 -Wall -Wextra -I "$CUDA_HOME/include")
[ "$asan" = 1 ] && selfflags+=(-fsanitize=address -fno-omit-frame-pointer)
"$CXX" "${selfflags[@]}" -o "$out/selftest" "$emu/selftest.cpp" -L "$out" -l:libcuda.so.1 -Wl,-rpath,"$out"
echo "build-emulator: $out/libcuda.so ($([ "$asan" = 1 ] && echo AddressSanitizer || echo plain))"
