"""Put a KVM vCPU into the state a machine (re)starts in: boot registers, LAPIC LINTs, cleared PV MSRs."""

from __future__ import annotations

from kvmkit.accel.kvm import structs as s
from kvmkit.accel.kvm.ioctls import MpState
from kvmkit.accel.kvm.msrs import boot_msrs
from kvmkit.accel.kvm.vcpu import KvmVcpu
from kvmkit.boot.cpu_state import BootCpuState, Segment

# Local APIC register offsets and LVT delivery modes (Intel SDM vol. 3, "Local Vector Table").
APIC_LVT_LINT0 = 0x350
APIC_LVT_LINT1 = 0x360
APIC_DELIVERY_MODE_SHIFT = 8
APIC_DELIVERY_MODE_MASK = 0x7 << APIC_DELIVERY_MODE_SHIFT
APIC_MODE_NMI = 0x4
APIC_MODE_EXTINT = 0x7

# KVM's paravirtual MSRs: writing 0 turns each feature off, so a rebooting guest's old kernel structures
# (kvm-clock pages, steal time, async page faults, PV EOI) stop being written by the host.
KVM_PARAVIRT_MSRS_OFF = {
    0x4B564D00: 0,  # MSR_KVM_WALL_CLOCK_NEW
    0x4B564D01: 0,  # MSR_KVM_SYSTEM_TIME_NEW
    0x4B564D02: 0,  # MSR_KVM_ASYNC_PF_EN
    0x4B564D03: 0,  # MSR_KVM_STEAL_TIME
    0x4B564D04: 0,  # MSR_KVM_PV_EOI_EN
    0x12: 0,  # MSR_KVM_SYSTEM_TIME (old)
    0x11: 0,  # MSR_KVM_WALL_CLOCK (old)
}


def _kvm_segment(segment: Segment) -> s.KvmSegment:
    return s.KvmSegment(
        base=segment.base, limit=segment.effective_limit, selector=segment.selector, type=segment.type,
        present=int(segment.present), dpl=segment.dpl, db=int(segment.db), s=int(segment.s),
        l=int(segment.l), g=int(segment.g), avl=int(segment.avl), unusable=0,
    )


def apply_boot_state(vcpu: KvmVcpu, state: BootCpuState) -> None:
    """Load the 64-bit entry state into the bootstrap vCPU (all other registers zero)."""
    sregs = vcpu.get_sregs()
    sregs.cs = _kvm_segment(state.code)
    data = _kvm_segment(state.data)
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
    sregs.tr = _kvm_segment(state.tss)
    sregs.ldt = s.KvmSegment(unusable=1)
    sregs.gdt = s.KvmDtable(base=state.gdt_base, limit=state.gdt_limit)
    sregs.idt = s.KvmDtable(base=state.idt_base, limit=state.idt_limit)
    sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer = state.cr0, state.cr3, state.cr4, state.efer
    sregs.cr2 = sregs.cr8 = 0
    vcpu.set_sregs(sregs)
    vcpu.set_regs(s.KvmRegs(rip=state.rip, rsp=state.rsp, rsi=state.rsi, rflags=state.rflags))
    fpu = s.KvmFpu()
    fpu.fcw = 0x37F
    fpu.mxcsr = 0x1F80
    vcpu.set_fpu(fpu)


# Power-on values of the local APIC registers that are not zero (Intel SDM vol. 3, "Local APIC State After
# Power-Up or Reset"): every LVT entry masked, the spurious vector 0xFF with the APIC software-disabled, flat DFR.
APIC_ID = 0x20
APIC_VERSION = 0x30
APIC_DFR = 0xE0
APIC_SVR = 0xF0
APIC_LVT_REGISTERS = (0x2F0, 0x320, 0x330, 0x340, APIC_LVT_LINT0, APIC_LVT_LINT1, 0x370)
APIC_LVT_MASKED = 1 << 16
APIC_BASE_MSR_ENABLE = 1 << 11
APIC_BASE_MSR_BSP = 1 << 8
APIC_DEFAULT_BASE = 0xFEE0_0000


def configure_lapic(vcpu: KvmVcpu) -> None:
    """The local APIC at power-on, with LINT0 as ExtINT (the PIC's output) and LINT1 as NMI, as PC firmware
    leaves them. Everything a previous kernel set (timer, ISR/IRR bits, TPR) is cleared."""
    current = bytes(vcpu.get_lapic())  # bytes(struct): a c_char array field would stop at a NUL
    raw = bytearray(len(current))

    def put(offset: int, value: int) -> None:
        raw[offset:offset + 4] = value.to_bytes(4, "little")

    put(APIC_ID, vcpu.index << 24)
    raw[APIC_VERSION:APIC_VERSION + 4] = current[APIC_VERSION:APIC_VERSION + 4]
    put(APIC_DFR, 0xFFFF_FFFF)
    put(APIC_SVR, 0xFF)
    for offset in APIC_LVT_REGISTERS:
        put(offset, APIC_LVT_MASKED)
    put(APIC_LVT_LINT0, APIC_MODE_EXTINT << APIC_DELIVERY_MODE_SHIFT)
    put(APIC_LVT_LINT1, APIC_MODE_NMI << APIC_DELIVERY_MODE_SHIFT)
    vcpu.set_lapic(s.KvmLapicState.from_buffer_copy(raw))


def reset_vcpu(vcpu: KvmVcpu, is_bootstrap: bool) -> None:
    """Power-on state for one vCPU: boot MSRs, PV features off, LAPIC wired; APs wait for INIT/SIPI."""
    sregs = vcpu.get_sregs()
    sregs.apic_base = APIC_DEFAULT_BASE | APIC_BASE_MSR_ENABLE | (APIC_BASE_MSR_BSP if is_bootstrap else 0)
    sregs.interrupt_bitmap[:] = [0] * len(sregs.interrupt_bitmap)
    vcpu.set_sregs(sregs)
    vcpu.set_vcpu_events(s.KvmVcpuEvents())
    vcpu.set_msrs({**boot_msrs(), **KVM_PARAVIRT_MSRS_OFF})
    configure_lapic(vcpu)
    vcpu.set_mp_state(MpState.RUNNABLE if is_bootstrap else MpState.UNINITIALIZED)
