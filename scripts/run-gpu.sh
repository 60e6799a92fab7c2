#!/usr/bin/env bash
# The prepared GPU run (docs/gpu-runs.md): runs on the GPU host from a folder made by
# scripts/gpu-bundle.sh, and needs no Rust there.
#
#   run-gpu.sh [OUT_DIR]                 (default $OUT, else ./gpu-out)
#
# Parts, in this order (correctness first), each logged under OUT_DIR; summary.txt has one line
# per part with its result and seconds:
#   1. tests       every test binary with --include-ignored (the GPU tests run)   tests.log
#   2. kernels     the GPU groups of every bench, briefly (criterion's estimates under criterion/),
#                  then compare_pytorch_gpu.py: the same operations, shapes and dtypes in the
#                  host's PyTorch, one table                                       comparison.md
#   3. step        examples/speed --device cuda on the default GPU network (width 64, depth 2,
#                  batch 512) with FP32, TF32 and BF16 convolutions, and PyTorch eager on the same
#                  network and recipe (channels-last, same precision)         step.jsonl, step.md
#   4. experiment  the default two-stage experiment on the GPU (EXPERIMENT_ARGS), timed, when at
#                  least EXPERIMENT_MIN_S (default 120) of BUDGET_S are left      experiment.log
# Environment:
#   BUDGET_S       seconds the whole run may take (default 540: the device tool's 10-minute call,
#                  less a minute for unpacking and the transfer back); a part that would start
#                  with less than its minimum left is skipped with a line saying so
#   DRY_RUN=1      the CI rehearsal under the emulated driver: tiny sizes, one real GPU test binary
#                  (the others listed), benches as one dry iteration each (launches checked, not
#                  executed), the step at width 4, the experiment on 256 synthetic images
#                  (width 8, one epoch a stage);
#                  PyTorch parts skipped with a line saying so
#   CIFAR10_DIR    the real data (else data/*.cjpk of the bundle is unpacked, else --synthetic)
#   EXPERIMENT_ARGS, BENCH_FILTER (default gpu; empty runs every group)
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-${OUT:-$here/gpu-out}}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$here"
if [ -f bin.tar.xz ] && [ ! -d tests ]; then
    tar -xJf bin.tar.xz
fi
dry="${DRY_RUN:-0}"
budget="${BUDGET_S:-540}"
start=$(date +%s)
left() { echo $((budget - ($(date +%s) - start))); }
status=0
: > "$out/summary.txt"
# part NAME MIN_SECONDS: whether the part may start; logs a skip otherwise.
part() {
    part_name=$1
    part_start=$(date +%s)
    if [ "$(left)" -lt "$2" ]; then
        echo "$1: skipped, $(left) s of the $budget s budget left (needs $2)" | tee -a "$out/summary.txt"
        return 1
    fi
    echo "=== $1 ($(( part_start - start )) s into the run)"
}
# done_part RESULT: the part's summary line.
done_part() {
    echo "$part_name: $1 ($(( $(date +%s) - part_start )) s)" | tee -a "$out/summary.txt"
}

{
    echo "commit: $(cat COMMIT 2>/dev/null)"
    date -u
    if [ "$dry" = 1 ]; then echo "DRY RUN under the emulated driver: no time here measures a GPU"; fi
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "no nvidia-smi"
} > "$out/device.txt"

# 1. Tests.
if part tests 0; then
    : > "$out/tests.log"
    fails=0
    listed=0
    for t in tests/*; do
        echo "=== $t" >> "$out/tests.log"
        if [ "$dry" = 1 ] && [ "$(basename "$t")" != softmax ]; then
            # Every binary starts and lists its tests; the emulated suite runs them all in CI.
            "$t" --include-ignored --list >> "$out/tests.log" 2>&1 || fails=$((fails + 1))
            listed=$((listed + 1))
        else
            "$t" --include-ignored --test-threads=1 >> "$out/tests.log" 2>&1 || fails=$((fails + 1))
        fi
    done
    grep -E "^=== |test result|FAILED|panicked" "$out/tests.log" > "$out/tests-summary.txt"
    [ "$fails" = 0 ] || status=1
    passed=$(sed -nE 's/^test result: .* ([0-9]+) passed.*/\1/p' "$out/tests.log" | awk '{s += $1} END {print s + 0}')
    done_part "$(grep -c '^test result: ok' "$out/tests.log") binaries ran ($passed tests passed)$(
        [ "$listed" = 0 ] || echo ", $listed listed only"), $fails failed"
