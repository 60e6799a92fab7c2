"""PyTorch side of scripts/compare-pytorch-cpu.sh, and the table that puts both sides together.

    python scripts/compare_pytorch_cpu.py bench --width 16 --threads 1   # one JSON line
    python scripts/compare_pytorch_cpu.py table results.jsonl            # the comparison table

`bench` builds the network of src/train/model.rs layer for layer and times, like
examples/speed.rs does for ours:

- training step: index a batch of u8 images, convert to float and normalize with CIFAR-10's
  mean/std, zero-pad 4 and take a random 32x32 crop with a random horizontal flip per image (one
  gather), forward in train mode, class-weighted cross-entropy (loss read back with .item()),
  confusion counting (argmax + bincount), backward, SGD (momentum 0.9, Nesterov, weight decay 5e-4
  on conv/linear weights only, as ours);
- evaluation: eval mode under torch.inference_mode(): index, convert and normalize a batch,
  forward, confusion counting.

PyTorch runs with its defaults (oneDNN/mkldnn as shipped, channels-first tensors) apart from the
thread count: torch.set_num_interop_threads(1) and torch.set_num_threads(t) before any op.
Variants: `--channels-last` (model and input in channels_last memory format) and `--compile`
(`torch.compile` with its default inductor backend, channels-last too; compiled in the warm-up,
outside the timing; when it fails the JSON line says why instead of timing anything).
The `table` subcommand needs only the standard library.
"""

import argparse
import json
import statistics
import sys
import time

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
CLASSES = 10
PAD = 4


def build_model(torch, width, depth, classes):
    """src/train/model.rs: stem conv3x3(3->w)+BN+ReLU at 32x32; 3 stages of conv3x3(c->2c),
    max-pool 2x2, BN+ReLU, then (depth-1) x [conv3x3(2c->2c), BN+ReLU]; global average pool,
    linear(8w -> classes). Convolutions have no bias (a batch norm follows)."""
    nn = torch.nn

    def conv(cin, cout):
        return nn.Conv2d(cin, cout, 3, padding=1, bias=False)

    layers = [conv(3, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    c = width
    for _stage in range(3):
        layers += [conv(c, 2 * c), nn.MaxPool2d(2), nn.BatchNorm2d(2 * c), nn.ReLU(inplace=True)]
        for _ in range(1, depth):
            layers += [conv(2 * c, 2 * c), nn.BatchNorm2d(2 * c), nn.ReLU(inplace=True)]
        c *= 2
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes)]
    model = nn.Sequential(*layers)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
    return model


