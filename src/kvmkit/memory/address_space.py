"""I/O buses: the PIO port space and the MMIO space, dispatching accesses to device windows."""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass

from kvmkit.errors import ConfigError, GuestError
from kvmkit.hw.device import IoHandler

log = logging.getLogger(__name__)

PIO_SPACE_SIZE = 0x1_0000
MMIO_SPACE_SIZE = 1 << 64


@dataclass(frozen=True)
class IoWindow:
    """A device's window on a bus."""

    base: int
    length: int
    handler: IoHandler
    name: str

    @property
    def end(self) -> int:
        return self.base + self.length


class IoBus:
    """Maps address windows to IoHandlers; lookups bisect an immutable sorted snapshot."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self._table: tuple[list[int], list[IoWindow]] = ([], [])

    @classmethod
    def pio(cls) -> IoBus:
        return cls("pio", PIO_SPACE_SIZE)

    @classmethod
    def mmio(cls) -> IoBus:
        return cls("mmio", MMIO_SPACE_SIZE)

    def register(self, base: int, length: int, handler: IoHandler, name: str) -> None:
        """Claim [base, base+length) for `handler`; ConfigError if it overlaps another window."""
        if length <= 0 or base < 0 or base + length > self.size:
            raise ConfigError(
                f"{self.name} bus: window {name} at {base:#x} length {length:#x} is out of range"
            )
        old_bases, old_windows = self._table
        index = bisect.bisect_right(old_bases, base)
        for neighbour in old_windows[max(index - 1, 0) : index + 1]:
            if neighbour.base < base + length and base < neighbour.end:
                raise ConfigError(
                    f"{self.name} bus: {name} at {base:#x}..{base + length - 1:#x} overlaps "
                    f"{neighbour.name} at {neighbour.base:#x}..{neighbour.end - 1:#x}"
                )
        window = IoWindow(base, length, handler, name)
        # Build new lists and swap them in at once, so a concurrent lookup sees the old or the new table.
        self._table = (
            old_bases[:index] + [base] + old_bases[index:],
            old_windows[:index] + [window] + old_windows[index:],
        )

    def unregister(self, base: int) -> None:
        """Remove the window starting at `base`."""
        bases, windows = self._table
        index = bisect.bisect_left(bases, base)
        if index == len(bases) or bases[index] != base:
            raise ConfigError(f"{self.name} bus: no window registered at {base:#x}")
        self._table = (bases[:index] + bases[index + 1 :], windows[:index] + windows[index + 1 :])

    def lookup(self, addr: int, size: int = 1) -> IoWindow | None:
        """The window containing the whole access, or None."""
        bases, windows = self._table
        index = bisect.bisect_right(bases, addr) - 1
        if index >= 0:
            window = windows[index]
            if addr + size <= window.end:
                return window
        return None

    def windows(self) -> list[IoWindow]:
        """Registered windows in address order (for `info mtree`-style listings)."""
        return list(self._table[1])

    def read(self, addr: int, size: int) -> int:
        """Dispatch a read; unassigned addresses read as all-ones."""
        window = self.lookup(addr, size)
        mask = (1 << (8 * size)) - 1
        if window is None:
            log.debug("%s bus: unassigned read of %d bytes at %#x", self.name, size, addr)
            return mask
        try:
            return window.handler.read(addr - window.base, size) & mask
        except GuestError as error:
            log.warning("%s bus: %s read at %#x: %s", self.name, window.name, addr, error)
            return mask

    def write(self, addr: int, size: int, value: int) -> None:
        """Dispatch a write; writes to unassigned addresses are dropped."""
        window = self.lookup(addr, size)
        if window is None:
            log.debug("%s bus: unassigned write of %d bytes at %#x (%#x)", self.name, size, addr, value)
            return
        try:
            window.handler.write(addr - window.base, size, value & ((1 << (8 * size)) - 1))
        except GuestError as error:
            log.warning("%s bus: %s write at %#x: %s", self.name, window.name, addr, error)
