#!/usr/bin/env python3
"""Registers, shared memory, spills, tensor-core instructions and occupancy of every kernel, read
from the real compiler's output for sm_90 (the H200): `ptxas -v` for registers, shared memory and
spills, `cuobjdump -sass` for the instructions. Run through scripts/kernel-resources.sh, which
provides nvcc and cuobjdump.

  --check        fail (exit 1) when any kernel spills, or when a tensor-core kernel (a name with
                 `_tc`, or a conv2d_*_tf32/_bf16 entry point) has no HMMA instruction; the
                 emulator's tensor-core self-test kernels must show HMMA, LDSM and LDGSTS where
                 their PTX asks for them
  --trace FILE   an emulated driver trace (EVENCLASS_EMU_TRACE=1) of a training run: the block
                 sizes and dynamic shared memory of the launches, for the occupancy columns
  --table FILE   write the Markdown table there
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict

ARCH = "90"
# sm_90 limits (CUDA C Programming Guide, "Compute Capabilities", compute capability 9.0).
SM_THREADS, SM_BLOCKS, SM_REGS, SM_SMEM = 2048, 32, 65536, 233472
REG_UNIT_PER_WARP, SMEM_UNIT, SMEM_RESERVED_PER_BLOCK = 256, 128, 1024

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def compile_module(nvcc, src, include, out_dir):
    """ptxas -v of one .cu for sm_90, with build.rs's flags: {kernel: properties}, cubin path."""
    name = os.path.splitext(os.path.basename(src))[0]
    cubin = os.path.join(out_dir, name + ".cubin")
    cmd = [nvcc, "-cubin", f"-arch=sm_{ARCH}", "-O3", "-std=c++17", "-lineinfo", "--expt-relaxed-constexpr",
           "-I", include, "-Xptxas", "-v", "-o", cubin, src]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"kernel-resources: nvcc failed on {src}:\n{res.stderr}")
    kernels, current = {}, None
    for line in res.stderr.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for 'sm_", line)
        if m:
            current = m.group(1)
            kernels[current] = {"module": name, "regs": 0, "smem": 0, "stack": 0, "spill_st": 0, "spill_ld": 0}
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            k = kernels[current]
            k["stack"], k["spill_st"], k["spill_ld"] = map(int, m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            kernels[current]["regs"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            kernels[current]["smem"] = int(s.group(1)) if s else 0
    return kernels, cubin


def sass_opcodes(cuobjdump, cubin):
    """{kernel: set of opcodes (the mnemonic without modifiers)} from cuobjdump -sass."""
    res = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"kernel-resources: cuobjdump failed on {cubin}:\n{res.stderr}")
    ops, current = defaultdict(set), None
    for line in res.stdout.splitlines():
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            current = m.group(1)
            continue
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", line)
        if m and current:
            ops[current].add(m.group(1))
    return ops


def launches(trace):
    """{kernel: {(threads, dynamic smem)}} from an emulated driver trace."""
    seen = defaultdict(set)
    pat = re.compile(r"cuLaunchKernel (\S+) grid \(\d+,\d+,\d+\) block \((\d+),(\d+),(\d+)\) smem (\d+)")
    with open(trace, errors="replace") as f:
        for line in f:
            m = pat.search(line)
            if m:
                bx, by, bz, smem = map(int, m.groups()[1:])
                seen[m.group(1)].add((bx * by * bz, smem))
    return seen


def occupancy(regs, smem, threads):
    """(resident blocks per SM, occupancy in warps / 64, the limiting resource) on sm_90."""
    warps = -(-threads // 32)
    regs_per_warp = -(-max(regs, 1) * 32 // REG_UNIT_PER_WARP) * REG_UNIT_PER_WARP
    limits = {
        "threads": min(SM_THREADS // (warps * 32), SM_BLOCKS),
        "registers": (SM_REGS // regs_per_warp) // warps,
        "shared": SM_SMEM // (-(-(smem + SMEM_RESERVED_PER_BLOCK) // SMEM_UNIT) * SMEM_UNIT),
    }
    blocks = min(limits.values())
    limiter = min(limits, key=lambda k: (limits[k], k != "threads"))
    return blocks, blocks * warps / 64, limiter


def is_tensor_core(name):
    """A kernel that must run on the tensor cores: `_tc` in its name (the house convention), or a
    convolution entry point named for its tensor-core input precision (`conv2d_*_tf32`/`_bf16`,
    before the `_abf16` of bf16 activations: `conv2d_fwd_f32_abf16` is an FFMA kernel; other
    families' `_bf16` entry points are storage types on the CUDA cores)."""
    base = name.removesuffix("_abf16")
    return "_tc" in name or (base.startswith("conv2d_") and base.endswith(("_tf32", "_bf16")))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--trace")
    ap.add_argument("--table")
    args = ap.parse_args()
    nvcc, cuobjdump = os.environ.get("NVCC"), os.environ.get("CUOBJDUMP")
    if not nvcc or not cuobjdump:
        sys.exit("kernel-resources: run me through scripts/kernel-resources.sh (it sets NVCC and CUOBJDUMP)")
    kdir = os.path.join(ROOT, "kernels")
    sources = sorted(os.path.join(kdir, f) for f in os.listdir(kdir) if f.endswith(".cu"))
    selftest = os.path.join(ROOT, "tests", "emulator", "selftest_tensor_core.cu")
    kernels, opcodes, problems = {}, {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for src in sources + [selftest]:
            ks, cubin = compile_module(nvcc, src, kdir, tmp)
            ops = sass_opcodes(cuobjdump, cubin)
            for k in ks:
                ks[k]["ops"] = ops.get(k, set())
            if src == selftest:
                # The PTX wrappers of kernels/tensor_core.cuh must become tensor-core SASS.
                want = {"selftest_tc_mma_tf32": "HMMA", "selftest_tc_mma_16": "HMMA", "selftest_tc_ldmatrix": "LDSM",
                        "selftest_tc_cp_async": "LDGSTS"}
                for k, op in want.items():
                    if k not in ks:
                        problems.append(f"{k}: missing from {os.path.basename(selftest)}")
                    elif op not in ks[k]["ops"]:
                        problems.append(f"{k}: no {op} instruction in its sm_{ARCH} SASS")
                opcodes.update({k: ks[k]["ops"] for k in ks})
                continue
            kernels.update(ks)
    for name, k in sorted(kernels.items()):
        if k["spill_st"] or k["spill_ld"]:
            problems.append(f"{name}: spills ({k['spill_st']} bytes stored, {k['spill_ld']} loaded)")
        if is_tensor_core(name) and "HMMA" not in k["ops"]:
            problems.append(f"{name}: a tensor-core kernel without HMMA in its sm_{ARCH} SASS")
    tc = [n for n in kernels if is_tensor_core(n)]
    # A rename must not switch the check off: the conv family's sixteen tensor-core entry points
    # (forward, stem forward, data and weight gradient, each TF32 and BF16, each with f32 and bf16
    # activations) must all be there.
    if sum(1 for n in tc if n.startswith("conv2d_")) < 16:
        problems.append(f"only {len(tc)} tensor-core kernels found ({', '.join(sorted(tc))}); "
                        "the conv family has 16: was one renamed?")
    print(f"kernel-resources: {len(kernels)} kernels in {len(sources)} modules for sm_{ARCH}; "
          f"{len(tc)} tensor-core kernels; {len(opcodes)} tensor-core self-test kernels")
    print(f"  max registers: {max(k['regs'] for k in kernels.values())}; "
          f"spilling kernels: {sum(1 for k in kernels.values() if k['spill_st'] or k['spill_ld'])}")

    if args.table:
        seen = launches(args.trace) if args.trace else {}
        rows = []
        for name, k in sorted(kernels.items(), key=lambda kv: (kv[1]["module"], kv[0])):
            mma = "HMMA" if "HMMA" in k["ops"] else "-"
            spill = f"{k['spill_st']}/{k['spill_ld']}"
            configs = sorted(seen.get(name, []))
            if not configs:
                rows.append(f"| {k['module']} | `{name}` | {k['regs']} | {k['smem']} | {spill} | {mma} | "
                            "not launched | | | |")
            for threads, dyn in configs:
                blocks, occ, lim = occupancy(k["regs"], k["smem"] + dyn, threads)
                rows.append(f"| {k['module']} | `{name}` | {k['regs']} | {k['smem']} | {spill} | {mma} | "
                            f"{threads} | {dyn} | {blocks} | {occ:.0%} ({lim}) |")
        with open(args.table, "w") as f:
            f.write("| module | kernel | registers | static smem (B) | spills st/ld (B) | tensor cores | threads "
                    "| dynamic smem (B) | blocks/SM | occupancy (limit) |\n")
            f.write("|---|---|--:|--:|--:|---|--:|--:|--:|---|\n")
            f.write("\n".join(rows) + "\n")
        print(f"  table: {args.table} ({len(rows)} rows)")

    for p in problems:
        print(f"  PROBLEM: {p}")
    if args.check and problems:
        sys.exit(1)


if __name__ == "__main__":
    main()
