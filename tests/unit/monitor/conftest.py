"""Fixtures of the monitor tests: a fake machine, a hub listening on a short unix socket path, raw clients."""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kvmkit.core.runstate import RunState
from kvmkit.monitor.errors import generic_error
from kvmkit.monitor.hub import MonitorHub


class FakeMachine:
    """A MachineControl that records calls and emits events the way the VMM core will."""

    def __init__(self) -> None:
        self.hub: MonitorHub | None = None
        self.name: str | None = "vm0"
        self.status = RunState.RUNNING
        self.has_acpi = False
        self.quit_requests = 0
        self.quit_event = threading.Event()
        self.stop_gate: threading.Event | None = None
        self.stop_finished = threading.Event()

    @property
    def running(self) -> bool:
        return self.status == RunState.RUNNING

    def _emit(self, name: str, data: dict[str, Any] | None = None) -> None:
        assert self.hub is not None
        self.hub.events.emit(name, data)

    def stop(self) -> None:
        if self.stop_gate is not None:
            self.stop_gate.wait(10)
        if self.status == RunState.RUNNING:
            self.status = RunState.PAUSED
            self._emit("STOP")
        self.stop_finished.set()

    def cont(self) -> None:
        if self.status != RunState.RUNNING:
            self.status = RunState.RUNNING
            self._emit("RESUME")

    def system_reset(self) -> None:
        self._emit("RESET", {"guest": False, "reason": "host-qmp-system-reset"})

    def system_powerdown(self) -> None:
        if not self.has_acpi:
            raise generic_error("the machine has no ACPI power button")
        self._emit("POWERDOWN")

    def quit(self) -> None:
        self._emit("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
        self.quit_requests += 1
        self.quit_event.set()

    def cpus(self) -> list[dict[str, Any]]:
        return [
            {"cpu-index": index, "qom-path": f"/machine/unattached/device[{index}]",
             "thread-id": 4000 + index, "props": {"socket-id": 0, "core-id": index, "thread-id": 0},
             "target": "x86_64"}
            for index in range(2)
        ]

    def registers(self, cpu_index: int) -> str:
        return f"RAX=00000000000000{cpu_index:02x} RIP=000000000000fff0\n"

    def chardevs(self) -> list[dict[str, Any]]:
        return [{"label": "serial0", "filename": "pty:/dev/pts/7", "frontend-open": True}]

    def block_devices(self) -> list[dict[str, Any]]:
        return [{"device": "drive0", "qdev": "/machine/peripheral/disk0", "locked": False, "removable": False,
                 "inserted": {"file": "disk.img", "node-name": "node0", "ro": True, "drv": "raw",
                              "backing_file_depth": 0, "encrypted": False}}]

    def block_stats(self) -> list[dict[str, Any]]:
        stats = dict.fromkeys(("rd_bytes", "wr_bytes", "rd_operations", "wr_operations", "flush_operations",
                               "failed_rd_operations", "failed_wr_operations"), 0)
        stats["rd_bytes"] = 4096
        return [{"device": "drive0", "node-name": "node0", "stats": stats}]

    def pci_devices(self) -> list[dict[str, Any]]:
        return [{"bus": 0, "devices": [
            {"bus": 0, "slot": 0, "function": 0, "class_info": {"desc": "Host bridge", "class": 0x0600},
             "id": {"vendor": 0x8086, "device": 0x1237}, "qdev_id": "", "regions": []},
            {"bus": 0, "slot": 3, "function": 0, "class_info": {"class": 0x0100},
             "id": {"vendor": 0x1AF4, "device": 0x1042, "subsystem-vendor": 0x1AF4, "subsystem": 0x1100},
             "irq": 11, "qdev_id": "disk0",
             "regions": [{"bar": 4, "type": "memory", "address": 0xFE000000, "size": 0x4000,
                          "prefetch": True, "mem_type_64": True}]},
        ]}]


class RawClient:
    """A QMP client on a bare socket, for sending what a well-behaved library never would."""

    def __init__(self, path: str, negotiate: bool = True) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.buffer = b""
        self.greeting = self.receive()
        if negotiate:
            assert self.command("qmp_capabilities") == {"return": {}}

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def receive(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("server closed the connection")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def receive_reply(self) -> dict[str, Any]:
        """The next message that is not an event."""
        while True:
            message = self.receive()
            if "event" not in message:
                return message

    def command(self, name: str, arguments: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        request: dict[str, Any] = {"execute": name, **extra}
        if arguments is not None:
            request["arguments"] = arguments
        self.send(json.dumps(request).encode() + b"\n")
        return self.receive_reply()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def socket_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="kvmkit-mon-", dir="/tmp")  # short: unix paths are capped at 107 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def machine() -> FakeMachine:
    return FakeMachine()


@pytest.fixture
def machine_lock() -> threading.RLock:
    return threading.RLock()


@pytest.fixture
def hub(machine: FakeMachine, machine_lock: threading.RLock) -> Iterator[MonitorHub]:
    monitor = MonitorHub(machine, machine_lock, event_backlog=64)
    machine.hub = monitor
    yield monitor
    monitor.close()


@pytest.fixture
def qmp_path(hub: MonitorHub, socket_dir: str) -> str:
    path = f"{socket_dir}/qmp.sock"
    assert hub.add_qmp(f"unix:{path},server=on,wait=off") == f"unix:{path}"
    return path


@pytest.fixture
def raw(qmp_path: str) -> Iterator[RawClient]:
    client = RawClient(qmp_path)
    yield client
    client.close()


def wait_until(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture
def raw_client_factory(qmp_path: str) -> Iterator[Any]:
    clients: list[RawClient] = []

    def make(negotiate: bool = True) -> RawClient:
        client = RawClient(qmp_path, negotiate)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def waiter() -> Any:
    return wait_until
