"""The machine as the monitor sees it (MachineControl), and the monitors a MachineConfig asks for.

The monitor code (asyncio, the QMP schema, the command set) is imported only when a monitor is built: QMP and
`-monitor` sockets are built at start-up, but the human monitor behind a `-nographic` console's Ctrl-A c is built
the first time the user switches to it (importing it costs seconds of start-up in a nested lab).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from kvmkit.core.runstate import RunState
from kvmkit.machine.config import MachineConfig
from kvmkit.machine.pc import PcMachine
from kvmkit.monitor.errors import QmpError

if TYPE_CHECKING:
    from kvmkit.monitor.hmp import HmpFrontend
    from kvmkit.monitor.hub import MonitorHub
    from kvmkit.monitor.registry import CommandRegistry


class PcMachineControl:
    """Implements the monitor's MachineControl protocol for a PcMachine."""

    def __init__(self, machine: PcMachine) -> None:
        self.machine = machine
        # pause_all() drops the BQL while it waits, so two monitor connections could interleave a stop with
        # a cont or reset; run-state changes from the monitor take this lock and happen one at a time.
        self._transition = threading.Lock()

    @property
    def name(self) -> str | None:
        return self.machine.name

    @property
    def status(self) -> RunState:
        return self.machine.status

    @property
    def running(self) -> bool:
        return self.machine.status == RunState.RUNNING

    @contextmanager
    def _changing_state(self) -> Iterator[None]:
        with self.machine.bql.released():
            self._transition.acquire()
        try:
            yield
        finally:
            self._transition.release()

    def stop(self) -> None:
        machine = self.machine
        with self._changing_state():
            if machine.status == RunState.RUNNING:
                machine.cpus.pause_all()
                machine.status = RunState.PAUSED
                machine.emit("STOP")

    def cont(self) -> None:
        machine = self.machine
        with self._changing_state():
            if machine.status in (RunState.PAUSED, RunState.PRELAUNCH):
                machine.status = RunState.RUNNING
                machine.cpus.resume_all()
                machine.emit("RESUME")
            elif machine.status in (RunState.SHUTDOWN, RunState.INTERNAL_ERROR):
                raise QmpError("GenericError", f"cannot continue a machine in state '{machine.status.value}'; "
                                               "use system_reset first")

    def system_reset(self) -> None:
        """Reset now; a machine that was not running is left in prelaunch (QEMU's rule), ready for `cont`.

        With -no-reboot every reset ends the VMM, the monitor's included (SHUTDOWN, host-qmp-system-reset).
        """
        machine = self.machine
        if machine.config.no_reboot:
            machine.request_shutdown("host-qmp-system-reset")
            return
        with self._changing_state():
            was_running = machine.status == RunState.RUNNING
            machine.cpus.pause_all()
            if not was_running:
                machine.status = RunState.PRELAUNCH
            machine._perform_reset("host-qmp-system-reset", guest=False, resume=was_running)

    def system_powerdown(self) -> None:
        raise QmpError("GenericError", "system_powerdown needs ACPI, which kvmkit's pc machine does not "
                                       "have yet; use system_reset or quit")

    def quit(self) -> None:
        with self._changing_state():
            self.machine.request_shutdown("host-qmp-quit")

    def cpus(self) -> list[dict[str, Any]]:
        threads = {t.index: t.thread.native_id for t in self.machine.cpus.threads}
        return [{"cpu-index": vcpu.index, "qom-path": f"/machine/unattached/device[{vcpu.index}]",
                 "thread-id": threads.get(vcpu.index) or 0, "target": "x86_64",
                 "props": {"core-id": vcpu.index, "thread-id": 0, "socket-id": 0}}
                for vcpu in self.machine.vcpus]

    def registers(self, cpu_index: int) -> str:
        machine = self.machine
        with self._changing_state():  # a stop arriving meanwhile must not be undone by the resume below
            was_running = machine.status == RunState.RUNNING
            if was_running:
                machine.cpus.pause_all()
            try:
                vcpu = machine.vcpus[cpu_index]
                regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
            finally:
                if was_running:
                    machine.cpus.resume_all()
        names = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12",
                 "r13", "r14", "r15", "rip", "rflags")
        lines = [" ".join(f"{n.upper()}={getattr(regs, n):016x}" for n in names[i:i + 4])
                 for i in range(0, len(names), 4)]
        lines.append(f"CR0={sregs.cr0:08x} CR2={sregs.cr2:016x} CR3={sregs.cr3:016x} CR4={sregs.cr4:08x}")
        lines.append(f"EFER={sregs.efer:016x} CS={sregs.cs.selector:04x} SS={sregs.ss.selector:04x}")
        return "\n".join(lines) + "\n"

    def chardevs(self) -> list[dict[str, Any]]:
        return self.machine.chardevs.info()

    def block_devices(self) -> list[dict[str, Any]]:
        result = []
        for drive_id, blk, opened in self.machine.block_devices:
            info = opened.driver.info()  # type: ignore[attr-defined]
            result.append({
                "device": drive_id, "qdev": blk.name, "locked": False, "removable": False, "type": "unknown",
                "inserted": {"file": opened.spec.file, "ro": opened.spec.read_only, "drv": info.format,
                             "backing_file_depth": 1 if info.backing_file else 0, "encrypted": False,
                             "cache": {"writeback": opened.spec.cache != "none",
                                       "direct": opened.spec.cache == "none", "no-flush": False},
                             "image": {"filename": opened.spec.file, "format": info.format,
                                       "virtual-size": info.virtual_size}},
            })
        return result

    def block_stats(self) -> list[dict[str, Any]]:
        return [{"device": drive_id, "node-name": drive_id, "stats": blk.blockstats()}
                for drive_id, blk, _ in self.machine.block_devices]

    def pci_devices(self) -> list[dict[str, Any]]:
        return self.machine.pci.enumerate()


