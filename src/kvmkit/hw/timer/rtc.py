"""The MC146818 CMOS real-time clock and its 128 bytes of CMOS memory (ports 0x70 index, 0x71 data).

The clock shows the host's current UTC time plus a whole-second offset the guest sets by
writing the time registers. Update-in-progress (UIP) is set for the last 244 us of each
second, like the chip, so Linux's "wait for UIP clear, read, check" sequence sees a stable
second. IRQ 8 (periodic/alarm/update interrupts) is not emulated; register C reads 0.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum, IntFlag

log = logging.getLogger(__name__)

RTC_PORT_BASE = 0x70
RTC_PORT_COUNT = 2
CMOS_SIZE = 128

INDEX_OFFSET = 0
DATA_OFFSET = 1
NMI_DISABLE_BIT = 0x80

# The chip raises UIP this long before the time registers change.
UPDATE_IN_PROGRESS_SECONDS = 244e-6


class CmosRegister(IntEnum):
    """CMOS byte indices: the clock's registers and the firmware memory-size conventions."""

    SECONDS = 0x00
    SECONDS_ALARM = 0x01
    MINUTES = 0x02
    MINUTES_ALARM = 0x03
    HOURS = 0x04
    HOURS_ALARM = 0x05
    DAY_OF_WEEK = 0x06
    DAY_OF_MONTH = 0x07
    MONTH = 0x08
    YEAR = 0x09
    STATUS_A = 0x0A
    STATUS_B = 0x0B
    STATUS_C = 0x0C
    STATUS_D = 0x0D
    BASE_MEMORY_KIB_LOW = 0x15  # conventional memory in KiB (640)
    BASE_MEMORY_KIB_HIGH = 0x16
    EXTENDED_MEMORY_KIB_LOW = 0x17  # memory above 1 MiB in KiB, capped at 0xFFFF
    EXTENDED_MEMORY_KIB_HIGH = 0x18
    POST_EXTENDED_MEMORY_KIB_LOW = 0x30  # the same value, as found by POST
    POST_EXTENDED_MEMORY_KIB_HIGH = 0x31
    CENTURY = 0x32
    MEMORY_ABOVE_16M_64K_LOW = 0x34  # memory between 16 MiB and 4 GiB in 64 KiB units
    MEMORY_ABOVE_16M_64K_HIGH = 0x35
    MEMORY_ABOVE_4G_64K_LOW = 0x5B  # memory above 4 GiB in 64 KiB units (three bytes)
    MEMORY_ABOVE_4G_64K_MID = 0x5C
    MEMORY_ABOVE_4G_64K_HIGH = 0x5D
    CPU_COUNT_MINUS_ONE = 0x5F


class StatusA(IntFlag):
    """Register A: rate select, divider chain, update in progress."""

    RATE_MASK = 0x0F
    DIVIDER_MASK = 0x70
    UPDATE_IN_PROGRESS = 0x80


class StatusB(IntFlag):
    """Register B: data format and interrupt enables."""

    DAYLIGHT_SAVING = 0x01
    HOURS_24 = 0x02
    BINARY = 0x04
    SQUARE_WAVE = 0x08
    UPDATE_INTERRUPT = 0x10
    ALARM_INTERRUPT = 0x20
    PERIODIC_INTERRUPT = 0x40
    SET = 0x80


STATUS_D_VALID_RAM_AND_TIME = 0x80
DEFAULT_STATUS_A = 0x26  # 32.768 kHz time base, 1024 Hz periodic rate
DEFAULT_STATUS_B = int(StatusB.HOURS_24)
PM_BIT = 0x80  # in the hours register in 12-hour mode

_TIME_REGISTERS = (
    CmosRegister.SECONDS,
    CmosRegister.MINUTES,
    CmosRegister.HOURS,
    CmosRegister.DAY_OF_WEEK,
    CmosRegister.DAY_OF_MONTH,
    CmosRegister.MONTH,
    CmosRegister.YEAR,
    CmosRegister.CENTURY,
)


