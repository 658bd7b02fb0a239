"""A qtest-style harness: guest RAM, DMA, PIO/MMIO buses and a PCI host bridge, but no CPU.

Tests poke configuration space through 0xCF8/0xCFC, map BARs and drive virtio devices the way
the Linux driver does, then assert on guest memory. The real kvmkit memory classes are used when
the real kvmkit memory classes (GuestMemory, DmaSpace, IoBus) back it.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from kvmkit.hw.pci.bus import PciBus, devfn_of
from kvmkit.hw.pci.config_space import COMMAND_BUS_MASTER, COMMAND_IO, COMMAND_MEMORY
from kvmkit.hw.pci.device import PciDevice
from kvmkit.hw.pci.host_bridge import CONFIG_ADDRESS_PORT, CONFIG_PORTS_LENGTH, PciHostBridge
from kvmkit.hw.pci.intx import IntxRouter
from kvmkit.hw.pci.msix import ENTRY_SIZE, MSIX_CONTROL_ENABLE, MsixCapabilityLayout
from kvmkit.hw.virtio.device import STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK
from kvmkit.hw.virtio.pci_layout import (
    VIRTIO_PCI_CAP_COMMON_CFG,
    VIRTIO_PCI_CAP_DEVICE_CFG,
    VIRTIO_PCI_CAP_ISR_CFG,
    VIRTIO_PCI_CAP_NOTIFY_CFG,
    VirtioPciCap,
    VirtioPciCommonCfg,
)
from kvmkit.hw.virtio.virtqueue import (
    DESC_SIZE,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
    SplitRingLayout,
    VirtqDesc,
)
from kvmkit.memory.address_space import IoBus
from kvmkit.memory.dma import DmaSpace
from kvmkit.memory.guest_memory import GuestMemory

MMIO_WINDOW_BASE = 0xE000_0000
PIO_WINDOW_BASE = 0xC000


class RecordingMsiSink:
    """An MsiSink that remembers every message."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, int]] = []

    def send_msi(self, address: int, data: int) -> None:
        self.messages.append((address, data))


class RecordingIrqLine:
    """An IrqLine that remembers its level."""

    def __init__(self, gsi: int) -> None:
        self.gsi = gsi
        self.level = False
        self.pulses = 0

    def set_level(self, level: bool) -> None:
        self.level = level

    def pulse(self) -> None:
        self.pulses += 1


class GuestAllocator:
    """Bump allocator of guest-physical memory for driver structures and buffers."""

    def __init__(self, start: int, end: int) -> None:
        self.next = start
        self.end = end

    def alloc(self, length: int, align: int = 16) -> int:
        addr = (self.next + align - 1) & ~(align - 1)
        if addr + length > self.end:
            raise MemoryError("qtest guest allocator exhausted")
        self.next = addr + length
        return addr


