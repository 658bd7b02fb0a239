"""The in-kernel PIC and IOAPIC state (KVM_GET/SET_IRQCHIP), used to put them back to power-on on reset."""

from __future__ import annotations

import ctypes

from kvmkit.accel.kvm.ioctls import _ior, _iowr
from kvmkit.accel.kvm.structs import KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE
from kvmkit.accel.kvm.vm import KvmVm
from kvmkit.memory.layout import IOAPIC_BASE

u8, u32, u64 = ctypes.c_uint8, ctypes.c_uint32, ctypes.c_uint64
IOAPIC_NUM_PINS = 24
IOAPIC_REDIRECTION_MASKED = 1 << 16


class KvmPicState(ctypes.LittleEndianStructure):
    """struct kvm_pic_state: one 8259."""

    _fields_ = [(name, u8) for name in (
        "last_irr", "irr", "imr", "isr", "priority_add", "irq_base", "read_reg_select", "poll", "special_mask",
        "init_state", "auto_eoi", "rotate_on_auto_eoi", "special_fully_nested_mode", "init4", "elcr",
        "elcr_mask")]


class KvmIoapicState(ctypes.LittleEndianStructure):
    """struct kvm_ioapic_state: the IOAPIC's registers and redirection table."""

    _fields_ = [("base_address", u64), ("ioregsel", u32), ("id", u32), ("irr", u32), ("pad", u32),
                ("redirtbl", u64 * IOAPIC_NUM_PINS)]


class KvmIrqchipChips(ctypes.Union):
    _fields_ = [("dummy", ctypes.c_char * 512), ("pic", KvmPicState), ("ioapic", KvmIoapicState)]


class KvmIrqchip(ctypes.LittleEndianStructure):
    """struct kvm_irqchip."""

    _anonymous_ = ("chip",)
    _fields_ = [("chip_id", u32), ("pad", u32), ("chip", KvmIrqchipChips)]


KVM_GET_IRQCHIP = _iowr(0x62, KvmIrqchip)
KVM_SET_IRQCHIP = _ior(0x63, KvmIrqchip)  # sic: the kernel's header declares it _IOR
# Edge/level control register masks KVM uses for the two PICs (IRQ 0, 1, 2, 8, 13 are always edge).
PIC_ELCR_MASKS = {KVM_IRQCHIP_PIC_MASTER: 0xF8, KVM_IRQCHIP_PIC_SLAVE: 0xDE}


def reset_irqchip(vm: KvmVm, ioapic_id: int) -> None:
    """Both PICs uninitialised with every line masked, the IOAPIC with every pin masked."""
    for chip_id, elcr_mask in PIC_ELCR_MASKS.items():
        chip = KvmIrqchip(chip_id=chip_id)
        chip.pic.imr = 0xFF
        chip.pic.elcr_mask = elcr_mask
        vm.ioctl(KVM_SET_IRQCHIP, chip, "KVM_SET_IRQCHIP (PIC)")
    chip = KvmIrqchip(chip_id=KVM_IRQCHIP_IOAPIC)
    chip.ioapic.base_address = IOAPIC_BASE
    chip.ioapic.id = ioapic_id
    for pin in range(IOAPIC_NUM_PINS):
        chip.ioapic.redirtbl[pin] = IOAPIC_REDIRECTION_MASKED
    vm.ioctl(KVM_SET_IRQCHIP, chip, "KVM_SET_IRQCHIP (IOAPIC)")
