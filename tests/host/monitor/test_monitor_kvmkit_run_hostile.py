"""A real `kvmkit run -S` against hostile monitor clients, and its `-nographic` monitor driven through a pty."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import random
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import QMPClient

from harness.guest_run import kvmkit_command
from harness.monitored_run import MonitoredRun, accepts, start_monitored_run, with_qmp
from kvmkit.guest.build import GuestAssets

pytestmark = pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK),
                                reason="needs a /dev/kvm this user can open (any KVM, PVM included)")

SEED = 20240605
MESSAGES_PER_CONNECTION = 1500
# Commands the fuzzer may name: everything that leaves the VMM up (no quit, reset or cont: the vCPUs stay parked).
SAFE_COMMANDS = ("query-status", "query-version", "query-name", "query-commands", "query-kvm", "query-cpus-fast",
                 "query-chardev", "query-pci", "query-block", "query-blockstats", "query-qmp-schema", "stop",
                 "x-query-registers", "human-monitor-command", "qmp_capabilities", "system_powerdown", "nope")
JSON_VALUES: tuple[Any, ...] = (None, True, 0, -1, 2**63, -2**63 - 1, 1.5e308, "", "x" * 300, [], {}, [1, [2]],
                                {"a": {"b": None}}, "\u0000", "é")
RAW_FRAGMENTS = (b"{", b"}", b"[", b"]", b'"', b"\\", b":", b",", b"\x00", b"\xff", b"\xc3", b"1e999", b"NaN",
                 b"Infinity", b"true", b"nul", b"'", b"\r\n", b"\x1b[A", b"{'execute': 1}", b'"\\u12"',
                 b'{"execute":"query-status","execute":"stop"}', b"[" * 2000, b"{\"a\":" * 600)


def _random_message(rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    if kind == 1:
        return b"".join(rng.choice(RAW_FRAGMENTS) for _ in range(rng.randrange(1, 6)))
    request: dict[str, Any] = {"execute": rng.choice(SAFE_COMMANDS)}
    if kind >= 3:
        request["arguments"] = {rng.choice(("cpu-index", "command-line", "enable", "x", "")):
                                rng.choice(JSON_VALUES) for _ in range(rng.randrange(3))}
        if request["execute"] == "human-monitor-command" and rng.random() < 0.5:
            words = ("info", "registers", "pci", "block", "status", "cpus", "help", "-1", "99999999999", "\t")
            request["arguments"] = {"command-line": " ".join(rng.choice(words) for _ in range(3))}
    if kind == 4:
        request[rng.choice(("id", "exec-oob", "control", "arguments"))] = rng.choice(JSON_VALUES)
    if kind == 5:
        request["execute"] = rng.choice(JSON_VALUES)
    text = json.dumps(request, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    return text[:rng.randrange(1, len(text) + 1)] if rng.random() < 0.2 else text


class _Drain(threading.Thread):
    """Reads (and discards) a socket's output so the server's back-pressure never stalls the fuzzer."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.received = 0

    def run(self) -> None:
        try:
            while chunk := self.sock.recv(65536):
                self.received += len(chunk)
        except OSError:
            pass


def _fuzz_connection(path: str, rng: random.Random, negotiate: bool) -> int:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(30)
    sock.connect(path)
    drain = _Drain(sock)
    drain.start()
    try:
        if negotiate:
            sock.sendall(b'{"execute": "qmp_capabilities"}\n')
        for _ in range(MESSAGES_PER_CONNECTION):
            sock.sendall(_random_message(rng) + rng.choice((b"", b"\n", b" ")))
    except OSError:
        pass  # the server may drop a client that sent a message over the size limit; that is allowed
    finally:
        sock.shutdown(socket.SHUT_WR)
        drain.join(30)
        sock.close()
    return drain.received


@pytest.fixture(scope="module")
def vmm(generic_guest: GuestAssets) -> Iterator[MonitoredRun]:
    run = start_monitored_run(generic_guest, "", "-smp", "2")
    yield run
    run.close()


def test_qmp_fuzz_leaves_the_vmm_up(vmm: MonitoredRun) -> None:
    rng = random.Random(SEED)
    received = [_fuzz_connection(vmm.qmp_path, rng, negotiate) for negotiate in (False, True, True)]
    assert all(count > 0 for count in received)  # the server answered something on every connection
    assert vmm.process.poll() is None, vmm.output()

    async def body(client: QMPClient) -> dict[str, Any]:
        return await client.execute("query-status")

    assert with_qmp(vmm.qmp_path, body)["status"] in ("prelaunch", "paused")


