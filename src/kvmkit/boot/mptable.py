"""An Intel MultiProcessor Specification 1.4 table describing the vCPUs and the IOAPIC.

Placed in the last KB of base memory (0x9FC00), one of the places Linux scans for the floating
pointer. Contents: one processor entry per vCPU (APIC ID = index, BSP flag on vCPU 0), one ISA
bus (id 0), one IOAPIC (id = ncpus, at 0xFEC00000), I/O interrupt entries for the ISA IRQs and
local interrupt entries routing ExtINT to LINT0 and NMI to LINT1 on every CPU.

ISA IRQ routing choice (see :data:`ISA_IRQ_TO_IOAPIC_PIN`): as on PC chipsets, ISA IRQ 0 (the
PIT) arrives on IOAPIC pin 2; IRQ 2 is the 8259 cascade and gets no entry; every other ISA IRQ n
arrives on pin n. Interrupt models wiring the IOAPIC must use the same mapping.
"""

from __future__ import annotations

import ctypes
from enum import IntEnum

from kvmkit.boot.guest_ram import GuestRam
from kvmkit.boot.layout import MPTABLE_ADDR, MPTABLE_SIZE
from kvmkit.errors import BootError

MP_SPEC_REVISION = 4  # version 1.4
LOCAL_APIC_ADDR = 0xFEE00000
IOAPIC_ADDR = 0xFEC00000
LOCAL_APIC_VERSION = 0x14
IOAPIC_VERSION = 0x11
ISA_BUS_ID = 0
ALL_LOCAL_APICS = 0xFF

CPU_FLAG_ENABLED = 1 << 0
CPU_FLAG_BSP = 1 << 1
IOAPIC_FLAG_ENABLED = 1 << 0
CPU_SIGNATURE = 0x600
"""Family 6, model 0, stepping 0: informational only, Linux reads CPUID instead."""
CPU_FEATURES = (1 << 0) | (1 << 9)
"""CPUID.1:EDX bits FPU and APIC."""

ISA_IRQ_TO_IOAPIC_PIN: dict[int, int] = {0: 2, **{irq: irq for irq in range(1, 16) if irq != 2}}
"""ISA IRQ -> IOAPIC input pin; IRQ 2 (the 8259 cascade) is not routed through the IOAPIC."""


class MpEntryType(IntEnum):
    PROCESSOR = 0
    BUS = 1
    IOAPIC = 2
    IO_INTERRUPT = 3
    LOCAL_INTERRUPT = 4


class MpInterruptType(IntEnum):
    INT = 0
    NMI = 1
    SMI = 2
    EXTINT = 3


class MpFloatingPointer(ctypes.LittleEndianStructure):
    """The 16-byte "_MP_" structure Linux finds by scanning low memory."""

    _pack_ = 1
    _fields_ = [
        ("signature", ctypes.c_char * 4),
        ("config_table_addr", ctypes.c_uint32),
        ("length", ctypes.c_uint8),  # in 16-byte paragraphs
        ("spec_rev", ctypes.c_uint8),
        ("checksum", ctypes.c_uint8),
        ("feature1", ctypes.c_uint8),  # 0: a configuration table is present
        ("feature2", ctypes.c_uint8),  # bit 7 IMCRP clear: virtual wire mode
        ("feature3_5", ctypes.c_uint8 * 3),
    ]


class MpConfigHeader(ctypes.LittleEndianStructure):
    """The "PCMP" configuration table header; the base table entries follow it."""

    _pack_ = 1
    _fields_ = [
        ("signature", ctypes.c_char * 4),
        ("base_table_length", ctypes.c_uint16),
        ("spec_rev", ctypes.c_uint8),
        ("checksum", ctypes.c_uint8),
        ("oem_id", ctypes.c_char * 8),
        ("product_id", ctypes.c_char * 12),
        ("oem_table_addr", ctypes.c_uint32),
        ("oem_table_size", ctypes.c_uint16),
        ("entry_count", ctypes.c_uint16),
        ("local_apic_addr", ctypes.c_uint32),
        ("ext_table_length", ctypes.c_uint16),
        ("ext_table_checksum", ctypes.c_uint8),
        ("reserved", ctypes.c_uint8),
    ]


class MpProcessorEntry(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("entry_type", ctypes.c_uint8),
        ("local_apic_id", ctypes.c_uint8),
        ("local_apic_version", ctypes.c_uint8),
        ("cpu_flags", ctypes.c_uint8),
        ("cpu_signature", ctypes.c_uint32),
        ("feature_flags", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32 * 2),
    ]


class MpBusEntry(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("entry_type", ctypes.c_uint8),
        ("bus_id", ctypes.c_uint8),
        ("bus_type", ctypes.c_char * 6),
    ]


