"""ctypes declarations of the x86-64 KVM structures kvmkit passes to the kernel.

Layouts follow the KVM API documentation (Documentation/virt/kvm/api.rst). Variable-length
structures (kvm_msrs, kvm_cpuid2, kvm_irq_routing) are declared as their fixed header; the
`*_with_entries(n)` factories build a type with room for `n` trailing entries.
"""

from __future__ import annotations

import ctypes
from functools import cache

u8 = ctypes.c_uint8
u16 = ctypes.c_uint16
u32 = ctypes.c_uint32
s32 = ctypes.c_int32
u64 = ctypes.c_uint64

KVM_NR_INTERRUPTS = 256


class Struct(ctypes.LittleEndianStructure):
    """Base of every KVM structure: little-endian, natural C alignment."""


class Union(ctypes.LittleEndianUnion):
    """Base of every KVM union."""


class KvmRegs(Struct):
    """struct kvm_regs: the general purpose registers."""

    _fields_ = [
        (name, u64)
        for name in (
            "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
            "rip", "rflags",
        )
    ]  # fmt: skip


class KvmSegment(Struct):
    """struct kvm_segment: a segment register with its hidden descriptor cache."""

    _fields_ = [
        ("base", u64),
        ("limit", u32),
        ("selector", u16),
        ("type", u8),
        ("present", u8),
        ("dpl", u8),
        ("db", u8),
        ("s", u8),
        ("l", u8),
        ("g", u8),
        ("avl", u8),
        ("unusable", u8),
        ("padding", u8),
    ]


class KvmDtable(Struct):
    """struct kvm_dtable: GDTR/IDTR."""

    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


