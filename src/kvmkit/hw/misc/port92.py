"""System Control Port A (0x92): fast A20 gate and fast reset."""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import IntFlag

log = logging.getLogger(__name__)

PORT92 = 0x92


class Port92Bits(IntFlag):
    """Bits of System Control Port A."""

    FAST_RESET = 0x01
    A20_ENABLED = 0x02


class Port92:
    """Port 0x92; implements `IoHandler` on a 1-byte window. Setting bit 0 calls `reset_requested`."""

    def __init__(self, reset_requested: Callable[[], None]) -> None:
        self._reset_requested = reset_requested
        self.a20_enabled = True

    def read(self, offset: int, size: int) -> int:
        if offset != 0:
            return 0xFF
        return int(Port92Bits.A20_ENABLED) if self.a20_enabled else 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset != 0:
            log.debug("port92: write %#x to offset %#x ignored", value, offset)
            return
        self.a20_enabled = bool(value & Port92Bits.A20_ENABLED)
        if value & Port92Bits.FAST_RESET:
            self._reset_requested()

    def reset(self) -> None:
        self.a20_enabled = True
