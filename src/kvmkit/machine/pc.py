"""The `pc` machine: KVM VM, guest RAM, in-kernel irqchip/PIT, legacy devices, PCI with virtio, and Linux.

Threads: the main thread runs the MainLoop (chardev input, ioeventfds, timers, machine events); one thread per
vCPU runs KVM_RUN without the BQL and dispatches exits with it; the WorkerPool runs block I/O.
"""

from __future__ import annotations

import logging
import os
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from kvmkit.accel.kvm.boot_state import apply_boot_state, reset_vcpu
from kvmkit.accel.kvm.coalesced import CoalescedWrites
from kvmkit.accel.kvm.cpuid import build_guest_cpuid
from kvmkit.accel.kvm.ioctls import Cap
from kvmkit.accel.kvm.irqchip_state import reset_irqchip
from kvmkit.accel.kvm.kvm import Kvm
from kvmkit.accel.kvm.vcpu import KvmVcpu
from kvmkit.accel.kvm.vm import KvmVm
from kvmkit.boot import BootCpuState, BzImage, load_linux
from kvmkit.boot.kernel_cache import cached_vmlinux
from kvmkit.core.bql import Bql
from kvmkit.core.cpus import CpuSet
from kvmkit.core.main_loop import MainLoop
from kvmkit.core.runstate import RunState
from kvmkit.core.worker_pool import WorkerPool
from kvmkit.errors import BootError, ConfigError
from kvmkit.hw.pci.bus import PciBus
from kvmkit.hw.pci.host_bridge import CONFIG_ADDRESS_PORT, CONFIG_PORTS_LENGTH, PciHostBridge
from kvmkit.hw.pci.intx import IntxRouter
from kvmkit.hw.virtio.pci_transport import VirtioPciTransport
from kvmkit.machine.board import attach_legacy_devices
from kvmkit.machine.chardevs import build_machine_chardevs
from kvmkit.machine.config import MachineConfig
from kvmkit.machine.drives import open_drives
from kvmkit.machine.exits import ExitDispatcher
from kvmkit.machine.irq import KvmIrqLine, pc_gsi_routes
from kvmkit.machine.kernel_cmdline import machine_kernel_cmdline
from kvmkit.machine.legacy_rom import map_legacy_rom_area
from kvmkit.machine.nics import NIC_DRIVERS, add_network_devices
from kvmkit.machine.pci_firmware import assign_pci_resources
from kvmkit.memory.address_space import IoBus
from kvmkit.memory.dma import DmaSpace
from kvmkit.memory.guest_memory import GuestMemory

if TYPE_CHECKING:
    from kvmkit.hw.virtio.blk import VirtioBlk

log = logging.getLogger(__name__)

# Addresses KVM needs for its own use on Intel hosts (three pages for the TSS, one for the identity map),
# just below the 4 GiB boundary where nothing else lives.
KVM_TSS_ADDRESS = 0xFFFB_D000
KVM_IDENTITY_MAP_ADDRESS = 0xFFFB_C000
REQUIRED_CAPS = (
    (Cap.IRQCHIP, "an in-kernel interrupt controller"),
    (Cap.USER_MEMORY, "user memory slots"),
    (Cap.SET_TSS_ADDR, "setting the TSS address"),
    (Cap.PIT2, "an in-kernel PIT"),
    (Cap.IOEVENTFD, "ioeventfd notifications"),
    (Cap.IRQ_ROUTING, "GSI routing"),
    (Cap.SIGNAL_MSI, "MSI injection"),
)
KNOWN_DEVICE_DRIVERS = ("virtio-blk-pci", "virtio-blk")


class KvmMsiSink:
    """Delivers MSI-X messages with KVM_SIGNAL_MSI."""

    def __init__(self, vm: KvmVm) -> None:
        self.vm = vm

    def send_msi(self, address: int, data: int) -> None:
        self.vm.signal_msi(address, data)


