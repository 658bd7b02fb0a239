"""KVM structure layouts and ioctl numbers match the kernel ABI."""

from __future__ import annotations

import ctypes

import pytest

from kvmkit.accel.kvm import ioctls
from kvmkit.accel.kvm import structs as s


@pytest.mark.parametrize(
    ("struct", "size"),
    [
        (s.KvmRegs, 144),
        (s.KvmSregs, 312),
        (s.KvmFpu, 416),
        (s.KvmCpuidEntry2, 40),
        (s.KvmUserspaceMemoryRegion, 32),
        (s.KvmIrqfd, 32),
        (s.KvmIoeventfd, 64),
        (s.KvmMsi, 32),
        (s.KvmIrqRoutingEntry, 48),
        (s.KvmPitConfig, 64),
        (s.KvmClockData, 48),
        (s.KvmVcpuEvents, 64),
        (s.KvmLapicState, 1024),
    ],
)
def test_struct_sizes_match_the_kernel_abi(struct: type, size: int) -> None:
    assert ctypes.sizeof(struct) == size


def test_kvm_run_exit_union_starts_at_offset_32_and_is_256_bytes() -> None:
    assert s.KvmRun.exit.offset == 32
    assert s.KvmRun.kvm_valid_regs.offset == 32 + 256


def test_variable_length_tables_place_entries_after_an_8_byte_header() -> None:
    assert s.cpuid2_with_entries(3).entries.offset == 8
    assert ctypes.sizeof(s.msrs_with_entries(2)) == 8 + 2 * 16
    assert ctypes.sizeof(s.irq_routing_with_entries(4)) == 8 + 4 * 48


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (ioctls.KVM_RUN, 0xAE80),
        (ioctls.KVM_CREATE_VM, 0xAE01),
        (ioctls.KVM_GET_REGS, 0x8090AE81),
        (ioctls.KVM_SET_SREGS, 0x4138AE84),
        (ioctls.KVM_SET_USER_MEMORY_REGION, 0x4020AE46),
        (ioctls.KVM_GET_SUPPORTED_CPUID, 0xC008AE05),
        (ioctls.KVM_IRQFD, 0x4020AE76),
    ],
)
def test_ioctl_numbers_encode_direction_size_and_number(number: int, expected: int) -> None:
    assert number == expected
