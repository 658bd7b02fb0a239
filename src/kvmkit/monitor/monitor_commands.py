"""Commands about the monitor itself: versions, introspection, KVM presence and the HMP bridge."""

from __future__ import annotations

import os
from typing import Any

from kvmkit.monitor import machine_schema as types
from kvmkit.monitor.hmp import HmpInterpreter
from kvmkit.monitor.qmp_server import QmpVersion
from kvmkit.monitor.registry import CommandRegistry, EventRegistry, introspect
from kvmkit.monitor.schema import ANY, INT, STR, ListType, Member

KVM_DEVICE = "/dev/kvm"


def register_monitor_commands(
    commands: CommandRegistry, events: EventRegistry, hmp: HmpInterpreter, version: QmpVersion
) -> None:
    """Register query-version, query-commands, query-qmp-schema, query-kvm and human-monitor-command."""

    @commands.command("query-version", returns=types.VERSION_INFO)
    def query_version() -> dict[str, Any]:
        """Report the version of kvmkit (in QEMU's VersionInfo shape)."""
        return version.to_json()

    @commands.command("query-commands", returns=ListType(types.COMMAND_INFO))
    def query_commands() -> list[dict[str, Any]]:
        """List the commands this monitor accepts now."""
        return [{"name": name} for name in commands.names()]

    @commands.command("query-qmp-schema", returns=ListType(ANY))
    def query_qmp_schema() -> list[dict[str, Any]]:
        """Describe every command, event and type (QEMU's SchemaInfo list)."""
        return introspect(commands, events)

    @commands.command("query-kvm", returns=types.KVM_INFO)
    def query_kvm() -> dict[str, Any]:
        """Report KVM: kvmkit always runs on it, so `enabled` is true; `present` checks /dev/kvm."""
        return {"enabled": True, "present": os.access(KVM_DEVICE, os.R_OK | os.W_OK)}

    @commands.command("human-monitor-command", returns=STR, args=[
        Member("command-line", STR, doc="the HMP line to run"),
        Member("cpu-index", INT, optional=True, doc="the CPU `info cpus`/`info registers` treat as current"),
    ])
    def human_monitor_command(command_line: str, cpu_index: int | None) -> str:
        """Run a human monitor command and return its text output."""
        return hmp.execute(command_line, 0 if cpu_index is None else cpu_index)