class PcMachine:
    """One virtual PC built from a MachineConfig; `run()` returns the process exit status."""

    def __init__(self, config: MachineConfig) -> None:
        if config.kernel is None:
            raise ConfigError("no kernel to boot: give -kernel BZIMAGE (kvmkit boots Linux directly, no BIOS)")
        for device in config.devices:
            if device.split(",")[0] not in (*KNOWN_DEVICE_DRIVERS, *NIC_DRIVERS):
                raise ConfigError(f"-device {device.split(',')[0]!r}: unknown device driver "
                                  f"(kvmkit has {', '.join(KNOWN_DEVICE_DRIVERS[:1])})")
        self._bzimage = BzImage.parse(config.kernel)  # a bad -kernel is reported before any KVM resource exists
        self._vmlinux: Path | bool | None = None  # the cached vmlinux to boot, False for the bzImage
        if config.initrd is not None and not os.access(config.initrd, os.R_OK):
            raise ConfigError(f"-initrd: {config.initrd}: cannot be read")
        self.config = config
        self._drives = open_drives(config.drives, config.devices)  # image/option errors before any KVM work
        self.name = config.name
        self.status = RunState.PRELAUNCH
        self.exit_status = 0
        self.event_sink = None  # set by the monitor: callable(name, data)
        self.bql = Bql()
        self.loop = MainLoop(self.bql)
        self.pool = WorkerPool(self.bql, max_workers=max(4, os.cpu_count() or 2))
        self.kvm = Kvm()
        for cap, purpose in REQUIRED_CAPS:
            self.kvm.require(cap, purpose)
        self.vm = self.kvm.create_vm()
        self.vm.set_tss_addr(KVM_TSS_ADDRESS)
        self.vm.set_identity_map_addr(KVM_IDENTITY_MAP_ADDRESS)
        self.vm.create_irqchip()
        self.vm.set_gsi_routing(pc_gsi_routes())
        self.vm.create_pit2()
        self.memory = GuestMemory(config.memory, backend=config.ram_backend)
        self._legacy_rom = map_legacy_rom_area(self.vm, self.memory, self.memory.map_into(self.vm))
        self.dma = DmaSpace(self.memory)
        self.pio, self.mmio = IoBus.pio(), IoBus.mmio()
        self._irq_lines: dict[int, KvmIrqLine] = {}
        self.chardevs = build_machine_chardevs(config, on_exit=self.quit)
        below_4g = self.memory.layout.below_4g_end
        self.legacy = attach_legacy_devices(
            self.pio, self.chardevs.serial_backends, self.irq_line, self.request_reset,
            memory_below_4g=below_4g, memory_above_4g=config.memory - below_4g, cpus=config.cpus,
            schedule=self.loop.call_later)
        self.pci = PciBus(self.pio, self.mmio, IntxRouter(self.irq_line))
        self.pio.register(CONFIG_ADDRESS_PORT, CONFIG_PORTS_LENGTH, PciHostBridge(self.pci), "pci-conf")
        self.block_devices: list[tuple[str, VirtioBlk, object]] = []
        self._add_block_devices()
        add_network_devices(self)
        assign_pci_resources(self.pci)
        self.vcpus = [self.vm.create_vcpu(index) for index in range(config.cpus)]
        supported = self.kvm.supported_cpuid()
        for vcpu in self.vcpus:
            vcpu.set_cpuid2(build_guest_cpuid(supported, vcpu.index, config.cpus))
        self.dispatch = ExitDispatcher(self.pio, self.mmio, self.request_reset, self.request_shutdown,
                                       self.fatal)
        self.dispatch.coalesced = CoalescedWrites.open(self.vm, self.vcpus[0], self.kvm.check_extension)
        if self.dispatch.coalesced is not None:
            self.dispatch.coalesced.add_pio_zone(CONFIG_ADDRESS_PORT, 4)  # PCI config address: write-only effect
        self.cpus = CpuSet(self.vcpus, self.bql, self.dispatch, self._vcpu_failed)
        self.boot_state = self._load_guest()
        self._reset_cpus()

    # -- construction --------------------------------------------------------------------------------------
    def irq_line(self, gsi: int) -> KvmIrqLine:
        if gsi not in self._irq_lines:
            self._irq_lines[gsi] = KvmIrqLine(self.vm, gsi)
        return self._irq_lines[gsi]

    def _add_block_devices(self) -> None:
        if not self._drives:
            return
        from kvmkit.hw.virtio.blk import VirtioBlk  # imported only for machines with disks

        msi = KvmMsiSink(self.vm)
        for index, drive in enumerate(self._drives):
            name = drive.device_id or drive.spec.id
            blk = VirtioBlk(name, drive.driver, self.dma, bql=self.bql, pool=self.pool, serial=drive.serial,
                            read_only=drive.spec.read_only, on_io_error=self._block_io_error)
            transport = VirtioPciTransport(blk, msi, name=f"virtio-blk{index}")
            self.pci.add(transport)
            transport.attach_ioeventfds(self.vm, self.loop)
            self.block_devices.append((drive.spec.id, blk, drive))

    def _load_guest(self) -> BootCpuState:
        """Load the kernel (the cached vmlinux when there is one, see boot/kernel_cache.py), initrd, zero page."""
        ranges = [(region.gpa, region.size) for region in self.memory.regions]
        image = self._bzimage
        if self._vmlinux is None and self.config.kernel_cache:  # decided once; resets reload the same file
            cached = cached_vmlinux(image)
            self._vmlinux = cached.path if cached is not None else False
        elif self._vmlinux is None:
            log.info("kernel: kernel-cache=off; the guest decompresses the bzImage")
            self._vmlinux = False
        cmdline = self.config.append
        if self.config.auto_kernel_cmdline:
            cmdline = machine_kernel_cmdline(cmdline)
        load = partial(load_linux, self.dma, ranges, image.path, self.config.initrd, cmdline,
                       self.config.cpus, image=image)
        if self._vmlinux:
            try:
                return load(vmlinux=self._vmlinux)
            except BootError as exc:
                log.info("kernel: cannot boot the vmlinux (%s); the guest decompresses the bzImage", exc)
                self._vmlinux = False
        return load()

    def _reset_cpus(self) -> None:
        reset_irqchip(self.vm, ioapic_id=self.config.cpus)
        for vcpu in self.vcpus:
            reset_vcpu(vcpu, is_bootstrap=vcpu.index == 0)
        apply_boot_state(self.vcpus[0], self.boot_state)

    # -- running -------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Start the vCPUs (unless -S) and serve the main loop until the machine ends."""
        self.chardevs.start(self.loop)
        with self.bql:
            if self.config.start_paused:
                self.cpus.pause_all()
            else:
                self.status = RunState.RUNNING
        self.cpus.start()
        try:
            self.loop.run()
        finally:
            self.shutdown_threads()
        return self.exit_status

    def shutdown_threads(self) -> None:
        self.cpus.stop_all(timeout=2.0)
        self.pool.shutdown(wait=False)
        with self.bql:
            self.legacy.flush_output()
        self.chardevs.close()

    # -- machine events (called with the BQL held, from any thread) ----------------------------------------
    def emit(self, event: str, data: dict | None = None) -> None:
        if self.event_sink is not None:
            self.event_sink(event, data or {})

    def debug_state(self) -> str:
        """The run state and every virtio queue's indices, for `kill -USR1` (see cli/run.py)."""
        lines = [f"kvmkit: run state {self.status.value}, pool queue {self.pool.backlog()} tasks"]
        for device in self.pci.devices():
            state = getattr(device, "debug_state", None)
            if state is not None:
                lines.append(state())
        return "\n".join(lines)

    def request_reset(self, reason: str = "guest-reset") -> None:
        """A guest (or the monitor) asked for a reset; -no-reboot turns it into a shutdown."""
        guest = reason.startswith("guest")
        if self.config.no_reboot:  # as QEMU: only SHUTDOWN (reason says it was a reset), no RESET event
            self.request_shutdown("guest-reset" if guest else reason)
            return
        was_running = self.status == RunState.RUNNING
        self.cpus.pause_all()
        self.loop.call_soon_threadsafe(lambda: self._perform_reset(reason, guest, was_running))

    def _perform_reset(self, reason: str, guest: bool, resume: bool) -> None:
        self.cpus.pause_all()
        self.legacy.reset()
        for device in self.pci.devices():  # a virtio transport's reset resets its device too
            device.reset()
        assign_pci_resources(self.pci)
        self.boot_state = self._load_guest()
        self._reset_cpus()
        self.emit("RESET", {"guest": guest, "reason": reason})
        log.info("machine reset (%s)", reason)
        if resume and self.status == RunState.RUNNING:  # a `stop` while the reset was queued wins
            self.cpus.resume_all()

    def request_shutdown(self, reason: str = "guest-shutdown") -> None:
        was_running = self.status == RunState.RUNNING
        self.cpus.pause_all()
        self.status = RunState.SHUTDOWN
        self.emit("SHUTDOWN", {"guest": reason.startswith("guest"), "reason": reason})
        leaves = reason in ("host-qmp-quit", "host-signal")  # the host's exits ignore -no-shutdown
        if was_running and self.config.no_shutdown and not leaves:
            self.emit("STOP")  # -no-shutdown: the machine stays, stopped, as QEMU reports it
        if not self.config.no_shutdown or leaves:
            self.loop.call_soon_threadsafe(self.loop.stop)

    def quit(self) -> None:
        with self.bql:
            self.request_shutdown("host-qmp-quit")

    def fatal(self, vcpu: KvmVcpu | None, message: str) -> None:
        """Something the VMM cannot continue from: say what, stop everything, exit non-zero."""
        print(f"kvmkit: {message}", file=sys.stderr, flush=True)
        self.exit_status = 1
        self.status = RunState.INTERNAL_ERROR
        self.cpus.pause_all()
        self.loop.call_soon_threadsafe(self.loop.stop)

    def _vcpu_failed(self, index: int, error: BaseException) -> None:
        self.fatal(None, f"vCPU {index}: internal error: {error}")

    def _block_io_error(self, device: str, operation: str, reason: str) -> None:
        self.emit("BLOCK_IO_ERROR", {"device": device, "node-name": device, "operation": operation,
                                     "action": "report", "nospace": False, "reason": reason})

