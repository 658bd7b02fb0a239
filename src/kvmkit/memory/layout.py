"""The PC guest-physical address map: where RAM goes and the fixed holes around it."""

from __future__ import annotations

from dataclasses import dataclass

from kvmkit.errors import ConfigError

PAGE_SIZE = 0x1000

LOW_RAM_END = 0xA_0000  # conventional memory ends at 640 KiB; VGA and ROMs follow
HIGH_RAM_START = 0x10_0000  # 1 MiB
PCI_HOLE_START = 0xC000_0000  # 3 GiB: 32-bit MMIO (PCI BARs, IOAPIC, LAPIC, flash) up to 4 GiB
PCI_HOLE_END = 0x1_0000_0000
ABOVE_4G_START = PCI_HOLE_END
IOAPIC_BASE = 0xFEC0_0000
IOAPIC_SIZE = 0x1000
LAPIC_BASE = 0xFEE0_0000
LAPIC_SIZE = 0x1000

MIN_RAM_SIZE = 2 * HIGH_RAM_START
RAM_BACKENDS = ("anonymous", "memfd")  # what backs guest RAM (see kvmkit.memory.guest_memory)


@dataclass(frozen=True)
class RamRange:
    """One contiguous guest RAM range and where it lives in the RAM backing file."""

    gpa: int
    size: int
    memfd_offset: int

    @property
    def end(self) -> int:
        return self.gpa + self.size


@dataclass(frozen=True)
class RamLayout:
    """Where `ram_size` bytes of RAM appear in guest-physical space."""

    ram_size: int
    ranges: tuple[RamRange, ...]

    @property
    def below_4g_end(self) -> int:
        """End of RAM below the PCI hole (the e820 and ACPI tables need it)."""
        return min(self.ram_size, PCI_HOLE_START)

    @property
    def backing_size(self) -> int:
        """Bytes of backing file needed to hold every range at its memfd offset."""
        return max(r.memfd_offset + r.size for r in self.ranges)


def pc_ram_layout(ram_size: int) -> RamLayout:
    """Lay out RAM as 0..640K, 1M..min(size, 3G) and, for the rest, 4G upwards.

    RAM size counts the 640K-1M legacy hole, as on real PCs: the backing file offset of each range
    equals its guest address below 4 GiB, and memory above 4 GiB continues after the 3 GiB mark.
    """
    if ram_size % PAGE_SIZE:
        raise ConfigError(f"memory size {ram_size:#x} is not a multiple of 4 KiB")
    if ram_size < MIN_RAM_SIZE:
        raise ConfigError(f"memory size {ram_size:#x} is below the minimum of {MIN_RAM_SIZE // 2**20} MiB")
    below = min(ram_size, PCI_HOLE_START)
    ranges = [RamRange(0, LOW_RAM_END, 0), RamRange(HIGH_RAM_START, below - HIGH_RAM_START, HIGH_RAM_START)]
    if ram_size > PCI_HOLE_START:
        ranges.append(RamRange(ABOVE_4G_START, ram_size - PCI_HOLE_START, PCI_HOLE_START))
    return RamLayout(ram_size, tuple(ranges))
