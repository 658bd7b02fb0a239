"""The e820 memory map handed to the guest in the zero page.

Built from the VM's RAM regions: RAM is reported as usable except the EBDA/MP-table area
(0x9FC00-0xA0000, reported reserved) and the legacy VGA/option-ROM window (0xA0000-0x100000,
not reported at all). Nothing may claim the 32-bit PCI hole: a RAM region overlapping it is a
BootError and it never appears in the map, so the guest sees it as a gap it may assign to PCI.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

from kvmkit.errors import BootError
from kvmkit.memory.layout import HIGH_RAM_START, LOW_RAM_END, PCI_HOLE_END, PCI_HOLE_START


class E820Type(IntEnum):
    """e820 range types (ACPI "address range types")."""

    RAM = 1
    RESERVED = 2
    ACPI = 3
    NVS = 4
    UNUSABLE = 5
    PMEM = 7


@dataclass(frozen=True)
class E820Entry:
    """One e820 range: [addr, addr + size) of the given type."""

    addr: int
    size: int
    type: E820Type

    @property
    def end(self) -> int:
        return self.addr + self.size


EBDA_START = 0x9FC00
"""The last KB of base memory: where our MP table lives (Linux scans it for the MP floating pointer)."""
LEGACY_HOLE_START = LOW_RAM_END
LEGACY_HOLE_END = HIGH_RAM_START

DEFAULT_RESERVED: tuple[tuple[int, int], ...] = ((EBDA_START, LEGACY_HOLE_START - EBDA_START),)
"""Reserved (gpa, size) ranges reported as E820Type.RESERVED when they lie inside RAM."""

DEFAULT_HOLES: tuple[tuple[int, int], ...] = ((LEGACY_HOLE_START, LEGACY_HOLE_END - LEGACY_HOLE_START),)
"""Ranges carved out of RAM and not reported at all."""


def _subtract(ranges: list[tuple[int, int]], cut_start: int, cut_end: int) -> list[tuple[int, int]]:
    """Remove [cut_start, cut_end) from a list of [start, end) ranges."""
    result: list[tuple[int, int]] = []
    for start, end in ranges:
        if cut_end <= start or cut_start >= end:
            result.append((start, end))
            continue
        if start < cut_start:
            result.append((start, cut_start))
        if cut_end < end:
            result.append((cut_end, end))
    return result


def build_e820(
    ram_regions: Iterable[tuple[int, int]],
    reserved: Sequence[tuple[int, int]] = DEFAULT_RESERVED,
    holes: Sequence[tuple[int, int]] = DEFAULT_HOLES,
    pci_hole: tuple[int, int] = (PCI_HOLE_START, PCI_HOLE_END),
) -> list[E820Entry]:
    """Build a sorted, non-overlapping e820 map from (gpa, size) RAM regions.

    ``reserved`` ranges inside RAM become RESERVED entries; ``holes`` are removed from RAM and
    reported as nothing; ``pci_hole`` is (start, end) and must not intersect any RAM region.
    """
    regions = sorted((gpa, size) for gpa, size in ram_regions if size > 0)
    if regions and regions[0][0] < 0:
        raise BootError(f"memory map: RAM region at negative address {regions[0][0]}")
    if not regions:
        raise BootError("memory map: no RAM regions")
    for (gpa, size), (next_gpa, _) in itertools.pairwise(regions):
        if gpa + size > next_gpa:
            raise BootError(f"memory map: RAM regions at 0x{gpa:x} and 0x{next_gpa:x} overlap")
    hole_start, hole_end = pci_hole
    for gpa, size in regions:
        if gpa < hole_end and gpa + size > hole_start:
            raise BootError(
                f"memory map: RAM region 0x{gpa:x}-0x{gpa + size:x} overlaps the PCI hole "
                f"0x{hole_start:x}-0x{hole_end:x}"
            )

    ram = [(gpa, gpa + size) for gpa, size in regions]
    reserved_entries: list[tuple[int, int]] = []
    for res_gpa, res_size in reserved:
        res_end = res_gpa + res_size
        for start, end in ram:
            lo, hi = max(start, res_gpa), min(end, res_end)
            if lo < hi:
                reserved_entries.append((lo, hi))
        ram = _subtract(ram, res_gpa, res_end)
    for hole_gpa, hole_size in holes:
        ram = _subtract(ram, hole_gpa, hole_gpa + hole_size)

    entries = [E820Entry(start, end - start, E820Type.RAM) for start, end in ram]
    entries += [E820Entry(start, end - start, E820Type.RESERVED) for start, end in reserved_entries]
    entries.sort(key=lambda entry: entry.addr)
    return entries
