#!/usr/bin/env python3
"""Shares of a CPU training step by part (convolutions, batch norm, pooling, ...) from a perf
profile with call graphs, as in docs/performance.md:

    CARGO_PROFILE_RELEASE_DEBUG=line-tables-only cargo build --release --example speed
    perf record -F 499 --call-graph dwarf,32768 -e cpu-clock \
        target/release/examples/speed --width 64 --threads 2 --steps 3 --repeats 1 --eval-steps 1
    perf script > profile.txt && scripts/profile_shares.py profile.txt

Each sample goes to the innermost frame of its stack (inlined frames included) that names a module
of the crate, so a page fault or a copy counts for the part that caused it. `conv::gemm_plan`
names no part: its GEMMs count for their caller (Winograd, or im2col on CPUs where the direct
kernels do not apply)."""
import collections
import re
import sys

# The GEMM wrapper every convolution algorithm calls: skipped, so its caller decides.
SHARED = "evenclass::conv::gemm_plan"
MODULES = [
    ("evenclass::conv::winograd", "convolutions: Winograd"),
    ("evenclass::conv::", "convolutions: direct kernels, im2col, padding, dispatch"),
    ("evenclass::batchnorm", "batch norm (+ReLU)"),
    ("evenclass::pool", "pooling"),
    ("evenclass::data::synthetic", "synthetic data (speed example only)"),
    ("evenclass::loss", "loss"),
    ("evenclass::cross_entropy", "loss"),
    ("evenclass::confusion", "confusion"),
    ("evenclass::linear", "linear layer"),
    ("evenclass::train::", "train: step, SGD, batch"),
    ("evenclass::", "crate: other"),
]
KERNEL = re.compile(r"(exc_page|clear_page|_raw|__handle|handle_mm|do_anon|memcg|__folio|__rmqueue|get_mem)")
FRAME = re.compile(r"\t\s*[0-9a-f]+ (.*?)(\+0x[0-9a-f]+)? \(")


def part(frames):
    for f in frames:
        if SHARED in f:
            continue
        for module, name in MODULES:
            if module in f:
                return name
    leaf = frames[0]
    if KERNEL.match(leaf):
        return "kernel (page faults, scheduling)"
    if any("rayon" in f for f in frames) or "crossbeam" in leaf:
        return "rayon (idle spin, scheduling)"
    return "other: " + leaf[:40]


def main(path):
    counts, samples, frames = collections.Counter(), 0, []
    with open(path) as f:
        for line in f:
            if line.startswith("\t"):
                m = FRAME.match(line)
                if m:
                    frames.append(m.group(1))
                continue
            if frames:
                counts[part(frames)] += 1
                samples += 1
            frames = []
    if frames:
        counts[part(frames)] += 1
        samples += 1
    if samples == 0:
        sys.exit(f"{path}: no samples with call graphs (perf record --call-graph dwarf, then perf script)")
    for name, n in counts.most_common(20):
        print(f"{100 * n / samples:6.1f}%  {name}")
    print(f"{samples} samples")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: scripts/profile_shares.py PERF_SCRIPT_OUTPUT")
    main(sys.argv[1])
