"""A `kvmkit run` process with its QMP and HMP sockets, for tests that drive the monitor of a real VMM."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp import QMPClient

from harness.guest_run import kvmkit_command
from kvmkit.guest.build import GuestAssets

STARTUP_TIMEOUT = float(os.environ.get("KVMKIT_MONITOR_STARTUP", "120"))


@dataclass
class MonitoredRun:
    """A running `kvmkit run` with `-qmp unix:<dir>/qmp.sock` and `-monitor unix:<dir>/hmp.sock`."""

    process: subprocess.Popen[bytes]
    directory: Path
    output_path: Path
    extra_output: list[str] = field(default_factory=list)

    @property
    def qmp_path(self) -> str:
        return str(self.directory / "qmp.sock")

    @property
    def hmp_path(self) -> str:
        return str(self.directory / "hmp.sock")

    def output(self) -> str:
        """Everything the VMM wrote to stdout (the guest's serial console) and stderr so far."""
        return self.output_path.read_bytes().decode(errors="replace")

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT) -> None:
        """Wait until both monitor sockets accept connections (the machine is built)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"kvmkit run exited with {self.process.returncode}:\n{self.output()}")
            if all(accepts(path) for path in (self.qmp_path, self.hmp_path)):
                return
            time.sleep(0.1)
        raise AssertionError(f"kvmkit run did not open its monitors in {timeout} s:\n{self.output()}")

    def wait_exit(self, timeout: float = 60) -> int:
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)


def accepts(path: str) -> bool:
    if not os.path.exists(path):
        return False
    probe = socket.socket(socket.AF_UNIX)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def start_monitored_run(assets: GuestAssets, script: str = "", *extra: str, paused: bool = True,
                        no_reboot: bool = True, memory: str = "256M") -> MonitoredRun:
    """Start `kvmkit run` (with `-S` when `paused`) and wait until its monitors listen."""
    directory = Path(tempfile.mkdtemp(prefix="kvmkit-mon-"))
    monitors = ("-qmp", f"unix:{directory}/qmp.sock,server=on,wait=off",
                "-monitor", f"unix:{directory}/hmp.sock,server=on,wait=off")
    argv = kvmkit_command(assets, script or "true", *monitors, *(("-S",) if paused else ()), *extra,
                          memory=memory, no_reboot=no_reboot)
    output_path = directory / "output.txt"
    with open(output_path, "wb") as output:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                   cwd=Path(__file__).resolve().parents[2])
    run = MonitoredRun(process, directory, output_path)
    try:
        run.wait_ready()
    except BaseException:
        run.close()
        raise
    return run


def with_qmp(path: str, body: Callable[[QMPClient], Awaitable[Any]], timeout: float = 60,
             expect_hangup: bool = False) -> Any:
    """Connect with qemu.qmp, run `body(client)`, disconnect; returns what `body` returned.

    `expect_hangup`: the body ends the VMM (quit), so the server closing the connection is no error.
    """
    async def main() -> Any:
        client = QMPClient("kvmkit-test")
        await asyncio.wait_for(client.connect(path), timeout)
        try:
            return await asyncio.wait_for(body(client), timeout)
        finally:
            try:
                await client.disconnect()
            except EOFError:
                if not expect_hangup:
                    raise

    return asyncio.run(main())


class HmpSession:
    """A blocking client of `-monitor unix:...`: send a line, read the text up to the next prompt."""

    PROMPT = b"(kvmkit) "

    def __init__(self, path: str, timeout: float = 30) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.banner = self._read_to_prompt()

    def _read_to_prompt(self) -> str:
        data = b""
        while not data.endswith(self.PROMPT):
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data[:-len(self.PROMPT)].decode(errors="replace").replace("\r\n", "\n") \
            if data.endswith(self.PROMPT) else data.decode(errors="replace")

    def command(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self._read_to_prompt()

    def close(self) -> None:
        self.sock.close()
