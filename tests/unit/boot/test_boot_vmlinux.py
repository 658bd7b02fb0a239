"""Extracting a vmlinux from a bzImage payload and loading its segments (synthetic kernels)."""

import ctypes
import struct

import pytest

from harness.kernel_images import (
    DATA,
    DATA_ADDR,
    DATA_MEMSZ,
    MIB,
    TEXT,
    TEXT_ADDR,
    ByteRam,
    bzimage_with_payload,
    compress,
    synthetic_vmlinux,
)
from kvmkit.boot.bzimage import BzImage
from kvmkit.boot.e820 import build_e820
from kvmkit.boot.elf import PF_R, PF_X, build_elf_kernel
from kvmkit.boot.layout import ZERO_PAGE_ADDR
from kvmkit.boot.linux import load_linux
from kvmkit.boot.setup_header import BootParams
from kvmkit.boot.vmlinux import (
    UnsupportedPayload,
    check_segments_fit,
    decompress_payload,
    extract_vmlinux,
    payload_of,
)
from kvmkit.errors import BootError


def image_of(tmp_path, build_bzimage_bytes, payload: bytes, **fields) -> BzImage:
    path = tmp_path / "vmlinuz"
    path.write_bytes(bzimage_with_payload(build_bzimage_bytes, payload, **fields))
    return BzImage.parse(path)


@pytest.mark.parametrize("kind", ["xz", "gzip"])
def test_vmlinux_is_extracted_from_xz_and_gzip_payloads(tmp_path, bzimage_bytes, kind):
    image = image_of(tmp_path, bzimage_bytes, compress(synthetic_vmlinux(), kind))
    data, kernel = extract_vmlinux(image)
    assert data == synthetic_vmlinux()
    assert kernel.entry == TEXT_ADDR


@pytest.mark.parametrize("kind", ["bzip2", "lz4", "zstd"])
def test_other_compressions_are_left_to_the_guest(tmp_path, bzimage_bytes, kind):
    image = image_of(tmp_path, bzimage_bytes, compress(synthetic_vmlinux(), kind))
    with pytest.raises(UnsupportedPayload, match=kind):
        extract_vmlinux(image)


def test_payload_beyond_the_file_is_refused(tmp_path, bzimage_bytes):
    raw = bytearray(bzimage_with_payload(bzimage_bytes, compress(synthetic_vmlinux(), "xz")))
    struct.pack_into("<I", raw, 0x24C, len(raw))
    path = tmp_path / "vmlinuz"
    path.write_bytes(raw)
    with pytest.raises(BootError, match="outside the file"):
        payload_of(BzImage.parse(path))


def test_decompression_bomb_and_corruption_are_refused():
    with pytest.raises(BootError, match="exceeds"):
        decompress_payload(compress(bytes(4 * MIB), "xz"), "k", limit=MIB)
    with pytest.raises(BootError, match="exceeds"):
        decompress_payload(compress(bytes(4 * MIB), "gzip"), "k", limit=MIB)
    good = compress(synthetic_vmlinux(), "xz")
    with pytest.raises(BootError, match="truncated"):
        decompress_payload(good[: len(good) // 2], "k")
    corrupt = bytearray(good)
    corrupt[len(corrupt) // 2] ^= 0xFF
    with pytest.raises(BootError, match=r"corrupt|truncated"):
        decompress_payload(bytes(corrupt), "k")


def test_a_payload_that_is_not_an_elf_is_refused(tmp_path, bzimage_bytes):
    image = image_of(tmp_path, bzimage_bytes, compress(b"not an elf" * 100, "xz"))
    with pytest.raises(BootError, match="not an ELF"):
        extract_vmlinux(image)


def _elf(tmp_path, data: bytes):
    path = tmp_path / "kernel.elf"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("regions, words", [
    ([(0, 17 * MIB)], "does not fit"),  # RAM ends inside the kernel
    ([(0, 640 << 10), (DATA_ADDR, 64 * MIB)], "does not fit"),  # the text is not in RAM
])
def test_segments_must_lie_in_one_ram_range(regions, words):
    from kvmkit.boot.elf import parse_elf_kernel

    data = synthetic_vmlinux()
    kernel = parse_elf_kernel(data, len(data), "k")
    with pytest.raises(BootError, match=words):
        check_segments_fit(kernel, build_e820(regions), "k")


def test_segments_below_1mib_would_overwrite_the_boot_structures():
    from kvmkit.boot.elf import parse_elf_kernel

    header, pieces = build_elf_kernel(0x7000, [(0x7000, PF_R | PF_X, 16, b"x" * 16)])
    data = header + b"".join(bytes(p) for p in pieces)
    with pytest.raises(BootError, match="boot structures"):
        check_segments_fit(parse_elf_kernel(data, len(data), "k"), build_e820([(0, 64 * MIB)]), "k")


def _boot(tmp_path, bzimage_bytes, elf_bytes: bytes, memory: int = 64 * MIB):
    image = image_of(tmp_path, bzimage_bytes, compress(synthetic_vmlinux(), "xz"))
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"INITRD" + bytes(4096))
    ram = ByteRam([(0, memory)])
    if memory > DATA_ADDR + DATA_MEMSZ:
        ram.write(DATA_ADDR + len(DATA), b"\xAA" * 64)  # stale memory (as after a reset) where the bss goes
    state = load_linux(ram, [(0, memory)], image.path, initrd, "console=ttyS0", 1, image=image,
                       vmlinux=_elf(tmp_path, elf_bytes))
    return ram, state


def test_load_linux_boots_the_vmlinux_at_its_entry_with_segments_and_bss(tmp_path, bzimage_bytes):
    ram, state = _boot(tmp_path, bzimage_bytes, synthetic_vmlinux())
    assert state.rip == TEXT_ADDR
    assert state.rsi == ZERO_PAGE_ADDR
    assert bytes(ram.view(TEXT_ADDR, len(TEXT))) == TEXT
    assert bytes(ram.view(DATA_ADDR, len(DATA))) == DATA
    assert not any(ram.view(DATA_ADDR + len(DATA), DATA_MEMSZ - len(DATA)))
    params = BootParams.from_buffer_copy(ram.view(ZERO_PAGE_ADDR, ctypes.sizeof(BootParams)))
    assert params.hdr.ramdisk_image >= DATA_ADDR + DATA_MEMSZ
    assert bytes(ram.view(params.hdr.ramdisk_image, 6)) == b"INITRD"
    assert params.hdr.ramdisk_size == 4096 + 6


def test_load_linux_refuses_a_truncated_vmlinux(tmp_path, bzimage_bytes):
    with pytest.raises(BootError, match="truncated"):
        _boot(tmp_path, bzimage_bytes, synthetic_vmlinux()[:-4096])


def test_load_linux_refuses_a_vmlinux_beyond_ram(tmp_path, bzimage_bytes):
    high = 60 * MIB
    header, pieces = build_elf_kernel(high, [(high, PF_R | PF_X, 8 * MIB, b"x" * 16)])
    with pytest.raises(BootError, match="does not fit"):
        _boot(tmp_path, bzimage_bytes, header + b"".join(bytes(p) for p in pieces))