class QtestMachine:
    """RAM + DMA + buses + PCI host bridge; `ram_size` bytes of RAM at guest address 0."""

    def __init__(self, ram_size: int = 16 << 20, ram_backend: str = "anonymous") -> None:
        self.memory = GuestMemory(ram_size, backend=ram_backend)  # "memfd": shared with a forked "vCPU" process
        self.dma = DmaSpace(self.memory)
        self.pio = IoBus.pio()
        self.mmio = IoBus.mmio()
        self.msi = RecordingMsiSink()
        self.irq_lines: dict[int, RecordingIrqLine] = {}
        self.bus = PciBus(self.pio, self.mmio, IntxRouter(self._line))
        self.host_bridge = PciHostBridge(self.bus)
        self.pio.register(CONFIG_ADDRESS_PORT, CONFIG_PORTS_LENGTH, self.host_bridge, "pci-conf")
        self.allocator = GuestAllocator(0x10000, ram_size)
        self._next_mmio = MMIO_WINDOW_BASE
        self._next_pio = PIO_WINDOW_BASE

    def _line(self, gsi: int) -> RecordingIrqLine:
        return self.irq_lines.setdefault(gsi, RecordingIrqLine(gsi))

    def plug(self, device: PciDevice, slot: int | None = None) -> int:
        return self.bus.add(device, slot)

    # configuration mechanism #1 ------------------------------------------------------------------

    def cfg_read(self, devfn: int, offset: int, size: int) -> int:
        self.pio.write(CONFIG_ADDRESS_PORT, 4, 0x8000_0000 | (devfn << 8) | (offset & 0xFC))
        return self.pio.read(CONFIG_ADDRESS_PORT + 4 + (offset & 3), size)

    def cfg_write(self, devfn: int, offset: int, size: int, value: int) -> None:
        self.pio.write(CONFIG_ADDRESS_PORT, 4, 0x8000_0000 | (devfn << 8) | (offset & 0xFC))
        self.pio.write(CONFIG_ADDRESS_PORT + 4 + (offset & 3), size, value)

    def capabilities(self, devfn: int) -> list[tuple[int, int]]:
        """(id, offset) of each capability, walked through config cycles like a guest does."""
        found: list[tuple[int, int]] = []
        offset = self.cfg_read(devfn, 0x34, 1) & ~3
        while offset and len(found) < 48:
            found.append((self.cfg_read(devfn, offset, 1), offset))
            offset = self.cfg_read(devfn, offset + 1, 1) & ~3
        return found

    def size_bar(self, devfn: int, index: int) -> tuple[int, int]:
        """(size, flag bits) of a BAR by the all-ones method; restores the BAR afterwards."""
        reg = 0x10 + 4 * index
        original = self.cfg_read(devfn, reg, 4)
        self.cfg_write(devfn, reg, 4, 0xFFFF_FFFF)
        low = self.cfg_read(devfn, reg, 4)
        self.cfg_write(devfn, reg, 4, original)
        is_io = low & 1
        flags = low & (0x3 if is_io else 0xF)
        mask = low & ~(0x3 if is_io else 0xF)
        if not is_io and (low & 0x6) == 0x4:
            high_orig = self.cfg_read(devfn, reg + 4, 4)
            self.cfg_write(devfn, reg + 4, 4, 0xFFFF_FFFF)
            mask |= self.cfg_read(devfn, reg + 4, 4) << 32
            self.cfg_write(devfn, reg + 4, 4, high_orig)
            return ((~mask) & (2**64 - 1)) + 1, flags
        if is_io:
            mask |= 0xFFFF_0000
        return ((~mask) & 0xFFFF_FFFF) + 1, flags

    def map_bar(self, devfn: int, index: int) -> int:
        """Program BAR `index` at the next free address and enable decoding; returns the address."""
        size, flags = self.size_bar(devfn, index)
        reg = 0x10 + 4 * index
        if flags & 1:
            addr = (self._next_pio + size - 1) & ~(size - 1)
            self._next_pio = addr + size
        else:
            addr = (self._next_mmio + size - 1) & ~(size - 1)
            self._next_mmio = addr + size
        self.cfg_write(devfn, reg, 4, addr & 0xFFFF_FFFF)
        if not flags & 1 and (flags & 0x6) == 0x4:
            self.cfg_write(devfn, reg + 4, 4, addr >> 32)
        command = self.cfg_read(devfn, 0x04, 2)
        self.cfg_write(devfn, 0x04, 2, command | (COMMAND_IO if flags & 1 else COMMAND_MEMORY))
        return addr


