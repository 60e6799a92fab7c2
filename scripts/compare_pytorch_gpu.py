#!/usr/bin/env python3
"""Our GPU kernels against PyTorch on the same GPU, one table (issue: the prepared GPU run).

    python3 scripts/compare_pytorch_gpu.py CRITERION_DIR [--out FILE.md] [--json FILE]

Our side is read from criterion's output of the bench binaries (run with CRITERION_HOME set, as
scripts/run-gpu.sh does): `cross_entropy_gpu`, `softmax_gpu`, `confusion_gpu` and conv's
`net_gpu` (the default GPU network's seven convolutions, batch 512). For each of our
measurements the same operation, shape and dtype is timed in PyTorch (CUDA events, median of 5
repeats after warm-up):

- weighted cross-entropy forward+backward: `F.cross_entropy(x, t, weight=w, ignore_index=-100,
  label_smoothing=0.1)` then its gradient (as benches/cross_entropy.rs);
- softmax / log-softmax forward, and backward from the forward output;
- confusion counting: argmax + `torch.bincount(t * C + p, minlength=C * C)` (`logits_f32`) or
  `bincount` of label pairs (`labels`);
- each conv pass in FP32 (cuDNN with TF32 off: our FP32 kernels' precision), plus PyTorch's TF32
  and BF16 channels-last timings of the same pass as "what a user would pick";
- a device-to-device copy of 1 GiB: the bandwidth ceiling the memory-bound rows are read against.

Without PyTorch or without a CUDA device it says so in one line and prints our side only (the
dry run of CI). Standard library only, apart from PyTorch itself.
"""
import argparse
import glob
import json
import os
import re
import statistics
import sys
import time

PEAK_TFLOPS = {"fp32": 67.0, "tf32": 495.0, "bf16": 989.0}  # H200 SXM, dense
PEAK_BW = 4.8e12
NET_BATCH = 512
SIZES = {"f32": 4, "f16": 2, "bf16": 2}


def read_ours(root):
    """[(group, function, value, seconds)] from criterion's new/estimates.json files."""
    out = []
    for bench in glob.glob(os.path.join(root, "**", "new", "benchmark.json"), recursive=True):
        try:
            meta = json.load(open(bench))
            est = json.load(open(os.path.join(os.path.dirname(bench), "estimates.json")))
        except (OSError, ValueError):
            continue
        secs = est["median"]["point_estimate"] * 1e-9
        out.append((meta["group_id"], meta.get("function_id") or "", meta.get("value_str") or "", secs))
    return sorted(out)


