#!/usr/bin/env bash
# Runs every GPU code path of the crate against the emulated CUDA driver (tests/emulator/, see
# docs/emulator.md), on a machine without a GPU:
#
#   scripts/emulated-gpu-tests.sh [--asan] [--only PARTS]
#
# PARTS is a comma-separated list of these (default: all of them, in this order):
#   selftest  builds the emulator (scripts/build-emulator.sh) into target/emu (target/emu-asan)
#             and runs its self-tests (broken kernels that must be caught, limits, counters);
#   tests     every ignored GPU test (`cargo test --release -- --ignored`: the kernel families
#             against their CPU references, the trainer's CUDA-vs-CPU tests, tests/emulator.rs's
#             counters, one injected GPU fault);
#   train-f32, train-bf16, faults
#             the slowest GPU tests by far (`slow` names all three): the trainer's two-epoch runs
#             with f32 and with bf16 activations (7-8 minutes each on 2 cores), and the spread of
#             injected GPU faults (tests/gpu_faults.rs: faults_spread_over_a_run, 6 of its 19
#             faults unless EVENCLASS_FAULT_SAMPLE says otherwise);
#   playbook  the prepared GPU run rehearsed (scripts/gpu-playbook-dry-run.sh: scripts/run-gpu.sh
#             with DRY_RUN=1 from an unpacked bundle), whose last part is a tiny `cifar10 --device
#             cuda` run (synthetic data, 256 images, one epoch a stage) that must write its report;
#   benches   one iteration (criterion --test) of the first (smallest) case of every GPU
#             benchmark group. train_step_gpu has only the default network (width 64, depth 2,
#             batch 512), hours of emulation: it runs as a dry run (launches checked and counted,
#             kernels not executed; the kernels themselves are covered by the tests).
# The emulator is built whatever PARTS says. --skip-slow and --tests-only are the older spellings
# of `--only selftest,tests,playbook,benches` and `--only selftest,tests,slow`.
#
# Prints one result line per part, e.g. `emulated GPU tests: 33 passed, 0 failed`, and exits
# non-zero when a part fails. --asan builds the emulator and the kernels with AddressSanitizer and
# preloads its runtime into the (uninstrumented) Rust binaries.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD

asan=0
all_parts=selftest,tests,train-f32,train-bf16,faults,playbook,benches
parts=$all_parts
usage="usage: scripts/emulated-gpu-tests.sh [--asan] [--only PART,...]; parts: $all_parts (slow = train-f32,train-bf16,faults)"
while [ $# -gt 0 ]; do
    case "$1" in
    --asan) asan=1 ;;
    --only) [ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }; parts=$2; shift ;;
    --skip-slow) parts=${parts//train-f32,train-bf16,faults,/} ;;
    --tests-only) parts=${parts//playbook,benches/}; parts=${parts%,} ;;
    *) echo "$usage" >&2; exit 2 ;;
    esac
    shift
done
parts=${parts//slow/train-f32,train-bf16,faults}
for p in ${parts//,/ }; do
    case ",$all_parts," in *",$p,"*) ;; *) echo "unknown part $p; $usage" >&2; exit 2 ;; esac
done
# wants PART: whether PARTS names it.
wants() { [[ ",$parts," == *",$1,"* ]]; }
tag=$([ "$asan" = 1 ] && echo " (AddressSanitizer)" || echo "")
out=$root/target/$([ "$asan" = 1 ] && echo emu-asan || echo emu)

# shellcheck source=/dev/null
source scripts/cuda-env.sh
export EVENCLASS_REQUIRE_NVCC=1
logs=$(mktemp -d "${TMPDIR:-/tmp}/evenclass-emulated.XXXXXX")
trap 'rm -rf "$logs"' EXIT
status=0
summary=()
started=$(date +%s)
elapsed() { echo "$(( $(date +%s) - started ))s"; }

echo "=== building the emulated driver$tag"
build_args=("$out")
[ "$asan" = 1 ] && build_args+=(--asan)
if ! scripts/build-emulator.sh "${build_args[@]}"; then
    echo "emulated GPU tests$tag: the emulator did not build"
    exit 1
fi
# Build every test, bench and example binary first, with the usual environment (no preload).
cargo build --release --tests --benches --examples --quiet || { echo "emulated GPU tests$tag: build failed"; exit 1; }

