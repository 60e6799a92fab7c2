#!/usr/bin/env bash
# The corruption campaign: CASES random damages (truncation at a random length, one flipped bit,
# the file of a twin run of the same command, the file of a run with another seed) to a random
# file that --resume or --stage2-only reads (an interrupted run's manifest and checkpoint, a
# finished run's manifest, stage1.json with its epoch log, stage1.safetensors). Each must be
# refused with an error naming the file, exit status 1 (2 only for another seed's manifest,
# which reads as other flags), no panic, the run folder unchanged. The test is
# tests/run.rs `random_corruptions_are_refused_naming_the_file`; CI runs its default count
# (CORRUPTION_CASES there).
#
#   scripts/corruption.sh [CASES] [SEED]     (defaults: 1000, 1)
#
# Prints the count of each file and damage refused, and how many damages were harmless (the
# file reads back the same: nothing to refuse). About 0.2 to 0.5 s a case on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${1:-1000}
seed=${2:-1}
started=$(date +%s)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
EVENCLASS_CORRUPTION_CASES=$cases EVENCLASS_CORRUPTION_SEED=$seed \
    cargo test --quiet --release --test run random_corruptions -- --nocapture >"$log" 2>&1 || true
grep -E '^corruption:' "$log" || true
if ! grep -q "test result: ok. 1 passed" "$log"; then
    grep -vE '^(running|$)' "$log"
    echo "corruption.sh: FAILED (seed $seed)"
    exit 1
fi
echo "corruption.sh: $cases cases, seed $seed, passed in $(( $(date +%s) - started )) s"
