"""bench.net_pool: the samples of several saved network runs pooled into one median per path and metric."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root: `bench` is not installed

from bench.net_pool import pooled


def run(path: Path, kvmkit: list[float | None], qemu: list[float]) -> Path:
    def samples(values: list) -> list[dict[str, float | None]]:  # type: ignore[type-arg]
        return [{"tcp-tx-mbit": value, "tcp-rx-mbit": 1.0, "udp-64-kpps": 1.0} for value in values]

    path.write_text(json.dumps({"samples": {"kvmkit": samples(kvmkit), "qemu": samples(qemu),
                                            "kvmkit-vhost": samples([]), "qemu-vhost": samples([2.0])}}))
    return path


def test_medians_are_over_every_boot_of_every_run_and_missing_jobs_are_left_out(tmp_path):
    first = run(tmp_path / "1.json", [100.0, None, 300.0], [200.0, 200.0])
    second = run(tmp_path / "2.json", [500.0], [400.0, 600.0])
    lines = pooled([first, second])
    assert "| kvmkit | tcp-tx-mbit | 300.00 (3) | 300.00 (4) | 1.00 |" in lines
    assert "| kvmkit | tcp-rx-mbit | 1.00 (4) | 1.00 (4) | 1.00 |" in lines
    assert "| kvmkit-vhost | tcp-tx-mbit | n/a (0) | n/a (2) | n/a |" in lines
