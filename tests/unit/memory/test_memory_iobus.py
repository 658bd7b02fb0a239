"""IoBus dispatch: windows, offsets, overlaps and unassigned accesses."""

from __future__ import annotations

import pytest

from kvmkit.errors import ConfigError, GuestError
from kvmkit.memory.address_space import IoBus


class RecordingDevice:
    def __init__(self, read_value: int = 0) -> None:
        self.read_value = read_value
        self.reads: list[tuple[int, int]] = []
        self.writes: list[tuple[int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        self.reads.append((offset, size))
        return self.read_value

    def write(self, offset: int, size: int, value: int) -> None:
        self.writes.append((offset, size, value))


class FaultyDevice(RecordingDevice):
    def read(self, offset: int, size: int) -> int:
        raise GuestError("bad register")


def test_read_is_dispatched_with_the_offset_inside_the_window() -> None:
    bus = IoBus.pio()
    uart = RecordingDevice(read_value=0x60)
    bus.register(0x3F8, 8, uart, "serial0")
    assert bus.read(0x3FD, 1) == 0x60
    assert uart.reads == [(5, 1)]


def test_write_is_dispatched_to_the_right_one_of_several_windows() -> None:
    bus = IoBus.mmio()
    first, second = RecordingDevice(), RecordingDevice()
    bus.register(0xD000_0000, 0x1000, first, "first")
    bus.register(0xD000_1000, 0x1000, second, "second")
    bus.write(0xD000_1004, 4, 0xAABBCCDD)
    assert (first.writes, second.writes) == ([], [(4, 4, 0xAABBCCDD)])


def test_unassigned_read_returns_all_ones_of_the_size() -> None:
    bus = IoBus.pio()
    assert (bus.read(0x80, 1), bus.read(0x80, 2), bus.read(0x80, 4)) == (0xFF, 0xFFFF, 0xFFFF_FFFF)


def test_unassigned_write_is_ignored() -> None:
    bus = IoBus.pio()
    device = RecordingDevice()
    bus.register(0x60, 1, device, "kbd")
    bus.write(0x61, 1, 0x12)
    assert device.writes == []


def test_access_running_past_the_window_end_is_unassigned() -> None:
    bus = IoBus.pio()
    device = RecordingDevice(read_value=0)
    bus.register(0x70, 2, device, "rtc")
    assert bus.read(0x71, 2) == 0xFFFF
    assert device.reads == []


def test_read_values_are_masked_to_the_access_size() -> None:
    bus = IoBus.pio()
    bus.register(0x10, 4, RecordingDevice(read_value=0x12345678), "wide")
    assert bus.read(0x10, 1) == 0x78


def test_overlapping_registration_is_rejected_naming_both_windows() -> None:
    bus = IoBus.pio()
    bus.register(0x3F8, 8, RecordingDevice(), "serial0")
    with pytest.raises(ConfigError, match=r"serial1.*overlaps serial0"):
        bus.register(0x3FC, 8, RecordingDevice(), "serial1")


def test_window_ending_just_before_another_is_accepted() -> None:
    bus = IoBus.pio()
    bus.register(0x100, 0x10, RecordingDevice(), "a")
    bus.register(0xF0, 0x10, RecordingDevice(), "b")
    assert [w.name for w in bus.windows()] == ["b", "a"]


def test_unregister_frees_the_range() -> None:
    bus = IoBus.pio()
    bus.register(0x3F8, 8, RecordingDevice(), "serial0")
    bus.unregister(0x3F8)
    assert bus.read(0x3F8, 1) == 0xFF
    bus.register(0x3F8, 8, RecordingDevice(), "serial0-again")


def test_unregister_of_an_unknown_base_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="0x1234"):
        IoBus.pio().unregister(0x1234)


def test_window_outside_the_port_space_is_rejected() -> None:
    with pytest.raises(ConfigError):
        IoBus.pio().register(0xFFFF, 2, RecordingDevice(), "wrap")


def test_guest_error_in_a_device_read_yields_all_ones() -> None:
    bus = IoBus.pio()
    bus.register(0x500, 4, FaultyDevice(), "faulty")
    assert bus.read(0x500, 2) == 0xFFFF