def _to_bcd(value: int) -> int:
    return ((value // 10) << 4) | (value % 10)


def _from_bcd(value: int) -> int:
    return (value >> 4) * 10 + (value & 0x0F)


@dataclass
class RtcState:
    """The migratable state: CMOS bytes, the selected index and the guest's clock offset."""

    cmos: bytearray = field(default_factory=lambda: bytearray(CMOS_SIZE))
    index: int = 0
    offset_seconds: int = 0


class CmosRtc:
    """An MC146818 RTC with CMOS memory; implements `IoHandler` on a 2-port window at 0x70."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._state = RtcState()
        self._frozen: dict[CmosRegister, int] | None = None  # time fields while B.SET is set
        self.reset()

    # -- IoHandler -----------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset != DATA_OFFSET:
            return 0xFF  # the index register is write-only
        return self._read_cmos(self._state.index)

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == INDEX_OFFSET:
            self._state.index = value & ~NMI_DISABLE_BIT & 0x7F
        elif offset == DATA_OFFSET:
            self._write_cmos(self._state.index, value)
        else:
            log.debug("rtc: write %#x to offset %#x ignored", value, offset)

    # -- firmware conventions ------------------------------------------------------------------
    def set_memory_size(self, below_4g: int, above_4g: int) -> None:
        """Record RAM sizes (bytes) in the CMOS bytes firmware and old loaders read."""
        cmos = self._state.cmos
        self._store16(CmosRegister.BASE_MEMORY_KIB_LOW, 640)
        extended_kib = min(max(below_4g - (1 << 20), 0) // 1024, 0xFFFF)
        self._store16(CmosRegister.EXTENDED_MEMORY_KIB_LOW, extended_kib)
        self._store16(CmosRegister.POST_EXTENDED_MEMORY_KIB_LOW, extended_kib)
        above_16m = min(max(below_4g - (16 << 20), 0) // 65536, 0xFFFF)
        self._store16(CmosRegister.MEMORY_ABOVE_16M_64K_LOW, above_16m)
        high = min(max(above_4g, 0) // 65536, 0xFFFFFF)
        cmos[CmosRegister.MEMORY_ABOVE_4G_64K_LOW] = high & 0xFF
        cmos[CmosRegister.MEMORY_ABOVE_4G_64K_MID] = (high >> 8) & 0xFF
        cmos[CmosRegister.MEMORY_ABOVE_4G_64K_HIGH] = (high >> 16) & 0xFF

    def set_cpu_count(self, count: int) -> None:
        """Record the number of CPUs (SeaBIOS reads it at 0x5F as count - 1)."""
        self._state.cmos[CmosRegister.CPU_COUNT_MINUS_ONE] = max(0, min(count - 1, 0xFF))

    def _store16(self, low: CmosRegister, value: int) -> None:
        self._state.cmos[low] = value & 0xFF
        self._state.cmos[low + 1] = (value >> 8) & 0xFF

    # -- lifecycle and migration ---------------------------------------------------------------
    def reset(self) -> None:
        """Status registers to their power-on values; CMOS memory and the clock are kept."""
        cmos = self._state.cmos
        cmos[CmosRegister.STATUS_A] = DEFAULT_STATUS_A
        cmos[CmosRegister.STATUS_B] = DEFAULT_STATUS_B
        cmos[CmosRegister.STATUS_C] = 0
        cmos[CmosRegister.STATUS_D] = STATUS_D_VALID_RAM_AND_TIME
        self._frozen = None

    def save(self) -> RtcState:
        s = self._state
        return RtcState(cmos=bytearray(s.cmos), index=s.index, offset_seconds=s.offset_seconds)

    def load(self, state: RtcState) -> None:
        """Adopt migrated state; a short or long CMOS image is padded or cut to 128 bytes."""
        cmos = bytearray(bytes(state.cmos[:CMOS_SIZE]).ljust(CMOS_SIZE, b"\0"))
        self._state = RtcState(cmos=cmos, index=state.index & 0x7F, offset_seconds=int(state.offset_seconds))
        self._frozen = None

    # -- registers -----------------------------------------------------------------------------
    def _read_cmos(self, index: int) -> int:
        cmos = self._state.cmos
        if index in _TIME_REGISTERS:
            return self._encode(CmosRegister(index), self._time_fields()[CmosRegister(index)])
        if index == CmosRegister.STATUS_A:
            value = cmos[index] & ~StatusA.UPDATE_IN_PROGRESS
            return value | (StatusA.UPDATE_IN_PROGRESS if self._update_in_progress() else 0)
        if index == CmosRegister.STATUS_C:
            value = cmos[index]
            cmos[index] = 0  # reading C acknowledges the flags
            return value
        if index == CmosRegister.STATUS_D:
            return STATUS_D_VALID_RAM_AND_TIME
        return cmos[index]

    def _write_cmos(self, index: int, value: int) -> None:
        cmos = self._state.cmos
        if index in _TIME_REGISTERS:
            self._write_time_field(CmosRegister(index), value)
        elif index == CmosRegister.STATUS_A:
            cmos[index] = value & ~StatusA.UPDATE_IN_PROGRESS
        elif index == CmosRegister.STATUS_B:
            self._write_status_b(value)
        elif index in (CmosRegister.STATUS_C, CmosRegister.STATUS_D):
            log.debug("rtc: write %#x to read-only register %#x ignored", value, index)
        else:
            cmos[index] = value

    def _write_status_b(self, value: int) -> None:
        cmos = self._state.cmos
        was_set = bool(cmos[CmosRegister.STATUS_B] & StatusB.SET)
        if value & StatusB.SET and not was_set:
            self._frozen = self._time_fields()
        cmos[CmosRegister.STATUS_B] = value
        if was_set and not value & StatusB.SET and self._frozen is not None:
            frozen, self._frozen = self._frozen, None
            self._commit_time(frozen)

    def _update_in_progress(self) -> bool:
        if self._state.cmos[CmosRegister.STATUS_B] & StatusB.SET:
            return False
        fraction = self._clock() % 1.0
        return fraction >= 1.0 - UPDATE_IN_PROGRESS_SECONDS

    # -- time fields ---------------------------------------------------------------------------
    def _now(self) -> datetime:
        return datetime.fromtimestamp(int(self._clock()) + self._state.offset_seconds, UTC)

    def _time_fields(self) -> dict[CmosRegister, int]:
        """Binary values of the time registers (hours 0-23)."""
        if self._frozen is not None:
            return dict(self._frozen)
        now = self._now()
        return {
            CmosRegister.SECONDS: now.second,
            CmosRegister.MINUTES: now.minute,
            CmosRegister.HOURS: now.hour,
            CmosRegister.DAY_OF_WEEK: now.isoweekday() % 7 + 1,  # Sunday is 1
            CmosRegister.DAY_OF_MONTH: now.day,
            CmosRegister.MONTH: now.month,
            CmosRegister.YEAR: now.year % 100,
            CmosRegister.CENTURY: now.year // 100,
        }

    def _encode(self, register: CmosRegister, value: int) -> int:
        status_b = self._state.cmos[CmosRegister.STATUS_B]
        pm = 0
        if register is CmosRegister.HOURS and not status_b & StatusB.HOURS_24:
            pm = PM_BIT if value >= 12 else 0
            value = value % 12 or 12
        encoded = value if status_b & StatusB.BINARY else _to_bcd(value)
        return encoded | pm

    def _decode(self, register: CmosRegister, raw: int) -> int:
        status_b = self._state.cmos[CmosRegister.STATUS_B]
        twelve_hour = register is CmosRegister.HOURS and not status_b & StatusB.HOURS_24
        pm = bool(raw & PM_BIT) if twelve_hour else False
        if twelve_hour:
            raw &= ~PM_BIT
        value = raw if status_b & StatusB.BINARY else _from_bcd(raw)
        if twelve_hour:
            value = (value % 12) + (12 if pm else 0)
        return value

    def _write_time_field(self, register: CmosRegister, raw: int) -> None:
        value = self._decode(register, raw)
        if self._frozen is not None:
            self._frozen[register] = value
            return
        fields = self._time_fields()
        fields[register] = value
        self._commit_time(fields)

    def _commit_time(self, fields: dict[CmosRegister, int]) -> None:
        """Make the clock show `fields` from now on; an impossible date is ignored."""
        try:
            target = datetime(
                fields[CmosRegister.CENTURY] * 100 + fields[CmosRegister.YEAR],
                fields[CmosRegister.MONTH],
                fields[CmosRegister.DAY_OF_MONTH],
                fields[CmosRegister.HOURS],
                fields[CmosRegister.MINUTES],
                fields[CmosRegister.SECONDS],
                tzinfo=UTC,
            )
        except (ValueError, OverflowError) as exc:
            log.debug("rtc: guest set an invalid time %s: %s", fields, exc)
            return
        self._state.offset_seconds = int(target.timestamp()) - int(self._clock())
