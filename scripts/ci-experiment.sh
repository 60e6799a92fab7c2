#!/usr/bin/env bash
# CI smoke run of the two-stage experiment (examples/cifar10.rs) on the CPU: one epoch per stage
# on a 2048-image subset of CIFAR-10 from ../shared (the built-in synthetic set when that is
# missing), then checks of what it wrote (report.json's structure, the CSV, the PNG and SVG
# charts), that a rerun without --overwrite is refused, then a `--stage2-only` run on the same
# folder that must reuse stage 1 and publish a new run, then `--compare` (every method, two
# seeds) on the same subset with checks of its methods array and comparison files.
set -euo pipefail
cd "$(dirname "$0")/.."

# CI_CIFAR10_DIR: another location (tests of this script).
data_dir=${CI_CIFAR10_DIR:-../shared/datasets/cifar-10-batches-bin}
out=$(mktemp -d "${TMPDIR:-/tmp}/evenclass-ci-experiment.XXXXXX")
# A run also uses .NAME.lock and .NAME.partial beside its output folder while it runs.
lock="$(dirname "$out")/.$(basename "$out").lock"
trap 'rm -rf "$out" "$lock" "$(dirname "$out")/.$(basename "$out").partial"' EXIT

# --no-download: never fetch 170 MB in CI (a missing or empty folder falls back to synthetic data).
args=(--train-subset 2048 --val-size 256 --test-subset 1000 --epochs 1 --out "$out" --quiet --device cpu --no-download)
if [ -d "$data_dir" ]; then
    args+=(--data-dir "$data_dir")
    expect_synthetic=0
else
    echo "ci-experiment: $data_dir is missing: running on the SYNTHETIC set (not CIFAR-10)"
    args+=(--synthetic)
    expect_synthetic=1
fi

run() { cargo run --quiet --release --example cifar10 -- "$@"; }

logs=$(mktemp -d "${TMPDIR:-/tmp}/evenclass-ci-logs.XXXXXX")
trap 'rm -rf "$out" "$lock" "$(dirname "$out")/.$(basename "$out").partial" "$logs"' EXIT

echo "ci-experiment: cifar10 ${args[*]}"
run "${args[@]}" | tee "$logs/run1.log"
# The lock file goes with the lock when the run ends.
[ ! -e "$lock" ] || { echo "ci-experiment: $lock was left after the run" >&2; exit 1; }

