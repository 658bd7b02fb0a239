"""The PC RAM layout around the 640K-1M hole and the PCI hole."""

from __future__ import annotations

import pytest

from kvmkit.errors import ConfigError
from kvmkit.memory.layout import RamRange, pc_ram_layout

MiB = 1 << 20
GiB = 1 << 30


def test_small_ram_has_conventional_and_extended_ranges() -> None:
    layout = pc_ram_layout(64 * MiB)
    assert layout.ranges == (RamRange(0, 0xA0000, 0), RamRange(MiB, 63 * MiB, MiB))


def test_ram_beyond_3g_continues_above_4g() -> None:
    layout = pc_ram_layout(4 * GiB)
    assert layout.ranges[1] == RamRange(MiB, 3 * GiB - MiB, MiB)
    assert layout.ranges[2] == RamRange(4 * GiB, GiB, 3 * GiB)
    assert layout.below_4g_end == 3 * GiB


def test_backing_size_equals_ram_size() -> None:
    assert pc_ram_layout(5 * GiB).backing_size == 5 * GiB


def test_unaligned_size_is_rejected() -> None:
    with pytest.raises(ConfigError, match="4 KiB"):
        pc_ram_layout(64 * MiB + 1)


def test_too_small_size_is_rejected() -> None:
    with pytest.raises(ConfigError, match="minimum"):
        pc_ram_layout(MiB)
