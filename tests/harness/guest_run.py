"""Run a Linux guest under `kvmkit run` (or QEMU) with a kvmkit.cmd script, and collect what it printed."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kvmkit.guest.build import GuestAssets

GUEST_EXIT_MARKER = "kvmkit-guest-exit:"


@dataclass
class GuestRun:
    """What one guest boot produced."""

    returncode: int
    output: str
    stderr: str
    seconds: float
    timed_out: bool = False

    @property
    def guest_status(self) -> int | None:
        """The script's exit status as the guest reported it (None if it never got there)."""
        for line in self.output.splitlines():
            if line.startswith(GUEST_EXIT_MARKER):
                return int(line.split(":", 1)[1])
        return None

    def lines(self) -> list[str]:
        return [line.rstrip("\r") for line in self.output.splitlines()]


def encode_script(script: str) -> str:
    return base64.b64encode(script.encode()).decode()


def kvmkit_command(assets: GuestAssets, script: str, *extra: str, memory: str = "256M", cpus: int = 1,
                   append: str = "", no_reboot: bool = True) -> list[str]:
    argv = [sys.executable, "-m", "kvmkit.cli.main", "run", "-m", memory, "-smp", str(cpus),
            "-kernel", str(assets.kernel), "-initrd", str(assets.initrd),
            "-append", f"console=ttyS0 quiet {append} kvmkit.cmd={encode_script(script)}".replace("  ", " "),
            "-nographic", *extra]
    return [*argv, "-no-reboot"] if no_reboot else argv


def qemu_command(assets: GuestAssets, script: str, *extra: str, memory: str = "256M", cpus: int = 1,
                 append: str = "", machine: str = "pc") -> list[str]:
    return ["qemu-system-x86_64", "-enable-kvm", "-cpu", "host", "-M", machine, "-m", memory, "-smp", str(cpus),
            "-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio", "-nic", "none",
            "-kernel", str(assets.kernel), "-initrd", str(assets.initrd),
            "-append", f"console=ttyS0 quiet {append} kvmkit.cmd={encode_script(script)}", *extra]


def run_guest(argv: list[str], timeout: float = 240, cwd: Path | None = None) -> GuestRun:
    """Run a VMM command line to completion (stdin closed) and capture its output.

    A run past `timeout` is killed and returned with `timed_out` set and what it printed so far, so that the
    test's assertion shows how far the guest got; kvmkit first gets SIGUSR1, which makes it print its threads'
    stacks and its virtio queues' state.
    """
    started = time.monotonic()
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGUSR1)
        time.sleep(3)
        process.kill()
        stdout, stderr = process.communicate()
        stderr += f"\n[guest_run: killed after {timeout:.0f} s]\n"
        return GuestRun(process.returncode, stdout, stderr, time.monotonic() - started, timed_out=True)
    return GuestRun(process.returncode, stdout, stderr, time.monotonic() - started)