def register_pc_commands(commands: CommandRegistry, machine: Any) -> None:
    """The commands the pc machine adds to the monitor's own (the QMP reference documents the same set)."""
    from kvmkit.net.monitor import register_net_commands

    register_net_commands(commands, machine)


class MachineMonitors:
    """The machine's monitor hub, built on demand (at most once); `close()` ends it if it was built."""

    def __init__(self, machine: PcMachine) -> None:
        self.machine = machine
        self.hub: MonitorHub | None = None

    def build(self) -> MonitorHub:
        if self.hub is None:
            from kvmkit.monitor.hub import MonitorHub

            hub = MonitorHub(PcMachineControl(self.machine), self.machine.bql)
            self.machine.event_sink = hub.events.emit
            register_pc_commands(hub.commands, self.machine)
            self.hub = hub
        return self.hub

    def close(self) -> None:
        if self.hub is not None:
            self.hub.close()


class DeferredHmpFrontend:
    """The monitor side of a `-nographic` mux: the real HMP frontend is built at the first Ctrl-A c."""

    def __init__(self, build: Callable[[], HmpFrontend]) -> None:
        self._build = build
        self._frontend: HmpFrontend | None = None
        self._greeted = False

    @property
    def frontend(self) -> HmpFrontend:
        if self._frontend is None:
            self._frontend = self._build()
        return self._frontend

    def can_receive(self) -> int:
        return self.frontend.can_receive()

    def receive(self, data: bytes) -> None:
        self.frontend.receive(data)

    def on_focus(self) -> None:
        """Ctrl-A c into the monitor: the banner and a prompt the first time, a fresh prompt afterwards."""
        from kvmkit.monitor.hmp import PROMPT

        frontend = self.frontend
        if self._greeted:
            frontend.write(b"\r\n" + PROMPT.encode())
        else:
            self._greeted = True
            frontend.open()


def attach_monitors(machine: PcMachine, config: MachineConfig) -> MachineMonitors | None:
    """Start the QMP/HMP listeners the config asks for and route machine events to them."""
    muxes = machine.chardevs.monitor_muxes
    if not config.qmp and not config.monitors and not muxes:
        return None
    monitors = MachineMonitors(machine)
    if config.qmp or [spec for spec in config.monitors if spec != "stdio"]:
        hub = monitors.build()
        for spec in config.qmp:
            hub.add_qmp(spec)
        for spec in config.monitors:
            if spec != "stdio":
                hub.add_hmp(spec)
    for mux in muxes:
        port = mux.add_port("monitor0")
        deferred = DeferredHmpFrontend(lambda write=port.write: monitors.build().hmp_frontend(write))
        port.attach(deferred)
        port.on_focus = deferred.on_focus
    return monitors
