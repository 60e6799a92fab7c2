#!/usr/bin/env bash
# A disk that fills up during a run: --out on a small tmpfs, filled so that only FREE bytes are
# left, for free space spread from nothing to more than the run needs. Each time: a clear error
# naming the file (exit status 1, no panic), --out still holding the previous complete run, the
# last checkpoint valid: once space is freed, --resume finishes the run, with models
# bit-identical to an uninterrupted run's.
#
#   scripts/full-disk.sh [--levels N] [--bin PATH] [--work DIR]
#
# Needs to mount a tmpfs (root, or a user namespace that allows it); when it cannot, it says so
# and exits 0 without testing anything ("skipped" in its last line), so CI on other machines
# still passes. The last line is the summary docs/reliability.md quotes.
set -euo pipefail
cd "$(dirname "$0")/.."
levels=12 bin="" work=""
while [ $# -gt 0 ]; do
    case "$1" in
    --levels) levels=$2; shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    --work) work=$2; shift 2 ;;
    *) echo "usage: scripts/full-disk.sh [--levels N] [--bin PATH] [--work DIR]" >&2; exit 2 ;;
    esac
done
if [ -z "$bin" ]; then
    cargo build --quiet --release --example cifar10
    bin=target/release/examples/cifar10
fi
[ -n "$work" ] || work=$(mktemp -d "${TMPDIR:-/tmp}/evenclass-full-disk.XXXXXX")
fs="$work/fs"
mkdir -p "$fs"
# 4 MiB: the previous run (about 0.2 MB), the run in progress and the filler fit.
if ! mount -t tmpfs -o size=4m evenclass-full-disk "$fs" 2>/dev/null; then
    echo "full-disk: skipped: cannot mount a tmpfs here (needs root); nothing tested"
    exit 0
fi
trap 'umount "$fs" 2>/dev/null || true' EXIT
export RAYON_NUM_THREADS=2
flags=(--device cpu --synthetic --no-download --train-subset 1536 --val-size 128 --test-subset 256
    --epochs 4 --batch-size 64 --width 4 --quiet)
out="$fs/out"
partial="$fs/.out.partial"

fail() { echo "full-disk: FAILED: $*" >&2; exit 1; }
check_whole() { python3 scripts/check-run-folder.py "$1" || fail "$1 is not one whole run"; }
models() { (cd "$1" && sha256sum stage1.safetensors stage2.safetensors); }
avail() { df -B1 --output=avail "$fs" | tail -n 1 | tr -d ' '; }

"$bin" "${flags[@]}" --seed 0 --out "$work/ref" --overwrite >"$work/ref.log" 2>&1 || fail "reference run: $(tail -3 "$work/ref.log")"
ref_models=$(models "$work/ref")
# What a run writes at its peak (the partial folder with its checkpoints, then the report):
# measure it on the tmpfs itself, with nothing else there.
"$bin" "${flags[@]}" --seed 0 --out "$fs/probe" --overwrite >/dev/null 2>&1 || fail "probe run"
need=$(du -sb "$fs/probe" | cut -f1)
rm -rf "$fs/probe"
"$bin" "${flags[@]}" --seed 1 --out "$out" --overwrite >"$work/old.log" 2>&1 || fail "seed-1 run: $(tail -3 "$work/old.log")"
old_id=$(check_whole "$out")
echo "full-disk: a run writes about $need bytes at its end; $levels levels of free space up to 2x that"

failed_clearly=0 finished=0 resumed=0
for i in $(seq 0 $((levels - 1))); do
    free=$(( i * need * 2 / levels ))
    rm -rf "$partial" "$fs/filler"
    # Leave `free` bytes: tmpfs counts whole pages, so fill to within a page.
    fill=$(( $(avail) - free ))
    [ "$fill" -gt 0 ] && head -c "$fill" /dev/zero >"$fs/filler" 2>/dev/null || true
    status=0
    "$bin" "${flags[@]}" --seed 0 --out "$out" --overwrite >"$work/run.log" 2>&1 || status=$?
    grep -q "panicked" "$work/run.log" && fail "free $free: a panic: $(grep -m1 panicked "$work/run.log")"
    if [ "$status" = 0 ]; then
        finished=$((finished + 1))
        [ "$(check_whole "$out")" != "$old_id" ] || fail "free $free: finished but --out holds the old run"
        [ "$(models "$out")" = "$ref_models" ] || fail "free $free: finished with other models"
        echo "full-disk: free $free bytes: finished"
    else
        [ "$status" = 1 ] || fail "free $free: exit status $status (want 1)"
        msg=$(grep -m1 '^error:' "$work/run.log" || true)
        echo "$msg" | grep -q "No space left on device" || fail "free $free: unclear error: $(tail -2 "$work/run.log")"
        echo "$msg" | grep -q "$fs/" || fail "free $free: the error names no file: $msg"
        [ "$(check_whole "$out")" = "$old_id" ] || fail "free $free: --out no longer holds the previous run"
        failed_clearly=$((failed_clearly + 1))
        echo "full-disk: free $free bytes: ${msg:0:110}"
        # Space freed: the run continues from its last checkpoint (or starts again without one).
        rm -f "$fs/filler"
        mode=(--overwrite)
        [ -d "$partial" ] && mode=(--resume) && resumed=$((resumed + 1))
        "$bin" "${flags[@]}" --seed 0 --out "$out" "${mode[@]}" >"$work/resume.log" 2>&1 ||
            fail "free $free: ${mode[0]} after freeing space: $(tail -2 "$work/resume.log")"
        [ "$(models "$out")" = "$ref_models" ] || fail "free $free: the resumed run's models differ"
    fi
    # The next level starts from a previous complete run again.
    old_id=$(check_whole "$out")
    leftovers=$(find "$fs" -name '*.tmp' | head -n 3)
    [ -z "$leftovers" ] || fail "free $free: temporary files left behind: $leftovers"
done
echo "full-disk: $levels levels: $failed_clearly failed with a clear error naming the file and" \
    "kept --out whole ($resumed resumed from their checkpoint), $finished finished; every model" \
    "bit-identical to the uninterrupted run's"
