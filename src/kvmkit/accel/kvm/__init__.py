"""The KVM accelerator: ctypes bindings to /dev/kvm and its VM and vCPU file descriptors."""

from kvmkit.accel.kvm.cpuid import build_guest_cpuid
from kvmkit.accel.kvm.ioctls import Cap, ExitReason, MpState, SystemEvent
from kvmkit.accel.kvm.kick import KICK_SIGNAL
from kvmkit.accel.kvm.kvm import DEFAULT_KVM_PATH, Kvm
from kvmkit.accel.kvm.msrs import Msr, boot_msrs
from kvmkit.accel.kvm.structs import (
    KvmCpuidEntry2,
    KvmFpu,
    KvmRegs,
    KvmSegment,
    KvmSregs,
)
from kvmkit.accel.kvm.vcpu import KvmVcpu
from kvmkit.accel.kvm.vm import IrqchipRoute, IrqRoute, KvmVm, MsiRoute

__all__ = [
    "DEFAULT_KVM_PATH",
    "KICK_SIGNAL",
    "Cap",
    "ExitReason",
    "IrqRoute",
    "IrqchipRoute",
    "Kvm",
    "KvmCpuidEntry2",
    "KvmFpu",
    "KvmRegs",
    "KvmSegment",
    "KvmSregs",
    "KvmVcpu",
    "KvmVm",
    "MpState",
    "MsiRoute",
    "Msr",
    "SystemEvent",
    "boot_msrs",
    "build_guest_cpuid",
]