@dataclass
class DriverQueue:
    """The driver's side of one split virtqueue laid out in guest memory."""

    driver: VirtioPciDriver
    index: int
    size: int
    desc: int
    avail: int
    used: int
    avail_idx: int = 0
    next_desc: int = 0
    last_used: int = 0
    heads: list[int] = field(default_factory=list)

    @property
    def layout(self) -> SplitRingLayout:
        return SplitRingLayout(self.size)

    @property
    def dma(self) -> DmaSpace:
        return self.driver.machine.dma

    def write_desc(self, table: int, index: int, addr: int, length: int, flags: int, next_index: int) -> None:
        desc = VirtqDesc(addr, length, flags, next_index)
        self.dma.write(table + DESC_SIZE * index, bytes(desc))

    def publish(self, head: int, kick: bool = True) -> None:
        """Put `head` in the available ring, bump avail idx and (optionally) kick."""
        slot = self.avail_idx % self.size
        self.dma.st16_le(self.avail + 4 + 2 * slot, head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.dma.st16_le(self.avail + 2, self.avail_idx)
        if kick:
            self.kick()

    def kick(self) -> None:
        self.driver.kick(self.index)

    def post(
        self, out: Sequence[bytes], in_lens: Sequence[int], indirect: bool = False, kick: bool = True
    ) -> tuple[int, list[int]]:
        """Post a chain of device-readable buffers then device-writable ones; returns (head, in addresses)."""
        buffers = [(self._buffer(data), len(data), 0) for data in out]
        in_addrs = [self.driver.machine.allocator.alloc(n) for n in in_lens]
        buffers += [(addr, n, VIRTQ_DESC_F_WRITE) for addr, n in zip(in_addrs, in_lens, strict=True)]
        if indirect:
            table = self.driver.machine.allocator.alloc(DESC_SIZE * len(buffers))
            self._write_chain(table, 0, buffers, len(buffers))
            head = self._take_desc()
            self.write_desc(self.desc, head, table, DESC_SIZE * len(buffers), VIRTQ_DESC_F_INDIRECT, 0)
        else:
            indexes = [self._take_desc() for _ in buffers]
            for pos, (addr, length, flags) in enumerate(buffers):
                last = pos == len(buffers) - 1
                nxt = 0 if last else indexes[pos + 1]
                self.write_desc(
                    self.desc, indexes[pos], addr, length, flags | (0 if last else VIRTQ_DESC_F_NEXT), nxt
                )
            head = indexes[0]
        self.publish(head, kick)
        return head, in_addrs

    def _write_chain(self, table: int, first: int, buffers: list[tuple[int, int, int]], count: int) -> None:
        for pos, (addr, length, flags) in enumerate(buffers):
            last = pos == count - 1
            self.write_desc(
                table, first + pos, addr, length, flags | (0 if last else VIRTQ_DESC_F_NEXT), pos + 1
            )

    def _buffer(self, data: bytes) -> int:
        addr = self.driver.machine.allocator.alloc(max(len(data), 1))
        self.dma.write(addr, data)
        return addr

    def _take_desc(self) -> int:
        index = self.next_desc
        self.next_desc = (self.next_desc + 1) % self.size
        return index

    def used_idx(self) -> int:
        return self.dma.ld16_le(self.used + 2)

    def take_used(self) -> list[tuple[int, int]]:
        """New used entries (id, len) since the last call."""
        entries = []
        while self.last_used != self.used_idx():
            slot = self.last_used % self.size
            addr = self.used + 4 + 8 * slot
            entries.append((self.dma.ld32_le(addr), self.dma.ld32_le(addr + 4)))
            self.last_used = (self.last_used + 1) & 0xFFFF
        return entries

    def wait_used(self, count: int = 1, timeout: float = 5.0) -> list[tuple[int, int]]:
        """Poll until `count` new used entries arrived (requests may complete on worker threads)."""
        entries: list[tuple[int, int]] = []
        deadline = time.monotonic() + timeout
        while len(entries) < count:
            entries += self.take_used()
            if len(entries) >= count:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"queue {self.index}: {len(entries)} of {count} used entries after {timeout}s"
                )
            time.sleep(0.001)
        return entries

    def set_used_event(self, value: int) -> None:
        self.dma.st16_le(self.avail + self.layout.used_event_offset, value)

    def avail_event(self) -> int:
        return self.dma.ld16_le(self.used + self.layout.avail_event_offset)


