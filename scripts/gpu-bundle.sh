#!/usr/bin/env bash
# Builds the test, bench and example binaries (release, kernels compiled for real) into one folder
# that can be copied to a GPU host that has no Rust toolchain, with run-gpu.sh to run them there:
#   scripts/gpu-bundle.sh [DEST]        (default dist/gpu)
#   DEST/run-gpu.sh [OUT_DIR]           on the GPU host: every test (GPU ones included), the
#                                       benchmarks, and a short GPU run of the experiment
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cuda-env.sh
export EVENCLASS_REQUIRE_NVCC=1
dest="${1:-dist/gpu}"
rm -rf "$dest"
mkdir -p "$dest/tests" "$dest/benches" "$dest/examples"

# Cargo prints one JSON object per artifact; keep the executables by kind.
collect() {
    python3 -c '
import json, shutil, sys, os
dest = sys.argv[1]
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    exe = m.get("executable") if m.get("reason") == "compiler-artifact" else None
    if not exe:
        continue
    kind = m["target"]["kind"][0]
    name = m["target"]["name"]
    sub = {"test": "tests", "bench": "benches", "example": "examples"}.get(kind)
    if kind == "lib" and m.get("profile", {}).get("test"):
        sub, name = "tests", "lib"
    if sub:
        shutil.copy2(exe, os.path.join(dest, sub, name))
        print(f"  {sub}/{name}")
' "$dest"
}
echo "tests:";    cargo test --release --no-run --message-format=json 2>/dev/null | collect
echo "benches:";  cargo bench --no-run --message-format=json 2>/dev/null | collect
echo "examples:"; cargo build --release --examples --message-format=json 2>/dev/null | collect
# Debug info is most of a test binary's size; the device transfer limit is 64 MiB.
find "$dest" -type f -perm -u+x -exec strip --strip-debug {} + 2>/dev/null || true
cp scripts/run-gpu.sh "$dest/run-gpu.sh"
# The compact CIFAR-10 copy (55 MB) and its unpacker, when ../shared has them: run-gpu.sh unpacks.
packs=../shared/datasets/cifar-10-jpeg
if [ -z "${NO_DATA:-}" ] && [ -f "$packs/unpack.py" ]; then
    mkdir -p "$dest/data"
    cp "$packs"/unpack.py "$packs"/*.cjpk "$dest/data/"
fi
git rev-parse HEAD > "$dest/COMMIT" 2>/dev/null || true
du -sh "$dest"
