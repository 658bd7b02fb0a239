"""The 16550A UART register map (offsets from the base port and their bits), per the datasheet.

Plain int constants grouped in namespace classes, not enum.IntFlag: every console byte a guest prints goes
through these on the vCPU's exit path, and IntFlag arithmetic costs microseconds per operation.
"""

from __future__ import annotations

FIFO_SIZE = 16


class UartRegister:
    """Register offsets; DLAB=1 in LCR turns offsets 0/1 into the divisor latch."""

    RBR_THR = 0  # receive buffer (read) / transmit holding (write); DLL when DLAB
    IER = 1  # interrupt enable; DLM when DLAB
    IIR_FCR = 2  # interrupt identification (read) / FIFO control (write)
    LCR = 3  # line control
    MCR = 4  # modem control
    LSR = 5  # line status
    MSR = 6  # modem status
    SCR = 7  # scratch

    COUNT = 8


class Ier:
    """Interrupt enable register."""

    ERBFI = 0x01  # received data available (and RX timeout)
    ETBEI = 0x02  # transmit holding register empty
    ELSI = 0x04  # receiver line status
    EDSSI = 0x08  # modem status

    WRITABLE = 0x0F


class Iir:
    """Interrupt identification register: bit 0 clear means an interrupt is pending."""

    NO_INTERRUPT = 0x01
    ID_MASK = 0x0E
    FIFOS_ENABLED = 0xC0


class IirSource:
    """The pending interrupt's identification (IIR bits 3:1 and bit 0), highest priority first."""

    RECEIVER_LINE_STATUS = 0x06
    RX_DATA_AVAILABLE = 0x04
    RX_TIMEOUT = 0x0C
    THR_EMPTY = 0x02
    MODEM_STATUS = 0x00
    NONE = 0x01


class Fcr:
    """FIFO control register (write only)."""

    ENABLE = 0x01
    CLEAR_RX = 0x02
    CLEAR_TX = 0x04
    DMA_MODE = 0x08
    TRIGGER_MASK = 0xC0


# RX FIFO trigger levels selected by FCR bits 7:6.
RX_TRIGGER_LEVELS = (1, 4, 8, 14)


class Lcr:
    """Line control register."""

    WORD_LENGTH_MASK = 0x03
    STOP_BITS = 0x04
    PARITY_ENABLE = 0x08
    EVEN_PARITY = 0x10
    STICK_PARITY = 0x20
    SET_BREAK = 0x40
    DLAB = 0x80


class Mcr:
    """Modem control register."""

    DTR = 0x01
    RTS = 0x02
    OUT1 = 0x04
    OUT2 = 0x08
    LOOP = 0x10

    WRITABLE = 0x1F


class Lsr:
    """Line status register."""

    DATA_READY = 0x01
    OVERRUN_ERROR = 0x02
    PARITY_ERROR = 0x04
    FRAMING_ERROR = 0x08
    BREAK_INTERRUPT = 0x10
    THR_EMPTY = 0x20
    TRANSMITTER_EMPTY = 0x40
    RX_FIFO_ERROR = 0x80

    ERRORS = OVERRUN_ERROR | PARITY_ERROR | FRAMING_ERROR | BREAK_INTERRUPT


class Msr:
    """Modem status register: deltas in the low nibble, line states in the high one."""

    DELTA_CTS = 0x01
    DELTA_DSR = 0x02
    TRAILING_EDGE_RI = 0x04
    DELTA_DCD = 0x08
    CTS = 0x10
    DSR = 0x20
    RI = 0x40
    DCD = 0x80

    DELTAS = 0x0F


# In loopback mode the modem outputs drive the modem inputs: (MCR bit, MSR bit).
LOOPBACK_WIRING = ((Mcr.RTS, Msr.CTS), (Mcr.DTR, Msr.DSR), (Mcr.OUT1, Msr.RI), (Mcr.OUT2, Msr.DCD))

# With no loopback, a connected host backend reports these modem inputs as asserted.
CONNECTED_MODEM_INPUTS = Msr.DCD | Msr.DSR | Msr.CTS
