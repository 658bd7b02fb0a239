"""`kvmkit lab -- COMMAND`: run a command inside a nested KVM host under QEMU TCG.

The lab boots Debian's generic kernel on an emulated AMD SVM CPU (`-cpu max`), loads `kvm_amd` so that `/dev/kvm`
is real-hardware-like, mounts the host's root read-only over 9p, the working directory read-write at the same path,
and runs COMMAND there. It has no network device: nothing sent inside the lab can leave it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from kvmkit.errors import HostError
from kvmkit.lab.assets import build_lab_assets

LAB_FAILED = 125
# The lab machine itself failed, not the job: its kernel stopped making progress (a soft lockup that lasted
# LabOptions.lockup_limit, or no heartbeat from its init for LabOptions.hang_limit; the lab is then killed), or it
# reset without its init reporting a status (a panic or a triple fault of the lab's own CPU; QEMU then exits 0
# because of -no-reboot). Callers can retry on it.
LAB_MACHINE_FAILED = 120
# Variables that describe the caller's session rather than the job; the lab does not inherit them.
UNSHARED_VARIABLES = {"DISPLAY", "SSH_AUTH_SOCK", "SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY", "XDG_RUNTIME_DIR",
                      "DBUS_SESSION_BUS_ADDRESS", "TMUX", "TMUX_PANE", "OLDPWD", "PWD", "SHLVL", "_"}
SOFT_LOCKUP = re.compile(r"soft lockup - CPU#\d+ stuck for (\d+)s!.*")
# loglevel=5: warnings reach the console, so a soft lockup or an Oops comes with its stack trace
KERNEL_COMMAND_LINE = "console=ttyS0 panic=-1 quiet loglevel=5 8250.nr_uarts=4 tsc=unstable"


@dataclass
class LabOptions:
    """How big the lab is and how long a job may take."""

    smp: int = 2
    mem: str = "4G"
    timeout: float = 3600.0
    show_console: bool = False
    kernel_append: str = ""  # extra lab kernel parameters (later ones win, e.g. loglevel=7)
    lockup_limit: float = 100.0  # seconds a lab CPU may be reported stuck before the lab is given up
    hang_limit: float = 120.0  # seconds without a heartbeat from the lab's init before the lab is given up
    workdir: Path = field(default_factory=Path.cwd)


def _job_script(command: list[str], workdir: Path) -> str:
    lines = ["#!/bin/sh"]
    for name, value in sorted(os.environ.items()):
        if name in UNSHARED_VARIABLES or not name.isidentifier():
            continue
        lines.append(f"export {name}={shlex.quote(value)}")
    lines.append("export KVMKIT_IN_LAB=1")
    lines.append(f"cd {shlex.quote(str(workdir))} || exit {LAB_FAILED}")
    lines.append("exec " + shlex.join(command))
    return "\n".join(lines) + "\n"


def qemu_command(options: LabOptions, io_dir: Path) -> list[str]:
    """The QEMU command line that boots the lab (TCG, SVM, no NIC, three 9p shares, three serial ports)."""
    assets = build_lab_assets()
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise HostError("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    share = "security_model=none,multidevs=remap"
    return [
        qemu, "-accel", "tcg,thread=multi,tb-size=1024", "-cpu", "max", "-M", "pc",
        "-smp", str(options.smp), "-m", options.mem,
        "-nodefaults", "-display", "none", "-no-reboot", "-monitor", "none", "-nic", "none",
        "-kernel", str(assets.kernel), "-initrd", str(assets.initrd), "-append",
        f"{KERNEL_COMMAND_LINE} {options.kernel_append}".strip(),
        "-serial", f"file:{io_dir / 'console.log'}",
        "-serial", f"file:{io_dir / 'stdout'}",
        "-serial", f"file:{io_dir / 'stderr'}",
        "-virtfs", f"local,path=/,mount_tag=host,readonly=on,{share}",
        "-virtfs", f"local,path={io_dir},mount_tag=io,{share}",
        "-virtfs", f"local,path={options.workdir},mount_tag=work,{share}",
    ]


class _Tail:
    """Reads what the lab has appended to one of its output files since the last call."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def read_new(self) -> bytes:
        try:
            with self.path.open("rb") as source:
                source.seek(self.offset)
                data = source.read()
        except FileNotFoundError:
            return b""
        self.offset += len(data)
        return data


class LockupWatch(_Tail):
    """Reads the lab kernel's console as it grows and finds a soft lockup that has lasted `limit` seconds.

    The kernel's watchdog reports a stuck CPU every ~26 s ("watchdog: BUG: soft lockup - CPU#0 stuck for 52s!");
    one short report can be a starved lab CPU, a report past `limit` is a lab that will not recover.
    """

    def __init__(self, path: Path, limit: float) -> None:
        super().__init__(path)
        self.limit = limit
        self._partial = b""
        self.report: str | None = None

    def check(self) -> str | None:
        """The first console line showing a lockup of at least `limit` seconds, once one has been written."""
        if self.report is None:
            *lines, self._partial = (self._partial + self.read_new()).split(b"\n")
            for raw in lines:
                match = SOFT_LOCKUP.search(raw.decode(errors="replace"))
                if match and int(match.group(1)) >= self.limit:
                    self.report = match.group(0)
                    break
        return self.report


