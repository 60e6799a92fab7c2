#!/usr/bin/env python3
"""Checks that a run folder holds one whole run and prints its run id: run.json says complete,
lists every file in the folder and nothing else, and every listed file exists. Exit status 1,
with the reasons, otherwise. Used by scripts/kill-loop.sh and scripts/full-disk.sh."""
import json
import os
import sys

d = sys.argv[1]
try:
    run = json.load(open(os.path.join(d, "run.json")))
except (OSError, ValueError) as e:
    sys.exit(f"{d}: no readable run.json ({e}); holds: {' '.join(sorted(os.listdir(d)))}")
listed = set(run.get("files", []))
present = set(os.listdir(d)) - {"run.json"}
problems = []
if not run.get("complete"):
    problems.append("run.json does not say complete")
if listed - present:
    problems.append("missing: " + ", ".join(sorted(listed - present)))
if present - listed:
    problems.append("not of this run: " + ", ".join(sorted(present - listed)))
if problems:
    sys.exit(f"{d}: " + "; ".join(problems))
print(run["run_id"])
