"""Harmless handlers for legacy ports Linux touches at boot where this machine has no device.

A PC with nothing decoding a port floats the bus high, so reads return all ones (Linux
then concludes the device is absent) and writes vanish. The POST/delay ports read zero.
"""

from __future__ import annotations

from dataclasses import dataclass


class IoportSink:
    """Reads return `read_value` (repeated per byte of the access); writes are dropped."""

    def __init__(self, name: str, read_byte: int = 0xFF) -> None:
        self.name = name
        self.read_byte = read_byte & 0xFF

    def read(self, offset: int, size: int) -> int:
        value = 0
        for _ in range(max(1, min(size, 8))):
            value = (value << 8) | self.read_byte
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        return None


@dataclass(frozen=True)
class SinkRange:
    """A port range to cover with a sink."""

    base: int
    length: int
    name: str
    read_byte: int = 0xFF

    def make_handler(self) -> IoportSink:
        return IoportSink(self.name, self.read_byte)


LEGACY_PORT_SINKS: tuple[SinkRange, ...] = (
    SinkRange(0x00, 0x10, "dma1 (8237)"),
    SinkRange(0x80, 0x01, "POST code", read_byte=0x00),
    SinkRange(0x81, 0x0F, "dma page registers"),
    SinkRange(0xC0, 0x20, "dma2 (8237)"),
    SinkRange(0xED, 0x01, "io delay", read_byte=0x00),
    SinkRange(0xF0, 0x10, "fpu error"),
    SinkRange(0x170, 0x08, "ide secondary"),
    SinkRange(0x1F0, 0x08, "ide primary"),
    SinkRange(0x201, 0x01, "game port"),
    SinkRange(0x278, 0x03, "parallel lpt2 / isa pnp address"),
    SinkRange(0x2E8, 0x08, "com4"),
    SinkRange(0x376, 0x02, "ide secondary control"),
    SinkRange(0x378, 0x03, "parallel lpt1"),
    SinkRange(0x3B0, 0x10, "mda/vga"),
    SinkRange(0x3C0, 0x20, "vga"),
    SinkRange(0x3E8, 0x08, "com3"),
    SinkRange(0x3F0, 0x06, "floppy"),
    SinkRange(0x3F6, 0x02, "ide primary control / floppy dir"),
    SinkRange(0xA79, 0x01, "isa pnp write data"),
)
"""Ports a machine without these devices should cover; skip any range a real device occupies."""
