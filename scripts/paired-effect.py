#!/usr/bin/env python3
"""How much one method moves each class's test recall against another, paired by seed.

    python3 scripts/paired-effect.py REPORT.json [REPORT.json ...] BASE:OTHER [BASE:OTHER ...] [--class cat]

For each pair of method keys (for example `uniform-long:reweight-long`) and each seed that has
both in the given `--compare` reports (runs of other seeds of one experiment may be given together), it takes OTHER minus BASE on the test set and prints, as mean ± sample
sd over the seeds: the ratio of OTHER's largest to smallest class weight, the mean absolute change
of a class's recall, the change of one class's recall (`--class`, default cat), the change of
accuracy, and both methods' training accuracy and last-epoch mean training loss (the weighted
loss a training minimized is near zero once it fits its training set). Percentages and points.
Standard library only.
"""

import json
import statistics
import sys


def stat(xs, digits=1):
    """Mean ± sample sd (the value alone for one seed, "-" for none)."""
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    return f"{statistics.mean(xs):.{digits}f} ± {statistics.stdev(xs):.{digits}f}"


def main(argv):
    args, cls = [], "cat"
    it = iter(argv)
    for a in it:
        if a == "--class":
            cls = next(it, None)
            if cls is None:
                sys.exit("--class needs a class name")
        else:
            args.append(a)
    files = [a for a in args if a.endswith(".json")]
    pairs = [a for a in args if not a.endswith(".json")]
    if not files or not pairs or any(":" not in p for p in pairs):
        sys.exit("usage: " + __doc__.strip().splitlines()[2].strip())
    by, names = {}, None
    for path in files:
        with open(path) as f:
            report = json.load(f)
        if "methods" not in report:
            sys.exit(f"{path} is not a --compare report (no methods)")
        if names is not None and report["class_names"] != names:
            sys.exit(f"{path} has other classes than {files[0]}")
        names = report["class_names"]
        for m in report["methods"]:
            key = (m.get("method"), m.get("seed"))
            if key in by:
                sys.exit(f"{path}: method {key[0]} seed {key[1]} is in two reports")
            by[key] = m
    if cls not in names:
        sys.exit(f"no class {cls!r} in {names}")
    c = names.index(cls)
    print(f"| base → other | seeds | weight ratio max/min | mean abs. change of a class's recall "
          f"| {cls}'s recall | accuracy | train acc. base / other | last-epoch train loss base / other |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    for pair in pairs:
        base, other = pair.split(":", 1)
        seeds = sorted(s for (k, s) in by if k == other and (base, s) in by)
        if not seeds:
            sys.exit(f"no seed has both {base!r} and {other!r} in {', '.join(files)}")
        ratio, mac, dc, dacc, tb, to, lb, lo = [], [], [], [], [], [], [], []
        for s in seeds:
            b, o = by[(base, s)], by[(other, s)]
            w = o["class_weights"]
            ratio.append(max(w) / min(w))
            d = [100 * (x - y) for x, y in zip(o["test"]["recall"], b["test"]["recall"])]
            mac.append(statistics.mean(abs(x) for x in d))
            dc.append(d[c])
            dacc.append(100 * (o["test"]["accuracy"] - b["test"]["accuracy"]))
            tb.append(100 * b["train"]["accuracy"])
            to.append(100 * o["train"]["accuracy"])
            for run, out in ((b, lb), (o, lo)):
                if run["epochs"]:
                    out.append(run["epochs"][-1]["train_loss"])
        ratios = f"{min(ratio):.1f} to {max(ratio):.1f}"
        print(f"| {base} → {other} | {len(seeds)} | {ratios} | {stat(mac)} | {stat(dc)} | {stat(dacc)} "
              f"| {stat(tb)} / {stat(to)} | {stat(lb, 3)} / {stat(lo, 3)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
