"""The newc writer produces archives that our reader (and so the kernel's format) accepts."""

import gzip
import stat

import pytest

from kvmkit.guest.cpio import HEADER_SIZE, CpioEntry, read_newc, write_initramfs, write_newc


def test_header_is_110_bytes_and_names_pad_to_four():
    archive = write_newc([CpioEntry.file("a", b"xyz")])
    assert archive[:6] == b"070701"
    assert HEADER_SIZE == 110
    # header (110) + "a\0" (2) = 112, already aligned; data "xyz" padded to 4
    assert archive[110:112] == b"a\0"
    assert archive[112:116] == b"xyz\0"


def test_round_trip_keeps_every_member_kind():
    entries = [
        CpioEntry.directory("bin"),
        CpioEntry.file("bin/tool", b"\x7fELF" + bytes(range(256)), 0o755),
        CpioEntry.symlink("bin/sh", "tool"),
        CpioEntry.char_device("dev/console", 5, 1),
        CpioEntry.file("empty", b""),
    ]
    back = list(read_newc(write_initramfs(entries)))
    assert back == entries
    assert stat.S_ISCHR(back[3].mode) and (back[3].rdev_major, back[3].rdev_minor) == (5, 1)


def test_archive_ends_with_trailer():
    raw = gzip.decompress(write_initramfs([CpioEntry.file("x", b"1")]))
    assert b"TRAILER!!!\0" in raw[-HEADER_SIZE - 16:]
    assert len(raw) % 4 == 0


def test_truncated_archive_is_refused():
    raw = write_newc([CpioEntry.file("x", b"12345678")])
    with pytest.raises(ValueError):
        list(read_newc(raw[:118]))


def test_garbage_is_refused():
    with pytest.raises(ValueError, match="magic"):
        list(read_newc(b"not an archive at all" * 10))
