#!/usr/bin/env python3
"""The performance model of one training step of the default GPU network on an H200: per layer and
pass, FLOPs and bytes, the bound (compute or memory) and the time implied by the H200's peaks
under stated efficiencies, for the FP32 (CUDA cores), TF32 and BF16 (tensor cores) convolution
paths. Prints the Markdown tables of docs/performance-model.md:

    python3 scripts/perf_model.py > /tmp/model.md

Pure arithmetic from the network's shapes (src/train/model.rs); nothing here is measured.
"""

# The default GPU network (src/experiment/plan.rs): width 64, depth 2, batch 512, 32x32 inputs.
WIDTH, DEPTH, BATCH, CLASSES = 64, 2, 512, 10

# H200 SXM peaks (NVIDIA's H200 datasheet; dense, no sparsity).
PEAK = {"fp32": 67e12, "tf32": 495e12, "bf16": 989e12}
HBM = 4.8e12  # bytes/s
# Assumed fractions of peak a good hand-written kernel reaches (assumptions, not measurements):
# FFMA tiles rarely pass 50% of the FP32 peak; implicit-GEMM tensor-core convolutions at these
# sizes reach 40-60% of the dense peak (cuDNN's own share on such layers); streaming kernels reach
# 75-85% of HBM bandwidth.
EFF = {"fp32": 0.45, "tf32": 0.5, "bf16": 0.5}
EFF_HBM = 0.8
F32 = 4


def layers():
    """(name, cin, cout, h, w, pooled after) of every 3x3 convolution, stride 1, padding 1."""
    out, c, hw = [("stem", 3, WIDTH, 32, 32, False)], WIDTH, 32
    for s in range(3):
        out.append((f"s{s + 1}.conv1", c, 2 * c, hw, hw, True))
        c, hw = 2 * c, hw // 2
        for d in range(1, DEPTH):
            out.append((f"s{s + 1}.conv{d + 1}", c, c, hw, hw, False))
    return out


def conv_rows():
    rows = []
    for name, cin, cout, h, w, _ in layers():
        macs = BATCH * cin * 9 * cout * h * w
        x, y, wt = BATCH * cin * h * w * F32, BATCH * cout * h * w * F32, cin * 9 * cout * F32
        # Minimum traffic: each operand read once, each result written once.
        rows.append((name, "forward", 2 * macs, x + wt + y))
        if name != "stem":  # the input image needs no gradient
            rows.append((name, "data grad", 2 * macs, y + wt + x))
        rows.append((name, "weight grad", 2 * macs, x + y + wt))
    return rows


def memory_rows():
    """The memory-bound ops of a step: bytes moved (f32 activations), FLOPs negligible."""
    rows, params = [], 0
    for name, cin, cout, h, w, pooled in layers():
        params += cin * 9 * cout
        full = BATCH * cout * h * w * F32
        if pooled:
            # forward: read the conv output, write a quarter and one argmax byte per output;
            # backward: read the quarter-size gradient and the argmax, write the full gradient.
            rows.append((name, "max-pool fwd+bwd", full + full // 4 + full // 16 + full // 4 + full // 16 + full))
        bn = full // 4 if pooled else full
        # BN+ReLU forward: statistics pass (read), apply pass (read, write);
        # backward: reduction pass (read x, dy), dx pass (read x, dy, write dx).
        rows.append((name, "BN+ReLU fwd+bwd", 3 * bn + 5 * bn))
    head = 8 * WIDTH
    params += head * CLASSES + CLASSES
    rows.append(("all", "SGD (w, grad, momentum)", 5 * params * F32))
    rows.append(("head", "pool, linear, loss", 3 * BATCH * head * 4 * 4 * F32))
    return rows, params


def ms(t):
    return f"{t * 1e3:.2f}"


def main():
    convs = conv_rows()
    mems, params = memory_rows()
    total_flops = sum(r[2] for r in convs)
    print(f"Network: width {WIDTH}, depth {DEPTH}, batch {BATCH}; {params:,} parameters; "
          f"{total_flops / 1e9:,.0f} GFLOP of convolution per step.\n")
    print("| layer | pass | GFLOP | MB | FLOP/B | FP32 ms | TF32 ms | BF16 ms | bound (BF16) | measured |")
    print("|---|---|--:|--:|--:|--:|--:|--:|---|---|")
    tot = {k: 0.0 for k in PEAK}
    for name, pas, flops, byts in convs:
        t = {k: max(flops / (PEAK[k] * EFF[k]), byts / (HBM * EFF_HBM)) for k in PEAK}
        for k in t:
            tot[k] += t[k]
        bound = "compute" if flops / (PEAK["bf16"] * EFF["bf16"]) > byts / (HBM * EFF_HBM) else "memory"
        print(f"| {name} | {pas} | {flops / 1e9:.1f} | {byts / 1e6:.1f} | {flops / byts:.0f} | {ms(t['fp32'])} | "
              f"{ms(t['tf32'])} | {ms(t['bf16'])} | {bound} | |")
    print(f"| **all convolutions** | | **{total_flops / 1e9:.0f}** | | | **{ms(tot['fp32'])}** | "
          f"**{ms(tot['tf32'])}** | **{ms(tot['bf16'])}** | | |\n")
    print("| layer | memory-bound op | MB | ms at 80% of HBM | measured |")
    print("|---|---|--:|--:|---|")
    mem_t = 0.0
    for name, op, byts in mems:
        t = byts / (HBM * EFF_HBM)
        mem_t += t
        print(f"| {name} | {op} | {byts / 1e6:.1f} | {ms(t)} | |")
    print(f"| **all** | | **{sum(m[2] for m in mems) / 1e6:.0f}** | **{ms(mem_t)}** | |\n")
    print("| convolution path | convolutions ms | memory-bound ms | step ms | images/s |")
    print("|---|--:|--:|--:|--:|")
    for k, label in [("fp32", "FP32 (CUDA cores)"), ("tf32", "TF32 (tensor cores)"), ("bf16", "BF16 (tensor cores)")]:
        step = tot[k] + mem_t
        print(f"| {label} | {ms(tot[k])} | {ms(mem_t)} | {ms(step)} | {BATCH / step:,.0f} |")


if __name__ == "__main__":
    main()
