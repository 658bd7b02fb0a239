"""Enough of the i8042 PS/2 controller (0x60 data, 0x64 status/command) for Linux to probe and reboot.

There is no keyboard or mouse behind it. Commands the controller itself answers (self tests,
the command byte, the output port, loopback writes) behave as on a PC; bytes sent to the
keyboard are acknowledged with 0xFA so the guest driver does not wait for timeouts. Command
0xFE (pulse the reset line) and clearing bit 0 of the output port call `reset_requested`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from enum import IntEnum, IntFlag

from kvmkit.hw.device import IrqLine

log = logging.getLogger(__name__)

I8042_DATA_PORT = 0x60
I8042_COMMAND_PORT = 0x64
KEYBOARD_IRQ = 1
MOUSE_IRQ = 12

# PIO offsets when the device is mapped as one window at 0x60 of length 5.
DATA_OFFSET = 0
COMMAND_OFFSET = 4


class I8042Status(IntFlag):
    """Status register (read from 0x64)."""

    OUTPUT_FULL = 0x01
    INPUT_FULL = 0x02
    SYSTEM_FLAG = 0x04
    LAST_WAS_COMMAND = 0x08
    KEYBOARD_UNLOCKED = 0x10
    AUX_DATA = 0x20
    TIMEOUT = 0x40
    PARITY_ERROR = 0x80


class I8042Config(IntFlag):
    """The controller command byte (CTR)."""

    KEYBOARD_INTERRUPT = 0x01
    AUX_INTERRUPT = 0x02
    SYSTEM_FLAG = 0x04
    KEYBOARD_DISABLED = 0x10
    AUX_DISABLED = 0x20
    TRANSLATE = 0x40


class I8042Command(IntEnum):
    """Controller commands written to 0x64."""

    READ_CONFIG = 0x20
    WRITE_CONFIG = 0x60
    DISABLE_AUX = 0xA7
    ENABLE_AUX = 0xA8
    TEST_AUX = 0xA9
    SELF_TEST = 0xAA
    TEST_KEYBOARD = 0xAB
    DISABLE_KEYBOARD = 0xAD
    ENABLE_KEYBOARD = 0xAE
    READ_OUTPUT_PORT = 0xD0
    WRITE_OUTPUT_PORT = 0xD1
    WRITE_KEYBOARD_OUTPUT = 0xD2
    WRITE_AUX_OUTPUT = 0xD3
    WRITE_AUX = 0xD4
    PULSE_RESET = 0xFE


class OutputPort(IntFlag):
    """The controller's output port (0xD0/0xD1)."""

    RESET_NOT_ASSERTED = 0x01
    A20_ENABLED = 0x02


SELF_TEST_PASSED = 0x55
PORT_TEST_PASSED = 0x00
KEYBOARD_ACK = 0xFA
KEYBOARD_RESET_PASSED = 0xAA
KEYBOARD_RESET = 0xFF
KEYBOARD_IDENTIFY = 0xF2
MF2_KEYBOARD_ID = (0xAB, 0x83)
OUTPUT_QUEUE_LIMIT = 16

_COMMANDS_WITH_DATA = {
    I8042Command.WRITE_CONFIG,
    I8042Command.WRITE_OUTPUT_PORT,
    I8042Command.WRITE_KEYBOARD_OUTPUT,
    I8042Command.WRITE_AUX_OUTPUT,
    I8042Command.WRITE_AUX,
}