def bench(args):
    import torch  # imported here: `table` must work without PyTorch

    # Before any other op (the inter-op pool can only be sized before it starts).
    torch.set_num_interop_threads(1)
    torch.set_num_threads(args.threads)
    import torch.nn.functional as F

    torch.manual_seed(0)
    batch = args.batch
    eval_steps = args.eval_steps or args.steps
    n_images = max(4096 // batch, 1, eval_steps) * batch
    fmt = torch.channels_last if args.channels_last or args.compile else torch.contiguous_format

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n_images, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels_all = torch.randint(0, CLASSES, (n_images,), dtype=torch.int64, generator=g)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    class_weights = torch.tensor([0.5 + 0.15 * c for c in range(CLASSES)])

    model = build_model(torch, args.width, args.depth, CLASSES).to(memory_format=fmt)
    run_model = torch.compile(model) if args.compile else model
    decay = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    decay_ids = {id(p) for p in decay}
    no_decay = [p for p in model.parameters() if id(p) not in decay_ids]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=0.05,
        momentum=0.9,
        nesterov=True,
    )
    counts = torch.zeros(CLASSES * CLASSES, dtype=torch.int64)
    ar = torch.arange(32)
    bidx = torch.arange(batch).view(batch, 1, 1, 1)
    cidx = torch.arange(3).view(1, 3, 1, 1)
    batches = n_images // batch
    state = {"next": 0, "loss": 0.0}

    def normalize(u8):
        return (u8.float().div_(255.0) - mean) / std

    def train_batch():
        lo = (state["next"] % batches) * batch
        state["next"] += 1
        x = F.pad(normalize(images[lo : lo + batch]), (PAD, PAD, PAD, PAD))
        dy = torch.randint(0, 2 * PAD + 1, (batch, 1))
        dx = torch.randint(0, 2 * PAD + 1, (batch, 1))
        flip = torch.rand(batch, 1) < 0.5
        rows = dy + ar
        cols = torch.where(flip, dx + ar.flip(0), dx + ar)
        x = x[bidx, cidx, rows.view(batch, 1, 32, 1), cols.view(batch, 1, 1, 32)]
        return x.contiguous(memory_format=fmt), labels_all[lo : lo + batch]

    def count(logits, labels):
        counts.add_(torch.bincount(labels * CLASSES + logits.argmax(1), minlength=CLASSES * CLASSES))

    def step():
        x, y = train_batch()
        logits = run_model(x)
        loss = F.cross_entropy(logits, y, weight=class_weights)
        state["loss"] = loss.item()
        count(logits.detach(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def evaluate(n_batches):
        with torch.inference_mode():
            for b in range(n_batches):
                lo = b * batch
                x = normalize(images[lo : lo + batch]).contiguous(memory_format=fmt)
                count(run_model(x), labels_all[lo : lo + batch])

    side = "pytorch-compile" if args.compile else "pytorch-channels-last" if args.channels_last else "pytorch"
    model.train()
    try:
        for _ in range(max(args.warmup, 1 if args.compile else 0)):
            step()
    except Exception as e:  # noqa: BLE001 - torch.compile raises many kinds; the line says which
        if not args.compile:
            raise
        print(json.dumps({"side": side, "width": args.width, "depth": args.depth, "batch": batch,
                          "threads": torch.get_num_threads(), "torch": torch.__version__,
                          "error": f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}"}))
        return
    train_ips = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        train_ips.append(args.steps * batch / (time.perf_counter() - t))
    # What the batch preparation alone costs (included in the step above), for the record.
    t = time.perf_counter()
    for _ in range(args.steps):
        train_batch()
    prep_s = (time.perf_counter() - t) / args.steps

    model.eval()
    for _ in range(max(args.warmup, 1 if args.compile else 0)):
        evaluate(1)
    eval_ips = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        evaluate(eval_steps)
        eval_ips.append(eval_steps * batch / (time.perf_counter() - t))

    out = {
        "side": side,
        "torch": torch.__version__,
        "mkldnn": bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "width": args.width,
        "depth": args.depth,
        "batch": batch,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "warmup": args.warmup,
        "steps": args.steps,
        "eval_steps": eval_steps,
        "repeats": args.repeats,
        "train_images_per_s": statistics.median(train_ips),
        "eval_images_per_s": statistics.median(eval_ips),
        "train_repeats": train_ips,
        "eval_repeats": eval_ips,
        "train_batch_prep_s": prep_s,
        "parameters": sum(p.numel() for p in model.parameters()),
        "last_loss": state["loss"],
    }
    print(json.dumps(out))


SIDES = [("evenclass", "ours"), ("pytorch", "eager"), ("pytorch-channels-last", "CL"), ("pytorch-compile", "compile")]
TRAIN_TARGET = EVAL_TARGET = 1.5
SCALING_TARGET = 1.85


def table(args):
    rows = [json.loads(line) for line in open(args.results) if line.strip().startswith("{")]
    runs = {}  # (side, width, depth, threads) -> [row of each repetition]
    errors = {}
    for r in rows:
        key = (r["side"], r["width"], r["depth"], r["threads"])
        if "error" in r:
            errors[key] = r["error"]
        else:
            runs.setdefault(key, []).append(r)
    nets = sorted({(r["width"], r["depth"]) for r in rows}, key=lambda n: (n[1], n[0]))
    threads = sorted({r["threads"] for r in rows})
    sides = [(k, n) for k, n in SIDES if any(key[0] == k for key in runs) or any(key[0] == k for key in errors)]
    reps = max((len(v) for v in runs.values()), default=0)

    def values(side, w, d, t, key):
        return [r[key] for r in runs.get((side, w, d, t), [])]

    def med(v):
        return statistics.median(v) if v else None

    def cell(v):
        """median, and the repetitions' half-range as a percentage of it: 1234±3%"""
        if not v:
            return "-"
        m = statistics.median(v)
        if len(v) == 1 or m == 0:
            return f"{m:.0f}"
        return f"{m:.0f}±{50 * (max(v) - min(v)) / m:.0f}%"

    print(f"images/s, median of {reps} interleaved repetition(s) ± half their range; batch {rows[0]['batch']}")
    for key, what, target in (("train_images_per_s", "training step", TRAIN_TARGET),
                              ("eval_images_per_s", "evaluation", EVAL_TARGET)):
        head = ["net", "thr"] + [n for _, n in sides] + ["ours/best", f">={target}"]
        lines = [head]
        for t in threads:
            for w, d in nets:
                row = [f"{w}x{d}", str(t)]
                best = None
                for side, _ in sides:
                    if (side, w, d, t) in errors and not runs.get((side, w, d, t)):
                        row.append("failed")
                        continue
                    v = values(side, w, d, t, key)
                    row.append(cell(v))
                    if side != "evenclass" and v and (best is None or med(v) > best):
                        best = med(v)
                ours = med(values("evenclass", w, d, t, key))
                ratio = None if ours is None or not best else ours / best
                row.append("-" if ratio is None else f"{ratio:.2f}x")
                row.append("-" if ratio is None else ("met" if ratio >= target else "MISSED"))
                lines.append(row)
        print()
        print(f"{what} (net: width x convolutions per stage; best: fastest PyTorch)")
        print(render(lines))

    if len(threads) >= 2:
        lo, hi = threads[0], threads[-1]
        print()
        print(f"thread scaling, {hi} threads / {lo}; target for ours >= {SCALING_TARGET}x")
        head = ["net"] + [f"train {n}" for _, n in sides] + ["eval ours"]
        lines = [head]
        for w, d in nets:
            row = [f"{w}x{d}"]
            for side, _ in sides:
                a, b = med(values(side, w, d, hi, "train_images_per_s")), med(values(side, w, d, lo, "train_images_per_s"))
                row.append("-" if a is None or not b else f"{a / b:.2f}x")
            a, b = med(values("evenclass", w, d, hi, "eval_images_per_s")), med(values("evenclass", w, d, lo, "eval_images_per_s"))
            row.append("-" if a is None or not b else f"{a / b:.2f}x")
            lines.append(row)
        print(render(lines))
    for key, msg in sorted(errors.items()):
        print(f"{key[0]} {key[1]}x{key[2]}, {key[3]} thread(s): {msg}")
    torch_rows = [r for r in rows if r["side"] == "pytorch" and "train_batch_prep_s" in r]
    if torch_rows:
        r = torch_rows[0]
        print()
        print(f"torch {r['torch']}, mkldnn {r['mkldnn']}, cpu capability {r['cpu_capability']}, "
              f"interop threads {r['interop_threads']};")
        print("PyTorch's batch preparation per training step (included): "
              f"{1000 * statistics.median(x['train_batch_prep_s'] for x in torch_rows):.1f} ms median")


def render(lines):
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for k, line in enumerate(lines):
        out.append("  ".join(c.rjust(widths[i]) for i, c in enumerate(line)))
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="time PyTorch's training step and evaluation (one JSON line)")
    b.add_argument("--width", type=int, default=16)
    b.add_argument("--depth", type=int, default=1)
    b.add_argument("--batch", type=int, default=256)
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--warmup", type=int, default=2)
    b.add_argument("--steps", type=int, default=5)
    b.add_argument("--eval-steps", type=int, default=None)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--channels-last", action="store_true")
    b.add_argument("--compile", action="store_true", help="torch.compile (inductor), channels-last")
    t = sub.add_parser("table", help="print the comparison table from the JSON lines of both sides")
    t.add_argument("results")
    args = p.parse_args()
    if args.cmd == "bench":
        bench(args)
    else:
        table(args)


if __name__ == "__main__":
    sys.exit(main())
