"""Run every benchmark in one lab boot: `make bench` (kvmkit lab -- python -m bench.run_all)."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = ("bench.boot", "bench.block", "bench.net")


def main() -> int:
    failed = []
    for module in BENCHMARKS:
        print(f"== {module}", flush=True)
        if subprocess.run([sys.executable, "-m", module], check=False).returncode != 0:
            failed.append(module)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
