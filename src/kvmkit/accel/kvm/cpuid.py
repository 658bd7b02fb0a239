"""The guest CPUID table: KVM's supported leaves, patched with vCPU i of n's topology.

Topology model: one socket, n cores, one thread per core; APIC ID = vCPU index. The hypervisor
bit is set and KVM's paravirtual leaves (0x40000000..) are kept so the guest uses kvm-clock.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvmkit.accel.kvm.structs import KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KvmCpuidEntry2
from kvmkit.errors import ConfigError

LEAF_FEATURES = 0x1
LEAF_CACHE_PARAMETERS = 0x4
LEAF_TOPOLOGY = 0xB
LEAF_TOPOLOGY_V2 = 0x1F
LEAF_AMD_ADDRESS_SIZES = 0x8000_0008
LEAF_AMD_TOPOLOGY = 0x8000_001E

FEATURES_ECX_HYPERVISOR = 1 << 31
FEATURES_EDX_HTT = 1 << 28

TOPOLOGY_LEVEL_INVALID = 0
TOPOLOGY_LEVEL_SMT = 1
TOPOLOGY_LEVEL_CORE = 2


def _bits_for(count: int) -> int:
    """Number of APIC ID bits needed to number `count` items."""
    return max(count - 1, 0).bit_length()


def _set_field(value: int, low: int, width: int, field: int) -> int:
    mask = ((1 << width) - 1) << low
    return (value & ~mask) | ((field << low) & mask)


def _copy(entry: KvmCpuidEntry2) -> KvmCpuidEntry2:
    return KvmCpuidEntry2.from_buffer_copy(entry)


def _topology_leaf(function: int, subleaf: int, apic_id: int, vcpu_count: int) -> KvmCpuidEntry2:
    """Leaf 0xB/0x1F subleaf: SMT level (1 thread), core level (n cores), then the invalid level."""
    entry = KvmCpuidEntry2(
        function=function, index=subleaf, flags=KVM_CPUID_FLAG_SIGNIFCANT_INDEX, edx=apic_id
    )
    if subleaf == 0:
        entry.eax, entry.ebx, entry.ecx = 0, 1, (TOPOLOGY_LEVEL_SMT << 8) | subleaf
    elif subleaf == 1:
        entry.eax, entry.ebx, entry.ecx = (
            _bits_for(vcpu_count),
            vcpu_count,
            (TOPOLOGY_LEVEL_CORE << 8) | subleaf,
        )
    else:
        entry.ecx = (TOPOLOGY_LEVEL_INVALID << 8) | subleaf
    return entry


def build_guest_cpuid(
    supported: Sequence[KvmCpuidEntry2], vcpu_index: int, vcpu_count: int
) -> list[KvmCpuidEntry2]:
    """Return the CPUID table for vCPU `vcpu_index` of `vcpu_count` (the input is not modified)."""
    if not 0 <= vcpu_index < vcpu_count:
        raise ConfigError(f"cpuid: vCPU index {vcpu_index} is not below the vCPU count {vcpu_count}")
    if vcpu_count > 255:
        raise ConfigError(f"cpuid: {vcpu_count} vCPUs need x2APIC IDs; at most 255 are supported")
    apic_id = vcpu_index
    core_bits = _bits_for(vcpu_count)
    table: list[KvmCpuidEntry2] = []
    topology_leaves_seen: set[int] = set()
    for original in supported:
        function = original.function
        if function in (LEAF_TOPOLOGY, LEAF_TOPOLOGY_V2):
            if function not in topology_leaves_seen:
                topology_leaves_seen.add(function)
                table.extend(_topology_leaf(function, sub, apic_id, vcpu_count) for sub in range(3))
            continue
        entry = _copy(original)
        if function == LEAF_FEATURES:
            entry.ebx = _set_field(entry.ebx, 24, 8, apic_id)
            entry.ebx = _set_field(entry.ebx, 16, 8, 1 << core_bits if vcpu_count > 1 else 1)
            entry.ecx |= FEATURES_ECX_HYPERVISOR
            if vcpu_count > 1:
                entry.edx |= FEATURES_EDX_HTT
            else:
                entry.edx &= ~FEATURES_EDX_HTT
        elif function == LEAF_CACHE_PARAMETERS and entry.eax & 0x1F:
            entry.eax = _set_field(entry.eax, 26, 6, (1 << core_bits) - 1)
            cache_level = (entry.eax >> 5) & 0x7
            sharing = (1 << core_bits) - 1 if cache_level >= 3 else 0
            entry.eax = _set_field(entry.eax, 14, 12, sharing)
        elif function == LEAF_AMD_ADDRESS_SIZES:
            entry.ecx = _set_field(entry.ecx, 0, 8, vcpu_count - 1)
            entry.ecx = _set_field(entry.ecx, 12, 4, core_bits)
        elif function == LEAF_AMD_TOPOLOGY:
            entry.eax = apic_id
            entry.ebx = _set_field(entry.ebx, 0, 8, vcpu_index)
            entry.ebx = _set_field(entry.ebx, 8, 8, 0)
            entry.ecx = _set_field(entry.ecx, 0, 8, 0)
        table.append(entry)
    return table


def find_leaf(table: Sequence[KvmCpuidEntry2], function: int, index: int = 0) -> KvmCpuidEntry2 | None:
    """The entry for `function`/`index` (index ignored for leaves without a significant index)."""
    for entry in table:
        if entry.function == function and (
            entry.index == index or not entry.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX
        ):
            return entry
    return None
