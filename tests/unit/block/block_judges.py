"""Helpers for block tests: qemu-img/qemu-io act as independent judges."""

from __future__ import annotations

import shutil
import subprocess
import threading

import pytest

needs_qemu = pytest.mark.skipif(shutil.which("qemu-img") is None or shutil.which("qemu-io") is None,
                                reason="qemu-img/qemu-io not installed")


def qemu(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check)


def qemu_io(path: str, *commands: str, fmt: str | None = None) -> None:
    args = ["qemu-io"] + (["-f", fmt] if fmt else [])
    for command in commands:
        args += ["-c", command]
    result = subprocess.run([*args, path], capture_output=True, text=True, check=True)
    assert "error" not in result.stdout.lower() + result.stderr.lower(), result.stdout + result.stderr


def images_identical(a: str, b: str) -> bool:
    return qemu("qemu-img", "compare", a, b, check=False).returncode == 0


def qemu_check_clean(path: str) -> bool:
    return qemu("qemu-img", "check", path, check=False).returncode == 0


def assert_image_matches(path: str, reference: bytes | bytearray, folder) -> None:  # type: ignore[no-untyped-def]
    """qemu-img finds `path` clean and equal to `reference` (written next to it as a raw file)."""
    ref_path = str(folder / "ref.raw")
    with open(ref_path, "wb") as f:
        f.write(reference)
    assert qemu_check_clean(path)
    assert images_identical(path, ref_path)


def run_workers(worker, count: int) -> list[BaseException]:  # type: ignore[no-untyped-def]
    """Run worker(0..count-1) on `count` threads at once; the exceptions they raised (empty when all passed)."""
    errors: list[BaseException] = []

    def guarded(index: int) -> None:
        try:
            worker(index)
        except BaseException as exc:  # reported by the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors
