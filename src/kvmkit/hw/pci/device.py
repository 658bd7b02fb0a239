"""The PCI function base class: configuration space, BARs, INTx and BAR decoding."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmkit.errors import KvmkitError
from kvmkit.hw.device import IrqLine
from kvmkit.hw.pci.bar import BarKind, IoBusLike, PciBar
from kvmkit.hw.pci.config_space import (
    COMMAND_BUS_MASTER,
    COMMAND_INTX_DISABLE,
    STATUS_INTERRUPT,
    TYPE0_HEADER,
    PciConfigSpace,
)

if TYPE_CHECKING:
    from kvmkit.hw.pci.bus import PciBus

INTX_PIN_NAMES = {0: "none", 1: "INTA#", 2: "INTB#", 3: "INTC#", 4: "INTD#"}


class PciDevice:
    """One PCI function on a `PciBus`; subclasses add BARs and capabilities in their constructor."""

    def __init__(
        self,
        name: str,
        vendor_id: int,
        device_id: int,
        class_code: int,
        revision: int = 0,
        subsystem_vendor_id: int = 0,
        subsystem_id: int = 0,
        interrupt_pin: int = 0,
    ) -> None:
        self.name = name
        self.config = PciConfigSpace()
        self.config.set("vendor_id", vendor_id)
        self.config.set("device_id", device_id)
        self.config.set("revision_id", revision)
        self.config.set("prog_if", class_code & 0xFF)
        self.config.set("subclass", (class_code >> 8) & 0xFF)
        self.config.set("class_code", (class_code >> 16) & 0xFF)
        self.config.set("subsystem_vendor_id", subsystem_vendor_id)
        self.config.set("subsystem_id", subsystem_id)
        self.config.set("interrupt_pin", interrupt_pin)
        self.bars: dict[int, PciBar] = {}
        self.bus: PciBus | None = None
        self.devfn: int | None = None
        self.intx: IrqLine | None = None
        self._intx_level = False

    # construction ------------------------------------------------------------------------------

    def add_bar(self, bar: PciBar) -> PciBar:
        used = {off for b in self.bars.values() for off in b.register_offsets}
        if used & set(bar.register_offsets):
            raise KvmkitError(f"PCI device {self.name}: BAR {bar.index} overlaps another BAR")
        self.bars[bar.index] = bar
        offsets = bar.register_offsets
        value = bar.flag_bits
        self.config.set_bytes(offsets[0], 4, value)
        self.config.set_write_mask(offsets[0], 4, bar.address_mask & 0xFFFFFFFF)
        if len(offsets) == 2:
            self.config.set_bytes(offsets[1], 4, 0)
            self.config.set_write_mask(offsets[1], 4, bar.address_mask >> 32)
        return bar

    # guest access ------------------------------------------------------------------------------

    def config_read(self, offset: int, size: int) -> int:
        return self.config.read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        self.config.write(offset, size, value)
        if self.config.touches(offset, size, "command"):
            self._update_intx()
        if offset < 0x28 and offset + size > 0x04:  # COMMAND or any BAR register
            self.update_bar_mappings()
        self.config_written(offset, size)

    def config_written(self, offset: int, size: int) -> None:
        """Hook for subclasses that react to configuration writes (capability registers)."""

    # BAR decoding ------------------------------------------------------------------------------

    def bar_value(self, bar: PciBar) -> int:
        offsets = bar.register_offsets
        value = self.config.get_bytes(offsets[0], 4)
        if len(offsets) == 2:
            value |= self.config.get_bytes(offsets[1], 4) << 32
        return value

    def bar_address(self, index: int) -> int | None:
        """Where BAR `index` currently decodes (None when unmapped)."""
        bar = self.bars.get(index)
        return bar.mapped_address if bar else None

    def update_bar_mappings(self) -> None:
        if self.bus is None:
            return
        command = self.config.get("command")
        for bar in self.bars.values():
            bus: IoBusLike = self.bus.pio if bar.kind is BarKind.IO else self.bus.mmio
            bar.remap(bar.decoded_address(self.bar_value(bar), command), bus)

    def unmap_bars(self) -> None:
        if self.bus is None:
            return
        for bar in self.bars.values():
            bar.remap(None, self.bus.pio if bar.kind is BarKind.IO else self.bus.mmio)

    @property
    def bus_master(self) -> bool:
        return bool(self.config.get("command") & COMMAND_BUS_MASTER)

    # INTx ------------------------------------------------------------------------------------

    def set_intx_level(self, level: bool) -> None:
        """Assert or deassert this function's INTx pin (masked by COMMAND.INTX_DISABLE)."""
        self._intx_level = level
        self._update_intx()

    def _update_intx(self) -> None:
        status = self.config.get("status") & ~STATUS_INTERRUPT
        self.config.set("status", status | (STATUS_INTERRUPT if self._intx_level else 0))
        disabled = bool(self.config.get("command") & COMMAND_INTX_DISABLE)
        if self.intx is not None:
            self.intx.set_level(self._intx_level and not disabled)

    def reset(self) -> None:
        """Device reset: decoding off, BARs unprogrammed, INTx low; subclasses extend."""
        self.config.set("command", 0)
        for bar in self.bars.values():
            offsets = bar.register_offsets
            self.config.set_bytes(offsets[0], 4, bar.flag_bits)
            if len(offsets) == 2:
                self.config.set_bytes(offsets[1], 4, 0)
        self.unmap_bars()
        self.set_intx_level(False)

    def describe(self) -> dict[str, object]:
        """This function as a `query-pci` device entry (bus/slot filled by the bus)."""
        cfg = self.config
        return {
            "qdev_id": self.name,
            "id": {
                "vendor": cfg.get("vendor_id"),
                "device": cfg.get("device_id"),
                "subsystem-vendor": cfg.get("subsystem_vendor_id"),
                "subsystem": cfg.get("subsystem_id"),
            },
            "class_info": {"class": (cfg.get("class_code") << 8) | cfg.get("subclass")},
            "irq_pin": cfg.get("interrupt_pin"),
            "irq": cfg.get("interrupt_line"),
            "regions": [
                {
                    "bar": bar.index,
                    "type": "io" if bar.kind is BarKind.IO else "memory",
                    "mem_type_64": bar.kind is BarKind.MEM64,
                    "prefetch": bar.prefetchable,
                    "address": bar.mapped_address if bar.mapped_address is not None else -1,
                    "size": bar.size,
                }
                for bar in sorted(self.bars.values(), key=lambda b: b.index)
            ],
        }


__all__ = ["INTX_PIN_NAMES", "TYPE0_HEADER", "PciDevice"]