def test_hmp_fuzz_leaves_the_vmm_up(vmm: MonitoredRun) -> None:
    rng = random.Random(SEED + 1)
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(30)
    sock.connect(vmm.hmp_path)
    drain = _Drain(sock)
    drain.start()
    words = (b"info", b"registers", b"pci", b"help", b"status", b"block", b"99999999999999999999", b"-5")
    for _ in range(MESSAGES_PER_CONNECTION):
        if rng.random() < 0.5:
            line = bytes(rng.choice(b"abc \x00\x08\x7f\xff\t\x1b") for _ in range(rng.randrange(1, 40)))
        else:
            line = b" ".join(rng.choice(words) for _ in range(rng.randrange(1, 4)))
        sock.sendall(line + rng.choice((b"\r", b"\n", b"\r\n", b"")))
    sock.sendall(b"x" * 10000 + b"\n")  # over the line limit
    sock.shutdown(socket.SHUT_WR)
    drain.join(30)
    sock.close()
    assert drain.received > 0
    assert vmm.process.poll() is None, vmm.output()

    async def body(client: QMPClient) -> str:
        return await client.execute("human-monitor-command", {"command-line": "info status"})

    assert with_qmp(vmm.qmp_path, body).startswith("VM status: paused")


def _read_until(fd: int, marker: bytes, timeout: float = 30) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {marker!r} on the terminal; got {data[-2000:]!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            data += chunk
    if marker not in data:
        raise AssertionError(f"terminal closed before {marker!r}; got {data[-2000:]!r}")
    return data


def test_nographic_mux_monitor_on_a_terminal(generic_guest: GuestAssets, tmp_path: Path) -> None:
    """-nographic: Ctrl-A c reaches the human monitor on the same terminal, Ctrl-A x ends the VMM."""
    qmp_path = tmp_path / "qmp.sock"
    argv = kvmkit_command(generic_guest, "true", "-S", "-qmp", f"unix:{qmp_path},server=on,wait=off")
    controller, terminal = pty.openpty()
    process = subprocess.Popen(argv, stdin=terminal, stdout=terminal, stderr=subprocess.PIPE, close_fds=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    os.close(terminal)
    try:
        deadline = time.monotonic() + 60
        while not accepts(str(qmp_path)):  # the machine is built and the terminal is in raw mode
            assert process.poll() is None and time.monotonic() < deadline, "kvmkit run did not start"
            time.sleep(0.1)
        os.write(controller, b"\x01c")
        banner = _read_until(controller, b"(kvmkit) ", timeout=60)
        assert b"kvmkit monitor" in banner
        os.write(controller, b"info status\r")
        assert b"VM status: paused (prelaunch)" in _read_until(controller, b"(prelaunch)")
        os.write(controller, b"info pci\r")
        _read_until(controller, b'id "host-bridge"')
        os.write(controller, b"stop\r")
        os.write(controller, b"info registers\r")
        assert b"RIP=" in _read_until(controller, b"EFER=")
        os.write(controller, b"\x01c")  # back to the serial console, then into the monitor again: a prompt
        os.write(controller, b"\x01c")
        _read_until(controller, b"(kvmkit) ")
        os.write(controller, b"\x01x")
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        os.close(controller)


def test_concurrent_run_control_from_several_clients(vmm: MonitoredRun) -> None:
    """stop/cont/registers racing from three connections neither hang the VMM nor leave a wrong state."""
    async def racer(seed: int) -> None:
        rng = random.Random(seed)
        client = QMPClient(f"racer{seed}")
        await client.connect(vmm.qmp_path)
        try:
            for _ in range(60):
                name = rng.choice(("stop", "cont", "x-query-registers", "query-status"))
                await client.execute(name, {"cpu-index": rng.randrange(2)} if name == "x-query-registers" else None)
        finally:
            await client.disconnect()

    async def body(client: QMPClient) -> list[dict[str, Any]]:
        await asyncio.gather(*(racer(seed) for seed in range(3)))
        await client.execute("stop")
        states = [await client.execute("query-status")]
        await client.execute("cont")
        states.append(await client.execute("query-status"))
        await client.execute("stop")
        states.append(await client.execute("query-status"))
        return states

    paused, running, paused_again = with_qmp(vmm.qmp_path, body, timeout=120)
    assert (paused["status"], running["status"], paused_again["status"]) == ("paused", "running", "paused")
    assert vmm.process.poll() is None, vmm.output()


def test_quit_while_paused_after_the_abuse(vmm: MonitoredRun) -> None:
    """Last in this module: the abused VMM still quits cleanly from the paused state."""
    async def body(client: QMPClient) -> dict[str, Any]:
        await client.execute("stop")
        status = await client.execute("query-status")
        await client.execute("quit")
        return {"status": status, "shutdown": await _shutdown_event(client)}

    seen = with_qmp(vmm.qmp_path, body, expect_hangup=True)
    assert seen["status"]["status"] == "paused"
    assert seen["shutdown"]["data"] == {"guest": False, "reason": "host-qmp-quit"}
    assert vmm.wait_exit(30) == 0, vmm.output()


async def _shutdown_event(client: QMPClient) -> dict[str, Any]:
    async def wait() -> dict[str, Any]:
        while True:
            event = await client.events.get()
            if event["event"] == "SHUTDOWN":
                return dict(event)

    return await asyncio.wait_for(wait(), 30)
