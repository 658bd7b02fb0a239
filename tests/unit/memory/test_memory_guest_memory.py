"""Guest RAM in one mapping (anonymous with huge pages, or a memfd), with zero-copy views."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmkit.errors import ConfigError, GuestError
from kvmkit.memory.guest_memory import GuestMemory
from kvmkit.memory.layout import RamLayout, RamRange

MiB = 1 << 20


@pytest.fixture
def memory() -> Iterator[GuestMemory]:
    ram = GuestMemory(4 * MiB)
    yield ram
    ram.close()


def test_regions_follow_the_layout(memory: GuestMemory) -> None:
    assert [(r.gpa, r.size, r.memfd_offset) for r in memory.regions] == [(0, 0xA0000, 0), (MiB, 3 * MiB, MiB)]


def test_a_view_aliases_the_memfd_at_its_offset() -> None:
    memory = GuestMemory(4 * MiB, backend="memfd")
    try:
        memory.view(MiB + 16, 4)[:] = b"kvmk"
        assert os.pread(memory.fd, 4, MiB + 16) == b"kvmk"
    finally:
        memory.close()
    assert memory.fd == -1


def _vm_flags(address: int) -> set[str]:
    """The VmFlags of the mapping holding `address`, from /proc/self/smaps."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            inside = start <= address < end
        elif inside and fields[0] == "VmFlags:":
            return set(fields[1:])
    raise AssertionError(f"no mapping holds {address:#x}")


def test_anonymous_ram_is_huge_page_aligned_and_advised_for_huge_pages() -> None:
    memory = GuestMemory(64 * MiB)
    try:
        assert memory.fd == -1 and memory.backend == "anonymous"
        for region in memory.regions:  # host and guest addresses agree modulo 2 MiB: KVM can map huge pages
            assert (region.host_address - region.gpa) % (2 * MiB) == 0
        assert "hg" in _vm_flags(memory.regions[1].host_address)
    finally:
        memory.close()


def test_an_unknown_backend_is_refused() -> None:
    with pytest.raises(ConfigError, match="hugetlbfs"):
        GuestMemory(4 * MiB, backend="hugetlbfs")


def test_view_up_to_the_last_byte_of_a_region_is_allowed(memory: GuestMemory) -> None:
    assert len(memory.view(0xA0000 - 8, 8)) == 8


def test_view_crossing_the_640k_hole_names_the_address(memory: GuestMemory) -> None:
    with pytest.raises(GuestError, match="0x9fffc"):
        memory.view(0x9FFFC, 8)


def test_view_past_the_end_of_ram_is_a_guest_error(memory: GuestMemory) -> None:
    with pytest.raises(GuestError):
        memory.view(4 * MiB - 2, 4)


def test_negative_address_or_length_is_a_guest_error(memory: GuestMemory) -> None:
    with pytest.raises(GuestError):
        memory.view(-1, 2)
    with pytest.raises(GuestError):
        memory.view(0x1000, -1)


def test_region_at_returns_none_in_a_hole(memory: GuestMemory) -> None:
    assert memory.region_at(0xB8000) is None
    assert memory.region_at(MiB).gpa == MiB


def test_host_address_points_at_the_mapping(memory: GuestMemory) -> None:
    import ctypes

    memory.view(MiB, 3)[:] = b"abc"
    assert ctypes.string_at(memory.regions[1].host_address, 3) == b"abc"


def test_custom_layout_with_adjacent_ranges_is_honoured() -> None:
    layout = RamLayout(0x4000, (RamRange(0, 0x2000, 0), RamRange(0x2000, 0x2000, 0x2000)))
    ram = GuestMemory(0x4000, layout)
    try:
        assert len(ram.regions) == 2
        assert ram.view(0x2000, 0x2000).nbytes == 0x2000
    finally:
        ram.close()


@pytest.mark.skipif(not os.access("/dev/kvm", os.R_OK | os.W_OK), reason="needs /dev/kvm")
def test_map_into_registers_each_region_as_a_kvm_slot(memory: GuestMemory) -> None:
    from kvmkit.accel.kvm import ExitReason, Kvm

    kvm = Kvm()
    vm = kvm.create_vm()
    try:
        assert memory.map_into(vm) == 2
        # out 0x80, al; hlt — run in real mode from the memfd-backed low RAM
        memory.view(0x1000, 3)[:] = bytes([0xE6, 0x80, 0xF4])
        vcpu = vm.create_vcpu(0)
        sregs = vcpu.get_sregs()
        sregs.cs.base, sregs.cs.selector = 0, 0
        vcpu.set_sregs(sregs)
        regs = vcpu.get_regs()
        regs.rip, regs.rflags = 0x1000, 2
        vcpu.set_regs(regs)
        assert vcpu.run() == ExitReason.IO and vcpu.kvm_run.io.port == 0x80
        vcpu.close()
    finally:
        vm.close()
        kvm.close()