def heartbeat_age(io_dir: Path, now: float) -> float | None:
    """Seconds since the lab's init last wrote its heartbeat (every 5 s), or None before the first one."""
    try:
        return now - (io_dir / "heartbeat").stat().st_mtime
    except FileNotFoundError:
        return None


class _Relay(_Tail):
    """Copies what the lab writes into a file to one of our own streams, as it arrives."""

    def __init__(self, path: Path, sink: BinaryIO) -> None:
        super().__init__(path)
        self.sink = sink

    def pump(self) -> None:
        data = self.read_new()
        if data:
            self.sink.write(data)
            self.sink.flush()


def run_in_lab(command: list[str], options: LabOptions) -> int:
    """Run COMMAND in the lab; returns its exit status, or LAB_FAILED with a message on stderr."""
    if not command:
        raise HostError("kvmkit lab needs a command after `--`")
    workdir = options.workdir.resolve()
    with tempfile.TemporaryDirectory(prefix="kvmkit-lab-") as tmp:
        io_dir = Path(tmp)
        (io_dir / "job.sh").write_text(_job_script(command, workdir))
        (io_dir / "workdir").write_text(str(workdir))
        argv = qemu_command(options, io_dir)
        relays = [_Relay(io_dir / "stdout", sys.stdout.buffer), _Relay(io_dir / "stderr", sys.stderr.buffer)]
        if options.show_console:
            relays.append(_Relay(io_dir / "console.log", sys.stderr.buffer))
        started = time.monotonic()
        lockup = LockupWatch(io_dir / "console.log", options.lockup_limit)
        with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) as qemu:
            timed_out = False
            hung: str | None = None
            next_console_check = started
            while qemu.poll() is None:
                for relay in relays:
                    relay.pump()
                now = time.monotonic()
                if now - started > options.timeout:
                    qemu.kill()
                    timed_out = True
                elif now >= next_console_check:
                    next_console_check = now + 1.0
                    age = heartbeat_age(io_dir, time.time())
                    if lockup.check() is not None:
                        hung = f"the lab's own kernel locked up ({lockup.report})"
                    elif age is not None and age > options.hang_limit:
                        hung = f"the lab's init wrote no heartbeat for {age:.0f} s: its kernel is hung"
                    if hung is not None:
                        qemu.kill()
                time.sleep(0.05)
            qemu_output = qemu.stdout.read().decode(errors="replace") if qemu.stdout else ""
        for relay in relays:
            relay.pump()
        status_file = io_dir / "status"
        if timed_out:
            return _lab_failure(f"the job did not finish within {options.timeout:.0f} s", io_dir)
        if hung is not None:
            _lab_failure(f"{hung}; the lab was stopped", io_dir)
            return LAB_MACHINE_FAILED
        if not status_file.exists():
            detail = f"QEMU exited with {qemu.returncode}" + (f": {qemu_output.strip()}" if qemu_output else "")
            status = _lab_failure(f"the lab stopped without reporting a status ({detail})", io_dir)
            # QEMU also exits 0 when killed by a signal from outside; that is not the lab machine resetting
            if qemu.returncode == 0 and "terminating on signal" not in qemu_output:
                print("kvmkit lab: the lab machine itself reset: an infrastructure failure", file=sys.stderr)
                return LAB_MACHINE_FAILED
            return status
        return int(status_file.read_text().strip() or LAB_FAILED)


def _lab_failure(message: str, io_dir: Path) -> int:
    """Say why the lab failed: the kernel's own report (panic, Oops, BUG) if there is one, else the console's end.

    The whole console log is kept next to the caller's working directory's temp space for a closer look.
    """
    console = io_dir / "console.log"
    lines = console.read_text(errors="replace").splitlines() if console.exists() else []
    first_report = next((i for i, line in enumerate(lines)
                         if any(word in line for word in ("Kernel panic", "BUG:", "Oops", "WARNING:", "watchdog:",
                                                          "rcu: INFO", "Out of memory"))), None)
    shown = lines[first_report:first_report + 40] if first_report is not None else lines[-15:]
    print(f"kvmkit lab: {message}", file=sys.stderr)
    if lines:
        kept = Path(tempfile.gettempdir()) / f"kvmkit-lab-console-{int(time.time())}.log"
        shutil.copyfile(console, kept)
        print(f"kvmkit lab: the lab's console ({len(lines)} lines) is kept in {kept}; from it:", file=sys.stderr)
        for line in shown:
            print(f"  {line}", file=sys.stderr)
    return LAB_FAILED
