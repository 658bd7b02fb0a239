"""QEMU's Ctrl-A escape keys on an interactive backend: exit, switch focus, help, literal Ctrl-A."""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import Enum

log = logging.getLogger(__name__)

ESCAPE_BYTE = 0x01  # Ctrl-A


class EscapeAction(Enum):
    """What a Ctrl-A sequence asks for."""

    EXIT = "x"
    SWITCH_FOCUS = "c"
    HELP = "h"
    SNAPSHOT_COMMIT = "s"


_ACTION_KEYS = {ord(action.value): action for action in EscapeAction} | {ord("?"): EscapeAction.HELP}

HELP_TEXT = (
    "\r\n"
    "C-a h    print this help\r\n"
    "C-a x    exit the emulator\r\n"
    "C-a s    commit disk changes (no effect here)\r\n"
    "C-a c    switch between the serial console and the monitor\r\n"
    "C-a C-a  send C-a\r\n"
)


class EscapeDecoder:
    """Splits an input stream into plain bytes and escape actions, keeping their order.

    The state (a pending Ctrl-A) carries across `feed()` calls, so a sequence may be split
    between two reads. Unknown keys after Ctrl-A are swallowed, as QEMU does.
    """

    def __init__(self) -> None:
        self._escape_pending = False

    def feed(self, data: bytes) -> list[bytes | EscapeAction]:
        events: list[bytes | EscapeAction] = []
        plain = bytearray()
        for byte in data:
            if self._escape_pending:
                self._escape_pending = False
                if byte == ESCAPE_BYTE:
                    plain.append(byte)
                    continue
                action = _ACTION_KEYS.get(byte)
                if action is not None:
                    if plain:
                        events.append(bytes(plain))
                        plain.clear()
                    events.append(action)
            elif byte == ESCAPE_BYTE:
                self._escape_pending = True
            else:
                plain.append(byte)
        if plain:
            events.append(bytes(plain))
        return events


class EscapeKeys:
    """Acts on decoded escape sequences: exit and focus-switch callbacks, help text output."""

    def __init__(
        self,
        write_help: Callable[[bytes], None],
        on_exit: Callable[[], None] | None = None,
        on_switch: Callable[[], None] | None = None,
    ) -> None:
        self._decoder = EscapeDecoder()
        self._write_help = write_help
        self.on_exit = on_exit
        self.on_switch = on_switch

    def filter(self, data: bytes, deliver: Callable[[bytes], None]) -> None:
        """Pass plain bytes to `deliver` and run the actions, in input order."""
        for event in self._decoder.feed(data):
            if isinstance(event, bytes):
                deliver(event)
            elif event is EscapeAction.EXIT:
                if self.on_exit is not None:
                    self.on_exit()
                else:
                    log.debug("C-a x ignored: no exit handler")
            elif event is EscapeAction.SWITCH_FOCUS:
                if self.on_switch is not None:
                    self.on_switch()
            elif event is EscapeAction.HELP:
                self._write_help(HELP_TEXT.encode())
