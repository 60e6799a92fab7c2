#!/usr/bin/env bash
# Builds the test, bench and example binaries (release, kernels compiled for real) into one folder
# that fits the GPU host's 64 MiB transfer limit and needs no Rust toolchain there:
#   scripts/gpu-bundle.sh [--no-pack] [DEST]   (default dist/gpu)
#   DEST/run-gpu.sh [OUT_DIR]                  on the GPU host: the prepared run (docs/gpu-runs.md)
# Environment: EVENCLASS_CUDA_ARCHS (default here 90: the lent GPU is an H200; the library's own
# default is 80,90), TRAIN_LIMIT (training images carried, default 20000; 0 = none), NO_DATA=1.
# --no-pack leaves the binaries unpacked and unstripped in DEST, built for the caller's
# EVENCLASS_CUDA_ARCHS (so an existing release build is reused), and carries no data: the
# emulated rehearsal of CI (scripts/gpu-playbook-dry-run.sh), never a bundle to send.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cuda-env.sh
export EVENCLASS_REQUIRE_NVCC=1
pack=1
if [ "${1:-}" = --no-pack ]; then
    pack=0
    shift
else
    export EVENCLASS_CUDA_ARCHS="${EVENCLASS_CUDA_ARCHS:-90}"
fi
dest="${1:-dist/gpu}"
rm -rf "$dest"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$dest" "$stage/tests" "$stage/benches" "$stage/examples"

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
' "$stage"
}
echo "tests:";    cargo test --release --no-run --message-format=json 2>/dev/null | collect
echo "benches:";  cargo bench --no-run --message-format=json 2>/dev/null | collect
echo "examples:"; cargo build --release --examples --message-format=json 2>/dev/null | collect
git rev-parse HEAD > "$stage/COMMIT" 2>/dev/null || true
if [ "$pack" = 0 ]; then
    cp -a "$stage/." "$dest/"
    for f in run-gpu.sh compare_pytorch_gpu.py compare_pytorch_cpu.py; do
        cp "scripts/$f" "$dest/$f"
    done
    echo "unpacked into $dest"
    exit 0
fi
find "$stage" -type f -perm -u+x -exec strip {} +
# Every binary embeds the same kernel images: one xz stream with a large window stores them once.
tar -C "$stage" -cf - . | xz -9e --lzma2=preset=9e,dict=192MiB -T1 > "$dest/bin.tar.xz"
for f in run-gpu.sh compare_pytorch_gpu.py compare_pytorch_cpu.py; do
    cp "scripts/$f" "$dest/$f"
done

# The compact CIFAR-10 copy and its unpacker, when ../shared has them (the training pack cut to
# TRAIN_LIMIT records to fit the transfer limit).
packs=../shared/datasets/cifar-10-jpeg
limit="${TRAIN_LIMIT:-20000}"
if [ -z "${NO_DATA:-}" ] && [ "$limit" != 0 ] && [ -f "$packs/unpack.py" ]; then
    mkdir -p "$dest/data"
    cp "$packs/unpack.py" "$packs/test.cjpk" "$dest/data/"
    python3 - "$packs/train.cjpk" "$dest/data/train.cjpk" "$limit" <<'PY'
import struct, sys
src, dst, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = open(src, "rb").read()
assert data[:4] == b"CJPK", "not a CJPK pack"
(n,) = struct.unpack_from("<I", data, 4)
keep, off = min(n, limit), 8
for _ in range(keep):
    _, ln = struct.unpack_from("<BH", data, off)
    off += 3 + ln
open(dst, "wb").write(b"CJPK" + struct.pack("<I", keep) + data[8:off])
print(f"  data/train.cjpk: first {keep} of {n} training records")
PY
fi
du -sh "$dest"