def timer(torch, fn, min_time=0.2):
    """Median seconds per call of fn over 5 repeats, each long enough to time (CUDA events)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    iters = 1
    while True:
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        if start.elapsed_time(end) * 1e-3 >= min_time / 5 or iters >= 1 << 14:
            break
        iters *= 2
    reps = []
    for _ in range(5):
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        reps.append(start.elapsed_time(end) * 1e-3 / iters)
    return statistics.median(reps)


def nxc(value):
    n, c = value.split("x")
    return int(n), int(c)


def work(group, function, value):
    """(bytes moved at least, FLOPs, precision) of one of our measurements."""
    if group == "net_gpu":
        m = re.match(r"net_(?:stem_)?(\d+)to(\d+)_(\d+)x\d+", value)
        if not m:
            return 0, 0, None
        cin, cout, hw = map(int, m.groups())
        return (4 * (NET_BATCH * (cin + cout) * hw * hw + cin * 9 * cout), 2 * NET_BATCH * cin * 9 * cout * hw * hw,
                function.rsplit("_", 1)[1])
    n, c = nxc(value)
    if group == "cross_entropy_gpu":
        return 2 * n * c * SIZES[function.rsplit("_", 1)[1]] + 4 * n, 0, None
    if group == "softmax_gpu":
        reads_writes = 2 if "_fwd_" in function else 3
        return reads_writes * n * c * SIZES[function.rsplit("_", 1)[1]], 0, None
    if group == "confusion_gpu":
        return (8 * n if function == "labels" else 4 * n * c + 4 * n), 0, None
    return 0, 0, None


def torch_case(torch, group, function, value):
    """(PyTorch seconds, {other precision: seconds}) of the same operation, or None."""
    F = torch.nn.functional
    dev = "cuda"
    dtypes = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
    g = torch.Generator(device=dev).manual_seed(0)
    if group == "cross_entropy_gpu":
        n, c = nxc(value)
        sfx = function.rsplit("_", 1)[1]
        dt = dtypes[sfx]
        x = torch.randn(n, c, device=dev, generator=g).to(dt).requires_grad_(True)
        t = torch.randint(0, c, (n,), device=dev, generator=g)
        w = torch.rand(c, device=dev, generator=g) + 0.5
        w = w.to(dt) if dt != torch.float32 else w

        def step():
            loss = F.cross_entropy(x, t, weight=w, ignore_index=-100, label_smoothing=0.1)
            torch.autograd.grad(loss, x)

        return timer(torch, step), {}
    if group == "softmax_gpu":
        n, c = nxc(value)
        kind, pas, sfx = re.match(r"(softmax|log_softmax)_(fwd|bwd)_(\w+)", function).groups()
        dt = dtypes[sfx]
        x = torch.randn(n, c, device=dev, generator=g).to(dt)
        op = torch.softmax if kind == "softmax" else torch.log_softmax
        if pas == "fwd":
            return timer(torch, lambda: op(x, 1)), {}
        y = op(x, 1)
        dy = torch.randn_like(y)
        back = torch._softmax_backward_data if kind == "softmax" else torch._log_softmax_backward_data
        return timer(torch, lambda: back(dy, y, 1, dt)), {}
    if group == "confusion_gpu":
        n, c = nxc(value)
        t = torch.randint(0, c, (n,), device=dev, generator=g)
        if function == "labels":
            p = torch.randint(0, c, (n,), device=dev, generator=g)
            return timer(torch, lambda: torch.bincount(t * c + p, minlength=c * c)), {}
        x = torch.randn(n, c, device=dev, generator=g)
        return timer(torch, lambda: torch.bincount(t * c + x.argmax(1), minlength=c * c)), {}
    if group == "net_gpu":
        m = re.match(r"net_(?:stem_)?(\d+)to(\d+)_(\d+)x\d+", value)
        pas = function.rsplit("_", 1)[0]
        if not m:
            return None
        cin, cout, hw = map(int, m.groups())
        times = {}
        for label, dt, tf32, fmt in [("fp32", torch.float32, False, torch.contiguous_format),
                                     ("tf32 CL", torch.float32, True, torch.channels_last),
                                     ("bf16 CL", torch.bfloat16, False, torch.channels_last)]:
            torch.backends.cudnn.allow_tf32 = tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
            x = torch.randn(NET_BATCH, cin, hw, hw, device=dev, generator=g).to(dt).contiguous(memory_format=fmt)
            w = torch.randn(cout, cin, 3, 3, device=dev, generator=g).to(dt).contiguous(memory_format=fmt)
            dy = torch.randn(NET_BATCH, cout, hw, hw, device=dev, generator=g).to(dt).contiguous(memory_format=fmt)
            if pas == "forward":
                fn = lambda: F.conv2d(x, w, padding=1)  # noqa: E731
            elif pas == "backward_data":
                fn = lambda: torch.nn.grad.conv2d_input(x.shape, w, dy, padding=1)  # noqa: E731
            else:
                fn = lambda: torch.nn.grad.conv2d_weight(x, w.shape, dy, padding=1)  # noqa: E731
            times[label] = timer(torch, fn)
        torch.backends.cudnn.allow_tf32 = False
        # The row's PyTorch time is the same precision as ours; the other two go beside it.
        same = {"fp32": "fp32", "tf32": "tf32 CL", "bf16": "bf16 CL"}.get(function.rsplit("_", 1)[1], "fp32")
        return times.pop(same), times
    return None


def torch_step(torch, width, depth, batch, precision, steps, repeats, warmup=3, dev="cuda"):
    """Images/s of PyTorch eager's training step on the network and recipe of examples/speed.rs
    (src/train/model.rs; crop/flip, class-weighted cross-entropy, confusion counting, SGD with
    Nesterov momentum and weight decay on conv/linear weights), on the GPU, channels-last.
    precision: fp32 (TF32 off), tf32 (TF32 on), bf16 (autocast to bfloat16). The loss is kept on
    the device (ours reads it once an epoch too). `dev` = "cpu" only checks the code runs."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from compare_pytorch_cpu import MEAN, PAD, STD, build_model

    F = torch.nn.functional
    classes = 10
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    torch.manual_seed(0)
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    cl = torch.channels_last
    n_images = max(4096 // batch, 2) * batch
    g = torch.Generator(device=dev).manual_seed(0)
    images = torch.randint(0, 256, (n_images, 3, 32, 32), dtype=torch.uint8, device=dev, generator=g)
    labels_all = torch.randint(0, classes, (n_images,), device=dev, generator=g)
    mean = torch.tensor(MEAN, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=dev).view(1, 3, 1, 1)
    weights = torch.tensor([0.5 + 0.15 * c for c in range(classes)], device=dev)
    model = build_model(torch, width, depth, classes).to(dev).to(memory_format=cl)
    decay = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": rest, "weight_decay": 0.0}],
                          lr=0.05, momentum=0.9, nesterov=True)
    counts = torch.zeros(classes * classes, dtype=torch.int64, device=dev)
    loss_sum = torch.zeros((), device=dev)
    ar = torch.arange(32, device=dev)
    bidx = torch.arange(batch, device=dev).view(batch, 1, 1, 1)
    cidx = torch.arange(3, device=dev).view(1, 3, 1, 1)
    batches = n_images // batch
    state = {"next": 0}

    def step():
        lo = (state["next"] % batches) * batch
        state["next"] += 1
        x = F.pad((images[lo:lo + batch].float().div_(255.0) - mean) / std, (PAD, PAD, PAD, PAD))
        dy = torch.randint(0, 2 * PAD + 1, (batch, 1), device=dev)
        dx = torch.randint(0, 2 * PAD + 1, (batch, 1), device=dev)
        flip = torch.rand(batch, 1, device=dev) < 0.5
        cols = torch.where(flip, dx + ar.flip(0), dx + ar)
        x = x[bidx, cidx, (dy + ar).view(batch, 1, 32, 1), cols.view(batch, 1, 1, 32)].contiguous(memory_format=cl)
        y = labels_all[lo:lo + batch]
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(x)
        logits = logits.float()
        loss = F.cross_entropy(logits, y, weight=weights)
        loss_sum.add_(loss.detach())
        counts.add_(torch.bincount(y * classes + logits.detach().argmax(1), minlength=classes * classes))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    for _ in range(warmup):
        step()
    sync()
    ips = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        ips.append(steps * batch / (time.perf_counter() - t))
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    return statistics.median(ips), ips


