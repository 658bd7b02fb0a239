import ctypes

import pytest

from kvmkit.boot.mptable import (
    IOAPIC_ADDR,
    MAX_CPUS,
    MpConfigHeader,
    MpEntryType,
    MpFloatingPointer,
    MpInterruptEntry,
    MpInterruptType,
    MpIoApicEntry,
    MpProcessorEntry,
    build_mptable,
    write_mptable,
)
from kvmkit.errors import BootError

BASE = 0x9FC00
ENTRY_SIZES = {0: 20, 1: 8, 2: 8, 3: 8, 4: 8}
ENTRY_CLASSES = {0: MpProcessorEntry, 2: MpIoApicEntry, 3: MpInterruptEntry, 4: MpInterruptEntry}


def _parse(table: bytes):
    pointer = MpFloatingPointer.from_buffer_copy(table)
    header_offset = pointer.config_table_addr - BASE
    header = MpConfigHeader.from_buffer_copy(table, header_offset)
    entries = []
    offset = header_offset + ctypes.sizeof(MpConfigHeader)
    for _ in range(header.entry_count):
        kind = table[offset]
        cls = ENTRY_CLASSES.get(kind)
        entries.append((kind, cls.from_buffer_copy(table, offset) if cls else None))
        offset += ENTRY_SIZES[kind]
    return pointer, header, header_offset, entries


def test_floating_pointer_checksum_is_zero():
    table = build_mptable(4)
    assert bytes(table[:4]) == b"_MP_"
    assert sum(table[:16]) % 256 == 0


def test_configuration_table_checksum_is_zero():
    table = build_mptable(4)
    _, header, offset, _ = _parse(table)
    assert sum(table[offset : offset + header.base_table_length]) % 256 == 0


def test_floating_pointer_points_at_pcmp_header():
    pointer, header, _, _ = _parse(build_mptable(2))
    assert header.signature == b"PCMP"
    assert pointer.config_table_addr == BASE + 16
    assert pointer.spec_rev == 4 and pointer.length == 1


def test_entry_counts_by_type():
    _, _, _, entries = _parse(build_mptable(3))
    counts = {kind: sum(1 for k, _ in entries if k == kind) for kind in MpEntryType}
    assert counts == {
        MpEntryType.PROCESSOR: 3,
        MpEntryType.BUS: 1,
        MpEntryType.IOAPIC: 1,
        MpEntryType.IO_INTERRUPT: 15,
        MpEntryType.LOCAL_INTERRUPT: 2,
    }


def test_processor_entries_use_index_as_apic_id_and_flag_only_the_bsp():
    _, _, _, entries = _parse(build_mptable(3))
    cpus = [entry for kind, entry in entries if kind == MpEntryType.PROCESSOR]
    assert [cpu.local_apic_id for cpu in cpus] == [0, 1, 2]
    assert [cpu.cpu_flags for cpu in cpus] == [0b11, 0b01, 0b01]


def test_ioapic_id_follows_the_cpus_and_sits_at_fec00000():
    _, _, _, entries = _parse(build_mptable(5))
    (ioapic,) = [entry for kind, entry in entries if kind == MpEntryType.IOAPIC]
    assert (ioapic.ioapic_id, ioapic.address, ioapic.flags) == (5, IOAPIC_ADDR, 1)


def test_isa_irq0_routes_to_pin2_and_irq2_is_absent():
    _, _, _, entries = _parse(build_mptable(1))
    routes = {e.source_bus_irq: e.dest_pin for kind, e in entries if kind == MpEntryType.IO_INTERRUPT}
    assert routes[0] == 2
    assert 2 not in routes
    assert all(routes[irq] == irq for irq in range(1, 16) if irq != 2)


def test_local_interrupts_are_extint_on_lint0_and_nmi_on_lint1():
    _, _, _, entries = _parse(build_mptable(1))
    local = [
        (e.interrupt_type, e.dest_id, e.dest_pin)
        for kind, e in entries
        if kind == MpEntryType.LOCAL_INTERRUPT
    ]
    assert local == [(MpInterruptType.EXTINT, 0xFF, 0), (MpInterruptType.NMI, 0xFF, 1)]


def test_largest_table_fits_in_the_last_kb_of_base_memory():
    assert len(build_mptable(MAX_CPUS)) <= 0x400


@pytest.mark.parametrize("ncpus", [0, MAX_CPUS + 1])
def test_unsupported_cpu_counts_are_rejected(ncpus):
    with pytest.raises(BootError, match=f"{ncpus} vCPUs"):
        build_mptable(ncpus)


def test_write_mptable_stores_it_at_9fc00(fake_ram_factory):
    ram = fake_ram_factory([(0, 1 << 20)])
    size = write_mptable(ram, 2)
    assert bytes(ram.view(BASE, size)) == build_mptable(2)
