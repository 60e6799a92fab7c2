#!/usr/bin/env python3
"""Merges the methods of several `--compare` runs (report.json files) into one table.

Use it when one comparison was run as several commands (e.g. more seeds later): the runs must
share the data fingerprint (run.json's, MD5 of the records) and every configuration field except the seed and the method list,
and a (method, seed) pair present in two runs must have the same test results (the CPU trainer
is deterministic for a seed and thread count), else the script refuses. It prints the same
Markdown table as comparison.md: mean and sample standard deviation over seeds.

    python3 scripts/merge-comparisons.py RUN_DIR_OR_REPORT [...]
"""
import json
import math
import os
import sys

METRICS = [
    ("accuracy", "test acc."),
    ("balanced_accuracy", "balanced acc."),
    ("worst_recall", "worst recall"),
    ("recall_spread", "recall spread"),
    ("recall_sd", "recall sd"),
    ("macro_f1", "macro F1"),
    ("precision_spread", "precision spread"),
    ("f1_spread", "F1 spread"),
]


def data_identity(report_file, report):
    """What says two runs saw the same data: the data fingerprint of the run folder's run.json
    (source, subsets, sizes, MD5 of the records; not the folder's name, which two spellings of
    one path would make differ), else the report's dataset line."""
    manifest = os.path.join(os.path.dirname(report_file), "run.json")
    if os.path.exists(manifest):
        with open(manifest) as fh:
            data = json.load(fh).get("meta", {}).get("data")
        if data:
            return {k: v for k, v in data.items() if k != "dir"}
    return report.get("dataset")


def metric(m, key):
    rec = m["recall"]
    if key == "worst_recall":
        return min(rec)
    if key == "recall_spread":
        return max(rec) - min(rec)
    if key == "recall_sd":
        mean = sum(rec) / len(rec)
        return math.sqrt(sum((r - mean) ** 2 for r in rec) / len(rec))
    if key == "macro_f1":
        return sum(m["f1"]) / len(m["f1"])
    if key == "precision_spread":
        return max(m["precision"]) - min(m["precision"])
    if key == "f1_spread":
        return max(m["f1"]) - min(m["f1"])
    return m[key]


def stat(values):
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return mean, sd


def fmt(mean, sd):
    return f"{100 * mean:.1f}" if math.isnan(sd) else f"{100 * mean:.1f} ± {100 * sd:.1f}"


def comparable(config):
    c = dict(config)
    c.pop("compare", None)
    # Runs made before --split-seed existed split with --seed.
    c.setdefault("split_seed", c.get("train", {}).get("seed"))
    train = dict(c.get("train", {}))
    train.pop("seed", None)
    c["train"] = train
    return c


def main(paths):
    if not paths:
        sys.exit(__doc__)
    reports = []
    for p in paths:
        f = os.path.join(p, "report.json") if os.path.isdir(p) else p
        with open(f) as fh:
            reports.append((f, json.load(fh)))
    base_f, base = reports[0]
    base_data = data_identity(base_f, base)
    runs = {}  # (method, seed) -> (name, test metrics, file)
    order = []
    for f, r in reports:
        if not r.get("methods"):
            sys.exit(f"{f}: not a --compare run (no methods)")
        if comparable(r["config"]) != comparable(base["config"]):
            sys.exit(f"{f}: another configuration than {base_f}")
        if r.get("class_names") != base.get("class_names") or data_identity(f, r) != base_data:
            sys.exit(f"{f}: other data than {base_f}")
        for m in r["methods"]:
            k = (m["method"], m["seed"])
            if m["method"] not in order:
                order.append(m["method"])
            if k in runs:
                if runs[k][1] != m["test"]:
                    sys.exit(f"{f}: method {k[0]} seed {k[1]} differs from {runs[k][2]}")
                continue
            runs[k] = (m["name"], m["test"], f)
    print(f"Merged from: {', '.join(f for f, _ in reports)}\n")
    print("| method | seeds | " + " | ".join(t for _, t in METRICS) + " |")
    print("|---|---|" + "---:|" * len(METRICS))
    for key in order:
        entries = sorted((s, v) for (m, s), v in runs.items() if m == key)
        cells = [fmt(*stat([metric(v[1], k) for _, v in entries])) for k, _ in METRICS]
        seeds = ",".join(str(s) for s, _ in entries)
        print(f"| {entries[0][1][0]} | {seeds} | " + " | ".join(cells) + " |")
    names = base["class_names"]
    print("\nMean test recall per class (%):\n")
    print("| method | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for key in order:
        entries = [v for (m, _), v in runs.items() if m == key]
        rec = [sum(e[1]["recall"][c] for e in entries) / len(entries) for c in range(len(names))]
        print(f"| {entries[0][0]} | " + " | ".join(f"{100 * r:.1f}" for r in rec) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
