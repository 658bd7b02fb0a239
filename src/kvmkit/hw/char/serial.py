"""A 16550A UART on the PIO bus (the machine places COM1 at 0x3F8/IRQ4 and COM2 at 0x2F8/IRQ3).

Transmission is immediate: a THR write goes straight to the character backend, so THRE and
TEMT are always set and Linux's 8250 driver (which reads LSR before each byte) never waits.
Reception is paced by the backend through `can_receive()`; bytes are never dropped as long as
the backend honours it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from kvmkit.chardev.base import Chardev
from kvmkit.hw.char.uart_regs import (
    CONNECTED_MODEM_INPUTS,
    FIFO_SIZE,
    LOOPBACK_WIRING,
    RX_TRIGGER_LEVELS,
    Fcr,
    Ier,
    Iir,
    IirSource,
    Lcr,
    Lsr,
    Mcr,
    Msr,
    UartRegister,
)
from kvmkit.hw.device import IrqLine

log = logging.getLogger(__name__)

COM1_PORT, COM1_IRQ = 0x3F8, 4
COM2_PORT, COM2_IRQ = 0x2F8, 3
UART_PORT_COUNT = 8

# Hot-path constants as plain module ints (see uart_regs).
_THR, _LSR, _REGISTER_COUNT = UartRegister.RBR_THR, UartRegister.LSR, UartRegister.COUNT
_DLAB = Lcr.DLAB
_LSR_IDLE = Lsr.THR_EMPTY | Lsr.TRANSMITTER_EMPTY  # transmission is immediate: always empty
_DATA_READY = Lsr.DATA_READY
_ERBFI, _ETBEI, _ELSI, _EDSSI = Ier.ERBFI, Ier.ETBEI, Ier.ELSI, Ier.EDSSI
_FIFO_ENABLE, _TRIGGER_MASK = Fcr.ENABLE, Fcr.TRIGGER_MASK
_NO_INTERRUPT = IirSource.NONE

# Output gathering (see Serial16550A.__init__): a burst is written after at most this delay or this many bytes.
TX_FLUSH_DELAY = 0.01
TX_BATCH_LIMIT = 4096
Scheduler = Callable[[float, Callable[[], None]], object]

# The divisor a PC BIOS leaves programmed (9600 baud from the 1.8432 MHz clock).
DEFAULT_DIVISOR = 12


@dataclass
class UartState:
    """Everything a 16550A remembers: the migratable state, declared once."""

    divisor: int = DEFAULT_DIVISOR
    ier: int = 0
    lcr: int = 0
    mcr: int = int(Mcr.OUT2)
    fcr: int = 0
    scr: int = 0
    lsr_errors: int = 0  # sticky error bits of LSR, cleared by reading LSR
    msr_deltas: int = 0  # MSR low nibble, cleared by reading MSR
    rx_fifo: bytes = b""
    thr_interrupt_pending: bool = False


class Serial16550A:
    """A 16550A UART whose line is a character backend; implements `IoHandler`."""

    def __init__(self, irq: IrqLine, chardev: Chardev | None, name: str = "serial0",
                 schedule: Scheduler | None = None) -> None:
        self.name = name
        self._irq = irq
        self._chardev = chardev
        # With a scheduler (the main loop's call_later), transmitted bytes are gathered and handed to the
        # backend TX_FLUSH_DELAY later (or once TX_BATCH_LIMIT are waiting): one host write per burst instead
        # of one per byte. Without one, every byte is written at once.
        self._schedule = schedule
        self._tx = bytearray()
        self._tx_flush_armed = False
        self._state = UartState()
        self._irq_level = False
        self._backend_throttled = False
        if chardev is not None:
            chardev.attach(self)

    # -- IoHandler -----------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        s = self._state
        if offset == _LSR:  # the hot path: Linux polls LSR before every console byte it sends
            errors = s.lsr_errors
            value = _LSR_IDLE | errors | (_DATA_READY if s.rx_fifo else 0)
            if errors:  # reading LSR clears the sticky errors, which may lower the line
                s.lsr_errors = 0
                self._update_irq()
            return value
        if not 0 <= offset < _REGISTER_COUNT:
            log.debug("%s: read of offset %#x outside the UART", self.name, offset)
            return 0xFF
        value = self._read_register(offset)
        self._update_irq()
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == _THR and not self._state.lcr & _DLAB:  # the hot path: one console byte
            self._transmit(value & 0xFF)
            self._update_irq()
            return
        if not 0 <= offset < _REGISTER_COUNT:
            log.debug("%s: write %#x to offset %#x outside the UART ignored", self.name, value, offset)
            return
        self._write_register(offset, value & 0xFF)
        self._update_irq()

    # -- backend side --------------------------------------------------------------------------
    def can_receive(self) -> int:
        """Bytes the RX FIFO can take now (0 in loopback, where the line is disconnected)."""
        s = self._state
        room = 0 if s.mcr & Mcr.LOOP else self._rx_capacity() - len(s.rx_fifo)
        if room <= 0:
            self._backend_throttled = True
        return max(0, room)

    def receive(self, data: bytes) -> None:
        """Bytes from the backend enter the RX FIFO and raise the RX interrupt."""
        if self._state.mcr & Mcr.LOOP:
            log.debug("%s: %d input bytes while in loopback dropped", self.name, len(data))
            return
        self._push_rx(data)
        self._update_irq()

    # -- lifecycle and migration ---------------------------------------------------------------
    def flush_tx(self) -> None:
        """Hand every gathered output byte to the backend now."""
        self._tx_flush_armed = False
        if self._tx:
            data = bytes(self._tx)
            self._tx.clear()
            if self._chardev is not None:
                self._chardev.write(data)

    def reset(self) -> None:
        """Power-on state (a system reset)."""
        self.flush_tx()
        self._state = UartState()
        self._notify_backend_room()
        self._update_irq()

    def save(self) -> UartState:
        """A copy of the device state for migration."""
        self.flush_tx()
        return replace(self._state)

    def load(self, state: UartState) -> None:
        """Adopt state from a migration stream; values are masked to what the hardware holds."""
        fifo_limit = FIFO_SIZE if state.fcr & Fcr.ENABLE else 1
        self._state = UartState(
            divisor=state.divisor & 0xFFFF,
            ier=state.ier & Ier.WRITABLE,
            lcr=state.lcr & 0xFF,
            mcr=state.mcr & Mcr.WRITABLE,
            fcr=state.fcr & (Fcr.ENABLE | Fcr.DMA_MODE | Fcr.TRIGGER_MASK),
            scr=state.scr & 0xFF,
            lsr_errors=state.lsr_errors & Lsr.ERRORS,
            msr_deltas=state.msr_deltas & Msr.DELTAS,
            rx_fifo=bytes(state.rx_fifo[:fifo_limit]),
            thr_interrupt_pending=bool(state.thr_interrupt_pending),
        )
        self._irq_level = not self._compute_irq_level()  # force the line to be driven
        self._update_irq()
        self._notify_backend_room()

    # -- registers -----------------------------------------------------------------------------
    def _read_register(self, register: int) -> int:
        s = self._state
        dlab = bool(s.lcr & _DLAB)
        if register == UartRegister.RBR_THR:
            return s.divisor & 0xFF if dlab else self._pop_rx()
        if register == UartRegister.IER:
            return s.divisor >> 8 if dlab else s.ier
        if register == UartRegister.IIR_FCR:
            return self._read_iir()
        if register == UartRegister.LCR:
            return s.lcr
        if register == UartRegister.MCR:
            return s.mcr
        if register == UartRegister.LSR:
            value = self._line_status()
            s.lsr_errors = 0
            return value
        if register == UartRegister.MSR:
            value = self._modem_inputs() | s.msr_deltas
            s.msr_deltas = 0
            return value
        return s.scr

    def _write_register(self, register: int, value: int) -> None:
        s = self._state
        dlab = bool(s.lcr & _DLAB)
        if register == UartRegister.RBR_THR:
            if dlab:
                s.divisor = (s.divisor & 0xFF00) | value
            else:
                self._transmit(value)
        elif register == UartRegister.IER:
            if dlab:
                s.divisor = (s.divisor & 0x00FF) | (value << 8)
            else:
                self._write_ier(value)
        elif register == UartRegister.IIR_FCR:
            self._write_fcr(value)
        elif register == UartRegister.LCR:
            s.lcr = value
        elif register == UartRegister.MCR:
            self._write_mcr(value)
        elif register == UartRegister.LSR:
            log.debug("%s: write %#x to read-only LSR ignored", self.name, value)
        elif register == UartRegister.MSR:
            log.debug("%s: write %#x to read-only MSR ignored", self.name, value)
        else:
            s.scr = value

    def _write_ier(self, value: int) -> None:
        s = self._state
        old = s.ier
        s.ier = value & Ier.WRITABLE
        if s.ier & Ier.ETBEI and not old & Ier.ETBEI:
            # THR is always empty: enabling the THRE interrupt raises it at once.
            s.thr_interrupt_pending = True

    def _write_fcr(self, value: int) -> None:
        s = self._state
        new_fcr = value & (Fcr.ENABLE | Fcr.DMA_MODE | Fcr.TRIGGER_MASK) if value & Fcr.ENABLE else 0
        if (new_fcr ^ s.fcr) & Fcr.ENABLE or value & Fcr.CLEAR_RX:
            # Toggling FIFO mode or asking for it clears the receiver FIFO.
            s.rx_fifo = b""
            self._notify_backend_room()
        s.fcr = new_fcr

    def _write_mcr(self, value: int) -> None:
        s = self._state
        before = self._modem_inputs()
        was_loop = bool(s.mcr & Mcr.LOOP)
        s.mcr = value & Mcr.WRITABLE
        after = self._modem_inputs()
        self._record_modem_deltas(before, after)
        if was_loop and not s.mcr & Mcr.LOOP:
            self._notify_backend_room()

    def _record_modem_deltas(self, before: int, after: int) -> None:
        changed = before ^ after
        s = self._state
        if changed & Msr.CTS:
            s.msr_deltas |= Msr.DELTA_CTS
        if changed & Msr.DSR:
            s.msr_deltas |= Msr.DELTA_DSR
        if changed & Msr.DCD:
            s.msr_deltas |= Msr.DELTA_DCD
        if before & Msr.RI and not after & Msr.RI:
            s.msr_deltas |= Msr.TRAILING_EDGE_RI

    def _transmit(self, value: int) -> None:
        # The word length in LCR is not applied: the host side is a byte stream and guests
        # that skip programming LCR (tiny boot stubs) still mean 8-bit bytes.
        s = self._state
        if s.mcr & Mcr.LOOP:
            self._push_rx(bytes((value,)))
        elif self._chardev is not None:
            if self._schedule is None:
                self._chardev.write(bytes((value,)))
            else:
                tx = self._tx
                tx.append(value)
                if len(tx) >= TX_BATCH_LIMIT:
                    self.flush_tx()
                elif not self._tx_flush_armed:
                    self._tx_flush_armed = True
                    self._schedule(TX_FLUSH_DELAY, self.flush_tx)
        # The byte left at once, so THR is empty again: the THRE interrupt (cleared by this
        # write) is immediately due again.
        s.thr_interrupt_pending = True

    # -- derived registers ---------------------------------------------------------------------
    def _line_status(self) -> int:
        s = self._state
        return _LSR_IDLE | s.lsr_errors | (_DATA_READY if s.rx_fifo else 0)

    def _modem_inputs(self) -> int:
        s = self._state
        if not s.mcr & Mcr.LOOP:
            return CONNECTED_MODEM_INPUTS
        value = 0
        for output, input_bit in LOOPBACK_WIRING:
            if s.mcr & output:
                value |= input_bit
        return value

    def _interrupt_source(self) -> int:
        """The IirSource of the highest-priority pending interrupt (IirSource.NONE if none)."""
        s = self._state
        ier = s.ier
        if not ier:
            return _NO_INTERRUPT
        if ier & _ELSI and s.lsr_errors:
            return IirSource.RECEIVER_LINE_STATUS
        if ier & _ERBFI and s.rx_fifo:
            if s.fcr & _FIFO_ENABLE and len(s.rx_fifo) < RX_TRIGGER_LEVELS[(s.fcr & _TRIGGER_MASK) >> 6]:
                # Below the trigger level the real chip times out after 4 character times;
                # reporting the timeout at once lets the guest drain without a timer.
                return IirSource.RX_TIMEOUT
            return IirSource.RX_DATA_AVAILABLE
        if ier & _ETBEI and s.thr_interrupt_pending:
            return IirSource.THR_EMPTY
        if ier & _EDSSI and s.msr_deltas:
            return IirSource.MODEM_STATUS
        return _NO_INTERRUPT

    def _read_iir(self) -> int:
        source = self._interrupt_source()
        if source == IirSource.THR_EMPTY:
            self._state.thr_interrupt_pending = False
        fifo_bits = Iir.FIFOS_ENABLED if self._state.fcr & _FIFO_ENABLE else 0
        return source | fifo_bits

    def _compute_irq_level(self) -> bool:
        return self._interrupt_source() != _NO_INTERRUPT

    def _update_irq(self) -> None:
        level = self._interrupt_source() != _NO_INTERRUPT
        if level != self._irq_level:
            self._irq_level = level
            self._irq.set_level(level)

    # -- receive FIFO --------------------------------------------------------------------------
    def _rx_capacity(self) -> int:
        return FIFO_SIZE if self._state.fcr & Fcr.ENABLE else 1

    def _push_rx(self, data: bytes) -> None:
        s = self._state
        room = self._rx_capacity() - len(s.rx_fifo)
        if len(data) > room:
            # The backend ignored can_receive(): the chip's answer is an overrun.
            log.debug("%s: RX overrun, %d bytes lost", self.name, len(data) - max(room, 0))
            s.lsr_errors |= Lsr.OVERRUN_ERROR
            data = data[: max(room, 0)]
        s.rx_fifo += data

    def _pop_rx(self) -> int:
        s = self._state
        if not s.rx_fifo:
            return 0
        byte = s.rx_fifo[0]
        s.rx_fifo = s.rx_fifo[1:]
        if not s.rx_fifo:
            self._notify_backend_room()
        return byte

    def _notify_backend_room(self) -> None:
        if self._backend_throttled and self._chardev is not None:
            self._backend_throttled = False
            self._chardev.accept_input()
