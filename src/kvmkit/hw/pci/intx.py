"""Legacy INTx routing: the swizzle from (slot, pin) to an IOAPIC GSI.

The machine chooses the GSIs (by default the IOAPIC's PCI pins 16-19) and tells Linux about
them through the MP table (an I/O interrupt entry per slot/pin, source bus = PCI); the guest
then never needs the PIRQ router. `interrupt_line` in config space is only a hint for firmware.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from kvmkit.errors import ConfigError
from kvmkit.hw.device import IrqLine

DEFAULT_INTX_GSIS = (16, 17, 18, 19)


class IntxRouter:
    """Maps a function's INTx pin (1 = INTA# .. 4 = INTD#) to the GSI line it drives."""

    def __init__(
        self, line_for_gsi: Callable[[int], IrqLine], gsis: Sequence[int] = DEFAULT_INTX_GSIS
    ) -> None:
        if len(gsis) != 4:
            raise ConfigError(f"PCI INTx routing needs 4 GSIs (one per INTA#..INTD#), got {list(gsis)}")
        self.gsis = tuple(gsis)
        self._line_for_gsi = line_for_gsi

    def gsi_for(self, slot: int, pin: int) -> int:
        """The standard swizzle: INTA# of slot s goes to line s mod 4, INTB# to the next one, etc."""
        if not 1 <= pin <= 4:
            raise ConfigError(f"PCI INTx pin {pin} is not one of 1..4 (INTA#..INTD#)")
        return self.gsis[(slot + pin - 1) % 4]

    def line_for(self, slot: int, pin: int) -> IrqLine:
        return self._line_for_gsi(self.gsi_for(slot, pin))