export LD_LIBRARY_PATH="$out${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# Two emulated devices, each with its own context, so tests/cuda.rs can check that buffers of
# another device are refused; every other test uses device 0.
export EVENCLASS_EMU_DEVICES="${EVENCLASS_EMU_DEVICES:-2}"
if [ "$asan" = 1 ]; then
    libasan=$(${CXX:-g++} -print-file-name=libasan.so)
    # cargo runs test, bench and example binaries through the runner: only they get the preload.
    export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="env LD_PRELOAD=$libasan"
    # Rust binaries are not instrumented: leak reports about them would be noise.
    export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:exitcode=86${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
fi

if wants selftest; then
    echo "=== emulator self-tests$tag ($(elapsed))"
    "$out/selftest" | tee "$logs/selftest.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
    summary+=("emulator selftest$tag: $(sed -nE 's/^selftest total: //p' "$logs/selftest.log" | grep . || echo 'did not finish')")
fi

# The slow tests (two-epoch trainings, runs with injected faults) run apart, without the init
# check, which makes kernels 2-4 times slower: the trainer's buffers and kernels are the ones the
# other trainer tests already run under it. The one injected fault of the tests part runs
# without it too: it checks that a run survives the fault, not the kernels.
slow=(cuda_short_run_learns_like_cpu cuda_bf16_short_run_learns_like_f32 faults_spread_over_a_run)
slow_parts=(train-f32 train-bf16 faults)
unchecked=(a_sync_fault_mid_run_is_survived)
: > "$logs/tests.log"
if wants tests; then
    echo "=== GPU tests (cargo test --release -- --ignored)$tag ($(elapsed))"
    skips=()
    for t in "${slow[@]}" "${unchecked[@]}"; do skips+=(--skip "$t"); done
    cargo test --release --no-fail-fast -- --ignored "${skips[@]}" 2>&1 | tee -a "$logs/tests.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
offcheck=()
wants tests && offcheck+=("${unchecked[@]}")
chosen_slow=0
for i in "${!slow[@]}"; do
    if wants "${slow_parts[$i]}"; then offcheck+=("${slow[$i]}"); chosen_slow=$((chosen_slow + 1)); fi
done
if [ "${#offcheck[@]}" -gt 0 ]; then
    echo "=== GPU tests with the init check off: ${offcheck[*]}$tag ($(elapsed))"
    # The fault sweep injects 6 of its 19 faults, a new draw each day (named in the output of a
    # failure; the full sweep: EVENCLASS_FAULT_SAMPLE=all).
    EVENCLASS_FAULT_SAMPLE="${EVENCLASS_FAULT_SAMPLE:-6:$((10#$(date +%j)))}" EVENCLASS_EMU_INIT_CHECK=0 \
        cargo test --release --no-fail-fast -- --ignored "${offcheck[@]}" 2>&1 |
        tee -a "$logs/tests.log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if wants tests || [ "$chosen_slow" -gt 0 ]; then
    read -r passed failed < <(grep -E '^test result:' "$logs/tests.log" |
        sed -E 's/.* ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/' | awk '{p += $1; f += $2} END {print p + 0, f + 0}')
    binaries=$(grep -cE '^test result:' "$logs/tests.log")
    if [ "$binaries" = 0 ]; then failed=$((failed + 1)); status=1; fi
    which=""
    wants tests || which=" (slow tests only)"
    skipped=$((${#slow[@]} - chosen_slow))
    wants tests && [ "$skipped" -gt 0 ] && which=" ($skipped of the ${#slow[@]} slow tests skipped)"
    summary+=("emulated GPU tests$tag: $passed passed, $failed failed$which")
fi

if wants playbook; then
    echo "=== the prepared GPU run, rehearsed (scripts/gpu-playbook-dry-run.sh)$tag ($(elapsed))"
    # Every part of scripts/run-gpu.sh at tiny sizes, the experiment part being a tiny
    # `cifar10 --device cuda --synthetic` run that must write its report.
    scripts/gpu-playbook-dry-run.sh "$out" 2>&1 | tee "$logs/playbook.log"
    if [ "${PIPESTATUS[0]}" = 0 ]; then
        summary+=("emulated $(grep '^GPU playbook dry run: ' "$logs/playbook.log")$tag")
    else
        summary+=("emulated GPU playbook dry run$tag: FAILED")
        status=1
fi

fi

if wants benches; then
    echo "=== one iteration of each GPU benchmark group$tag ($(elapsed))"
    bench_ok=0
    bench_failed=0
    for bench in benches/*.rs; do
        b=$(basename "$bench" .rs)
        # The first listed case of each GPU group (groups are named gpu or *_gpu): its smallest shape.
        mapfile -t picks < <(cargo bench --quiet --bench "$b" -- --list 2>/dev/null | sed -nE 's/^(.*): benchmark$/\1/p' |
            awk -F/ '$1 ~ /(^|_)gpu$/ && !seen[$1]++')
        for id in "${picks[@]}"; do
            # The default GPU network's shapes (train_step, conv's net_gpu) would take minutes each
            # when executed: checked and counted only.
            dry=0
            [ "$b" = train_step ] || [[ "$id" == net_gpu/* ]] && dry=1
            if EVENCLASS_EMU_DRY_RUN=$dry cargo bench --quiet --bench "$b" -- --test --exact "$id" >"$logs/bench.log" 2>&1 &&
                grep -q "Success" "$logs/bench.log"; then
                echo "  $b: $id ok$([ "$dry" = 1 ] && echo ' (dry run)')"
                bench_ok=$((bench_ok + 1))
            else
                echo "  $b: $id FAILED"
                tail -n 20 "$logs/bench.log"
                bench_failed=$((bench_failed + 1))
                status=1
            fi
        done
    done
    [ "$bench_ok" = 0 ] && status=1
    summary+=("emulated GPU bench groups$tag: $bench_ok passed, $bench_failed failed")
fi

echo "=== emulated GPU run$tag done ($(elapsed))"
printf '%s\n' "${summary[@]}"
exit "$status"
