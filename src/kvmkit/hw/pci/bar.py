"""PCI base address registers: I/O, 32-bit and 64-bit memory BARs, sizing and bus mapping."""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import Enum
from typing import Protocol

from kvmkit.errors import KvmkitError
from kvmkit.hw.device import IoHandler
from kvmkit.hw.pci.config_space import COMMAND_IO, COMMAND_MEMORY

log = logging.getLogger(__name__)

BAR_IO_SPACE = 0x1
BAR_MEM_TYPE_64 = 0x4
BAR_MEM_PREFETCHABLE = 0x8
IO_SPACE_LIMIT = 1 << 16


class IoBusLike(Protocol):
    """What a BAR needs from the machine's PIO or MMIO bus (kvmkit.memory.address_space.IoBus)."""

    def register(self, base: int, length: int, handler: IoHandler, name: str) -> None: ...

    def unregister(self, base: int) -> None: ...


class BarKind(Enum):
    """Address space and width of a BAR."""

    IO = "io"
    MEM32 = "mem32"
    MEM64 = "mem64"


class PciBar:
    """One BAR: its size (a power of two), kind and the handler serving its window.

    The guest programs the address through the configuration space (the write mask keeps the
    size bits and flag bits read-only, which is what makes all-ones sizing work); the owning
    device calls `remap` whenever the address or the COMMAND decode bits change.
    """

    def __init__(
        self,
        index: int,
        kind: BarKind,
        size: int,
        handler: IoHandler,
        name: str,
        prefetchable: bool = False,
    ) -> None:
        if size < 4 or size & (size - 1):
            raise KvmkitError(f"PCI BAR {name}: size {size:#x} is not a power of two >= 4")
        if kind is BarKind.MEM64 and index > 4:
            raise KvmkitError(f"PCI BAR {name}: a 64-bit BAR cannot start at index {index}")
        if kind is not BarKind.IO and size < 16:
            raise KvmkitError(f"PCI BAR {name}: memory BARs are at least 16 bytes")
        self.index = index
        self.kind = kind
        self.size = size
        self.handler = handler
        self.name = name
        self.prefetchable = prefetchable
        self.mapped_address: int | None = None
        self.map_listeners: list[Callable[[PciBar, int | None], None]] = []

    @property
    def register_offsets(self) -> list[int]:
        first = 0x10 + 4 * self.index
        return [first, first + 4] if self.kind is BarKind.MEM64 else [first]

    @property
    def flag_bits(self) -> int:
        if self.kind is BarKind.IO:
            return BAR_IO_SPACE
        flags = BAR_MEM_TYPE_64 if self.kind is BarKind.MEM64 else 0
        return flags | (BAR_MEM_PREFETCHABLE if self.prefetchable else 0)

    @property
    def address_mask(self) -> int:
        """Writable address bits of the (possibly 64-bit) BAR value."""
        width = 64 if self.kind is BarKind.MEM64 else 32
        low_flags = 0x3 if self.kind is BarKind.IO else 0xF
        return ((1 << width) - 1) & ~(self.size - 1) & ~low_flags

    def decoded_address(self, bar_value: int, command: int) -> int | None:
        """The address the BAR decodes given its register value and COMMAND, or None if disabled/invalid."""
        enable = COMMAND_IO if self.kind is BarKind.IO else COMMAND_MEMORY
        if not command & enable:
            return None
        address = bar_value & self.address_mask
        if address == 0 or address == self.address_mask:
            return None  # unprogrammed, or still holding the sizing pattern
        limit = (
            IO_SPACE_LIMIT if self.kind is BarKind.IO else (1 << (64 if self.kind is BarKind.MEM64 else 32))
        )
        if address + self.size > limit:
            return None
        return address

    def remap(self, address: int | None, bus: IoBusLike) -> None:
        """Move the window to `address` (None unmaps) on `bus`."""
        if address == self.mapped_address:
            return
        if self.mapped_address is not None:
            bus.unregister(self.mapped_address)
            self.mapped_address = None
        if address is not None:
            try:
                bus.register(address, self.size, self.handler, self.name)
            except KvmkitError as err:
                log.warning("PCI BAR %s: cannot map at %#x: %s", self.name, address, err)
                address = None
            self.mapped_address = address
        for listener in self.map_listeners:
            listener(self, self.mapped_address)
