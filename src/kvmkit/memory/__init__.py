"""Guest memory: the PC RAM layout, memfd-backed RAM, I/O buses and the DMA API."""

from kvmkit.memory.address_space import IoBus, IoWindow
from kvmkit.memory.dma import DmaSpace, Iommu
from kvmkit.memory.guest_memory import GuestMemory, RamRegion
from kvmkit.memory.layout import (
    IOAPIC_BASE,
    LAPIC_BASE,
    PCI_HOLE_END,
    PCI_HOLE_START,
    RamLayout,
    RamRange,
    pc_ram_layout,
)

__all__ = [
    "IOAPIC_BASE",
    "LAPIC_BASE",
    "PCI_HOLE_END",
    "PCI_HOLE_START",
    "DmaSpace",
    "GuestMemory",
    "IoBus",
    "IoWindow",
    "Iommu",
    "RamLayout",
    "RamRange",
    "RamRegion",
    "pc_ram_layout",
]
