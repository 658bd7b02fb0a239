"""A lab machine that fails (its kernel locks up) is told apart from a failed job: the console watch, and the
tier's one retry."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from kvmkit.lab.runner import LAB_MACHINE_FAILED, LockupWatch, heartbeat_age

TIER = Path(__file__).resolve().parents[2] / "scripts" / "pytest-tier"
REPORT = "[  93.064192] watchdog: BUG: soft lockup - CPU#0 stuck for {}s! [python:177]\n"


def test_watch_ignores_short_stalls_and_reports_a_long_one(tmp_path):
    console = tmp_path / "console.log"
    watch = LockupWatch(console, limit=100)
    assert watch.check() is None  # no console yet
    console.write_text("kvmkit-lab: ready\n" + REPORT.format(26) + REPORT.format(52))
    assert watch.check() is None
    with console.open("a") as out:
        out.write(REPORT.format(104)[:40])  # a line still being written is not read yet
    assert watch.check() is None
    with console.open("a") as out:
        out.write(REPORT.format(104)[40:])
    assert watch.check() == "soft lockup - CPU#0 stuck for 104s! [python:177]"
    assert watch.check() == "soft lockup - CPU#0 stuck for 104s! [python:177]"  # stays reported


def run_tier(tmp_path, script: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(TIER), "bash", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, check=False)


def test_tier_runs_once_more_after_a_lab_lockup(tmp_path):
    done = run_tier(tmp_path, f"echo run >> runs; [ -e locked ] && exit 0; touch locked; exit {LAB_MACHINE_FAILED}")
    assert done.returncode == 0
    assert (tmp_path / "runs").read_text().count("run") == 2
    assert "LAB MACHINE FAILED" in done.stderr


def test_tier_gives_up_after_two_lockups_and_never_retries_failed_tests(tmp_path):
    done = run_tier(tmp_path, f"echo run >> runs; exit {LAB_MACHINE_FAILED}")
    assert done.returncode == LAB_MACHINE_FAILED and (tmp_path / "runs").read_text().count("run") == 2
    (tmp_path / "runs").unlink()
    done = run_tier(tmp_path, "echo run >> runs; exit 1")
    assert done.returncode == 1 and (tmp_path / "runs").read_text().count("run") == 1


def test_tier_treats_an_empty_tier_as_success(tmp_path):
    assert run_tier(tmp_path, "exit 5").returncode == 0


def test_heartbeat_age_is_none_before_the_first_beat(tmp_path):
    assert heartbeat_age(tmp_path, 1000.0) is None
    (tmp_path / "heartbeat").write_text("1\n")
    os.utime(tmp_path / "heartbeat", (900.0, 900.0))
    assert heartbeat_age(tmp_path, 1000.0) == 100.0
