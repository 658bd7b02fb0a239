"""The kernel ELF parser: a well-formed vmlinux-like file, and hostile ones it must refuse."""

import struct

import pytest

from harness.kernel_images import DATA_ADDR, DATA_MEMSZ, TEXT, TEXT_ADDR, synthetic_vmlinux
from kvmkit.boot.elf import (
    MAX_PROGRAM_HEADERS,
    PF_R,
    PF_W,
    PF_X,
    PROGRAM_HEADER_SIZE,
    PT_LOAD,
    build_elf_kernel,
    parse_elf_kernel,
)
from kvmkit.errors import BootError

PHDR = struct.Struct("<IIQQQQQQ")


def parse(data: bytes, size: int | None = None):
    return parse_elf_kernel(data, len(data) if size is None else size, "test.elf")


def with_phdr(data: bytes, index: int, **fields) -> bytes:
    """Rewrite one program header field by name."""
    names = ("type", "flags", "offset", "vaddr", "paddr", "filesz", "memsz", "align")
    offset = 64 + index * PROGRAM_HEADER_SIZE
    values = dict(zip(names, PHDR.unpack_from(data, offset), strict=True))
    values.update(fields)
    out = bytearray(data)
    PHDR.pack_into(out, offset, *(values[name] for name in names))
    return bytes(out)


def test_segments_and_entry_of_a_wellformed_kernel():
    kernel = parse(synthetic_vmlinux())
    assert kernel.entry == TEXT_ADDR
    assert [(s.paddr, s.filesz, s.memsz) for s in kernel.segments] == [
        (TEXT_ADDR, len(TEXT), len(TEXT)), (DATA_ADDR, 61, DATA_MEMSZ)]
    assert kernel.segments[0].offset % 4096 == 0
    assert (kernel.start, kernel.end) == (TEXT_ADDR, DATA_ADDR + DATA_MEMSZ)


def test_segments_are_sorted_and_non_load_headers_ignored():
    header, pieces = build_elf_kernel(TEXT_ADDR, [(DATA_ADDR, PF_R | PF_W, 16, b"d" * 16),
                                                  (TEXT_ADDR, PF_R | PF_X, 16, b"t" * 16)])
    data = header + b"".join(bytes(p) for p in pieces)
    note = with_phdr(data, 0, type=4)  # PT_NOTE: not loaded
    assert [s.paddr for s in parse(data).segments] == [TEXT_ADDR, DATA_ADDR]
    assert [s.paddr for s in parse(note).segments] == [TEXT_ADDR]


@pytest.mark.parametrize("patch, words", [
    (lambda d: b"\x7fELG" + d[4:], "not an ELF"),
    (lambda d: d[:4] + b"\x01" + d[5:], "ELF64"),
    (lambda d: d[:5] + b"\x02" + d[6:], "little-endian"),
    (lambda d: d[:16] + struct.pack("<H", 3) + d[18:], "executable"),  # ET_DYN
    (lambda d: d[:18] + struct.pack("<H", 3) + d[20:], "x86-64"),  # EM_386
    (lambda d: d[:54] + struct.pack("<H", 32) + d[56:], "e_phentsize"),
    (lambda d: d[:56] + struct.pack("<H", 0) + d[58:], "program headers"),
    (lambda d: d[:56] + struct.pack("<H", 0xFFFF) + d[58:], "program headers"),
    (lambda d: d[:32] + struct.pack("<Q", 1 << 40) + d[40:], "outside the file"),
    (lambda d: d[:32] + struct.pack("<Q", 8) + d[40:], "outside the file"),
    (lambda d: d[:24] + struct.pack("<Q", DATA_ADDR) + d[32:], "entry point"),  # entry in a non-exec segment
    (lambda d: d[:24] + struct.pack("<Q", TEXT_ADDR + len(TEXT)) + d[32:], "entry point"),  # just past the text
    (lambda d: d[:40], "truncated"),
], ids=["magic", "class", "endianness", "type", "machine", "phentsize", "no-phdrs", "huge-phnum",
        "phoff-beyond-file", "phoff-inside-header", "entry-in-data", "entry-past-text", "short-header"])
def test_malformed_headers_are_refused(patch, words):
    with pytest.raises(BootError, match=words):
        parse(patch(synthetic_vmlinux()))


def test_more_program_headers_than_allowed():
    segments = [(TEXT_ADDR + i * 4096, PF_R | PF_X, 16, b"x" * 16) for i in range(MAX_PROGRAM_HEADERS + 1)]
    header, pieces = build_elf_kernel(TEXT_ADDR, segments)
    with pytest.raises(BootError, match="program headers"):
        parse(header + b"".join(bytes(p) for p in pieces))


def test_truncated_file_is_refused():
    data = synthetic_vmlinux()
    with pytest.raises(BootError, match="truncated"):
        parse(data, size=len(data) - 4096)  # the data segment's bytes are missing


@pytest.mark.parametrize("fields, words", [
    ({"filesz": 0x4000}, "more file bytes"),
    ({"offset": 1 << 62}, "truncated"),
    ({"paddr": (1 << 52) - 0x10}, "beyond physical memory"),
    ({"paddr": (1 << 64) - 0x1000}, "beyond physical memory"),
    ({"paddr": TEXT_ADDR + 0x10}, "overlap"),
    ({"memsz": 0}, "entry point|no loadable"),
], ids=["filesz>memsz", "offset-huge", "paddr-52bit", "paddr-wraps", "overlap", "empty"])
def test_hostile_data_segment_is_refused(fields, words):
    data = with_phdr(synthetic_vmlinux(), 1, **fields)
    if fields.get("memsz") == 0:  # an empty segment is skipped; empty the text one too
        data = with_phdr(data, 0, memsz=0, filesz=0)
    with pytest.raises(BootError, match=words):
        parse(data)


def test_segment_kinds_other_than_load_do_not_count_for_the_entry():
    data = with_phdr(synthetic_vmlinux(), 0, type=PT_LOAD + 1)
    with pytest.raises(BootError, match="entry point"):
        parse(data)
