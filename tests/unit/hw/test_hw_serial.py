"""The 16550A driven through its registers as Linux's 8250 driver does."""

from __future__ import annotations

from kvmkit.chardev.base import Chardev
from kvmkit.chardev.file import FileChardev
from kvmkit.hw.char.serial import Serial16550A, UartState
from kvmkit.hw.char.uart_regs import Fcr, Ier, IirSource, Lcr, Lsr, Mcr, Msr
from kvmkit.hw.char.uart_regs import UartRegister as R


class RecordingIrq:
    def __init__(self) -> None:
        self.levels: list[bool] = []

    @property
    def level(self) -> bool:
        return bool(self.levels) and self.levels[-1]

    def set_level(self, level: bool) -> None:
        self.levels.append(level)

    def pulse(self) -> None:
        self.levels += [True, False]


class MemoryChardev(Chardev):
    def __init__(self) -> None:
        super().__init__("mem")
        self.output = bytearray()
        self.accept_calls = 0

    def write(self, data: bytes) -> None:
        self.output += data

    def accept_input(self) -> None:
        self.accept_calls += 1

    def filename(self) -> str:
        return "memory"


def make_uart() -> tuple[Serial16550A, RecordingIrq, MemoryChardev]:
    irq, chardev = RecordingIrq(), MemoryChardev()
    return Serial16550A(irq, chardev), irq, chardev


def test_scratch_register_keeps_what_was_written() -> None:
    uart, _, _ = make_uart()
    for value in (0x55, 0xAA, 0x00):
        uart.write(R.SCR, 1, value)
        assert uart.read(R.SCR, 1) == value


def test_ier_keeps_only_the_low_four_bits_as_linux_probe_expects() -> None:
    uart, _, _ = make_uart()
    uart.write(R.IER, 1, 0xFF)
    assert uart.read(R.IER, 1) == 0x0F
    uart.write(R.IER, 1, 0)
    assert uart.read(R.IER, 1) == 0


def test_loopback_mirrors_mcr_outputs_in_msr() -> None:
    uart, _, _ = make_uart()
    uart.write(R.MCR, 1, Mcr.LOOP | Mcr.OUT2 | Mcr.RTS)
    assert uart.read(R.MSR, 1) & 0xF0 == Msr.DCD | Msr.CTS
    uart.write(R.MCR, 1, Mcr.LOOP | Mcr.DTR | Mcr.OUT1)
    assert uart.read(R.MSR, 1) & 0xF0 == Msr.DSR | Msr.RI


def test_loopback_reports_modem_deltas_once() -> None:
    uart, _, _ = make_uart()
    uart.write(R.MCR, 1, Mcr.LOOP)
    uart.read(R.MSR, 1)
    uart.write(R.MCR, 1, Mcr.LOOP | Mcr.RTS)
    assert uart.read(R.MSR, 1) & Msr.DELTAS == Msr.DELTA_CTS
    assert uart.read(R.MSR, 1) & Msr.DELTAS == 0


def test_loopback_transmit_appears_in_rbr_and_not_on_the_backend() -> None:
    uart, _, chardev = make_uart()
    uart.write(R.MCR, 1, Mcr.LOOP)
    uart.write(R.RBR_THR, 1, 0x5A)
    assert uart.read(R.LSR, 1) & Lsr.DATA_READY
    assert uart.read(R.RBR_THR, 1) == 0x5A
    assert not uart.read(R.LSR, 1) & Lsr.DATA_READY
    assert chardev.output == b""


def test_fifo_enable_is_reported_in_iir_top_bits() -> None:
    uart, _, _ = make_uart()
    assert uart.read(R.IIR_FCR, 1) >> 6 == 0
    uart.write(R.IIR_FCR, 1, Fcr.ENABLE)
    assert uart.read(R.IIR_FCR, 1) >> 6 == 3


def test_dlab_exposes_divisor_latch_without_touching_ier() -> None:
    uart, _, _ = make_uart()
    uart.write(R.IER, 1, Ier.ERBFI)
    uart.write(R.LCR, 1, Lcr.DLAB | 0x03)
    uart.write(R.RBR_THR, 1, 0x01)
    uart.write(R.IER, 1, 0x02)
    assert (uart.read(R.RBR_THR, 1), uart.read(R.IER, 1)) == (0x01, 0x02)
    uart.write(R.LCR, 1, 0x03)
    assert uart.read(R.IER, 1) == Ier.ERBFI
    assert uart.save().divisor == 0x0201


def test_lsr_always_shows_transmitter_empty() -> None:
    uart, _, _ = make_uart()
    for byte in b"hello":
        assert uart.read(R.LSR, 1) & (Lsr.THR_EMPTY | Lsr.TRANSMITTER_EMPTY) == 0x60
        uart.write(R.RBR_THR, 1, byte)
    assert uart.read(R.LSR, 1) & 0x60 == 0x60