class I8042:
    """A PS/2 controller with nothing plugged in; implements `IoHandler` (offsets 0 and 4)."""

    def __init__(
        self,
        reset_requested: Callable[[], None],
        keyboard_irq: IrqLine | None = None,
        mouse_irq: IrqLine | None = None,
    ) -> None:
        self._reset_requested = reset_requested
        self._keyboard_irq = keyboard_irq
        self._mouse_irq = mouse_irq
        self._irq_levels = {KEYBOARD_IRQ: False, MOUSE_IRQ: False}
        self.reset()

    def reset(self) -> None:
        """Power-on state."""
        self.config = I8042Config.KEYBOARD_INTERRUPT | I8042Config.SYSTEM_FLAG | I8042Config.TRANSLATE
        self.output_port = OutputPort.RESET_NOT_ASSERTED | OutputPort.A20_ENABLED
        self._pending_command: I8042Command | None = None
        self._last_was_command = False
        self._output: deque[tuple[int, bool]] = deque()  # (byte, from the aux port)
        self._update_irqs()

    # -- IoHandler -----------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset == COMMAND_OFFSET:
            return self._status()
        if offset == DATA_OFFSET:
            value = self._output.popleft()[0] if self._output else 0
            self._update_irqs()
            return value
        return 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == COMMAND_OFFSET:
            self._last_was_command = True
            self._command(value)
        elif offset == DATA_OFFSET:
            self._last_was_command = False
            self._data(value)
        else:
            log.debug("i8042: write %#x to offset %#x ignored", value, offset)
        self._update_irqs()

    # -- internals -----------------------------------------------------------------------------
    def _status(self) -> int:
        status = I8042Status.KEYBOARD_UNLOCKED
        if self.config & I8042Config.SYSTEM_FLAG:
            status |= I8042Status.SYSTEM_FLAG
        if self._last_was_command:
            status |= I8042Status.LAST_WAS_COMMAND
        if self._output:
            status |= I8042Status.OUTPUT_FULL
            if self._output[0][1]:
                status |= I8042Status.AUX_DATA
        return int(status)

    def _queue(self, byte: int, aux: bool = False) -> None:
        if len(self._output) < OUTPUT_QUEUE_LIMIT:
            self._output.append((byte, aux))

    def _command(self, value: int) -> None:
        try:
            command = I8042Command(value)
        except ValueError:
            log.debug("i8042: unsupported command %#x ignored", value)
            return
        self._pending_command = None
        if command in _COMMANDS_WITH_DATA:
            self._pending_command = command
        elif command is I8042Command.READ_CONFIG:
            self._queue(int(self.config))
        elif command is I8042Command.SELF_TEST:
            self._queue(SELF_TEST_PASSED)
        elif command in (I8042Command.TEST_AUX, I8042Command.TEST_KEYBOARD):
            self._queue(PORT_TEST_PASSED)
        elif command is I8042Command.DISABLE_AUX:
            self.config |= I8042Config.AUX_DISABLED
        elif command is I8042Command.ENABLE_AUX:
            self.config &= ~I8042Config.AUX_DISABLED
        elif command is I8042Command.DISABLE_KEYBOARD:
            self.config |= I8042Config.KEYBOARD_DISABLED
        elif command is I8042Command.ENABLE_KEYBOARD:
            self.config &= ~I8042Config.KEYBOARD_DISABLED
        elif command is I8042Command.READ_OUTPUT_PORT:
            self._queue(int(self.output_port))
        elif command is I8042Command.PULSE_RESET:
            self._reset_requested()

    def _data(self, value: int) -> None:
        command, self._pending_command = self._pending_command, None
        if command is None:
            self._keyboard_command(value)
        elif command is I8042Command.WRITE_CONFIG:
            self.config = I8042Config(value & 0x77)
        elif command is I8042Command.WRITE_OUTPUT_PORT:
            self.output_port = OutputPort(value & 0x03)
            if not value & OutputPort.RESET_NOT_ASSERTED:
                self._reset_requested()
        elif command is I8042Command.WRITE_KEYBOARD_OUTPUT:
            self._queue(value)
        elif command is I8042Command.WRITE_AUX_OUTPUT:
            self._queue(value, aux=True)
        elif command is I8042Command.WRITE_AUX:
            log.debug("i8042: byte %#x for the absent mouse dropped", value)

    def _keyboard_command(self, value: int) -> None:
        """A byte for the keyboard: answer like a basic MF2 keyboard would."""
        self._queue(KEYBOARD_ACK)
        if value == KEYBOARD_RESET:
            self._queue(KEYBOARD_RESET_PASSED)
        elif value == KEYBOARD_IDENTIFY:
            for byte in MF2_KEYBOARD_ID:
                self._queue(byte)

    def _update_irqs(self) -> None:
        head_aux = self._output[0][1] if self._output else None
        keyboard = head_aux is False and bool(self.config & I8042Config.KEYBOARD_INTERRUPT)
        mouse = head_aux is True and bool(self.config & I8042Config.AUX_INTERRUPT)
        self._drive(KEYBOARD_IRQ, self._keyboard_irq, keyboard)
        self._drive(MOUSE_IRQ, self._mouse_irq, mouse)

    def _drive(self, number: int, line: IrqLine | None, level: bool) -> None:
        if line is not None and self._irq_levels[number] != level:
            self._irq_levels[number] = level
            line.set_level(level)


class I8042Port:
    """One of the controller's two ports as its own 1-byte window (for buses without gaps)."""

    def __init__(self, controller: I8042, offset: int) -> None:
        self._controller = controller
        self._offset = offset

    def read(self, offset: int, size: int) -> int:
        return self._controller.read(self._offset, size) if offset == 0 else 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self._controller.write(self._offset, size, value)


def i8042_port_handlers(controller: I8042) -> dict[int, I8042Port]:
    """Handlers keyed by absolute port: map each as a 1-byte window at 0x60 and 0x64."""
    return {
        I8042_DATA_PORT: I8042Port(controller, DATA_OFFSET),
        I8042_COMMAND_PORT: I8042Port(controller, COMMAND_OFFSET),
    }
