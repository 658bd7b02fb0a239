"""Bad -drive/-device input to `kvmkit run`: one clear error line naming the culprit, non-zero exit, no traceback.

Drives are opened before any KVM work, so these run on any host (no guest boots; a real kernel, which kvmkit
checks first).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def run_kvmkit(kernel: Path, *options: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "kvmkit.cli.main", "run", "-kernel", str(kernel), "-nographic", "-no-reboot",
            *options]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)


def raw_image(tmp_path: Path) -> Path:
    image = tmp_path / "plain.img"
    image.write_bytes(bytes(1 << 20))
    return image


CASES = {
    "missing-file": (lambda t: ["-drive", f"file={t / 'missing.qcow2'},format=qcow2"], ("missing.qcow2", "no such")),
    "unknown-format": (lambda t: ["-drive", f"file={raw_image(t)},format=qed"], ("plain.img", "'qed'")),
    "writable-unprobed-raw": (lambda t: ["-drive", f"file={raw_image(t)}"], ("plain.img", "format=raw")),
    "unknown-drive-id": (
        lambda t: ["-drive", f"file={raw_image(t)},format=raw,if=none,id=disk0",
                   "-device", "virtio-blk-pci,drive=disk9"],
        ("virtio-blk-pci", "'disk9'"),
    ),
    "bad-readonly-flag": (lambda t: ["-drive", f"file={raw_image(t)},format=raw,readonly=maybe"], ("readonly",)),
    "bad-cache-mode": (lambda t: ["-drive", f"file={raw_image(t)},format=raw,cache=fast"], ("cache", "'fast'")),
    "virtio-drive-given-to-device": (
        lambda t: ["-drive", f"file={raw_image(t)},format=raw,id=disk0", "-device", "virtio-blk-pci,drive=disk0"],
        ("if=none",),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_drive_input_gives_one_clear_error_line(tmp_path, generic_guest, case):
    options, wanted = CASES[case]
    done = run_kvmkit(generic_guest.kernel, *options(tmp_path))
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("kvmkit"), lines[0]
    for word in wanted:
        assert word in lines[0], lines[0]
