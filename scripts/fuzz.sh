#!/usr/bin/env bash
# The fuzzing campaign: every property test of the parsers and readers that take outside bytes
# or shapes (tests/robustness.rs: CIFAR-10 batch files, the archive extraction, the public CPU
# functions with random shapes and values; tests/fuzz_files.rs: checkpoint, model, manifest and
# report files mutated from a real run), each run for CASES cases (default 100000).
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
started=$(date +%s)
total=0
for t in robustness fuzz_files; do
    log=$(mktemp)
    PROPTEST_CASES=$cases cargo test --quiet --release --test "$t" -- --test-threads 2 2>&1 | tee "$log" | grep -vE '^(running|$)' || true
    grep -q "test result: ok" "$log" || { echo "fuzz: $t FAILED"; rm -f "$log"; exit 1; }
    # Proptest properties run CASES cases each; plain tests run once.
    props=$(awk '/^proptest! \{/ { inside = 1 } inside && /#\[test\]/ { n++ } inside && /^\}/ { inside = 0 } END { print n + 0 }' "tests/$t.rs")
    total=$((total + props * cases))
    echo "fuzz: $t: $props properties x $cases cases passed"
    rm -f "$log"
done
echo "fuzz: $total cases in $(( $(date +%s) - started )) s, no panic, no failure"