def test_transmit_reaches_a_file_chardev(tmp_path) -> None:
    path = tmp_path / "console.log"
    chardev = FileChardev("serial0", str(path))
    uart = Serial16550A(RecordingIrq(), chardev)
    for byte in b"Linux version\n":
        uart.write(R.RBR_THR, 1, byte)
    chardev.close()
    assert path.read_bytes() == b"Linux version\n"


def test_enabling_thre_interrupt_with_empty_thr_raises_it() -> None:
    uart, irq, _ = make_uart()
    uart.write(R.IER, 1, Ier.ETBEI)
    assert irq.level
    assert uart.read(R.IIR_FCR, 1) & 0x0F == IirSource.THR_EMPTY


def test_reading_iir_clears_thre_interrupt_and_reenabling_raises_it_again() -> None:
    uart, irq, _ = make_uart()
    uart.write(R.IER, 1, Ier.ETBEI)
    uart.read(R.IIR_FCR, 1)
    assert uart.read(R.IIR_FCR, 1) & 0x0F == IirSource.NONE
    assert not irq.level
    uart.write(R.IER, 1, 0)
    uart.write(R.IER, 1, Ier.ETBEI)
    assert uart.read(R.IIR_FCR, 1) & 0x0F == IirSource.THR_EMPTY


def test_writing_thr_rearms_thre_interrupt_because_transmit_is_immediate() -> None:
    uart, irq, chardev = make_uart()
    uart.write(R.IER, 1, Ier.ETBEI)
    uart.read(R.IIR_FCR, 1)
    uart.write(R.RBR_THR, 1, ord("x"))
    assert irq.level
    assert chardev.output == b"x"


def test_received_bytes_raise_rx_interrupt_and_read_in_order() -> None:
    uart, irq, _ = make_uart()
    uart.write(R.IIR_FCR, 1, Fcr.ENABLE)
    uart.write(R.IER, 1, Ier.ERBFI)
    uart.receive(b"ok")
    assert irq.level
    assert uart.read(R.IIR_FCR, 1) & 0x0F in (IirSource.RX_DATA_AVAILABLE, IirSource.RX_TIMEOUT)
    assert bytes(uart.read(R.RBR_THR, 1) for _ in range(2)) == b"ok"
    assert not irq.level


def test_rx_at_trigger_level_reports_data_available_below_it_timeout() -> None:
    uart, _, _ = make_uart()
    uart.write(R.IIR_FCR, 1, Fcr.ENABLE | 0x80)  # trigger level 8
    uart.write(R.IER, 1, Ier.ERBFI)
    uart.receive(b"1234")
    assert uart.read(R.IIR_FCR, 1) & 0x0F == IirSource.RX_TIMEOUT
    uart.receive(b"5678")
    assert uart.read(R.IIR_FCR, 1) & 0x0F == IirSource.RX_DATA_AVAILABLE


def test_can_receive_reports_fifo_room_for_back_pressure() -> None:
    uart, _, _ = make_uart()
    assert uart.can_receive() == 1  # FIFO disabled: a single holding register
    uart.write(R.IIR_FCR, 1, Fcr.ENABLE)
    uart.receive(b"x" * 10)
    assert uart.can_receive() == 6
    uart.receive(b"y" * 6)
    assert uart.can_receive() == 0
    assert not uart.read(R.LSR, 1) & Lsr.OVERRUN_ERROR


def test_draining_a_full_fifo_asks_the_backend_for_more_input() -> None:
    uart, _, chardev = make_uart()
    uart.write(R.IIR_FCR, 1, Fcr.ENABLE)
    uart.receive(b"z" * 16)
    assert uart.can_receive() == 0
    for _ in range(16):
        uart.read(R.RBR_THR, 1)
    assert chardev.accept_calls == 1


def test_receiving_beyond_room_sets_overrun_and_line_status_interrupt() -> None:
    uart, irq, _ = make_uart()
    uart.write(R.IER, 1, Ier.ELSI | Ier.ERBFI)
    uart.receive(b"ab")
    assert uart.read(R.IIR_FCR, 1) & 0x0F == IirSource.RECEIVER_LINE_STATUS
    assert uart.read(R.LSR, 1) & Lsr.OVERRUN_ERROR
    assert uart.read(R.IIR_FCR, 1) & 0x0F == IirSource.RX_DATA_AVAILABLE
    assert irq.level


def test_rx_interrupt_outranks_thre_which_outranks_modem_status() -> None:
    uart, _, _ = make_uart()
    uart.write(R.MCR, 1, Mcr.LOOP)
    uart.write(R.MCR, 1, Mcr.LOOP | Mcr.RTS)  # a modem status delta
    uart.write(R.RBR_THR, 1, 0x41)  # looped back into RX
    uart.write(R.IER, 1, Ier.ERBFI | Ier.ETBEI | Ier.EDSSI)
    assert uart.read(R.IIR_FCR, 1) & 0x0F == IirSource.RX_DATA_AVAILABLE
    uart.read(R.RBR_THR, 1)
    assert uart.read(R.IIR_FCR, 1) & 0x0F == IirSource.THR_EMPTY
    assert uart.read(R.IIR_FCR, 1) & 0x0F == IirSource.MODEM_STATUS
    uart.read(R.MSR, 1)
    assert uart.read(R.IIR_FCR, 1) & 0x0F == IirSource.NONE


