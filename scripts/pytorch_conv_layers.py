"""PyTorch's side of `cargo bench --bench roofline`: the same convolution passes, timed alike.

    python scripts/pytorch_conv_layers.py --csv torch.csv                 # widths 16-128, 1 and 2 threads
    python scripts/pytorch_conv_layers.py --ours ours.csv --csv torch.csv # and a side-by-side table

The layers are the trainer's network at depth 1 (src/train/model.rs): the stem 3->w at 32x32,
then w->2w at 32x32, 2w->4w at 16x16 and 4w->8w at 8x8, batch 256, 3x3 filters, padding 1, no
bias. The passes are the ones autograd runs (aten.convolution and aten.convolution_backward,
oneDNN on the CPU): forward, the input gradient (not for the stem, as the trainer skips it) and the
weight gradient, each timed in channels-first and channels-last memory format; the faster counts.
Each of `--rounds` rounds runs a pass until 40 ms have passed; the median round is reported, in
GFLOP/s of direct-convolution FLOPs (2 * outputs * cin * 9), as the Rust benchmark counts them.

With `--ours` (the CSV of `cargo bench --bench roofline -- --csv FILE`) the table adds our GFLOP/s
and the FMA peak that our run measured beside each pass, so both sides read against one peak;
run the two back to back, on an otherwise idle machine.
"""

import argparse
import csv
import statistics
import sys
import time

MIN_SECONDS = 0.04


def layers(width):
    out = [(f"3->{width} 32x32", 3, width, 32)]
    for c, hw in ((width, 32), (2 * width, 16), (4 * width, 8)):
        out.append((f"{c}->{2 * c} {hw}x{hw}", c, 2 * c, hw))
    return out


def per_call(fn):
    start, calls = time.perf_counter(), 0
    while True:
        fn()
        calls += 1
        s = time.perf_counter() - start
        if s >= MIN_SECONDS:
            return s / calls


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", default="16,32,64,128")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--csv", help="write one row per (threads, width, layer, pass)")
    ap.add_argument("--ours", help="the roofline benchmark's CSV, for a side-by-side table")
    a = ap.parse_args()
    try:
        widths = [int(w) for w in a.widths.split(",")]
        threads = [int(t) for t in a.threads.split(",")]
    except ValueError:
        sys.exit("--widths and --threads take comma-separated integers")
    if a.rounds < 1 or a.batch < 1 or min(widths + threads) < 1:
        sys.exit("--rounds, --batch, widths and threads must be positive")

    import torch

    torch.set_num_interop_threads(1)
    ours = {}
    if a.ours:
        with open(a.ours, newline="") as f:
            for r in csv.DictReader(f):
                ours[(int(r["threads"]), int(r["width"]), r["layer"], r["pass"])] = r
    rows = []
    for t in threads:
        torch.set_num_threads(t)
        for width in widths:
            for name, cin, cout, hw in layers(width):
                flops = 2.0 * a.batch * cout * hw * hw * cin * 9
                passes = ["forward", "weight_grad"] + ([] if cin == 3 else ["data_grad"])
                for p in passes:
                    best = None
                    for fmt in (torch.contiguous_format, torch.channels_last):
                        g = torch.Generator().manual_seed(1)
                        x = torch.randn(a.batch, cin, hw, hw, generator=g).to(memory_format=fmt)
                        w = (0.1 * torch.randn(cout, cin, 3, 3, generator=g)).to(memory_format=fmt)
                        dy = torch.randn(a.batch, cout, hw, hw, generator=g).to(memory_format=fmt)
                        mask = [p == "data_grad", p == "weight_grad", False]

                        def run():
                            with torch.no_grad():
                                if p == "forward":
                                    torch.ops.aten.convolution(x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)
                                else:
                                    torch.ops.aten.convolution_backward(
                                        dy, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask
                                    )

                        run()
                        secs = statistics.median(per_call(run) for _ in range(a.rounds))
                        if best is None or secs < best[0]:
                            best = (secs, "channels_last" if fmt is torch.channels_last else "channels_first")
                    gf = flops / best[0] / 1e9
                    rows.append(dict(threads=t, width=width, layer=name, pass_=p, gflops=gf, layout=best[1]))
                    print(f"{t} thread(s) width {width} {name:<16} {p:<11} {gf:7.1f} GFLOP/s ({best[1]})", file=sys.stderr)
    if a.csv:
        with open(a.csv, "w", newline="") as f:
            wr = csv.writer(f)
            wr.writerow(["threads", "width", "layer", "pass", "gflops", "layout", ])
            for r in rows:
                wr.writerow([r["threads"], r["width"], r["layer"], r["pass_"], f"{r['gflops']:.2f}", r["layout"]])
    if ours:
        print(f"{'threads width layer':<28}{'pass':<12}{'ours':>7}{'torch':>7}{'ratio':>7}{'torch/pk':>9}")
        for r in rows:
            o = ours.get((r["threads"], r["width"], r["layer"], r["pass_"]))
            if o is None:
                continue
            og, pk = float(o["gflops"]), float(o["peak_gflops"])
            print(
                f"{r['threads']:>2} {r['width']:>5}  {r['layer']:<19}{r['pass_']:<12}{og:7.0f}{r['gflops']:7.0f}"
                f"{og / r['gflops']:6.2f}x{100 * r['gflops'] / pk:8.0f}%"
            )


if __name__ == "__main__":
    main()
