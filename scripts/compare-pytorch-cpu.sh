#!/usr/bin/env bash
# Side-by-side CPU speed of our trainer and PyTorch at its best on the same network and recipe
# (docs/performance.md): images/s of a training step and of evaluation for each network and thread
# count, ours (examples/speed.rs) and PyTorch's (scripts/compare_pytorch_cpu.py) in three columns:
# eager (channels-first, its default), eager channels-last, and torch.compile (inductor). The
# headline ratio is ours against the fastest PyTorch column of each row. One table.
#
#   scripts/compare-pytorch-cpu.sh [--quick] [--nets 16x1,32x1,64x1,128x1,64x2] [--threads 1,2]
#                                  [--reps 3] [--batch 256] [--no-compile] [--no-pin]
#
# --nets        networks as WIDTHxDEPTH (stem channels x convolutions per stage)
# --reps        interleaved repetitions: every measurement of the whole set is taken once, then
#               again, so a slow moment of the machine hits all columns alike; the table shows the
#               median and the range of the repetitions, so the noise is in the table itself
# --quick       1 warm-up, 1 timed step, 1 repetition, widths 16 and 32 (checks the script works;
#               the numbers are noisy)
# --no-compile  leave out the torch.compile column (its first call compiles for a minute or more)
# --no-pin      do not pin a run of t threads to CPUs 0..t-1 (taskset; pinned by default where
#               taskset exists and the machine has the CPUs: an unpinned single thread that
#               migrates between cores loses its L2, measured 8-30% per layer on the 2-core Xeon)
#
# PyTorch is a comparison-only dependency: it is installed into .venv-torch/ (git-ignored), never
# used by the crate, its tests or CI. Only PyPI is reachable here, whose Linux torch wheel pulls
# the CUDA libraries too (about 2.9 GB download, 5.4 GB installed); only its CPU path is used.
# TORCH_SPEC overrides the version installed (default: the one docs/performance.md measured).
set -euo pipefail
cd "$(dirname "$0")/.."
cmdline="$0 $*"

quick=0
nets=16x1,32x1,64x1,128x1,64x2
threads=1,2
reps=3
batch=256
compile=1
pin=1
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1; reps=1; nets=16x1,32x1 ;;
        --nets) nets=$2; shift ;;
        --threads) threads=$2; shift ;;
        --reps) reps=$2; shift ;;
        --batch) batch=$2; shift ;;
        --no-compile) compile=0 ;;
        --no-pin) pin=0 ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
for n in ${nets//,/ }; do
    [[ "$n" =~ ^[1-9][0-9]*x[1-9][0-9]*$ ]] || { echo "--nets: $n is not WIDTHxDEPTH" >&2; exit 2; }
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

# Steps per timed repeat, by width: a few seconds per repeat on one core.
steps_for() {
    if [ "$quick" = 1 ]; then echo 1; elif [ "$1" -le 16 ]; then echo 6; elif [ "$1" -le 32 ]; then echo 3; else echo 2; fi
}
warmup=1

mkdir -p out/compare-pytorch-cpu
results=out/compare-pytorch-cpu/$(date -u +%Y%m%dT%H%M%SZ).jsonl
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
started=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
pinning="none"
sides=(eager channels-last)
[ "$compile" = 1 ] && sides+=(compile)
for rep in $(seq 1 "$reps"); do
    for t in ${threads//,/ }; do
        # Both sides of a configuration run on the same CPUs.
        pin_cmd=()
        if [ "$pin" = 1 ] && command -v taskset >/dev/null && [ "$t" -le "$(nproc)" ]; then
            pin_cmd=(taskset -c "0-$((t - 1))")
            pinning="taskset -c 0-(t-1)"
        fi
        for n in ${nets//,/ }; do
            w=${n%x*}
            d=${n#*x}
            s=$(steps_for "$w")
            common=(--width "$w" --depth "$d" --batch "$batch" --threads "$t" --warmup "$warmup"
                --steps "$s" --eval-steps "$s" --repeats 1)
            echo "repetition $rep/$reps, width $w depth $d, $t thread(s): ours" >&2
            MATMUL_NUM_THREADS=$t "${pin_cmd[@]}" "$speed" "${common[@]}" | sed "s/^{/{\"rep\":$rep,/" >> "$results"
            for side in "${sides[@]}"; do
                echo "repetition $rep/$reps, width $w depth $d, $t thread(s): pytorch $side" >&2
                flag=()
                [ "$side" = eager ] || flag=(--"$side")
                "${pin_cmd[@]}" "$py" scripts/compare_pytorch_cpu.py bench "${common[@]}" "${flag[@]}" |
                    sed "s/^{/{\"rep\":$rep,/" >> "$results"
            done
        done
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
echo "steps:     warm-up $warmup, $reps interleaved repetitions, timed steps per repetition by width: $(for n in ${nets//,/ }; do printf 'w%s %s  ' "${n%x*}" "$(steps_for "${n%x*}")"; done)(eval: as many forwards of a batch)"
echo
"$py" scripts/compare_pytorch_cpu.py table "$results"
