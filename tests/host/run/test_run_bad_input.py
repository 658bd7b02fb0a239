"""`kvmkit run` refuses bad command lines and bad kernels with one clear line and a non-zero exit."""

import subprocess
import sys

import pytest


def kvmkit_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmkit.cli.main", "run", *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, check=False)


def assert_one_clear_error(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def fake_kernel(tmp_path):
    path = tmp_path / "not-a-kernel"
    path.write_bytes(b"\x7fELF" + bytes(4096))
    return path


def test_truncated_kernel(tmp_path, generic_guest):
    truncated = tmp_path / "vmlinuz-truncated"
    truncated.write_bytes(generic_guest.kernel.read_bytes()[:1000])
    assert_one_clear_error(kvmkit_run("-kernel", str(truncated)), str(truncated))


def test_file_that_is_not_a_kernel(fake_kernel):
    assert_one_clear_error(kvmkit_run("-kernel", str(fake_kernel)), str(fake_kernel))


def test_memory_too_small(generic_guest):
    assert_one_clear_error(kvmkit_run("-m", "1M", "-kernel", str(generic_guest.kernel)), "-m", "too small")


def test_zero_cpus(generic_guest):
    assert_one_clear_error(kvmkit_run("-smp", "0", "-kernel", str(generic_guest.kernel)), "-smp")


def test_missing_initrd(generic_guest, tmp_path):
    missing = tmp_path / "no-initrd"
    assert_one_clear_error(kvmkit_run("-kernel", str(generic_guest.kernel), "-initrd", str(missing)),
                           "-initrd", str(missing))


def test_unknown_option():
    assert_one_clear_error(kvmkit_run("-frobnicate", "yes"), "-frobnicate")


def test_option_without_value():
    assert_one_clear_error(kvmkit_run("-m"), "-m")


def test_malformed_smp():
    assert_one_clear_error(kvmkit_run("-smp", "two"), "-smp")


def test_no_kernel_at_all():
    assert_one_clear_error(kvmkit_run("-m", "256M"), "-kernel")


def test_unknown_device_driver(generic_guest):
    assert_one_clear_error(kvmkit_run("-kernel", str(generic_guest.kernel), "-device", "e1000"), "e1000")
