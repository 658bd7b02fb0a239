"""The CMOS RTC read and set the way Linux's mc146818 code does."""

from __future__ import annotations

from datetime import UTC, datetime

from kvmkit.hw.timer.rtc import CmosRegister as C
from kvmkit.hw.timer.rtc import CmosRtc, StatusA, StatusB

NOW = datetime(2024, 2, 29, 23, 58, 7, tzinfo=UTC).timestamp()  # a Thursday


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def cmos_read(rtc: CmosRtc, index: int) -> int:
    rtc.write(0, 1, index)
    return rtc.read(1, 1)


def cmos_write(rtc: CmosRtc, index: int, value: int) -> None:
    rtc.write(0, 1, index)
    rtc.write(1, 1, value)


def read_time(rtc: CmosRtc) -> tuple[int, ...]:
    order = (C.CENTURY, C.YEAR, C.MONTH, C.DAY_OF_MONTH, C.HOURS, C.MINUTES, C.SECONDS, C.DAY_OF_WEEK)
    return tuple(cmos_read(rtc, index) for index in order)


def test_default_mode_reads_current_utc_time_in_bcd() -> None:
    rtc = CmosRtc(clock=FakeClock())
    assert read_time(rtc) == (0x20, 0x24, 0x02, 0x29, 0x23, 0x58, 0x07, 0x05)


def test_binary_mode_reads_plain_numbers() -> None:
    rtc = CmosRtc(clock=FakeClock())
    cmos_write(rtc, C.STATUS_B, StatusB.HOURS_24 | StatusB.BINARY)
    assert read_time(rtc) == (20, 24, 2, 29, 23, 58, 7, 5)


def test_reads_follow_the_host_clock() -> None:
    clock = FakeClock()
    rtc = CmosRtc(clock=clock)
    clock.now += 120
    assert cmos_read(rtc, C.MINUTES) == 0x00
    assert cmos_read(rtc, C.DAY_OF_MONTH) == 0x01  # March 1st


def test_twelve_hour_mode_sets_the_pm_bit() -> None:
    rtc = CmosRtc(clock=FakeClock())
    cmos_write(rtc, C.STATUS_B, 0)
    assert cmos_read(rtc, C.HOURS) == 0x80 | 0x11


def test_nmi_bit_of_the_index_is_ignored() -> None:
    rtc = CmosRtc(clock=FakeClock())
    rtc.write(0, 1, 0x80 | C.SECONDS)
    assert rtc.read(1, 1) == 0x07


def test_uip_is_set_only_just_before_the_second_changes() -> None:
    clock = FakeClock(NOW + 0.5)
    rtc = CmosRtc(clock=clock)
    assert not cmos_read(rtc, C.STATUS_A) & StatusA.UPDATE_IN_PROGRESS
    clock.now = NOW + 0.9999
    assert cmos_read(rtc, C.STATUS_A) & StatusA.UPDATE_IN_PROGRESS


def test_status_d_reports_valid_ram_and_time() -> None:
    assert cmos_read(CmosRtc(clock=FakeClock()), C.STATUS_D) == 0x80


def test_setting_the_clock_with_set_bit_moves_time_and_keeps_running() -> None:
    clock = FakeClock()
    rtc = CmosRtc(clock=clock)
    cmos_write(rtc, C.STATUS_B, StatusB.SET | StatusB.HOURS_24)
    for index, value in ((C.YEAR, 0x30), (C.MONTH, 0x01), (C.DAY_OF_MONTH, 0x02), (C.HOURS, 0x03)):
        cmos_write(rtc, index, value)
    cmos_write(rtc, C.MINUTES, 0x04)
    cmos_write(rtc, C.SECONDS, 0x05)
    cmos_write(rtc, C.STATUS_B, StatusB.HOURS_24)
    clock.now += 10
    assert read_time(rtc)[:7] == (0x20, 0x30, 0x01, 0x02, 0x03, 0x04, 0x15)


def test_an_impossible_date_from_the_guest_is_ignored() -> None:
    rtc = CmosRtc(clock=FakeClock())
    cmos_write(rtc, C.MONTH, 0x13)
    assert cmos_read(rtc, C.MONTH) == 0x02


def test_cmos_memory_bytes_hold_what_is_written() -> None:
    rtc = CmosRtc(clock=FakeClock())
    cmos_write(rtc, 0x40, 0xA5)
    assert cmos_read(rtc, 0x40) == 0xA5


def test_memory_size_bytes_follow_firmware_conventions() -> None:
    rtc = CmosRtc(clock=FakeClock())
    rtc.set_memory_size(below_4g=3 << 30, above_4g=5 << 30)
    extended_kib = (3 << 30) // 1024 - 1024
    assert extended_kib > 0xFFFF
    assert (cmos_read(rtc, 0x30), cmos_read(rtc, 0x31)) == (0xFF, 0xFF)
    above_16m = ((3 << 30) - (16 << 20)) // 65536
    assert cmos_read(rtc, 0x34) | cmos_read(rtc, 0x35) << 8 == above_16m
    high = cmos_read(rtc, 0x5B) | cmos_read(rtc, 0x5C) << 8 | cmos_read(rtc, 0x5D) << 16
    assert high == (5 << 30) // 65536


def test_small_memory_reports_exact_extended_kib() -> None:
    rtc = CmosRtc(clock=FakeClock())
    rtc.set_memory_size(below_4g=32 << 20, above_4g=0)
    assert cmos_read(rtc, 0x30) | cmos_read(rtc, 0x31) << 8 == 31 * 1024


def test_save_load_round_trip_keeps_cmos_and_offset() -> None:
    clock = FakeClock()
    rtc = CmosRtc(clock=clock)
    cmos_write(rtc, 0x50, 0x42)
    cmos_write(rtc, C.HOURS, 0x01)
    other = CmosRtc(clock=clock)
    other.load(rtc.save())
    assert cmos_read(other, 0x50) == 0x42
    assert cmos_read(other, C.HOURS) == 0x01
