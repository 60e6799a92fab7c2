#!/usr/bin/env bash
# The prepared GPU run (scripts/run-gpu.sh, docs/gpu-runs.md) rehearsed under the emulated CUDA
# driver, so that it cannot rot between the rare days a GPU is lent:
#
#   scripts/gpu-playbook-dry-run.sh [EMULATOR_DIR]     (default target/emu, built if missing)
#
# Builds an unpacked bundle (scripts/gpu-bundle.sh --no-pack) and runs its run-gpu.sh with
# DRY_RUN=1: every part in order (tests, kernels against PyTorch, the training step, the
# experiment) at tiny sizes, the PyTorch parts skipped with a line saying so. Checks that every
# part ran and passed, that the training step measured all three convolution precisions, and
# that the experiment wrote its report on the emulated device. Times printed here are of the
# emulator, never of a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
emu="${1:-target/emu}"
# shellcheck source=/dev/null
source scripts/cuda-env.sh
[ -f "$emu/libcuda.so.1" ] || scripts/build-emulator.sh "$emu" || exit 1
emu="$(cd "$emu" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/evenclass-playbook.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "=== bundle (unpacked)"
scripts/gpu-bundle.sh --no-pack "$work/bundle" > "$work/bundle.log" 2>&1 || {
    cat "$work/bundle.log"
    echo "GPU playbook dry run: the bundle did not build"
    exit 1
}
echo "=== run-gpu.sh, DRY_RUN=1"
DRY_RUN=1 LD_LIBRARY_PATH="$emu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$work/bundle/run-gpu.sh" "$work/out"
rc=$?
out="$work/out"
problems=()
[ "$rc" = 0 ] || problems+=("run-gpu.sh exited $rc")
for p in tests kernels step experiment; do
    grep -q "^$p: " "$out/summary.txt" || problems+=("part $p did not report")
    ! grep -qE "^$p: (skipped|FAILED)" "$out/summary.txt" || problems+=("part $p: $(grep "^$p: " "$out/summary.txt")")
done
grep -q "PyTorch: skipped\|PyTorch .* on " "$out/comparison.md" 2>/dev/null ||
    problems+=("comparison.md does not say whether PyTorch ran")
for prec in fp32 tf32 bf16; do
    grep -q "\"conv_precision\":\"$prec\"" "$out/step.jsonl" 2>/dev/null || problems+=("no $prec training step in step.jsonl")
done
grep -q "evenclass emulated CUDA device" "$out/experiment.log" 2>/dev/null ||
    problems+=("the experiment did not run on the emulated device")
[ -s "$out/cifar10/report.json" ] || problems+=("the experiment wrote no report")
if [ "${#problems[@]}" = 0 ]; then
    echo "GPU playbook dry run: ok ($(tail -n 1 "$out/summary.txt"))"
else
    for f in summary.txt tests-summary.txt comparison.log step.log experiment.log; do
        [ -f "$out/$f" ] && { echo "--- $f"; tail -n 30 "$out/$f"; }
    done
    printf 'GPU playbook dry run: FAILED: %s\n' "${problems[@]}"
    exit 1
fi