class VirtioPciDriver:
    """Drives a virtio PCI function like Linux's virtio_pci_modern does."""

    def __init__(self, machine: QtestMachine, devfn: int) -> None:
        self.machine = machine
        self.devfn = devfn
        self.caps: dict[int, VirtioPciCap] = {}
        self.notify_multiplier = 0
        self.msix_cap: int | None = None
        for cap_id, offset in machine.capabilities(devfn):
            if cap_id == 0x11:
                self.msix_cap = offset
            if cap_id != 0x09:
                continue
            raw = bytes(machine.cfg_read(devfn, offset + i, 1) for i in range(ctypes.sizeof(VirtioPciCap)))
            cap = VirtioPciCap.from_buffer_copy(raw)
            self.caps.setdefault(cap.cfg_type, cap)
            if cap.cfg_type == VIRTIO_PCI_CAP_NOTIFY_CFG:
                self.notify_multiplier = machine.cfg_read(devfn, offset + 16, 4)
        self.bar_addresses: dict[int, int] = {}
        for cap in self.caps.values():
            if cap.bar not in self.bar_addresses:
                self.bar_addresses[cap.bar] = machine.map_bar(devfn, cap.bar)
        command = machine.cfg_read(devfn, 0x04, 2)
        machine.cfg_write(devfn, 0x04, 2, command | COMMAND_BUS_MASTER)
        self.queues: dict[int, DriverQueue] = {}

    def _addr(self, cfg_type: int, offset: int) -> int:
        cap = self.caps[cfg_type]
        return self.bar_addresses[cap.bar] + cap.offset + offset

    def common_read(self, name: str) -> int:
        fld = getattr(VirtioPciCommonCfg, name)
        if fld.size == 8:
            lo = self.machine.mmio.read(self._addr(VIRTIO_PCI_CAP_COMMON_CFG, fld.offset), 4)
            return lo | self.machine.mmio.read(self._addr(VIRTIO_PCI_CAP_COMMON_CFG, fld.offset + 4), 4) << 32
        return self.machine.mmio.read(self._addr(VIRTIO_PCI_CAP_COMMON_CFG, fld.offset), fld.size)

    def common_write(self, name: str, value: int) -> None:
        fld = getattr(VirtioPciCommonCfg, name)
        addr = self._addr(VIRTIO_PCI_CAP_COMMON_CFG, fld.offset)
        if fld.size == 8:
            self.machine.mmio.write(addr, 4, value & 0xFFFF_FFFF)
            self.machine.mmio.write(addr + 4, 4, value >> 32)
        else:
            self.machine.mmio.write(addr, fld.size, value)

    def device_config(self, offset: int, size: int) -> int:
        return self.machine.mmio.read(self._addr(VIRTIO_PCI_CAP_DEVICE_CFG, offset), size)

    def read_isr(self) -> int:
        return self.machine.mmio.read(self._addr(VIRTIO_PCI_CAP_ISR_CFG, 0), 1)

    @property
    def status(self) -> int:
        return self.common_read("device_status")

    def device_features(self) -> int:
        self.common_write("device_feature_select", 0)
        low = self.common_read("device_feature")
        self.common_write("device_feature_select", 1)
        return low | self.common_read("device_feature") << 32

    def reset(self) -> None:
        self.common_write("device_status", 0)

    def negotiate(self, features: int | None = None, drop: int = 0) -> bool:
        """Reset, ACKNOWLEDGE, DRIVER, write features (default: all offered minus `drop`), FEATURES_OK.
        Returns whether the device kept FEATURES_OK."""
        self.reset()
        self.common_write("device_status", STATUS_ACKNOWLEDGE)
        self.common_write("device_status", STATUS_ACKNOWLEDGE | STATUS_DRIVER)
        wanted = (self.device_features() if features is None else features) & ~drop
        self.common_write("driver_feature_select", 0)
        self.common_write("driver_feature", wanted & 0xFFFF_FFFF)
        self.common_write("driver_feature_select", 1)
        self.common_write("driver_feature", wanted >> 32)
        self.common_write("device_status", STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK)
        return bool(self.status & STATUS_FEATURES_OK)

    def setup_queue(self, index: int, size: int | None = None, msix_vector: int | None = None) -> DriverQueue:
        self.common_write("queue_select", index)
        size = size or self.common_read("queue_size")
        self.common_write("queue_size", size)
        layout = SplitRingLayout(size)
        alloc = self.machine.allocator
        queue = DriverQueue(
            self,
            index,
            size,
            alloc.alloc(layout.desc_table_bytes, 16),
            alloc.alloc(layout.avail_bytes, 2),
            alloc.alloc(layout.used_bytes, 4),
        )
        self.common_write("queue_desc", queue.desc)
        self.common_write("queue_driver", queue.avail)
        self.common_write("queue_device", queue.used)
        if msix_vector is not None:
            self.common_write("queue_msix_vector", msix_vector)
        self.common_write("queue_enable", 1)
        self.queues[index] = queue
        return queue

    def driver_ok(self) -> None:
        self.common_write("device_status", self.status | STATUS_DRIVER_OK)

    def initialize(self, queues: int = 1, drop: int = 0, msix: bool = False) -> list[DriverQueue]:
        """The whole Linux probe: negotiate, set up `queues` queues, optionally MSI-X, DRIVER_OK."""
        if not self.negotiate(drop=drop):
            raise AssertionError("device refused FEATURES_OK")
        if msix:
            self.enable_msix()
            self.common_write("config_msix_vector", 0)
        made = [self.setup_queue(i, msix_vector=i + 1 if msix else None) for i in range(queues)]
        self.driver_ok()
        return made

    def enable_msix(self) -> None:
        """Enable MSI-X and program vector v with address 0xFEE00000, data 0x40 + v, unmasked."""
        assert self.msix_cap is not None
        control_at = self.msix_cap + MsixCapabilityLayout.message_control.offset
        control = self.machine.cfg_read(self.devfn, control_at, 2)
        table = self.machine.cfg_read(self.devfn, self.msix_cap + 4, 4)
        bar, offset = table & 7, table & ~7
        base = self.bar_addresses[bar] + offset
        for vector in range((control & 0x7FF) + 1):
            entry = base + ENTRY_SIZE * vector
            self.machine.mmio.write(entry, 4, 0xFEE0_0000)
            self.machine.mmio.write(entry + 4, 4, 0)
            self.machine.mmio.write(entry + 8, 4, 0x40 + vector)
            self.machine.mmio.write(entry + 12, 4, 0)
        self.machine.cfg_write(self.devfn, control_at, 2, control | MSIX_CONTROL_ENABLE)

    def kick(self, index: int) -> None:
        self.machine.mmio.write(
            self._addr(VIRTIO_PCI_CAP_NOTIFY_CFG, self.notify_multiplier * index), 2, index
        )


__all__ = ["DriverQueue", "QtestMachine", "VirtioPciDriver", "devfn_of"]
