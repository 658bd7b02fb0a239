"""Identity page tables for the first 4 GiB with 2 MiB pages (PML4 + PDPT + 4 PDs).

Addresses come from :mod:`kvmkit.boot.layout`; CR3 points at the PML4. Flags are plain ints: the tables are
rebuilt at every boot and reset, and IntFlag arithmetic cost ~0.4 ms per entry in the lab.
"""

from __future__ import annotations

import ctypes
import sys
from array import array

from kvmkit.boot.guest_ram import GuestRam
from kvmkit.boot.layout import PAGE_SIZE, PD_ADDR, PD_COUNT, PDPT_ADDR, PML4_ADDR

ENTRIES_PER_TABLE = 512
LARGE_PAGE_SIZE = 2 << 20
GIB = 1 << 30


class PageFlag:
    """x86-64 page table entry bits used here (plain ints)."""

    PRESENT = 1 << 0
    WRITABLE = 1 << 1
    USER = 1 << 2
    ACCESSED = 1 << 5
    DIRTY = 1 << 6
    PAGE_SIZE = 1 << 7
    """In a PD entry: the entry maps a 2 MiB page instead of pointing at a page table."""


class PageTable(ctypes.LittleEndianStructure):
    """One 4 KiB paging structure: 512 64-bit entries."""

    _pack_ = 1
    _fields_ = [("entries", ctypes.c_uint64 * ENTRIES_PER_TABLE)]


TABLE_FLAGS = PageFlag.PRESENT | PageFlag.WRITABLE
LARGE_PAGE_FLAGS = PageFlag.PRESENT | PageFlag.WRITABLE | PageFlag.PAGE_SIZE


def identity_page_tables_bytes() -> bytes:
    """The PML4, the PDPT and the four PDs back to back, as they lie from PML4_ADDR (little-endian u64s)."""
    assert PDPT_ADDR == PML4_ADDR + PAGE_SIZE and PD_ADDR == PDPT_ADDR + PAGE_SIZE
    entries = array("Q", bytes(8 * ENTRIES_PER_TABLE * (2 + PD_COUNT)))
    entries[0] = PDPT_ADDR | TABLE_FLAGS
    for pd_index in range(PD_COUNT):
        entries[ENTRIES_PER_TABLE + pd_index] = (PD_ADDR + pd_index * PAGE_SIZE) | TABLE_FLAGS
    first_pd = 2 * ENTRIES_PER_TABLE
    entries[first_pd:] = array("Q", range(LARGE_PAGE_FLAGS, PD_COUNT * GIB, LARGE_PAGE_SIZE))
    if sys.byteorder == "big":  # page tables are little-endian
        entries.byteswap()
    return entries.tobytes()


def build_identity_page_tables() -> list[tuple[int, PageTable]]:
    """Return (gpa, table) for the PML4, the PDPT and the four PDs mapping 0-4 GiB 1:1."""
    data = identity_page_tables_bytes()
    return [(PML4_ADDR + index * PAGE_SIZE, PageTable.from_buffer_copy(data, index * PAGE_SIZE))
            for index in range(2 + PD_COUNT)]


def write_identity_page_tables(ram: GuestRam) -> int:
    """Write the identity tables into guest memory and return the CR3 value (the PML4 address)."""
    ram.write(PML4_ADDR, identity_page_tables_bytes())
    return PML4_ADDR
