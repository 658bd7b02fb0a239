"""Run-control and query commands, implemented against the MachineControl protocol the VMM core provides."""

from __future__ import annotations

from typing import Any, Protocol

from kvmkit.core.runstate import RunState
from kvmkit.monitor import machine_schema as types
from kvmkit.monitor.errors import generic_error
from kvmkit.monitor.registry import CommandRegistry
from kvmkit.monitor.schema import INT, ListType, Member

NEEDS_RESET = frozenset({RunState.INTERNAL_ERROR, RunState.GUEST_PANICKED, RunState.SHUTDOWN})


class MachineControl(Protocol):
    """What the monitor needs from a machine.  Methods run with the machine's big lock held.

    Results are JSON-ready lists of dicts in QEMU's shapes (see machine_schema: CpuInfoFast, ChardevInfo,
    BlockInfo, BlockStats, PciInfo).  The machine emits the events (STOP, RESUME, RESET, SHUTDOWN, ...)
    itself, through `MonitorHub.events.emit`, whatever caused the change.  `quit()` only requests the exit
    and returns, so the client still gets its reply.  Failures raise QmpError or KvmkitError.
    """

    @property
    def name(self) -> str | None: ...

    @property
    def status(self) -> RunState: ...

    @property
    def running(self) -> bool: ...

    def stop(self) -> None: ...

    def cont(self) -> None: ...

    def system_reset(self) -> None: ...

    def system_powerdown(self) -> None: ...

    def quit(self) -> None: ...

    def cpus(self) -> list[dict[str, Any]]: ...

    def registers(self, cpu_index: int) -> str: ...

    def chardevs(self) -> list[dict[str, Any]]: ...

    def block_devices(self) -> list[dict[str, Any]]: ...

    def block_stats(self) -> list[dict[str, Any]]: ...

    def pci_devices(self) -> list[dict[str, Any]]: ...


def check_cpu_index(machine: MachineControl, cpu_index: int) -> None:
    """GenericError unless `cpu_index` names one of the machine's vCPUs."""
    indexes = [cpu.get("cpu-index") for cpu in machine.cpus()]
    if cpu_index not in indexes:
        raise generic_error(f"CPU index {cpu_index} does not exist (the machine has {len(indexes)} CPUs)")


def register_machine_commands(commands: CommandRegistry, machine: MachineControl) -> None:
    """Register the run-control and query commands of `machine`."""

    @commands.command("query-status", returns=types.STATUS_INFO)
    def query_status() -> dict[str, Any]:
        """Report whether the vCPUs run and the machine's run state."""
        status = RunState(machine.status).value
        return {"running": bool(machine.running), "singlestep": False, "status": status}

    @commands.command("query-name", returns=types.NAME_INFO)
    def query_name() -> dict[str, Any]:
        """Report the machine's name (`-name`); an empty object if it has none."""
        name = machine.name
        return {} if name is None else {"name": name}

    @commands.command("query-cpus-fast", returns=ListType(types.CPU_INFO_FAST))
    def query_cpus_fast() -> list[dict[str, Any]]:
        """List the vCPUs without interrupting them."""
        return machine.cpus()

    @commands.command("x-query-registers", returns=types.HUMAN_READABLE_TEXT,
                      args=[Member("cpu-index", INT, optional=True, doc="the vCPU (default 0)")])
    def query_registers(cpu_index: int | None) -> dict[str, Any]:
        """Dump one vCPU's registers as text (unstable, for humans)."""
        index = 0 if cpu_index is None else cpu_index
        check_cpu_index(machine, index)
        return {"human-readable-text": machine.registers(index)}

    @commands.command("query-chardev", returns=ListType(types.CHARDEV_INFO))
    def query_chardev() -> list[dict[str, Any]]:
        """List the character devices and their backends."""
        return machine.chardevs()

    @commands.command("query-pci", returns=ListType(types.PCI_INFO))
    def query_pci() -> list[dict[str, Any]]:
        """List the PCI buses and their devices."""
        return machine.pci_devices()

    @commands.command("query-block", returns=ListType(types.BLOCK_INFO))
    def query_block() -> list[dict[str, Any]]:
        """List the block devices."""
        return machine.block_devices()

    @commands.command("query-blockstats", returns=ListType(types.BLOCK_STATS))
    def query_blockstats() -> list[dict[str, Any]]:
        """Report I/O statistics of every block device."""
        return machine.block_stats()

    @commands.command("stop")
    def stop() -> None:
        """Stop the vCPUs (a no-op when already stopped); the machine emits STOP."""
        machine.stop()

    @commands.command("cont")
    def cont() -> None:
        """Resume the vCPUs; the machine emits RESUME.  A crashed or shut-down machine needs a reset first."""
        status = RunState(machine.status)
        if status in NEEDS_RESET:
            raise generic_error("Resetting the Virtual Machine is required")
        if status == RunState.INMIGRATE:
            raise generic_error("Migration is not finished; the machine cannot continue yet")
        machine.cont()

    @commands.command("system_reset")
    def system_reset() -> None:
        """Reset the machine as the reset button would; the machine emits RESET."""
        machine.system_reset()

    @commands.command("system_powerdown")
    def system_powerdown() -> None:
        """Ask the guest to power down (ACPI power button); the machine emits POWERDOWN."""
        machine.system_powerdown()

    @commands.command("quit")
    def quit_() -> None:
        """Exit the VMM; the machine emits SHUTDOWN (reason host-qmp-quit) and then exits."""
        machine.quit()
