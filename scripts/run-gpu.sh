#!/usr/bin/env bash
# Runs on the GPU host from a folder made by scripts/gpu-bundle.sh. Writes logs under OUT_DIR
# (default $OUT, else ./gpu-out): every test binary with --include-ignored (the GPU tests run),
# every benchmark briefly (criterion's estimates under OUT_DIR/criterion), our kernels against
# PyTorch at the benches' shapes (comparison.md), and a GPU run of the experiment (EXPERIMENT_ARGS, e.g. "--epochs 5") on
# CIFAR10_DIR, or on the data unpacked from data/*.cjpk when the bundle carries them.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-${OUT:-$here/gpu-out}}"
mkdir -p "$out"
cd "$here"
if [ -f bin.tar.xz ] && [ ! -d tests ]; then
    tar -xJf bin.tar.xz
fi
{
    echo "commit: $(cat COMMIT 2>/dev/null)"; date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
} > "$out/device.txt" 2>&1
status=0
: > "$out/tests.log"
for t in tests/*; do
    echo "=== $t" >> "$out/tests.log"
    "$t" --include-ignored --test-threads=1 >> "$out/tests.log" 2>&1 || status=1
done
grep -E "^=== |test result|FAILED|panicked" "$out/tests.log" > "$out/tests-summary.txt"
: > "$out/benches.log"
for b in benches/*; do
    echo "=== $b" >> "$out/benches.log"
    # Brief by default: only the GPU groups, short measurements (BENCH_FILTER='' runs all).
    CRITERION_HOME="$out/criterion" "$b" --bench --warm-up-time 0.5 --measurement-time 1 --sample-size 10 \
        --noplot ${BENCH_FILTER-gpu} >> "$out/benches.log" 2>&1 || status=1
done
# Ours against PyTorch on this GPU, from the benches' measurements (PyTorch is the host's own,
# never a dependency of the crate): one table, comparison.md.
if [ -f compare_pytorch_gpu.py ]; then
    python3 compare_pytorch_gpu.py "$out/criterion" --out "$out/comparison.md" --json "$out/comparison.jsonl" \
        > "$out/comparison.log" 2>&1 || status=1
fi
if [ -z "${CIFAR10_DIR:-}" ] && [ -f data/unpack.py ]; then
    n=$(python3 -c 'import struct;print(struct.unpack_from("<I", open("data/train.cjpk","rb").read(8), 4)[0])')
    python3 data/unpack.py /tmp/cifar-10-batches-bin --train-limit "$n" > "$out/unpack.log" 2>&1 &&
        export CIFAR10_DIR=/tmp/cifar-10-batches-bin
fi
if [ -n "${CIFAR10_DIR:-}" ] && [ -x examples/cifar10 ]; then
    examples/cifar10 --device cuda --out "$out/cifar10" ${EXPERIMENT_ARGS:-} > "$out/experiment.log" 2>&1 || status=1
fi
exit $status