fi

# 2. Our kernels against PyTorch's.
if part kernels 60; then
    : > "$out/benches.log"
    fails=0
    for b in benches/*; do
        echo "=== $b" >> "$out/benches.log"
        if [ "$dry" = 1 ]; then
            # One iteration of every GPU case, launches checked but not executed (emulator.md).
            EVENCLASS_EMU_DRY_RUN=1 "$b" --bench --test ${BENCH_FILTER-gpu} >> "$out/benches.log" 2>&1 ||
                fails=$((fails + 1))
        else
            CRITERION_HOME="$out/criterion" "$b" --bench --warm-up-time 0.5 --measurement-time 1 --sample-size 10 \
                --noplot ${BENCH_FILTER-gpu} >> "$out/benches.log" 2>&1 || fails=$((fails + 1))
        fi
    done
    [ "$fails" = 0 ] || status=1
    python3 compare_pytorch_gpu.py "$out/criterion" --out "$out/comparison.md" --json "$out/comparison.jsonl" \
        > "$out/comparison.log" 2>&1 || { status=1; fails=$((fails + 1)); }
    done_part "$(ls benches | wc -l) bench binaries, $fails failed; $(head -n 1 "$out/comparison.md" 2>/dev/null)"
fi

# 3. The training step, ours and PyTorch's.
if part step 60; then
    : > "$out/step.jsonl"
    fails=0
    if [ "$dry" = 1 ]; then
        sizes=(--width 4 --depth 1 --batch 8 --warmup 0 --steps 1 --repeats 1 --eval-steps 1)
    else
        # About one epoch per repeat: 45,000 images / 512 = 88 steps.
        sizes=(--width 64 --depth 2 --batch 512 --warmup 5 --steps 88 --repeats 3)
    fi
    # Convolution arithmetic x activation storage; the last is the mixed-precision step that
    # PyTorch's bf16 autocast (which also stores bf16 activations) is measured against.
    for prec in "fp32 f32" "tf32 f32" "bf16 f32" "bf16 bf16"; do
        read -r conv act <<< "$prec"
        examples/speed --device cuda --conv-precision "$conv" --precision "$act" "${sizes[@]}" \
            >> "$out/step.jsonl" 2>> "$out/step.log" || fails=$((fails + 1))
    done
    [ "$fails" = 0 ] || status=1
    python3 compare_pytorch_gpu.py --step-ours "$out/step.jsonl" --out "$out/step.md" >> "$out/step.log" 2>&1 ||
        { status=1; fails=$((fails + 1)); }
    done_part "$(wc -l < "$out/step.jsonl") of ours measured, $fails failed"
fi

# 4. The experiment.
if part experiment "${EXPERIMENT_MIN_S:-120}"; then
    if [ -z "${CIFAR10_DIR:-}" ] && [ -f data/unpack.py ] && [ "$dry" != 1 ]; then
        n=$(python3 -c 'import struct;print(struct.unpack_from("<I", open("data/train.cjpk","rb").read(8), 4)[0])')
        python3 data/unpack.py /tmp/cifar-10-batches-bin --train-limit "$n" > "$out/unpack.log" 2>&1 &&
            export CIFAR10_DIR=/tmp/cifar-10-batches-bin
    fi
    if [ "$dry" = 1 ]; then
        data=(--synthetic --no-download --train-subset 256 --val-size 40 --test-subset 128 --epochs 1
              --batch-size 64 --width 8 --depth 1 --quiet)
    elif [ -n "${CIFAR10_DIR:-}" ]; then
        data=(--data-dir "$CIFAR10_DIR")
    else
        data=(--synthetic)
    fi
    # shellcheck disable=SC2086
    if examples/cifar10 --device cuda --out "$out/cifar10" "${data[@]}" ${EXPERIMENT_ARGS:-} > "$out/experiment.log" 2>&1; then
        done_part "passed, data: ${data[*]:0:2}"
    else
        status=1
        done_part "FAILED (experiment.log)"
    fi
fi
echo "run-gpu: $(( $(date +%s) - start )) s, exit $status" | tee -a "$out/summary.txt"
exit $status