def step_table(torch, path):
    """Lines of the training-step table: each line of `path` (examples/speed --device cuda JSON)
    beside PyTorch eager on the same network, batch and precision."""
    lines = ["", "## Training step (images/s, median of the repeats)", ""]
    try:
        ours = [json.loads(x) for x in open(path) if x.strip()]
    except (OSError, ValueError) as e:
        return lines + [f"no training-step measurements of ours ({e})"]
    if not ours:
        return lines + [f"no training-step measurements of ours in {path}"]
    lines += ["| network | batch | precision | ours | PyTorch eager CL | ours / PyTorch |", "|---|--:|---|--:|--:|--:|"]
    for o in ours:
        prec = o.get("conv_precision", "fp32")
        # bf16 activations (ours) are what autocast stores too; PyTorch's side is the same run.
        label = prec + (" + bf16 activations" if o.get("precision") == "bf16" else "")
        net = f"width {o['width']}, depth {o['depth']}"
        theirs = None
        if torch is not None:
            theirs, _ = torch_step(torch, o["width"], o["depth"], o["batch"], prec, o["steps"], o["repeats"])
        them = f"{theirs:.0f}" if theirs else "skipped"
        ratio = f"{o['train_images_per_s'] / theirs:.2f}x" if theirs else ""
        lines.append(f"| {net} | {o['batch']} | {label} | {o['train_images_per_s']:.0f} | {them} | {ratio} |")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("criterion_dir", nargs="?", help="criterion's output of the bench binaries (omit for --step-ours alone)")
    ap.add_argument("--out", help="also write the Markdown table here")
    ap.add_argument("--json", help="also write every row as JSON lines here")
    ap.add_argument("--step-ours", help="JSON lines of examples/speed --device cuda: adds the training-step "
                    "table, PyTorch eager timed at the same network, batch and precision")
    args = ap.parse_args()
    ours = [r for r in read_ours(args.criterion_dir)
            if r[0] in ("cross_entropy_gpu", "softmax_gpu", "confusion_gpu", "net_gpu")] if args.criterion_dir else []
    lines = []
    try:
        import torch
        if not torch.cuda.is_available():
            raise ImportError("PyTorch sees no CUDA device")
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(0)
        lines.append(f"PyTorch {torch.__version__} on {name}; cuDNN {torch.backends.cudnn.version()}")
    except ImportError as e:
        torch = None
        lines.append(f"PyTorch: skipped ({e}); our side only")
    if args.criterion_dir and not ours:
        lines.append(f"no measurements of ours under {args.criterion_dir} (a dry run, or the benches did not run)")
    copy_bw = None
    if torch is not None and args.criterion_dir:
        a = torch.empty(1 << 28, device="cuda")
        b = torch.empty_like(a)
        copy_bw = 2 * a.numel() * 4 / timer(torch, lambda: b.copy_(a))
        lines.append(f"device copy: {copy_bw / 1e12:.2f} TB/s ({copy_bw / PEAK_BW:.0%} of 4.8 TB/s)")
    if ours:
        lines += ["", "| op | shape | ours ms | PyTorch ms | speed-up | ours | of peak | PyTorch, other precisions |",
                  "|---|---|--:|--:|--:|--:|--:|---|"]
    rows = []
    for group, function, value, secs in ours:
        res = torch_case(torch, group, function, value) if torch is not None else None
        theirs, extra = res if res else (None, {})
        byts, flops, prec = work(group, function, value)
        if flops:
            rate = f"{flops / secs / 1e12:.1f} TFLOP/s"
            frac = f"{flops / secs / 1e12 / PEAK_TFLOPS.get(prec, PEAK_TFLOPS['fp32']):.0%}"
        elif byts:
            rate = f"{byts / secs / 1e9:.0f} GB/s"
            frac = f"{byts / secs / (copy_bw or PEAK_BW):.0%} of {'copy' if copy_bw else '4.8 TB/s'}"
        else:
            rate = frac = ""
        other = ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in extra.items())
        speed = f"{theirs / secs:.2f}x" if theirs else ""
        them = f"{theirs * 1e3:.3f}" if theirs else ""
        lines.append(f"| {group}/{function} | {value} | {secs * 1e3:.3f} | {them} | {speed} | {rate} | {frac} | {other} |")
        rows.append({"group": group, "function": function, "value": value, "ours_s": secs, "pytorch_s": theirs,
                     "pytorch_other_s": extra, "bytes": byts, "flops": flops})
    if args.step_ours:
        lines += step_table(torch, args.step_ours)
    text = "\n".join(lines)
    print(text)
    if args.out:
        open(args.out, "w").write(text + "\n")
    if args.json:
        with open(args.json, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    sys.exit(main())
