"""Guest CPUID: topology of vCPU i of n, hypervisor bit, paravirtual leaves kept."""

from __future__ import annotations

import pytest

from kvmkit.accel.kvm.cpuid import build_guest_cpuid, find_leaf
from kvmkit.accel.kvm.structs import KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KvmCpuidEntry2
from kvmkit.errors import ConfigError


def host_like_table() -> list[KvmCpuidEntry2]:
    return [
        KvmCpuidEntry2(function=0, eax=0xB),
        KvmCpuidEntry2(function=1, eax=0xA10F11, ebx=0x0000_0800, ecx=0x0000_2000, edx=0x178B_FBFF),
        KvmCpuidEntry2(function=4, index=0, flags=KVM_CPUID_FLAG_SIGNIFCANT_INDEX, eax=(1 << 5) | 1),
        KvmCpuidEntry2(function=4, index=1, flags=KVM_CPUID_FLAG_SIGNIFCANT_INDEX, eax=(3 << 5) | 3),
        KvmCpuidEntry2(function=0xB, index=0, flags=KVM_CPUID_FLAG_SIGNIFCANT_INDEX, ebx=2, ecx=0x100),
        KvmCpuidEntry2(function=0x4000_0000, eax=0x4000_0001, ebx=0x4B4D_564B),
        KvmCpuidEntry2(function=0x4000_0001, eax=0x0100_07FB),
        KvmCpuidEntry2(function=0x8000_0008, ecx=0x0000_700F),
    ]


def test_leaf1_carries_the_apic_id_of_the_vcpu() -> None:
    table = build_guest_cpuid(host_like_table(), 2, 4)
    assert find_leaf(table, 1).ebx >> 24 == 2


def test_leaf1_sets_the_hypervisor_bit() -> None:
    table = build_guest_cpuid(host_like_table(), 0, 1)
    assert find_leaf(table, 1).ecx & (1 << 31)


def test_leaf1_reports_logical_processor_count_for_smp() -> None:
    table = build_guest_cpuid(host_like_table(), 0, 3)
    leaf1 = find_leaf(table, 1)
    assert (leaf1.ebx >> 16) & 0xFF == 4  # next power of two of 3
    assert leaf1.edx & (1 << 28)


def test_leaf_0xb_describes_one_thread_per_core_and_n_cores() -> None:
    table = build_guest_cpuid(host_like_table(), 5, 6)
    smt, core, end = (find_leaf(table, 0xB, sub) for sub in range(3))
    assert (smt.ebx, (smt.ecx >> 8) & 0xFF, smt.edx) == (1, 1, 5)
    assert (core.eax, core.ebx, (core.ecx >> 8) & 0xFF, core.edx) == (3, 6, 2, 5)
    assert (end.ebx, (end.ecx >> 8) & 0xFF) == (0, 0)


def test_leaf4_core_count_field_covers_all_vcpus() -> None:
    table = build_guest_cpuid(host_like_table(), 0, 4)
    assert (find_leaf(table, 4, 0).eax >> 26) + 1 == 4


def test_amd_leaf_0x80000008_reports_n_minus_one_cores() -> None:
    table = build_guest_cpuid(host_like_table(), 0, 4)
    assert find_leaf(table, 0x8000_0008).ecx & 0xFF == 3


def test_kvm_paravirtual_leaves_are_kept_unchanged() -> None:
    table = build_guest_cpuid(host_like_table(), 1, 2)
    assert find_leaf(table, 0x4000_0000).ebx == 0x4B4D_564B
    assert find_leaf(table, 0x4000_0001).eax == 0x0100_07FB


def test_input_table_is_not_modified() -> None:
    supported = host_like_table()
    build_guest_cpuid(supported, 3, 4)
    assert supported[1].ebx == 0x0000_0800


def test_vcpu_index_outside_count_is_rejected() -> None:
    with pytest.raises(ConfigError, match="index 4"):
        build_guest_cpuid(host_like_table(), 4, 4)
