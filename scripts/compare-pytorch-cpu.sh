#!/usr/bin/env bash
# Side-by-side CPU speed of our trainer and PyTorch on the same network and recipe
# (docs/performance.md): images/s of a training step and of evaluation at each width and thread
# count, ours (examples/speed.rs) and PyTorch's (scripts/compare_pytorch_cpu.py), one table.
#
#   scripts/compare-pytorch-cpu.sh [--quick] [--widths 16,32,64] [--threads 1,2] [--depth 1]
#                                  [--batch 256] [--channels-last]
#
# --quick          1 warm-up, 1 timed step and 1 repeat per measurement (checks the script works;
#                  the numbers are noisy)
# --channels-last  also time PyTorch with model and input in channels_last (an extra column)
# --no-pin         do not pin a run of t threads to CPUs 0..t-1 (taskset; pinned by default where
#                  taskset exists and the machine has the CPUs: an unpinned single thread that
#                  migrates between cores loses its L2, measured 8-30% per layer on the 2-core Xeon)
#
# PyTorch is a comparison-only dependency: it is installed into .venv-torch/ (git-ignored), never
# used by the crate, its tests or CI. Only PyPI is reachable here, whose Linux torch wheel pulls
# the CUDA libraries too (about 2.9 GB download, 5.4 GB installed); only its CPU path is used.
# TORCH_SPEC overrides the version installed (default: the one docs/performance.md measured).
set -euo pipefail
cd "$(dirname "$0")/.."
cmdline="$0 $*"

quick=0
widths=16,32,64
threads=1,2
depth=1
batch=256
cl=0
pin=1
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --widths) widths=$2; shift ;;
        --threads) threads=$2; shift ;;
        --depth) depth=$2; shift ;;
        --batch) batch=$2; shift ;;
        --channels-last) cl=1 ;;
        --no-pin) pin=0 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

venv=.venv-torch
torch_spec=${TORCH_SPEC:-torch==2.15.0}
if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    echo "installing $torch_spec into $venv (PyPI; pulls the CUDA libraries, ~2.9 GB)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --index-url https://pypi.org/simple "$torch_spec" numpy >&2
fi
py=$venv/bin/python

source scripts/cuda-env.sh
cargo build --release --quiet --example speed >&2
speed=target/release/examples/speed

# Steps per timed repeat, by width: a few seconds per repeat on one core; the whole default
# table stays within a few minutes (docs/performance.md has the measured time).
steps_for() {
    if [ "$quick" = 1 ]; then echo 1; elif [ "$1" -le 16 ]; then echo 6; elif [ "$1" -le 32 ]; then echo 3; else echo 2; fi
}
repeats=3; warmup=1
[ "$quick" = 1 ] && repeats=1

mkdir -p out/compare-pytorch-cpu
results=out/compare-pytorch-cpu/$(date -u +%Y%m%dT%H%M%SZ).jsonl
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
pinning="none"
for t in ${threads//,/ }; do
    # Both sides of a configuration run on the same CPUs.
    pin_cmd=()
    if [ "$pin" = 1 ] && command -v taskset >/dev/null && [ "$t" -le "$(nproc)" ]; then
        pin_cmd=(taskset -c "0-$((t - 1))")
        pinning="taskset -c 0-(t-1)"
    fi
    for w in ${widths//,/ }; do
        s=$(steps_for "$w")
        common=(--width "$w" --depth "$depth" --batch "$batch" --threads "$t" --warmup "$warmup"
            --steps "$s" --eval-steps "$s" --repeats "$repeats")
        echo "width $w, $t thread(s): ours" >&2
        MATMUL_NUM_THREADS=$t "${pin_cmd[@]}" "$speed" "${common[@]}" >> "$results"
        echo "width $w, $t thread(s): pytorch" >&2
        "${pin_cmd[@]}" "$py" scripts/compare_pytorch_cpu.py bench "${common[@]}" >> "$results"
        if [ "$cl" = 1 ]; then
            echo "width $w, $t thread(s): pytorch channels_last" >&2
            "${pin_cmd[@]}" "$py" scripts/compare_pytorch_cpu.py bench "${common[@]}" --channels-last >> "$results"
        fi
    done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

echo
echo "command:   $cmdline"
echo "date:      $started (finished $(date -u '+%H:%M:%S UTC'))"
echo "commit:    $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src examples Cargo.toml || echo ' (+ uncommitted changes)')"
echo "cpu:       $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
echo "load avg:  before $load_before, after $load_after (1, 5, 15 min)"
echo "pinning:   $pinning"
echo "results:   $results"
echo "steps:     warm-up $warmup, repeats $repeats, timed steps per repeat by width: $(for w in ${widths//,/ }; do printf 'w%s %s  ' "$w" "$(steps_for "$w")"; done)(eval: as many forwards of a batch)"
echo
"$py" scripts/compare_pytorch_cpu.py table "$results"