def test_fifo_clear_empties_the_receiver() -> None:
    uart, _, _ = make_uart()
    uart.write(R.IIR_FCR, 1, Fcr.ENABLE)
    uart.receive(b"junk")
    uart.write(R.IIR_FCR, 1, Fcr.ENABLE | Fcr.CLEAR_RX)
    assert not uart.read(R.LSR, 1) & Lsr.DATA_READY


def test_save_load_round_trip_restores_registers_and_fifo() -> None:
    uart, _, _ = make_uart()
    uart.write(R.IIR_FCR, 1, Fcr.ENABLE)
    uart.write(R.LCR, 1, 0x03)
    uart.write(R.SCR, 1, 0x99)
    uart.write(R.IER, 1, Ier.ERBFI)
    uart.receive(b"abc")
    saved = uart.save()
    other, irq, _ = make_uart()
    other.load(saved)
    assert other.save() == saved
    assert irq.level
    assert bytes(other.read(R.RBR_THR, 1) for _ in range(3)) == b"abc"


def test_load_truncates_an_oversized_fifo_from_an_untrusted_stream() -> None:
    uart, _, _ = make_uart()
    uart.load(UartState(fcr=Fcr.ENABLE, rx_fifo=b"x" * 100, ier=0xFF))
    assert len(uart.save().rx_fifo) == 16
    assert uart.read(R.IER, 1) == 0x0F


def test_reset_returns_to_power_on_state() -> None:
    uart, _, _ = make_uart()
    uart.write(R.SCR, 1, 0x12)
    uart.write(R.IER, 1, Ier.ETBEI)
    uart.reset()
    assert uart.save() == UartState()


def test_out_of_range_offsets_are_ignored() -> None:
    uart, _, _ = make_uart()
    uart.write(9, 1, 0xFF)
    assert uart.read(9, 1) == 0xFF
    assert uart.save() == UartState()


def test_linux_fifo_probe_sequence_identifies_a_16550a_without_64_byte_fifo() -> None:
    uart, _, _ = make_uart()
    uart.write(R.LCR, 1, 0xBF)  # 16650 EFR access attempt
    uart.write(R.IIR_FCR, 1, 0)
    uart.write(R.LCR, 1, 0)
    uart.write(R.IIR_FCR, 1, Fcr.ENABLE)
    assert uart.read(R.IIR_FCR, 1) >> 6 == 3
    uart.write(R.LCR, 1, Lcr.DLAB)
    uart.write(R.IIR_FCR, 1, Fcr.ENABLE | 0x20)  # 16750 64-byte FIFO bit
    uart.write(R.LCR, 1, 0)
    assert uart.read(R.IIR_FCR, 1) >> 5 == 6


class RecordingScheduler:
    def __init__(self) -> None:
        self.calls: list[tuple[float, object]] = []

    def __call__(self, delay: float, callback) -> None:  # type: ignore[no-untyped-def]
        self.calls.append((delay, callback))

    def run_due(self) -> None:
        calls, self.calls = self.calls, []
        for _, callback in calls:
            callback()  # type: ignore[operator]


def test_with_a_scheduler_output_is_gathered_into_one_backend_write_per_burst() -> None:
    chardev, schedule = MemoryChardev(), RecordingScheduler()
    writes: list[bytes] = []
    chardev.write = writes.append  # type: ignore[method-assign]
    uart = Serial16550A(RecordingIrq(), chardev, schedule=schedule)
    for byte in b"Linux version 6.1\n":
        assert uart.read(R.LSR, 1) & Lsr.THR_EMPTY
        uart.write(R.RBR_THR, 1, byte)
    assert writes == [] and len(schedule.calls) == 1  # one timer armed for the whole burst
    schedule.run_due()
    assert writes == [b"Linux version 6.1\n"]
    uart.write(R.RBR_THR, 1, ord("#"))
    assert len(schedule.calls) == 1  # the next burst arms a new one
    uart.reset()  # a reset (like save and machine shutdown) writes out what is waiting
    assert writes == [b"Linux version 6.1\n", b"#"]


def test_a_full_batch_is_written_without_waiting_for_the_timer() -> None:
    from kvmkit.hw.char.serial import TX_BATCH_LIMIT

    chardev, schedule = MemoryChardev(), RecordingScheduler()
    uart = Serial16550A(RecordingIrq(), chardev, schedule=schedule)
    for _ in range(TX_BATCH_LIMIT):
        uart.write(R.RBR_THR, 1, ord("x"))
    assert bytes(chardev.output) == b"x" * TX_BATCH_LIMIT
