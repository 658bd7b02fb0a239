"""Raw images over the file protocol, buffered and O_DIRECT (cache=none)."""

from __future__ import annotations

import mmap

import pytest

from kvmkit.block.create import create_image
from kvmkit.block.open import open_image
from kvmkit.block.protocols.file import FileProtocol
from kvmkit.errors import ImageError


@pytest.mark.parametrize("cache", ["writeback", "none"])
def test_unaligned_scatter_write_and_read_round_trip(tmp_path, cache):
    path = str(tmp_path / "d.raw")
    create_image(path, "raw", 65536 + 100)
    with open_image(path, "raw", cache=cache) as image:
        image.pwrite(4095, [bytearray(b"ab"), memoryview(b"cdef")])
        first, second = bytearray(3), bytearray(3)
        image.pread(4095, [first, second])
        image.pwrite(65536 + 90, [bytearray(b"0123456789")])
    assert (first, second) == (b"abc", b"def")
    with open(path, "rb") as f:
        data = f.read()
    assert len(data) == 65536 + 100
    assert data[-10:] == b"0123456789"


def test_direct_io_reads_straight_into_aligned_buffers(tmp_path):
    path = str(tmp_path / "d.raw")
    with open(path, "wb") as f:
        f.write(b"\x5a" * 8192)
    with open_image(path, "raw", cache="none") as image, mmap.mmap(-1, 8192) as aligned:
        image.pread(0, [memoryview(aligned)])
        assert aligned[:] == b"\x5a" * 8192


def test_read_only_raw_refuses_writes(tmp_path):
    path = str(tmp_path / "d.raw")
    create_image(path, "raw", 4096)
    with open_image(path, "raw", read_only=True) as image, pytest.raises(ImageError, match="read-only"):
        image.pwrite(0, [bytearray(b"x")])


def test_write_zeroes_and_discard_read_back_zero(tmp_path):
    path = str(tmp_path / "d.raw")
    with open(path, "wb") as f:
        f.write(b"\xff" * 1 << 20 if False else b"\xff" * (1 << 20))
    with open_image(path, "raw") as image:
        image.write_zeroes(4096, 8192)
        image.discard(65536, 65536)
        buf = bytearray(1 << 20)
        image.pread(0, [buf])
    assert buf[4096 : 4096 + 8192] == bytes(8192)
    assert buf[65536 : 2 * 65536] == bytes(65536)
    assert buf[0] == 0xFF


def test_raw_read_past_end_is_refused(tmp_path):
    path = str(tmp_path / "d.raw")
    create_image(path, "raw", 1000)
    with open_image(path, "raw") as image, pytest.raises(ImageError, match="outside the disk"):
        image.pread(990, [bytearray(20)])


def test_file_read_past_end_of_file_reads_zeroes(tmp_path):
    path = tmp_path / "short.img"
    path.write_bytes(b"\x11" * 1000)
    file = FileProtocol(str(path))
    try:
        first, second = bytearray(b"\xff" * 600), bytearray(b"\xff" * 600)
        file.read_at(500, [memoryview(first), memoryview(second)])
        assert first == b"\x11" * 500 + bytes(100)
        assert second == bytes(600)
    finally:
        file.close()
