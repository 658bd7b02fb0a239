from pathlib import Path

import pytest

from kvmkit.boot.e820 import build_e820
from kvmkit.boot.placement import place_initrd
from kvmkit.errors import BootError

MIB = 1 << 20
GIB = 1 << 30
INITRD = Path("initrd.img")


def test_initrd_goes_to_the_top_of_ram_page_aligned():
    e820 = build_e820([(0, 256 * MIB)])
    addr = place_initrd(INITRD, 10 * MIB + 5, e820, 0x7FFFFFFF, kernel_end=32 * MIB)
    assert addr % 4096 == 0
    assert addr + 10 * MIB + 5 <= 256 * MIB
    assert 256 * MIB - (addr + 10 * MIB + 5) < 4096


def test_initrd_stays_below_initrd_addr_max():
    e820 = build_e820([(0, 3 * GIB)])
    addr = place_initrd(INITRD, 4 * MIB, e820, 0x37FFFFFF, kernel_end=32 * MIB)
    assert addr + 4 * MIB <= 0x38000000
    assert addr == 0x38000000 - 4 * MIB


def test_initrd_stays_below_4g_when_ram_continues_above():
    e820 = build_e820([(0, 3 * GIB), (4 * GIB, 4 * GIB)])
    addr = place_initrd(INITRD, 8 * MIB, e820, 0xFFFFFFFF, kernel_end=32 * MIB)
    assert addr == 3 * GIB - 8 * MIB


def test_initrd_never_overlaps_the_kernel_footprint():
    e820 = build_e820([(0, 64 * MIB)])
    addr = place_initrd(INITRD, 30 * MIB, e820, 0x7FFFFFFF, kernel_end=34 * MIB)
    assert addr >= 34 * MIB


def test_initrd_that_does_not_fit_names_file_and_size():
    e820 = build_e820([(0, 64 * MIB)])
    with pytest.raises(BootError, match=r"initrd initrd\.img \(40 MiB\) does not fit below 0x"):
        place_initrd(INITRD, 40 * MIB, e820, 0x7FFFFFFF, kernel_end=32 * MIB)


def test_zero_initrd_addr_max_means_the_protocol_default():
    e820 = build_e820([(0, 2 * GIB)])
    addr = place_initrd(INITRD, MIB, e820, 0, kernel_end=32 * MIB)
    assert addr + MIB <= 0x38000000
