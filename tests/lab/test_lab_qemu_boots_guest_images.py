"""A known-good VMM (QEMU with -enable-kvm) boots our guest images in the lab: this validates them."""

import base64
import subprocess

import pytest

pytestmark = pytest.mark.lab


def boot_with_qemu(assets, script: str, *extra: str) -> subprocess.CompletedProcess:
    encoded = base64.b64encode(script.encode()).decode()
    argv = ["qemu-system-x86_64", "-enable-kvm", "-cpu", "host", "-M", "pc", "-m", "256", "-smp", "2",
            "-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio", "-nic", "none",
            "-kernel", str(assets.kernel), "-initrd", str(assets.initrd),
            "-append", f"console=ttyS0 quiet kvmkit.cmd={encoded}", *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=240, check=False)


@pytest.mark.parametrize("flavor", ["generic", "cloud"])
def test_qemu_runs_the_guest_script_and_sees_exit_zero(flavor, request):
    assets = request.getfixturevalue(f"{flavor}_guest")
    done = boot_with_qemu(assets, "echo guest-says-hello; nproc; cat /proc/cmdline | grep -c kvmkit.cmd")
    assert done.returncode == 0, done.stderr
    assert "guest-says-hello" in done.stdout
    assert "kvmkit-guest-exit: 0" in done.stdout


def test_guest_script_status_is_reported(generic_guest):
    done = boot_with_qemu(generic_guest, "exit 7")
    assert "kvmkit-guest-exit: 7" in done.stdout
