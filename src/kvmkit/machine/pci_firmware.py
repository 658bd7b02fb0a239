"""What firmware would do for PCI before the kernel starts: give every BAR an address and enable decoding."""

from __future__ import annotations

from kvmkit.hw.pci.bar import BarKind
from kvmkit.hw.pci.bus import PciBus
from kvmkit.memory.layout import PCI_HOLE_START

PCI_MMIO_WINDOW = (PCI_HOLE_START, 0xFEC0_0000)  # up to the IOAPIC
PCI_IO_WINDOW = (0xC000, 0x10000)
PCI_COMMAND = 0x04
PCI_COMMAND_IO, PCI_COMMAND_MEMORY, PCI_COMMAND_MASTER = 0x1, 0x2, 0x4
PCI_BAR0 = 0x10


class WindowAllocator:
    """Hands out naturally aligned ranges from one address window."""

    def __init__(self, start: int, end: int, what: str) -> None:
        self.next, self.end, self.what = start, end, what

    def allocate(self, size: int) -> int:
        address = (self.next + size - 1) & ~(size - 1)
        if address + size > self.end:
            raise RuntimeError(f"PCI {self.what} window is full")
        self.next = address + size
        return address


def assign_pci_resources(bus: PciBus) -> None:
    """Program every unassigned BAR (largest first) and enable I/O, memory and bus mastering."""
    mmio = WindowAllocator(*PCI_MMIO_WINDOW, "memory")
    io = WindowAllocator(*PCI_IO_WINDOW, "I/O")
    for device in bus.devices():
        for bar in sorted(device.bars.values(), key=lambda b: b.size, reverse=True):
            address = (io if bar.kind is BarKind.IO else mmio).allocate(bar.size)
            offset = PCI_BAR0 + 4 * bar.index
            device.config_write(offset, 4, address & 0xFFFF_FFFF)
            if bar.kind is BarKind.MEM64:
                device.config_write(offset + 4, 4, address >> 32)
        command = device.config_read(PCI_COMMAND, 2)
        device.config_write(PCI_COMMAND, 2, command | PCI_COMMAND_IO | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
