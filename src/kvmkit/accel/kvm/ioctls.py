"""KVM ioctl request numbers, capabilities and exit reasons.

Request numbers are computed with the Linux _IOC encoding from the sizes of the ctypes
declarations in `structs`, so a layout change cannot silently desynchronise them.
"""

from __future__ import annotations

import ctypes
from enum import IntEnum

from kvmkit.accel.kvm import structs as s

_IOC_NRBITS = 8
_IOC_TYPEBITS = 8
_IOC_SIZEBITS = 14
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = _IOC_NRSHIFT + _IOC_NRBITS
_IOC_SIZESHIFT = _IOC_TYPESHIFT + _IOC_TYPEBITS
_IOC_DIRSHIFT = _IOC_SIZESHIFT + _IOC_SIZEBITS

_IOC_NONE = 0
_IOC_WRITE = 1
_IOC_READ = 2

KVMIO = 0xAE


def _ioc(direction: int, type_: int, nr: int, size: int) -> int:
    return (direction << _IOC_DIRSHIFT) | (size << _IOC_SIZESHIFT) | (type_ << _IOC_TYPESHIFT) | nr


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, KVMIO, nr, 0)


def _ior(nr: int, ctype: type) -> int:
    return _ioc(_IOC_READ, KVMIO, nr, ctypes.sizeof(ctype))


def _iow(nr: int, ctype: type) -> int:
    return _ioc(_IOC_WRITE, KVMIO, nr, ctypes.sizeof(ctype))


def _iowr(nr: int, ctype: type) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, KVMIO, nr, ctypes.sizeof(ctype))


# /dev/kvm
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_GET_MSR_INDEX_LIST = _iowr(0x02, s.KvmMsrList)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, s.KvmCpuid2)

# VM fd
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, s.KvmUserspaceMemoryRegion)
KVM_SET_TSS_ADDR = _io(0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(0x48, ctypes.c_uint64)
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_IRQ_LINE = _iow(0x61, s.KvmIrqLevel)
KVM_SET_GSI_ROUTING = _iow(0x6A, s.KvmIrqRouting)
KVM_IRQFD = _iow(0x76, s.KvmIrqfd)
KVM_CREATE_PIT2 = _iow(0x77, s.KvmPitConfig)
KVM_IOEVENTFD = _iow(0x79, s.KvmIoeventfd)
KVM_SET_CLOCK = _iow(0x7B, s.KvmClockData)
KVM_GET_CLOCK = _ior(0x7C, s.KvmClockData)
KVM_SIGNAL_MSI = _iow(0xA5, s.KvmMsi)

# vCPU fd
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, s.KvmRegs)
KVM_SET_REGS = _iow(0x82, s.KvmRegs)
KVM_GET_SREGS = _ior(0x83, s.KvmSregs)
KVM_SET_SREGS = _iow(0x84, s.KvmSregs)
KVM_GET_MSRS = _iowr(0x88, s.KvmMsrs)
KVM_SET_MSRS = _iow(0x89, s.KvmMsrs)
KVM_GET_FPU = _ior(0x8C, s.KvmFpu)
KVM_SET_FPU = _iow(0x8D, s.KvmFpu)
KVM_GET_LAPIC = _ior(0x8E, s.KvmLapicState)
KVM_SET_LAPIC = _iow(0x8F, s.KvmLapicState)
KVM_SET_CPUID2 = _iow(0x90, s.KvmCpuid2)
KVM_GET_CPUID2 = _iowr(0x91, s.KvmCpuid2)
KVM_GET_MP_STATE = _ior(0x98, s.KvmMpState)
KVM_SET_MP_STATE = _iow(0x99, s.KvmMpState)
KVM_GET_VCPU_EVENTS = _ior(0x9F, s.KvmVcpuEvents)
KVM_SET_VCPU_EVENTS = _iow(0xA0, s.KvmVcpuEvents)

KVM_API_VERSION = 12


class Cap(IntEnum):
    """KVM_CAP_* capability numbers for KVM_CHECK_EXTENSION."""

    IRQCHIP = 0
    HLT = 1
    USER_MEMORY = 3
    SET_TSS_ADDR = 4
    EXT_CPUID = 7
    NR_VCPUS = 9
    NR_MEMSLOTS = 10
    PIT = 11
    MP_STATE = 14
    SYNC_MMU = 16
    USER_NMI = 22
    IRQ_ROUTING = 25
    IRQ_INJECT_STATUS = 26
    IRQFD = 32
    PIT2 = 33
    PIT_STATE2 = 35
    IOEVENTFD = 36
    SET_IDENTITY_MAP_ADDR = 37
    ADJUST_CLOCK = 39
    INTERNAL_ERROR_DATA = 40
    VCPU_EVENTS = 41
    XSAVE = 55
    XCRS = 56
    TSC_CONTROL = 60
    GET_TSC_KHZ = 61
    MAX_VCPUS = 66
    KVMCLOCK_CTRL = 76
    SIGNAL_MSI = 77
    READONLY_MEM = 81
    IRQFD_RESAMPLE = 82
    IOEVENTFD_NO_LENGTH = 100
    SPLIT_IRQCHIP = 121
    MAX_VCPU_ID = 128
    X2APIC_API = 129
    IMMEDIATE_EXIT = 136


class ExitReason(IntEnum):
    """KVM_EXIT_* values of kvm_run.exit_reason."""

    UNKNOWN = 0
    EXCEPTION = 1
    IO = 2
    HYPERCALL = 3
    DEBUG = 4
    HLT = 5
    MMIO = 6
    IRQ_WINDOW_OPEN = 7
    SHUTDOWN = 8
    FAIL_ENTRY = 9
    INTR = 10
    SET_TPR = 11
    TPR_ACCESS = 12
    NMI = 16
    INTERNAL_ERROR = 17
    WATCHDOG = 21
    EPR = 23
    SYSTEM_EVENT = 24
    IOAPIC_EOI = 26
    HYPERV = 27
    X86_RDMSR = 29
    X86_WRMSR = 30
    DIRTY_RING_FULL = 31
    AP_RESET_HOLD = 32
    X86_BUS_LOCK = 33
    XEN = 34
    NOTIFY = 37
    MEMORY_FAULT = 39


class SystemEvent(IntEnum):
    """KVM_SYSTEM_EVENT_* values of kvm_run.system_event.type."""

    SHUTDOWN = 1
    RESET = 2
    CRASH = 3
    WAKEUP = 4
    SUSPEND = 5
    SEV_TERM = 6


class MpState(IntEnum):
    """KVM_MP_STATE_* values (x86)."""

    RUNNABLE = 0
    UNINITIALIZED = 1
    INIT_RECEIVED = 2
    HALTED = 3
    SIPI_RECEIVED = 4


class InternalErrorSuberror(IntEnum):
    """KVM_INTERNAL_ERROR_* suberror codes."""

    EMULATION = 1
    SIMUL_EX = 2
    DELIVERY_EV = 3
    UNEXPECTED_EXIT_REASON = 4
