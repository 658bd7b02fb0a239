"""Model-specific registers and the values a Linux guest expects at boot."""

from __future__ import annotations

from enum import IntEnum


class Msr(IntEnum):
    """Architectural MSR indices kvmkit sets or saves."""

    IA32_TSC = 0x10
    IA32_APIC_BASE = 0x1B
    IA32_SYSENTER_CS = 0x174
    IA32_SYSENTER_ESP = 0x175
    IA32_SYSENTER_EIP = 0x176
    IA32_MISC_ENABLE = 0x1A0
    IA32_MTRR_DEF_TYPE = 0x2FF
    IA32_PAT = 0x277
    EFER = 0xC000_0080
    STAR = 0xC000_0081
    LSTAR = 0xC000_0082
    CSTAR = 0xC000_0083
    SYSCALL_MASK = 0xC000_0084
    KERNEL_GS_BASE = 0xC000_0102
    TSC_AUX = 0xC000_0103
    KVM_SYSTEM_TIME_NEW = 0x4B56_4D01
    KVM_WALL_CLOCK_NEW = 0x4B56_4D00


MISC_ENABLE_FAST_STRING = 1 << 0
MTRR_DEF_TYPE_ENABLE = 1 << 11
MTRR_TYPE_WRITEBACK = 6
PAT_POWER_ON_VALUE = 0x0007_0406_0007_0406


def boot_msrs() -> dict[int, int]:
    """MSR values for a vCPU entering Linux's 64-bit boot protocol.

    The syscall MSRs start cleared, fast strings are enabled, and MTRRs are enabled with a
    write-back default type so the guest does not map all RAM uncached.
    """
    return {
        Msr.IA32_SYSENTER_CS: 0,
        Msr.IA32_SYSENTER_ESP: 0,
        Msr.IA32_SYSENTER_EIP: 0,
        Msr.STAR: 0,
        Msr.CSTAR: 0,
        Msr.KERNEL_GS_BASE: 0,
        Msr.SYSCALL_MASK: 0,
        Msr.LSTAR: 0,
        Msr.IA32_TSC: 0,
        Msr.IA32_MISC_ENABLE: MISC_ENABLE_FAST_STRING,
        Msr.IA32_MTRR_DEF_TYPE: MTRR_DEF_TYPE_ENABLE | MTRR_TYPE_WRITEBACK,
        Msr.IA32_PAT: PAT_POWER_ON_VALUE,
    }
