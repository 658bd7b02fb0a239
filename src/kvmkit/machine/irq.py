"""Interrupt lines of the board: GSIs on KVM's in-kernel PIC/IOAPIC."""

from __future__ import annotations

from kvmkit.accel.kvm.structs import KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE
from kvmkit.accel.kvm.vm import IrqchipRoute, KvmVm


class KvmIrqLine:
    """One GSI; implements `IrqLine`. Level changes only reach KVM when they change."""

    def __init__(self, vm: KvmVm, gsi: int) -> None:
        self.vm = vm
        self.gsi = gsi
        self.level = False

    def set_level(self, level: bool) -> None:
        if level != self.level:
            self.level = level
            self.vm.irq_line(self.gsi, level)

    def pulse(self) -> None:
        self.vm.irq_line(self.gsi, True)
        self.vm.irq_line(self.gsi, False)
        self.level = False


IOAPIC_PINS = 24
ISA_IRQS = 16
ISA_TIMER_IRQ, IOAPIC_TIMER_PIN, PIC_CASCADE_IRQ = 0, 2, 2


def pc_gsi_routes() -> list[IrqchipRoute]:
    """The PC's GSI wiring, matching the MP table: ISA IRQs 0-15 on the PICs, GSI n on IOAPIC pin n, except
    the timer (IRQ 0) which a PC wires to IOAPIC pin 2 (pin 2 is not the PIC cascade on the IOAPIC side)."""
    routes: list[IrqchipRoute] = []
    for irq in range(ISA_IRQS):
        if irq == PIC_CASCADE_IRQ:
            continue
        chip = KVM_IRQCHIP_PIC_MASTER if irq < 8 else KVM_IRQCHIP_PIC_SLAVE
        routes.append(IrqchipRoute(irq, chip, irq % 8))
    for gsi in range(IOAPIC_PINS):
        if gsi == PIC_CASCADE_IRQ:
            continue
        pin = IOAPIC_TIMER_PIN if gsi == ISA_TIMER_IRQ else gsi
        routes.append(IrqchipRoute(gsi, KVM_IRQCHIP_IOAPIC, pin))
    return routes