# Checks report.json and the other files; $2 = 1 when the data must be synthetic.
check() {
    python3 - "$out" "$1" <<'PY'
import json, math, os, sys

out, expect_synthetic = sys.argv[1], sys.argv[2] == "1"
C = 10
errors = []

def fail(msg):
    errors.append(msg)

def is_num(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)

def check_vec(what, v, n=C, lo=None, hi=None):
    if not isinstance(v, list) or len(v) != n or not all(is_num(x) for x in v):
        fail(f"{what}: expected {n} numbers, got {v!r:.200}")
        return False
    for x in v:
        if math.isnan(x) or (lo is not None and x < lo) or (hi is not None and x > hi):
            fail(f"{what}: value {x} outside [{lo}, {hi}]")
            return False
    return True

with open(os.path.join(out, "report.json")) as f:
    report = json.load(f)

with open(os.path.join(out, "run.json")) as f:
    manifest = json.load(f)
if manifest.get("complete") is not True or report.get("run_id") != manifest.get("run_id"):
    fail(f"report.json's run id {report.get('run_id')!r} is not the complete run {manifest.get('run_id')!r}")
if report.get("synthetic") != expect_synthetic:
    fail(f"report.json says synthetic = {report.get('synthetic')!r}")

for key in ("dataset", "device", "config", "stages"):
    if key not in report:
        fail(f"report.json has no {key!r}")
if isinstance(report.get("dataset"), str):
    synthetic = "synthetic" in report["dataset"].lower()
    if synthetic != expect_synthetic:
        fail(f"dataset is {report['dataset']!r}, expected {'synthetic' if expect_synthetic else 'CIFAR-10'}")
else:
    fail("dataset is not a string")
if not (isinstance(report.get("device"), str) and report["device"].startswith("cpu")):
    fail(f"device {report.get('device')!r} is not the CPU")
if not isinstance(report.get("config"), dict):
    fail("config is not an object")

stages = report.get("stages")
if not isinstance(stages, list) or len(stages) != 2:
    fail(f"expected 2 stages, got {stages!r:.200}")
    stages = []
for i, st in enumerate(stages):
    w = f"stages[{i}]"
    if not isinstance(st.get("name"), str) or not st["name"]:
        fail(f"{w}.name missing")
    check_vec(f"{w}.class_weights", st.get("class_weights"), lo=0)
    if not is_num(st.get("seconds")) or st["seconds"] < 0:
        fail(f"{w}.seconds missing or negative")
    for split in ("test", "train", "val"):
        m = st.get(split)
        sw = f"{w}.{split}"
        if not isinstance(m, dict):
            fail(f"{sw} is not an object")
            continue
        for k in ("accuracy", "balanced_accuracy"):
            if not is_num(m.get(k)) or not 0 <= m[k] <= 1:
                fail(f"{sw}.{k} = {m.get(k)!r} is not in [0, 1]")
        for k in ("recall", "precision", "f1"):
            check_vec(f"{sw}.{k}", m.get(k), lo=0, hi=1)
        cm = m.get("confusion")
        if not (isinstance(cm, list) and len(cm) == C
                and all(isinstance(r, list) and len(r) == C and all(isinstance(x, int) and x >= 0 for x in r) for r in cm)):
            fail(f"{sw}.confusion is not a 10x10 matrix of counts")
        elif is_num(m.get("accuracy")):
            total = sum(map(sum, cm))
            acc = sum(cm[c][c] for c in range(C)) / total if total else float("nan")
            if not math.isclose(acc, m["accuracy"], abs_tol=1e-9):
                fail(f"{sw}.accuracy {m['accuracy']} does not match its confusion matrix ({acc})")
            if split == "test" and total != report.get("config", {}).get("test_images"):
                fail(f"{sw}: the confusion matrix counts {total} images")
            if split == "val" and total != report.get("config", {}).get("val_images"):
                fail(f"{sw}: the confusion matrix counts {total} validation images")
if stages and stages[0].get("class_weights") and any(x != 1 for x in stages[0]["class_weights"]):
    fail("stage 1 is not uniformly weighted")

csv_path = os.path.join(out, "per_class.csv")
if not os.path.isfile(csv_path):
    fail("per_class.csv missing")
else:
    with open(csv_path) as f:
        rows = [line for line in f.read().splitlines() if line]
    # Header, then one row per stage x split (test, train, val) x class.
    if len(rows) != 1 + 2 * 3 * C:
        fail(f"per_class.csv has {len(rows)} lines, expected {1 + 6 * C}")
png = os.path.join(out, "recall.png")
if not os.path.isfile(png):
    fail("recall.png missing")
else:
    with open(png, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            fail("recall.png is not a PNG")
svg = os.path.join(out, "recall.svg")
if not os.path.isfile(svg):
    fail("recall.svg missing")
else:
    with open(svg, encoding="utf-8") as f:
        if "true-positive rate (recall)" not in f.read():
            fail("recall.svg has no 'true-positive rate (recall)' label")

if errors:
    print("ci-experiment: report check FAILED:", *errors, sep="\n  ", file=sys.stderr)
    sys.exit(1)
print(f"ci-experiment: report OK ({report['dataset']}; test accuracy "
      + ", ".join(f"{s['test']['accuracy']:.3f}" for s in stages) + ")")
PY
}

# Stage 1 and stage 2's class weights (derived from stage 1's test recall) of report.json.
reused() {
    python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(json.dumps([r["stages"][0], r["stages"][1]["class_weights"]], sort_keys=True))' "$out/report.json"
}

check "$expect_synthetic"
before=$(reused)

echo "ci-experiment: a rerun without --overwrite must be refused (exit 2) and change nothing"
id1=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["run_id"])' "$out/run.json")
set +e
run "${args[@]}" > "$logs/refused.log" 2>&1
rc=$?
set -e
if [ "$rc" != 2 ] || ! grep -q -- "--overwrite" "$logs/refused.log"; then
    echo "ci-experiment: rerun exited $rc:" >&2
    cat "$logs/refused.log" >&2
    exit 1
fi

