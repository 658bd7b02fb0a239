"""kvmkit boots the generic guest from its cached vmlinux (no in-guest decompression), and still can without it."""

import pytest

from harness.guest_run import kvmkit_command, run_guest

pytestmark = pytest.mark.lab

REPORT = "echo nproc=$(nproc); echo cmdline=$(cat /proc/cmdline)"


@pytest.mark.parametrize("cache, log_words", [
    ("on", "booting the cached vmlinux"),
    ("off", "kernel-cache=off; the guest decompresses the bzImage"),
])
def test_generic_guest_boots_with_and_without_the_cached_vmlinux(generic_guest, tmp_path, cache, log_words):
    log = tmp_path / "kvmkit.log"
    run = run_guest(kvmkit_command(generic_guest, REPORT, "-machine", f"pc,kernel-cache={cache}", "-D", str(log),
                                   memory="256M", cpus=2, append="kvmkit.test=vmlinux"))
    assert run.returncode == 0, run.stderr
    assert log_words in log.read_text(), log.read_text()
    assert run.guest_status == 0
    assert "nproc=2" in run.lines()
    cmdline = next(line for line in run.lines() if line.startswith("cmdline="))
    assert "console=ttyS0" in cmdline and "kvmkit.test=vmlinux" in cmdline
