import itertools

import pytest

from kvmkit.boot.e820 import E820Entry, E820Type, build_e820
from kvmkit.errors import BootError

MIB = 1 << 20
GIB = 1 << 30


def test_low_ram_is_split_around_ebda_and_legacy_hole():
    entries = build_e820([(0, 64 * MIB)])
    assert entries == [
        E820Entry(0, 0x9FC00, E820Type.RAM),
        E820Entry(0x9FC00, 0x400, E820Type.RESERVED),
        E820Entry(0x100000, 64 * MIB - 0x100000, E820Type.RAM),
    ]


def test_entries_are_sorted_and_do_not_overlap():
    entries = build_e820([(4 * GIB, 2 * GIB), (0, 3 * GIB)])
    assert [entry.addr for entry in entries] == sorted(entry.addr for entry in entries)
    for first, second in itertools.pairwise(entries):
        assert first.end <= second.addr


def test_ram_above_4g_is_reported_as_ram():
    entries = build_e820([(0, 3 * GIB), (4 * GIB, 1 * GIB)])
    assert entries[-1] == E820Entry(4 * GIB, 1 * GIB, E820Type.RAM)


def test_nothing_claims_the_pci_hole():
    entries = build_e820([(0, 3 * GIB), (4 * GIB, 1 * GIB)])
    assert not any(entry.addr < 4 * GIB and entry.end > 3 * GIB for entry in entries)


def test_ram_overlapping_the_pci_hole_is_rejected():
    with pytest.raises(BootError, match="PCI hole"):
        build_e820([(0, 3 * GIB + MIB)])


def test_overlapping_ram_regions_are_rejected():
    with pytest.raises(BootError, match="overlap"):
        build_e820([(0, 64 * MIB), (32 * MIB, 64 * MIB)])


def test_no_ram_is_rejected():
    with pytest.raises(BootError, match="no RAM"):
        build_e820([])


def test_reserved_range_outside_ram_is_not_reported():
    entries = build_e820([(0x100000, 64 * MIB)])
    assert all(entry.type == E820Type.RAM for entry in entries)


def test_pc_ram_layout_regions_map_to_expected_e820():
    from kvmkit.memory.layout import pc_ram_layout

    regions = [(r.gpa, r.size) for r in pc_ram_layout(4 * GIB).ranges]
    assert build_e820(regions) == [
        E820Entry(0, 0x9FC00, E820Type.RAM),
        E820Entry(0x9FC00, 0x400, E820Type.RESERVED),
        E820Entry(0x100000, 3 * GIB - 0x100000, E820Type.RAM),
        E820Entry(4 * GIB, 1 * GIB, E820Type.RAM),
    ]
