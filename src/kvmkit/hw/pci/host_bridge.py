"""The PCI host bridge: configuration mechanism #1 at I/O ports 0xCF8 (address) and 0xCFC-0xCFF (data)."""

from __future__ import annotations

from kvmkit.hw.pci.bus import PciBus
from kvmkit.hw.pci.device import PciDevice

CONFIG_ADDRESS_PORT = 0xCF8
CONFIG_PORTS_LENGTH = 8
CONFIG_DATA_OFFSET = 4
CONFIG_ENABLE = 1 << 31
_ENABLED_BUS_MASK = CONFIG_ENABLE | 0xFF_0000  # the enable bit and the bus number of CONFIG_ADDRESS
_ALL_ONES = tuple((1 << (8 * size)) - 1 for size in range(5))

HOST_BRIDGE_VENDOR_ID = 0x8086  # i440FX-like ids: Linux needs no quirks for them
HOST_BRIDGE_DEVICE_ID = 0x1237
CLASS_HOST_BRIDGE = 0x060000


class HostBridgeFunction(PciDevice):
    """Function 00.0: the host bridge itself, no BARs, no interrupts."""

    def __init__(self) -> None:
        super().__init__(
            "host-bridge", HOST_BRIDGE_VENDOR_ID, HOST_BRIDGE_DEVICE_ID, CLASS_HOST_BRIDGE, revision=2
        )


class PciHostBridge:
    """The I/O handler for ports 0xCF8-0xCFF; register it on the PIO bus at `CONFIG_ADDRESS_PORT`."""

    def __init__(self, bus: PciBus) -> None:
        self.bus = bus
        self.address = 0
        self.function = HostBridgeFunction()
        bus.add(self.function, slot=0)

    def read(self, offset: int, size: int) -> int:
        address = self.address
        if offset >= CONFIG_DATA_OFFSET:
            # The hot path: Linux probes every bus and slot at boot, almost all of them empty.
            if address & _ENABLED_BUS_MASK != CONFIG_ENABLE:  # disabled, or a bus other than 0
                return _ALL_ONES[size]
            register = (address & 0xFC) + offset - CONFIG_DATA_OFFSET
            if register + size > 256:
                return _ALL_ONES[size]
            return self.bus.config_read((address >> 8) & 0xFF, register, size)
        if offset == 0 and size == 4:
            return address
        return _ALL_ONES[size]  # partial accesses to 0xCF8 are not config cycles

    def write(self, offset: int, size: int, value: int) -> None:
        if offset < CONFIG_DATA_OFFSET:
            if offset == 0 and size == 4:
                self.address = value & 0x80FFFFFC
            return
        target = self._target(offset)
        if target is None:
            return
        devfn, register = target
        if register + size <= 256:
            self.bus.config_write(devfn, register, size, value)

    def _target(self, offset: int) -> tuple[int, int] | None:
        """(devfn, register) addressed by CONFIG_ADDRESS, or None when disabled or not bus 0."""
        if not self.address & CONFIG_ENABLE or (self.address >> 16) & 0xFF != 0:
            return None
        devfn = (self.address >> 8) & 0xFF
        return devfn, (self.address & 0xFC) + (offset - CONFIG_DATA_OFFSET)
