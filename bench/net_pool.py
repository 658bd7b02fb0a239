"""Pool the samples of several saved network benchmark runs (bench/results/net-runs/*.json) into one table.

    python -m bench.net_pool OUT.md RUN.json [RUN.json ...]

The lab's run-to-run spread is large, so a claim rests better on the medians of every boot of a few runs made with
the same code than on one run's five. Missing jobs (null) are left out and counted.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from bench.net import BASELINES, METRICS


def pooled(paths: list[Path]) -> list[str]:
    runs = [json.loads(path.read_text()) for path in paths]
    lines = [f"# Network benchmark, {len(runs)} runs pooled", "",
             "Every boot of " + ", ".join(f"`{path.name}`" for path in paths) + " (each `bench.net`, one lab boot, "
             "kvmkit and QEMU alternating); medians (boots) and kvmkit/QEMU ratios, each kvmkit path against QEMU's "
             "same path.", "",
             "| path | metric | kvmkit median (n) | QEMU median (n) | ratio |", "|---|---|---:|---:|---:|"]
    for ours, theirs in BASELINES.items():
        for metric in METRICS:
            mine = [run_sample[metric] for run in runs for run_sample in run["samples"][ours]
                    if run_sample[metric] is not None]
            base = [run_sample[metric] for run in runs for run_sample in run["samples"][theirs]
                    if run_sample[metric] is not None]
            if not mine or not base:
                lines.append(f"| {ours} | {metric} | n/a ({len(mine)}) | n/a ({len(base)}) | n/a |")
                continue
            a, b = statistics.median(mine), statistics.median(base)
            lines.append(f"| {ours} | {metric} | {a:.2f} ({len(mine)}) | {b:.2f} ({len(base)}) | {a / b:.2f} |")
    return lines


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    lines = pooled([Path(arg) for arg in sys.argv[2:]])
    Path(sys.argv[1]).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
