#!/usr/bin/env bash
# The fuzzing campaign: every property test of the parsers and readers that take outside bytes
# or shapes (tests/robustness.rs: CIFAR-10 batch files, the archive extraction, the public CPU
# functions with random shapes and values; tests/fuzz_files.rs: checkpoint, model, manifest and
# report files mutated from a real run; tests/candle.rs: the candle ops with random shapes, dtypes
# and values), each run for CASES cases (default 100000).
#
#   scripts/fuzz.sh [CASES]
#
# Prints each property's case count and the total; a failure prints proptest's minimal failing
# case (add it to the test as a regression case). CI runs the same tests at their small default
# counts (784 + 256 cases).
set -euo pipefail
cd "$(dirname "$0")/.."
cases=${1:-100000}
cargo build --quiet --release --tests
cargo build --quiet --release --features candle --test candle
started=$(date +%s)
total=0
for t in robustness fuzz_files candle; do
    log=$(mktemp)
    features=()
    [ "$t" = candle ] && features=(--features candle)
    PROPTEST_CASES=$cases cargo test --quiet --release "${features[@]}" --test "$t" -- --test-threads 2 2>&1 | tee "$log" |
        grep -vE '^(running|$)' || true
    grep -q "test result: ok" "$log" || { echo "fuzz: $t FAILED"; rm -f "$log"; exit 1; }
    # Proptest properties run CASES cases each; plain tests run once.
    # The #[test]s inside proptest! blocks (brace depth tracked from the block's opening line).
    props=$(awk '/proptest! \{/ && !d { d = 1; next } d { if (/#\[test\]/) n++; o = gsub(/\{/, "{"); c = gsub(/\}/, "}"); d += o - c } END { print n + 0 }' "tests/$t.rs")
    total=$((total + props * cases))
    echo "fuzz: $t: $props properties x $cases cases passed"
    rm -f "$log"
done
echo "fuzz: $total cases in $(( $(date +%s) - started )) s, no panic, no failure"
