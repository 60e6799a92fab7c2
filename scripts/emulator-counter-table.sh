#!/usr/bin/env bash
# Regenerates the counter table of docs/emulator.md ("What one training step asks of the
# driver") from tests/emulator.rs's driver_calls_of_one_training_step, run under the emulated
# driver: the test prints the table between marker lines, and this replaces the lines between
# the same markers in the document. Needs the emulator built (scripts/build-emulator.sh target/emu).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=/dev/null
source scripts/cuda-env.sh
out=$(LD_LIBRARY_PATH=$PWD/target/emu cargo test --release --test emulator -- --ignored --nocapture 2>/dev/null)
table=$(printf '%s\n' "$out" | sed -n '/<!-- counter table: begin -->/,/<!-- counter table: end -->/p')
[ -n "$table" ] || { echo "emulator-counter-table: the test printed no table" >&2; exit 1; }
TABLE=$table python3 - docs/emulator.md <<'PY'
import os, re, sys
path = sys.argv[1]
doc = open(path).read()
pat = re.compile(r"<!-- counter table: begin -->.*?<!-- counter table: end -->", re.S)
if not pat.search(doc):
    sys.exit("emulator-counter-table: no markers in " + path)
open(path, "w").write(pat.sub(lambda _: os.environ["TABLE"], doc))
PY
echo "docs/emulator.md: counter table regenerated"