class KvmSregs(Struct):
    """struct kvm_sregs: segment, descriptor-table and control registers."""

    _fields_ = [
        ("cs", KvmSegment),
        ("ds", KvmSegment),
        ("es", KvmSegment),
        ("fs", KvmSegment),
        ("gs", KvmSegment),
        ("ss", KvmSegment),
        ("tr", KvmSegment),
        ("ldt", KvmSegment),
        ("gdt", KvmDtable),
        ("idt", KvmDtable),
        ("cr0", u64),
        ("cr2", u64),
        ("cr3", u64),
        ("cr4", u64),
        ("cr8", u64),
        ("efer", u64),
        ("apic_base", u64),
        ("interrupt_bitmap", u64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class KvmFpu(Struct):
    """struct kvm_fpu: x87 and SSE state (legacy FXSAVE view)."""

    _fields_ = [
        ("fpr", (u8 * 16) * 8),
        ("fcw", u16),
        ("fsw", u16),
        ("ftwx", u8),
        ("pad1", u8),
        ("last_opcode", u16),
        ("last_ip", u64),
        ("last_dp", u64),
        ("xmm", (u8 * 16) * 16),
        ("mxcsr", u32),
        ("pad2", u32),
    ]


class KvmMsrEntry(Struct):
    """struct kvm_msr_entry: one model-specific register."""

    _fields_ = [("index", u32), ("reserved", u32), ("data", u64)]


class KvmMsrs(Struct):
    """struct kvm_msrs header; entries follow (see msrs_with_entries)."""

    _fields_ = [("nmsrs", u32), ("pad", u32)]


class KvmMsrList(Struct):
    """struct kvm_msr_list header; u32 indices follow."""

    _fields_ = [("nmsrs", u32)]


class KvmCpuidEntry2(Struct):
    """struct kvm_cpuid_entry2: one CPUID leaf/subleaf."""

    _fields_ = [
        ("function", u32),
        ("index", u32),
        ("flags", u32),
        ("eax", u32),
        ("ebx", u32),
        ("ecx", u32),
        ("edx", u32),
        ("padding", u32 * 3),
    ]


KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0


class KvmCpuid2(Struct):
    """struct kvm_cpuid2 header; entries follow (see cpuid2_with_entries)."""

    _fields_ = [("nent", u32), ("padding", u32)]


class KvmUserspaceMemoryRegion(Struct):
    """struct kvm_userspace_memory_region: one guest RAM slot."""

    _fields_ = [
        ("slot", u32),
        ("flags", u32),
        ("guest_phys_addr", u64),
        ("memory_size", u64),
        ("userspace_addr", u64),
    ]


KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1


# --- struct kvm_run and its exit union -------------------------------------------------------


class KvmRunIo(Struct):
    """kvm_run.io: a port I/O exit; the data bytes live in the kvm_run page at data_offset."""

    _fields_ = [("direction", u8), ("size", u8), ("port", u16), ("count", u32), ("data_offset", u64)]


KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1


class KvmRunMmio(Struct):
    """kvm_run.mmio: an MMIO exit; up to 8 data bytes inline."""

    _fields_ = [("phys_addr", u64), ("data", u8 * 8), ("len", u32), ("is_write", u8)]


class KvmRunFailEntry(Struct):
    """kvm_run.fail_entry: VM entry failed."""

    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class KvmRunInternal(Struct):
    """kvm_run.internal: KVM could not emulate something."""

    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class KvmRunSystemEventData(Union):
    _fields_ = [("flags", u64), ("data", u64 * 16)]


class KvmRunSystemEvent(Struct):
    """kvm_run.system_event: shutdown/reset/crash requested by the guest."""

    _anonymous_ = ("u",)
    _fields_ = [("type", u32), ("ndata", u32), ("u", KvmRunSystemEventData)]


class KvmRunHw(Struct):
    """kvm_run.hw: unknown exit."""

    _fields_ = [("hardware_exit_reason", u64)]


class KvmRunEx(Struct):
    """kvm_run.ex: exception exit."""

    _fields_ = [("exception", u32), ("error_code", u32)]


class KvmRunExit(Union):
    """The per-exit-reason union of struct kvm_run (256 bytes)."""

    _fields_ = [
        ("hw", KvmRunHw),
        ("fail_entry", KvmRunFailEntry),
        ("ex", KvmRunEx),
        ("io", KvmRunIo),
        ("mmio", KvmRunMmio),
        ("internal", KvmRunInternal),
        ("system_event", KvmRunSystemEvent),
        ("padding", ctypes.c_char * 256),
    ]


class KvmRun(Struct):
    """struct kvm_run: the page shared with the kernel for each vCPU (mmap'd)."""

    _anonymous_ = ("exit",)
    _fields_ = [
        ("request_interrupt_window", u8),
        ("immediate_exit", u8),
        ("padding1", u8 * 6),
        ("exit_reason", u32),
        ("ready_for_interrupt_injection", u8),
        ("if_flag", u8),
        ("flags", u16),
        ("cr8", u64),
        ("apic_base", u64),
        ("exit", KvmRunExit),
        ("kvm_valid_regs", u64),
        ("kvm_dirty_regs", u64),
        ("sync_regs_padding", ctypes.c_char * 2048),
    ]


# --- interrupts -----------------------------------------------------------------------------


class KvmIrqLevel(Struct):
    """struct kvm_irq_level: assert/deassert a GSI (irq doubles as status on output)."""

    _fields_ = [("irq", u32), ("level", u32)]


class KvmPitConfig(Struct):
    """struct kvm_pit_config."""

    _fields_ = [("flags", u32), ("pad", u32 * 15)]


KVM_PIT_SPEAKER_DUMMY = 1


class KvmIrqfd(Struct):
    """struct kvm_irqfd: bind an eventfd to a GSI."""

    _fields_ = [("fd", u32), ("gsi", u32), ("flags", u32), ("resamplefd", u32), ("pad", u8 * 16)]


KVM_IRQFD_FLAG_DEASSIGN = 1 << 0
KVM_IRQFD_FLAG_RESAMPLE = 1 << 1


class KvmIoeventfd(Struct):
    """struct kvm_ioeventfd: signal an eventfd on a guest PIO/MMIO write."""

    _fields_ = [
        ("datamatch", u64),
        ("addr", u64),
        ("len", u32),
        ("fd", s32),
        ("flags", u32),
        ("pad", u8 * 36),
    ]


KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2


class KvmMsi(Struct):
    """struct kvm_msi: inject one MSI."""

    _fields_ = [
        ("address_lo", u32),
        ("address_hi", u32),
        ("data", u32),
        ("flags", u32),
        ("devid", u32),
        ("pad", u8 * 12),
    ]


class KvmIrqRoutingIrqchip(Struct):
    _fields_ = [("irqchip", u32), ("pin", u32)]


class KvmIrqRoutingMsi(Struct):
    _fields_ = [("address_lo", u32), ("address_hi", u32), ("data", u32), ("devid", u32)]


class KvmIrqRoutingEntryUnion(Union):
    _fields_ = [("irqchip", KvmIrqRoutingIrqchip), ("msi", KvmIrqRoutingMsi), ("pad", u32 * 8)]


class KvmIrqRoutingEntry(Struct):
    """struct kvm_irq_routing_entry: one GSI route (irqchip pin or MSI)."""

    _anonymous_ = ("u",)
    _fields_ = [("gsi", u32), ("type", u32), ("flags", u32), ("pad", u32), ("u", KvmIrqRoutingEntryUnion)]


KVM_IRQ_ROUTING_IRQCHIP = 1
KVM_IRQ_ROUTING_MSI = 2

KVM_IRQCHIP_PIC_MASTER = 0
KVM_IRQCHIP_PIC_SLAVE = 1
KVM_IRQCHIP_IOAPIC = 2


class KvmIrqRouting(Struct):
    """struct kvm_irq_routing header; entries follow (see irq_routing_with_entries)."""

    _fields_ = [("nr", u32), ("flags", u32)]


# --- vCPU state -----------------------------------------------------------------------------


class KvmLapicState(Struct):
    """struct kvm_lapic_state: the 1 KiB local APIC register page."""

    _fields_ = [("regs", ctypes.c_char * 1024)]


class KvmMpState(Struct):
    """struct kvm_mp_state."""

    _fields_ = [("mp_state", u32)]


class KvmClockData(Struct):
    """struct kvm_clock_data: the VM-wide kvmclock value."""

    _fields_ = [
        ("clock", u64),
        ("flags", u32),
        ("pad0", u32),
        ("realtime", u64),
        ("host_tsc", u64),
        ("pad", u32 * 4),
    ]


class KvmVcpuEventsException(Struct):
    _fields_ = [("injected", u8), ("nr", u8), ("has_error_code", u8), ("pending", u8), ("error_code", u32)]


class KvmVcpuEventsInterrupt(Struct):
    _fields_ = [("injected", u8), ("nr", u8), ("soft", u8), ("shadow", u8)]


class KvmVcpuEventsNmi(Struct):
    _fields_ = [("injected", u8), ("pending", u8), ("masked", u8), ("pad", u8)]


class KvmVcpuEventsSmi(Struct):
    _fields_ = [("smm", u8), ("pending", u8), ("smm_inside_nmi", u8), ("latched_init", u8)]


class KvmVcpuEvents(Struct):
    """struct kvm_vcpu_events: pending/injected exceptions, interrupts, NMI, SMI."""

    _fields_ = [
        ("exception", KvmVcpuEventsException),
        ("interrupt", KvmVcpuEventsInterrupt),
        ("nmi", KvmVcpuEventsNmi),
        ("sipi_vector", u32),
        ("flags", u32),
        ("smi", KvmVcpuEventsSmi),
        ("triple_fault_pending", u8),
        ("reserved", u8 * 26),
        ("exception_has_payload", u8),
        ("exception_payload", u64),
    ]


# --- variable-length helpers ----------------------------------------------------------------


@cache
def msrs_with_entries(count: int) -> type[Struct]:
    """kvm_msrs with room for `count` entries."""
    return type(
        f"KvmMsrs{count}",
        (Struct,),
        {"_fields_": [("nmsrs", u32), ("pad", u32), ("entries", KvmMsrEntry * count)]},
    )


@cache
def msr_list_with_entries(count: int) -> type[Struct]:
    """kvm_msr_list with room for `count` indices."""
    return type(f"KvmMsrList{count}", (Struct,), {"_fields_": [("nmsrs", u32), ("indices", u32 * count)]})


@cache
def cpuid2_with_entries(count: int) -> type[Struct]:
    """kvm_cpuid2 with room for `count` entries."""
    return type(
        f"KvmCpuid2_{count}",
        (Struct,),
        {"_fields_": [("nent", u32), ("padding", u32), ("entries", KvmCpuidEntry2 * count)]},
    )


@cache
def irq_routing_with_entries(count: int) -> type[Struct]:
    """kvm_irq_routing with room for `count` entries."""
    return type(
        f"KvmIrqRouting{count}",
        (Struct,),
        {"_fields_": [("nr", u32), ("flags", u32), ("entries", KvmIrqRoutingEntry * count)]},
    )
