"""kvmkit boots unmodified Debian kernels to userspace on a real KVM (in the lab): SMP, both flavours, reboot."""

import subprocess
import time

import pytest

from harness.guest_run import kvmkit_command, run_guest

pytestmark = pytest.mark.lab

REPORT = ("echo nproc=$(nproc); echo cmdline=$(cat /proc/cmdline); grep -c ^processor /proc/cpuinfo; "
          "dmesg | grep -c 'AGP: No AGP bridge found' | sed 's/^/agp-probes=/'")


@pytest.mark.parametrize("cpus", [2, 4])
def test_generic_kernel_boots_with_every_cpu_brought_up(generic_guest, cpus):
    run = run_guest(kvmkit_command(generic_guest, REPORT, memory="512M", cpus=cpus, append="kvmkit.test=smp"))
    assert run.returncode == 0, run.stderr
    assert run.guest_status == 0
    assert f"nproc={cpus}" in run.lines()
    cmdline = next(line for line in run.lines() if line.startswith("cmdline="))
    assert "console=ttyS0" in cmdline and "kvmkit.test=smp" in cmdline
    assert cmdline.endswith(" pci=noearly")  # the machine's own parameter (auto-kernel-cmdline)
    assert "agp-probes=0" in run.lines()  # ... so Linux skipped its 16K-access probe of every PCI bus


def test_cloud_kernel_boots_on_one_cpu_and_reports_a_failing_script(cloud_guest):
    run = run_guest(kvmkit_command(cloud_guest, REPORT + "; exit 3", memory="256M", cpus=1))
    assert "nproc=1" in run.lines()
    assert run.guest_status == 3
    assert run.returncode == 0, run.stderr  # the guest rebooted; with -no-reboot that is a clean exit


def test_reboot_without_no_reboot_comes_back_up(generic_guest):
    argv = kvmkit_command(generic_guest, "echo boot-marker", no_reboot=False)
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    boots, deadline = 0, time.monotonic() + 300
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.strip() == "boot-marker":
                boots += 1
                if boots == 2:
                    break
            if time.monotonic() > deadline:
                break
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert boots == 2
