"""`kvmkit host-check` says in a sentence whether unmodified guests can boot here, and exits 0/1 to match."""

import json
import subprocess
import sys
from pathlib import Path

from kvmkit.cli import host_check


def run_host_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmkit.cli.main", "host-check", *args],
                          capture_output=True, text=True, check=False)


def test_exit_status_matches_the_verdict():
    done = run_host_check("--json")
    verdict = json.loads(done.stdout)
    assert done.returncode == (0 if verdict["can_boot"] else 1)
    assert verdict["message"].endswith(".")


def test_pvm_host_is_told_to_use_the_lab(monkeypatch, tmp_path):
    device = tmp_path / "kvm"
    device.write_text("")
    monkeypatch.setattr(host_check, "KVM_DEVICE", device)
    real_exists = Path.exists
    monkeypatch.setattr(Path, "exists", lambda p: True if str(p) == "/sys/module/kvm_pvm" else real_exists(p))
    verdict = host_check.check_host()
    assert not verdict.can_boot
    assert "PVM" in verdict.message and "kvmkit lab" in verdict.message


def test_missing_device_is_explained(monkeypatch, tmp_path):
    monkeypatch.setattr(host_check, "KVM_DEVICE", tmp_path / "no-kvm")
    verdict = host_check.check_host()
    assert not verdict.can_boot and "no " in verdict.message


def test_hardware_kvm_can_boot(monkeypatch, tmp_path):
    device = tmp_path / "kvm"
    device.write_text("")
    monkeypatch.setattr(host_check, "KVM_DEVICE", device)
    monkeypatch.setattr(host_check, "cpu_flags", lambda: {"svm", "lm"})
    real_exists = Path.exists
    monkeypatch.setattr(Path, "exists", lambda p: False if str(p) == "/sys/module/kvm_pvm" else real_exists(p))
    verdict = host_check.check_host()
    assert verdict.can_boot and "AMD-V" in verdict.message
