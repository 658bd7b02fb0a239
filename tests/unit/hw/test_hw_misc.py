"""The i8042 controller, port 0x92 and the legacy port sinks."""

from __future__ import annotations

import itertools

from kvmkit.hw.misc.i8042 import COMMAND_OFFSET, DATA_OFFSET, I8042, I8042Status, i8042_port_handlers
from kvmkit.hw.misc.ioport_sink import LEGACY_PORT_SINKS, IoportSink
from kvmkit.hw.misc.port92 import Port92


class RecordingIrq:
    def __init__(self) -> None:
        self.levels: list[bool] = []

    def set_level(self, level: bool) -> None:
        self.levels.append(level)

    def pulse(self) -> None:
        self.levels += [True, False]


def make_i8042() -> tuple[I8042, list[str]]:
    resets: list[str] = []
    return I8042(reset_requested=lambda: resets.append("reset")), resets


def test_i8042_command_fe_requests_a_reset() -> None:
    controller, resets = make_i8042()
    controller.write(COMMAND_OFFSET, 1, 0xFE)
    assert resets == ["reset"]


def test_i8042_self_test_answers_0x55_with_output_full() -> None:
    controller, _ = make_i8042()
    controller.write(COMMAND_OFFSET, 1, 0xAA)
    assert controller.read(COMMAND_OFFSET, 1) & I8042Status.OUTPUT_FULL
    assert controller.read(DATA_OFFSET, 1) == 0x55
    assert not controller.read(COMMAND_OFFSET, 1) & I8042Status.OUTPUT_FULL


def test_i8042_command_byte_round_trips() -> None:
    controller, _ = make_i8042()
    controller.write(COMMAND_OFFSET, 1, 0x60)
    controller.write(DATA_OFFSET, 1, 0x47)
    controller.write(COMMAND_OFFSET, 1, 0x20)
    assert controller.read(DATA_OFFSET, 1) == 0x47


def test_i8042_output_port_write_without_reset_bit_requests_a_reset() -> None:
    controller, resets = make_i8042()
    controller.write(COMMAND_OFFSET, 1, 0xD1)
    controller.write(DATA_OFFSET, 1, 0x02)
    assert resets == ["reset"]


def test_i8042_aux_loopback_is_marked_as_aux_data() -> None:
    controller, _ = make_i8042()
    controller.write(COMMAND_OFFSET, 1, 0xD3)
    controller.write(DATA_OFFSET, 1, 0x5A)
    assert controller.read(COMMAND_OFFSET, 1) & I8042Status.AUX_DATA
    assert controller.read(DATA_OFFSET, 1) == 0x5A


def test_i8042_keyboard_bytes_are_acknowledged_with_an_interrupt() -> None:
    irq = RecordingIrq()
    controller = I8042(reset_requested=lambda: None, keyboard_irq=irq)
    controller.write(DATA_OFFSET, 1, 0xF2)
    assert irq.levels == [True]
    assert [controller.read(DATA_OFFSET, 1) for _ in range(3)] == [0xFA, 0xAB, 0x83]
    assert irq.levels == [True, False]


def test_i8042_unknown_commands_and_offsets_do_nothing() -> None:
    controller, resets = make_i8042()
    for value in (0x00, 0x13, 0xC0, 0xFF):
        controller.write(COMMAND_OFFSET, 1, value)
    controller.write(2, 1, 0xFE)
    assert resets == []
    assert not controller.read(COMMAND_OFFSET, 1) & I8042Status.OUTPUT_FULL


def test_i8042_port_handlers_map_each_port_at_offset_zero() -> None:
    controller, resets = make_i8042()
    handlers = i8042_port_handlers(controller)
    handlers[0x64].write(0, 1, 0xFE)
    assert resets == ["reset"]


def test_port92_bit0_requests_reset_and_a20_reads_back() -> None:
    resets: list[str] = []
    port = Port92(reset_requested=lambda: resets.append("reset"))
    port.write(0, 1, 0x00)
    assert port.read(0, 1) == 0x00
    assert resets == []
    port.write(0, 1, 0x03)
    assert port.read(0, 1) == 0x02
    assert resets == ["reset"]


def test_sink_reads_all_ones_at_every_access_size() -> None:
    sink = IoportSink("vga")
    assert (sink.read(0, 1), sink.read(0, 2), sink.read(0, 4)) == (0xFF, 0xFFFF, 0xFFFFFFFF)


def test_legacy_sink_ranges_do_not_overlap_each_other_or_the_real_devices() -> None:
    claimed = [(0x20, 2), (0x40, 4), (0x60, 1), (0x64, 1), (0x70, 2), (0x92, 1), (0xA0, 2)]
    claimed += [(0x2F8, 8), (0x3F8, 8), (0xCF8, 8)]
    ranges = sorted([(r.base, r.length) for r in LEGACY_PORT_SINKS] + claimed)
    for (base, length), (next_base, _) in itertools.pairwise(ranges):
        assert base + length <= next_base, hex(base)
