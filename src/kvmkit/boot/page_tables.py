"""Identity page tables for the first 4 GiB with 2 MiB pages (PML4 + PDPT + 4 PDs).

Addresses come from :mod:`kvmkit.boot.layout`; CR3 points at the PML4.
"""

from __future__ import annotations

import ctypes
from enum import IntFlag

from kvmkit.boot.guest_ram import GuestRam
from kvmkit.boot.layout import PAGE_SIZE, PD_ADDR, PD_COUNT, PDPT_ADDR, PML4_ADDR

ENTRIES_PER_TABLE = 512
LARGE_PAGE_SIZE = 2 << 20
GIB = 1 << 30


class PageFlag(IntFlag):
    """x86-64 page table entry bits used here."""

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


def build_identity_page_tables() -> list[tuple[int, PageTable]]:
    """Return (gpa, table) for the PML4, the PDPT and the four PDs mapping 0-4 GiB 1:1."""
    pml4 = PageTable()
    pml4.entries[0] = PDPT_ADDR | TABLE_FLAGS
    pdpt = PageTable()
    tables: list[tuple[int, PageTable]] = [(PML4_ADDR, pml4), (PDPT_ADDR, pdpt)]
    for pd_index in range(PD_COUNT):
        pd_addr = PD_ADDR + pd_index * PAGE_SIZE
        pdpt.entries[pd_index] = pd_addr | TABLE_FLAGS
        pd = PageTable()
        for entry in range(ENTRIES_PER_TABLE):
            pd.entries[entry] = (pd_index * GIB + entry * LARGE_PAGE_SIZE) | LARGE_PAGE_FLAGS
        tables.append((pd_addr, pd))
    return tables


def write_identity_page_tables(ram: GuestRam) -> int:
    """Write the identity tables into guest memory and return the CR3 value (the PML4 address)."""
    for gpa, table in build_identity_page_tables():
        ram.write(gpa, bytes(table))
    return PML4_ADDR