class MpIoApicEntry(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("entry_type", ctypes.c_uint8),
        ("ioapic_id", ctypes.c_uint8),
        ("ioapic_version", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("address", ctypes.c_uint32),
    ]


class MpInterruptEntry(ctypes.LittleEndianStructure):
    """An I/O (type 3) or local (type 4) interrupt assignment entry; flags 0 = conforms to bus."""

    _pack_ = 1
    _fields_ = [
        ("entry_type", ctypes.c_uint8),
        ("interrupt_type", ctypes.c_uint8),
        ("flags", ctypes.c_uint16),
        ("source_bus_id", ctypes.c_uint8),
        ("source_bus_irq", ctypes.c_uint8),
        ("dest_id", ctypes.c_uint8),  # IOAPIC id, or local APIC id (0xFF = all)
        ("dest_pin", ctypes.c_uint8),  # IOAPIC INTIN#, or LINTIN#
    ]


_FIXED_SIZE = (
    ctypes.sizeof(MpFloatingPointer)
    + ctypes.sizeof(MpConfigHeader)
    + ctypes.sizeof(MpBusEntry)
    + ctypes.sizeof(MpIoApicEntry)
    + (len(ISA_IRQ_TO_IOAPIC_PIN) + 2) * ctypes.sizeof(MpInterruptEntry)
)
MAX_CPUS = (MPTABLE_SIZE - _FIXED_SIZE) // ctypes.sizeof(MpProcessorEntry)
"""How many processor entries fit in the 1 KiB at 0x9FC00."""


def mp_checksum(data: bytes) -> int:
    """The byte that makes ``data`` (with its checksum byte zero) sum to 0 modulo 256."""
    return -sum(data) & 0xFF


def _config_entries(ncpus: int) -> list[ctypes.Structure]:
    ioapic_id = ncpus
    entries: list[ctypes.Structure] = [
        MpProcessorEntry(
            entry_type=MpEntryType.PROCESSOR,
            local_apic_id=cpu,
            local_apic_version=LOCAL_APIC_VERSION,
            cpu_flags=CPU_FLAG_ENABLED | (CPU_FLAG_BSP if cpu == 0 else 0),
            cpu_signature=CPU_SIGNATURE,
            feature_flags=CPU_FEATURES,
        )
        for cpu in range(ncpus)
    ]
    entries.append(MpBusEntry(entry_type=MpEntryType.BUS, bus_id=ISA_BUS_ID, bus_type=b"ISA   "))
    entries.append(
        MpIoApicEntry(
            entry_type=MpEntryType.IOAPIC,
            ioapic_id=ioapic_id,
            ioapic_version=IOAPIC_VERSION,
            flags=IOAPIC_FLAG_ENABLED,
            address=IOAPIC_ADDR,
        )
    )
    entries += [
        MpInterruptEntry(
            entry_type=MpEntryType.IO_INTERRUPT,
            interrupt_type=MpInterruptType.INT,
            source_bus_id=ISA_BUS_ID,
            source_bus_irq=irq,
            dest_id=ioapic_id,
            dest_pin=pin,
        )
        for irq, pin in ISA_IRQ_TO_IOAPIC_PIN.items()
    ]
    for lint, kind in ((0, MpInterruptType.EXTINT), (1, MpInterruptType.NMI)):
        entries.append(
            MpInterruptEntry(
                entry_type=MpEntryType.LOCAL_INTERRUPT,
                interrupt_type=kind,
                source_bus_id=ISA_BUS_ID,
                source_bus_irq=0,
                dest_id=ALL_LOCAL_APICS,
                dest_pin=lint,
            )
        )
    return entries


def build_mptable(ncpus: int, base: int = MPTABLE_ADDR) -> bytes:
    """Return the floating pointer followed by the configuration table, for placement at ``base``."""
    if not 1 <= ncpus <= MAX_CPUS:
        raise BootError(f"MP table: {ncpus} vCPUs requested, between 1 and {MAX_CPUS} are supported")
    entries = _config_entries(ncpus)
    body = b"".join(bytes(entry) for entry in entries)
    header = MpConfigHeader(
        signature=b"PCMP",
        base_table_length=ctypes.sizeof(MpConfigHeader) + len(body),
        spec_rev=MP_SPEC_REVISION,
        oem_id=b"KVMKIT",
        product_id=b"KVMKIT VM",
        entry_count=len(entries),
        local_apic_addr=LOCAL_APIC_ADDR,
    )
    header.checksum = mp_checksum(bytes(header) + body)
    pointer = MpFloatingPointer(
        signature=b"_MP_",
        config_table_addr=base + ctypes.sizeof(MpFloatingPointer),
        length=ctypes.sizeof(MpFloatingPointer) // 16,
        spec_rev=MP_SPEC_REVISION,
    )
    pointer.checksum = mp_checksum(bytes(pointer))
    return bytes(pointer) + bytes(header) + body


def write_mptable(ram: GuestRam, ncpus: int, base: int = MPTABLE_ADDR) -> int:
    """Write the MP table at ``base``; return its size in bytes."""
    table = build_mptable(ncpus, base)
    ram.write(base, table)
    return len(table)
