"""MonitorHub: one machine's monitors — the registries, the monitor thread, the QMP and HMP servers."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import kvmkit
from kvmkit.errors import ConfigError
from kvmkit.monitor.hmp import HmpFrontend, HmpInterpreter
from kvmkit.monitor.hmp_server import HmpServer
from kvmkit.monitor.loop_thread import MonitorThread
from kvmkit.monitor.machine_commands import MachineControl, register_machine_commands
from kvmkit.monitor.machine_schema import declare_machine_events
from kvmkit.monitor.monitor_commands import register_monitor_commands
from kvmkit.monitor.qmp_server import QmpServer, QmpVersion, register_protocol_commands
from kvmkit.monitor.registry import CommandRegistry, EventRegistry
from kvmkit.monitor.spec import Endpoint, StdioEndpoint, parse_endpoint


def kvmkit_version() -> QmpVersion:
    """kvmkit's own version in the QMP greeting's shape."""
    numbers = [int(part) if part.isdigit() else 0 for part in kvmkit.__version__.split(".")[:3]]
    major, minor, micro = (numbers + [0, 0, 0])[:3]
    return QmpVersion(major, minor, micro, f"kvmkit {kvmkit.__version__}")


def build_registries(
    machine: MachineControl, version: QmpVersion
) -> tuple[CommandRegistry, EventRegistry, HmpInterpreter]:
    """Every command and event of a machine's monitor, without starting any server."""
    commands = CommandRegistry()
    events = EventRegistry()
    declare_machine_events(events)
    hmp = HmpInterpreter(commands)
    register_protocol_commands(commands)
    register_machine_commands(commands, machine)
    register_monitor_commands(commands, events, hmp, version)
    return commands, events, hmp


class MonitorHub:
    """Owns a machine's command/event registries and every monitor listening for it.

    `lock` is the machine's big lock, held around every command.  Other subsystems add commands with
    `hub.commands.command(...)` and emit events with `hub.events.emit("STOP")` from any thread.
    """

    def __init__(
        self,
        machine: MachineControl,
        lock: AbstractContextManager[Any],
        *,
        version: QmpVersion | None = None,
        event_backlog: int = 1000,
        max_message_bytes: int = 1 << 20,
    ) -> None:
        self.version = version or kvmkit_version()
        self.lock = lock
        self.commands, self.events, self.hmp = build_registries(machine, self.version)
        self.thread = MonitorThread()
        self.qmp = QmpServer(self.commands, self.events, lock, self.thread, self.version,
                             max_message_bytes=max_message_bytes, event_backlog=event_backlog)
        self.hmp_server = HmpServer(self.hmp, lock, self.thread)

    def add_qmp(self, spec: str | Endpoint) -> str:
        """Listen for QMP clients (`-qmp unix:PATH,server=on,wait=off`); returns the bound address."""
        endpoint = parse_endpoint(spec, "-qmp") if isinstance(spec, str) else spec
        if isinstance(endpoint, StdioEndpoint):
            raise ConfigError("-qmp stdio is not supported; use unix:PATH,server=on,wait=off "
                              "or tcp:HOST:PORT,server=on,wait=off")
        return self.qmp.listen(endpoint)

    def add_hmp(self, spec: str | Endpoint) -> str:
        """Listen for human monitor clients (`-monitor unix:PATH,server=on,wait=off`).

        `-monitor stdio` is not a listener: the chardev layer attaches `hmp_frontend()` to stdio instead.
        """
        endpoint = parse_endpoint(spec, "-monitor") if isinstance(spec, str) else spec
        if isinstance(endpoint, StdioEndpoint):
            raise ConfigError("-monitor stdio is served through the chardev layer (MonitorHub.hmp_frontend)")
        return self.hmp_server.listen(endpoint)

    def hmp_frontend(self, write: Callable[[bytes], None], *, echo: bool = False) -> HmpFrontend:
        """A human monitor as a chardev frontend writing through `write` (for `-monitor stdio`/mux)."""
        return HmpFrontend(self.hmp, write, self.lock, echo=echo)

    def close(self) -> None:
        """Disconnect every client, remove the sockets and stop the monitor thread."""
        self.qmp.close()
        self.hmp_server.close()
        self.thread.stop()

    def __enter__(self) -> MonitorHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
