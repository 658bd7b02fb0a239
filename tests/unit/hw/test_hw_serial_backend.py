"""The UART wired to a real fd-backed chardev and a main loop: paced input, nothing dropped."""

from __future__ import annotations

import os

from kvmkit.chardev.mux import MuxChardev
from kvmkit.chardev.stdio import StdioChardev
from kvmkit.hw.char.serial import Serial16550A
from kvmkit.hw.char.uart_regs import Fcr, Ier, Lsr
from kvmkit.hw.char.uart_regs import UartRegister as R


class RecordingIrq:
    def __init__(self) -> None:
        self.levels: list[bool] = []

    def set_level(self, level: bool) -> None:
        self.levels.append(level)

    def pulse(self) -> None:
        self.levels += [True, False]


class RecordingLoop:
    def __init__(self) -> None:
        self.readers: dict[int, object] = {}
        self.soon: list[object] = []

    def add_reader(self, fd: int, callback) -> None:
        self.readers[fd] = callback

    def remove_reader(self, fd: int) -> None:
        del self.readers[fd]

    def call_soon_threadsafe(self, callback) -> None:
        self.soon.append(callback)

    def run_once(self) -> None:
        soon, self.soon = self.soon, []
        for callback in soon:
            callback()
        for callback in list(self.readers.values()):
            callback()


def drain(uart: Serial16550A) -> bytes:
    data = bytearray()
    while uart.read(R.LSR, 1) & Lsr.DATA_READY:
        data.append(uart.read(R.RBR_THR, 1))
    return bytes(data)


def test_input_larger_than_the_fifo_arrives_whole_through_back_pressure() -> None:
    in_read, in_write = os.pipe()
    out_read, out_write = os.pipe()
    chardev = StdioChardev("serial0", input_fd=in_read, output_fd=out_write, escapes=False)
    irq = RecordingIrq()
    uart = Serial16550A(irq, chardev)
    uart.write(R.IIR_FCR, 1, Fcr.ENABLE)
    uart.write(R.IER, 1, Ier.ERBFI)
    loop = RecordingLoop()
    chardev.start(loop)
    message = bytes(range(40))
    os.write(in_write, message)
    loop.run_once()
    assert uart.can_receive() == 0
    assert loop.readers == {}  # FIFO full: the loop stops reading the fd
    assert irq.levels[-1]
    received = bytearray(drain(uart))
    for _ in range(10):
        loop.run_once()
        received += drain(uart)
    assert bytes(received) == message
    assert not uart.read(R.LSR, 1) & Lsr.OVERRUN_ERROR
    uart.write(R.RBR_THR, 1, ord("!"))
    assert os.read(out_read, 10) == b"!"
    chardev.close()
    for fd in (in_read, in_write, out_read, out_write):
        os.close(fd)


def test_stdio_ctrl_a_c_switches_a_mux_between_serial_and_monitor() -> None:
    in_read, in_write = os.pipe()
    out_read, out_write = os.pipe()
    stdio = StdioChardev("con", input_fd=in_read, output_fd=out_write)
    mux = MuxChardev(stdio)
    uart = Serial16550A(RecordingIrq(), mux.add_port("serial0"))
    uart.write(R.IIR_FCR, 1, Fcr.ENABLE)
    monitor_input = bytearray()

    class Monitor:
        def can_receive(self) -> int:
            return 100

        def receive(self, data: bytes) -> None:
            monitor_input.extend(data)

    mux.add_port("monitor0").attach(Monitor())
    os.write(in_write, b"ab\x01cinfo")
    stdio.on_readable()
    assert drain(uart) == b"ab"
    assert bytes(monitor_input) == b"info"
    stdio.close()
    for fd in (in_read, in_write, out_read, out_write):
        os.close(fd)