echo "ci-experiment: --precision bf16 on the CPU must be refused (exit 2), in lines of at most 80 columns"
set +e
run "${args[@]}" --overwrite --precision bf16 > "$logs/bf16.log" 2>&1
rc=$?
set -e
if [ "$rc" != 2 ] || ! grep -q "is for the GPU" "$logs/bf16.log" || awk 'length > 80 {bad = 1} END {exit !bad}' "$logs/bf16.log"; then
    echo "ci-experiment: --precision bf16 --device cpu exited $rc:" >&2
    cat "$logs/bf16.log" >&2
    exit 1
fi

echo "ci-experiment: --stage2-only"
# It replaces the finished run, so without --overwrite it is refused (exit status 2).
set +e
run "${args[@]}" --stage2-only > "$logs/refused2.log" 2>&1
rc=$?
set -e
if [ "$rc" != 2 ] || ! grep -q -- "--stage2-only replaces" "$logs/refused2.log"; then
    echo "ci-experiment: --stage2-only without --overwrite exited $rc:" >&2
    cat "$logs/refused2.log" >&2
    exit 1
fi
run "${args[@]}" --stage2-only --overwrite | tee "$logs/run2.log"
grep -q "reusing .*stage1.json of run $id1" "$logs/run2.log" || { echo "ci-experiment: --stage2-only did not reuse stage 1" >&2; exit 1; }
# A training prints its name alone on a line before it starts (and "NAME epoch ..." lines); the
# reuse prints "NAME:" then "reusing ...".
if grep -qE "^stage 1 \(uniform weights\)( epoch|$)" "$logs/run2.log"; then
    echo "ci-experiment: --stage2-only trained stage 1 again" >&2
    exit 1
fi
check "$expect_synthetic"
if [ "$before" != "$(reused)" ]; then
    echo "ci-experiment: --stage2-only changed stage 1's results or the class weights derived from them" >&2
    exit 1
fi

# The comparison of methods on the same subset: every method on 2 seeds, one epoch.
cmp="$out-compare"
trap 'rm -rf "$out" "$lock" "$(dirname "$out")/.$(basename "$out").partial" "$logs" "$cmp" "$(dirname "$cmp")/.$(basename "$cmp").lock"' EXIT
cmp_args=()
for a in "${args[@]}"; do
    if [ "$a" = "$out" ]; then a=$cmp; fi
    cmp_args+=("$a")
done
echo "ci-experiment: --compare (all methods, 2 seeds)"
run "${cmp_args[@]}" --compare --seeds 2 | tee "$logs/compare.log"
python3 - "$cmp" <<'PY'
import json, os, sys
out = sys.argv[1]
r = json.load(open(os.path.join(out, "report.json")))
# The report's order: the plan's (crt is planned after the biases, before the weight-decay pair).
want = ["uniform", "null", "reweight", "reweight-test", "iterated", "online-dro", "online-difficulty", "drw", "vs-loss", "cdt",
        "bias", "bias-budget", "bias-f1", "bias-f1-budget", "crt", "reweight-wd", "uniform-wd"]
errors = []
got = {}
for m in r.get("methods", []):
    got.setdefault(m.get("method"), []).append(m.get("seed"))
    for split in ("test", "train", "val"):
        if not isinstance(m.get(split), dict) or len(m[split].get("recall", [])) != 10:
            errors.append(f"{m.get('name')}: no {split} metrics")
    if (m.get("bias") is not None) != m.get("method", "").startswith("bias"):
        errors.append(f"{m.get('name')}: bias present = {m.get('bias') is not None}")
if list(got) != want or any(sorted(v) != [0, 1] for v in got.values()):
    errors.append(f"methods and seeds: {got}")
for f in ("comparison.md", "comparison.csv", "intervals.csv", "methods.svg", "methods.png"):
    if not os.path.isfile(os.path.join(out, f)):
        errors.append(f"{f} missing")
md = open(os.path.join(out, "comparison.md")).read()
if "| uniform (stage 1) | 2 |" not in md:
    errors.append("comparison.md has no uniform row over 2 seeds")
for k in ("fit", "gradient"):
    if not r.get("diagnostics", {}).get(k):
        errors.append(f"diagnostics.{k} missing")
if errors:
    print("ci-experiment: compare check FAILED:", *errors, sep="\n  ", file=sys.stderr)
    sys.exit(1)
print(f"ci-experiment: compare OK ({len(r['methods'])} method entries)")
PY
echo "ci-experiment: OK"
