"""A PCI bus segment (bus 0): slots and functions, hot-add/remove and `query-pci` enumeration."""

from __future__ import annotations

from kvmkit.errors import ConfigError
from kvmkit.hw.pci.bar import IoBusLike
from kvmkit.hw.pci.device import PciDevice
from kvmkit.hw.pci.intx import IntxRouter

SLOTS = 32
FUNCTIONS = 8


def devfn_of(slot: int, function: int = 0) -> int:
    return (slot << 3) | function


class PciBus:
    """Bus 0 of the machine: holds functions by devfn and routes configuration accesses to them."""

    def __init__(self, pio: IoBusLike, mmio: IoBusLike, intx_router: IntxRouter | None = None) -> None:
        self.pio = pio
        self.mmio = mmio
        self.intx_router = intx_router
        self._devices: dict[int, PciDevice] = {}

    def add(self, device: PciDevice, slot: int | None = None, function: int = 0) -> int:
        """Plug `device` at slot/function (first free slot when None); returns its devfn."""
        if slot is None:
            free = [s for s in range(SLOTS) if devfn_of(s, function) not in self._devices]
            if not free:
                raise ConfigError(f"PCI device {device.name}: no free slot on bus 0")
            slot = free[0]
        if not (0 <= slot < SLOTS and 0 <= function < FUNCTIONS):
            raise ConfigError(f"PCI device {device.name}: address {slot:02x}.{function} is out of range")
        devfn = devfn_of(slot, function)
        if devfn in self._devices:
            other = self._devices[devfn].name
            raise ConfigError(f"PCI device {device.name}: slot {slot:02x}.{function} is taken by {other}")
        device.bus = self
        device.devfn = devfn
        pin = device.config.get("interrupt_pin")
        if pin and self.intx_router is not None:
            device.intx = self.intx_router.line_for(slot, pin)
            device.config.set("interrupt_line", self.intx_router.gsi_for(slot, pin) & 0xFF)
        self._devices[devfn] = device
        return devfn

    def remove(self, slot: int, function: int = 0) -> PciDevice:
        """Unplug a function: its BARs leave the buses and its config space reads as absent."""
        devfn = devfn_of(slot, function)
        device = self._devices.get(devfn)
        if device is None:
            raise ConfigError(f"PCI slot {slot:02x}.{function}: no device to remove")
        device.set_intx_level(False)
        device.unmap_bars()
        del self._devices[devfn]
        device.bus = None
        device.devfn = None
        return device

    def device(self, devfn: int) -> PciDevice | None:
        return self._devices.get(devfn)

    def devices(self) -> list[PciDevice]:
        """Every plugged function, in devfn order."""
        return [self._devices[devfn] for devfn in sorted(self._devices)]

    def find(self, name: str) -> PciDevice | None:
        return next((d for d in self._devices.values() if d.name == name), None)

    def config_read(self, devfn: int, offset: int, size: int) -> int:
        device = self._devices.get(devfn)
        if device is None or (devfn & 7 and devfn_of(devfn >> 3) not in self._devices):
            return (1 << (8 * size)) - 1
        return device.config_read(offset, size)

    def config_write(self, devfn: int, offset: int, size: int, value: int) -> None:
        device = self._devices.get(devfn)
        if device is not None:
            device.config_write(offset, size, value)

    def enumerate(self) -> list[dict[str, object]]:
        """The bus as QMP `query-pci` reports it (one entry per function)."""
        devices = []
        for devfn in sorted(self._devices):
            entry = {"bus": 0, "slot": devfn >> 3, "function": devfn & 7}
            entry.update(self._devices[devfn].describe())
            devices.append(entry)
        return [{"bus": 0, "devices": devices}]
