"""The small interfaces every emulated device and interrupt source implements."""

from __future__ import annotations

from typing import Protocol


class IoHandler(Protocol):
    """A device window on the PIO or MMIO bus; `offset` is relative to the window's base."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


class IrqLine(Protocol):
    """One interrupt line (a GSI on the in-kernel IOAPIC/PIC); devices raise and lower it."""

    def set_level(self, level: bool) -> None: ...

    def pulse(self) -> None: ...


class MsiSink(Protocol):
    """Delivers a message-signalled interrupt (address/data pair) to the guest."""

    def send_msi(self, address: int, data: int) -> None: ...
