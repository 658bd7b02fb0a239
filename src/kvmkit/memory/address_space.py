"""I/O buses: the PIO port space and the MMIO space, dispatching accesses to device windows."""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from kvmkit.errors import ConfigError, GuestError
from kvmkit.hw.device import IoHandler

log = logging.getLogger(__name__)

PIO_SPACE_SIZE = 0x1_0000
MMIO_SPACE_SIZE = 1 << 64
ADDRESS_CACHE_LIMIT = 8192  # exact addresses remembered per bus before the cache starts over
_MASKS = tuple((1 << (8 * size)) - 1 for size in range(9))  # access size in bytes -> value mask


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


class _CacheEntry(NamedTuple):
    """What an exit needs to dispatch to one address, looked up once: bound handler methods and the window."""

    read: Callable[[int, int], int]
    write: Callable[[int, int, int], None]
    base: int
    end: int  # -1 for an unassigned address: every access misses
    window: IoWindow | None


def _unassigned_read(offset: int, size: int) -> int:
    return _MASKS[size]


def _unassigned_write(offset: int, size: int, value: int) -> None:
    return None


_UNASSIGNED = _CacheEntry(_unassigned_read, _unassigned_write, 0, -1, None)


class IoBus:
    """Maps address windows to IoHandlers; lookups bisect an immutable sorted snapshot.

    Exits hit a handful of addresses over and over (the UART's LSR/THR, 0xCFC, a virtio register), so read()
    and write() first consult a per-address cache of the resolved window; any (un)registration drops it.
    """

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size
        self._table: tuple[list[int], list[IoWindow]] = ([], [])
        self._cache: dict[int, _CacheEntry] = {}

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
        self._cache = {}

    def unregister(self, base: int) -> None:
        """Remove the window starting at `base`."""
        bases, windows = self._table
        index = bisect.bisect_left(bases, base)
        if index == len(bases) or bases[index] != base:
            raise ConfigError(f"{self.name} bus: no window registered at {base:#x}")
        self._table = (bases[:index] + bases[index + 1 :], windows[:index] + windows[index + 1 :])
        self._cache = {}

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

    def _resolve(self, addr: int) -> _CacheEntry:
        """The cache entry for `addr` (the window containing it, or unassigned), computed and remembered."""
        cache = self._cache
        window = self.lookup(addr)
        if window is None:
            entry = _UNASSIGNED
        else:
            handler = window.handler
            entry = _CacheEntry(handler.read, handler.write, window.base, window.base + window.length, window)
        if len(cache) >= ADDRESS_CACHE_LIMIT:
            cache = self._cache = {}
        cache[addr] = entry
        return entry

    def read(self, addr: int, size: int) -> int:
        """Dispatch a read; unassigned addresses read as all-ones."""
        entry = self._cache.get(addr) or self._resolve(addr)
        if addr + size > entry.end:
            log.debug("%s bus: unassigned read of %d bytes at %#x", self.name, size, addr)
            return _MASKS[size]
        try:
            return entry.read(addr - entry.base, size) & _MASKS[size]
        except GuestError as error:
            log.warning("%s bus: %s read at %#x: %s", self.name, entry.window.name, addr, error)  # type: ignore[union-attr]
            return _MASKS[size]

    def write(self, addr: int, size: int, value: int) -> None:
        """Dispatch a write; writes to unassigned addresses are dropped."""
        entry = self._cache.get(addr) or self._resolve(addr)
        if addr + size > entry.end:
            log.debug("%s bus: unassigned write of %d bytes at %#x (%#x)", self.name, size, addr, value)
            return
        try:
            entry.write(addr - entry.base, size, value & _MASKS[size])
        except GuestError as error:
            log.warning("%s bus: %s write at %#x: %s", self.name, entry.window.name, addr, error)  # type: ignore[union-attr]
