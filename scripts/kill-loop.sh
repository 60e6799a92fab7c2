#!/usr/bin/env bash
# kill -9 at random moments of a run, resumed after each kill: the output folder must never hold a
# mix of two runs, and the finished run's models must be bit-identical to an uninterrupted run's.
#
#   scripts/kill-loop.sh [--kills N] [--seed S] [--device cpu|cuda] [--work DIR] [--bin PATH]
#
# --kills N   kills that land while the run is alive (default 30); --seed S seeds the kill times
# (default 1); --device cuda runs on the GPU (or the emulated driver when LD_LIBRARY_PATH points
# at it); --bin is the cifar10 example binary (default: built with cargo). The run is a small
# synthetic one (a few seconds), so every phase of it gets killed: data loading, training steps,
# checkpoint writes, evaluation, report writing and the final replacement of --out.
#
# Before the loop, --out holds another complete run (seed 1): until the interrupted run finishes,
# --out must hold exactly that run, whole; after, exactly the new one. Checked after every kill:
# run.json says complete, lists every file in the folder and nothing else, and every listed file
# exists. Exit status 0 when every check passed; the last line is the summary docs/reliability.md
# quotes.
set -euo pipefail
cd "$(dirname "$0")/.."
kills=30 seed=1 device=cpu work="" bin=""
while [ $# -gt 0 ]; do
    case "$1" in
    --kills) kills=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    *) echo "usage: scripts/kill-loop.sh [--kills N] [--seed S] [--device cpu|cuda] [--work DIR] [--bin PATH]" >&2
       exit 2 ;;
    esac
done
if [ -z "$bin" ]; then
    cargo build --quiet --release --example cifar10
    bin=target/release/examples/cifar10
fi
[ -n "$work" ] || work=$(mktemp -d "${TMPDIR:-/tmp}/evenclass-kill-loop.XXXXXX")
mkdir -p "$work"
# Fixed thread count: a resumed run is bit-identical to an uninterrupted one on the same threads.
export RAYON_NUM_THREADS=2
flags=(--device "$device" --synthetic --no-download --train-subset 1536 --val-size 128 --test-subset 256
    --epochs 4 --batch-size 64 --width 4 --quiet)
# The emulated driver runs kernels about 1,000x slower than the CPU backend: a smaller run.
[ "$device" = cuda ] && flags=(--device cuda --synthetic --no-download --train-subset 192 --val-size 32
    --test-subset 64 --epochs 2 --batch-size 64 --width 2 --quiet)
out="$work/out"
partial="$work/.out.partial"

fail() { echo "kill-loop: FAILED: $*" >&2; exit 1; }

# The folder holds one whole run: prints its run id, or fails.
check_whole() {
    local dir=$1
    [ -f "$dir/run.json" ] || fail "$dir has no run.json: $(ls -A "$dir" | tr '\n' ' ')"
    python3 scripts/check-run-folder.py "$dir" || fail "$dir is not one whole run"
}

models() { (cd "$1" && sha256sum stage1.safetensors stage2.safetensors); }

echo "kill-loop: reference run (uninterrupted), then the run --out holds before the loop"
start=$(date +%s.%N)
"$bin" "${flags[@]}" --seed 0 --out "$work/ref" --overwrite >"$work/ref.log" 2>&1 || fail "reference run: $(tail -3 "$work/ref.log")"
span=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
ref_models=$(models "$work/ref")
"$bin" "${flags[@]}" --seed 1 --out "$out" --overwrite >"$work/old.log" 2>&1 || fail "seed-1 run: $(tail -3 "$work/old.log")"
old_id=$(check_whole "$out")
echo "kill-loop: a run takes ${span}s; killing at random moments in it, seed $seed"

landed=0 tries=0 restarts=0 resumes=0
awk_rand() { awk -v s="$1" -v span="$span" 'BEGIN { srand(s); print 0.05 + rand() * span }'; }
while [ "$landed" -lt "$kills" ]; do
    tries=$((tries + 1))
    [ "$tries" -le $((kills * 4)) ] || fail "only $landed of $kills kills landed in $tries tries"
    if [ -d "$partial" ]; then
        mode=(--resume)
        resumes=$((resumes + 1))
    else
        mode=(--overwrite)
        restarts=$((restarts + 1))
    fi
    "$bin" "${flags[@]}" --seed 0 --out "$out" "${mode[@]}" >"$work/try.log" 2>&1 &
    pid=$!
    sleep "$(awk_rand $((seed * 100003 + tries)))"
    if kill -9 "$pid" 2>/dev/null; then
        wait "$pid" 2>/dev/null || true
        landed=$((landed + 1))
    else
        wait "$pid" || fail "a run ended with an error: $(tail -3 "$work/try.log")"
    fi
    id=$(check_whole "$out")
    if [ "$id" != "$old_id" ]; then
        # The new run replaced the old one: it must be finished and whole (checked above).
        [ -d "$partial" ] && fail "--out holds the new run but $partial is still there"
        echo "kill-loop: the run finished after $landed kills; starting it again"
        rm -rf "$work/done-$tries" && mv "$out" "$work/done-$tries"
        [ "$(models "$work/done-$tries")" = "$ref_models" ] || fail "a finished run's models differ from the reference"
        cp -r "$work/done-$tries" "$out"  # the old run again, for the next round
        old_id=$id
    fi
done
echo "kill-loop: $landed kills landed; finishing the run"
mode=(--overwrite)
[ -d "$partial" ] && mode=(--resume)
"$bin" "${flags[@]}" --seed 0 --out "$out" "${mode[@]}" >"$work/last.log" 2>&1 || fail "the last resume: $(tail -3 "$work/last.log")"
new_id=$(check_whole "$out")
[ "$new_id" != "$old_id" ] || fail "--out still holds the old run after the run finished"
[ "$(models "$out")" = "$ref_models" ] || fail "the resumed run's models differ from the uninterrupted run's"
[ ! -e "$partial" ] || fail "$partial left behind"
echo "kill-loop: $landed kills ($resumes resumes, $restarts fresh starts), --out whole after every kill," \
    "models bit-identical to the uninterrupted run ($device, seed $seed)"
