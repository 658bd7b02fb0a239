"""ELF64 kernel images (an uncompressed x86-64 vmlinux): parse and validate the PT_LOAD program headers.

The file is untrusted input: every field is checked before anything is loaded. Only what booting needs is
kept (physical load addresses, file ranges, the entry point); section headers are never read.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass

from kvmkit.errors import BootError

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
EV_CURRENT = 1
ET_EXEC = 2
EM_X86_64 = 62
PT_LOAD = 1
PF_X = 1
PF_W = 2
PF_R = 4
ELF_HEADER_SIZE = 64
PROGRAM_HEADER_SIZE = 56
MAX_PROGRAM_HEADERS = 64
"""A vmlinux has about five; more is a malformed or hostile file. 64 headers fit in HEADERS_READ."""
HEADERS_READ = 4096
"""Bytes read from the start of a file to parse it: the ELF header and every program header must lie there."""
ADDRESS_LIMIT = 1 << 52
"""Physical addresses must stay below the architectural 52-bit limit."""

_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
_PROGRAM_HEADER = struct.Struct("<IIQQQQQQ")


@dataclass(frozen=True)
class LoadSegment:
    """One PT_LOAD segment: ``filesz`` bytes from file ``offset`` go to ``paddr``, zeros up to ``memsz``."""

    paddr: int
    offset: int
    filesz: int
    memsz: int
    flags: int

    @property
    def end(self) -> int:
        return self.paddr + self.memsz


@dataclass(frozen=True)
class ElfKernel:
    """A validated ELF64 x86-64 executable: its loadable segments (sorted by address) and physical entry."""

    entry: int
    segments: tuple[LoadSegment, ...]

    @property
    def start(self) -> int:
        return self.segments[0].paddr

    @property
    def end(self) -> int:
        return self.segments[-1].end


def parse_elf_kernel(data: bytes | memoryview, file_size: int, name: str) -> ElfKernel:
    """Validate ``data`` (the start of a file of ``file_size`` bytes, at least its headers) as a kernel ELF.

    Raises BootError naming ``name`` on anything malformed: wrong class/endianness/machine/type, program
    headers out of the file or too many, segments that are truncated, overlap, reach beyond 52-bit physical
    addresses, or an entry point outside every executable segment.
    """
    if len(data) < ELF_HEADER_SIZE or file_size < ELF_HEADER_SIZE:
        raise BootError(f"{name}: truncated ELF header")
    (ident, e_type, machine, version, entry, phoff, _shoff, _flags, ehsize, phentsize, phnum, _shentsize,
     _shnum, _shstrndx) = _HEADER.unpack_from(data)
    if ident[:4] != ELF_MAGIC:
        raise BootError(f"{name}: not an ELF file")
    if ident[4] != ELFCLASS64 or ident[5] != ELFDATA2LSB or ident[6] != EV_CURRENT or version != EV_CURRENT:
        raise BootError(f"{name}: not a little-endian ELF64 (version 1) file")
    if e_type != ET_EXEC or machine != EM_X86_64:
        raise BootError(f"{name}: not an x86-64 executable (e_type {e_type}, e_machine {machine})")
    if ehsize < ELF_HEADER_SIZE or phentsize != PROGRAM_HEADER_SIZE:
        raise BootError(f"{name}: unexpected header sizes (e_ehsize {ehsize}, e_phentsize {phentsize})")
    if not 1 <= phnum <= MAX_PROGRAM_HEADERS:
        raise BootError(f"{name}: {phnum} program headers (expected 1-{MAX_PROGRAM_HEADERS})")
    table_end = phoff + phnum * PROGRAM_HEADER_SIZE
    if phoff < ELF_HEADER_SIZE or table_end > file_size or table_end > len(data):
        raise BootError(f"{name}: program headers at 0x{phoff:x} ({phnum} of them) lie outside the file")
    segments = []
    for index in range(phnum):
        p_type, flags, offset, _vaddr, paddr, filesz, memsz, _align = _PROGRAM_HEADER.unpack_from(
            data, phoff + index * PROGRAM_HEADER_SIZE)
        if p_type != PT_LOAD or memsz == 0:
            continue
        if filesz > memsz:
            raise BootError(f"{name}: segment {index} has more file bytes (0x{filesz:x}) than memory (0x{memsz:x})")
        if offset + filesz > file_size:
            raise BootError(f"{name}: segment {index} (0x{filesz:x} bytes at 0x{offset:x}) is truncated: "
                            f"the file has 0x{file_size:x} bytes")
        if paddr + memsz > ADDRESS_LIMIT:
            raise BootError(f"{name}: segment {index} at 0x{paddr:x}+0x{memsz:x} is beyond physical memory")
        segments.append(LoadSegment(paddr, offset, filesz, memsz, flags))
    if not segments:
        raise BootError(f"{name}: no loadable segments")
    segments.sort(key=lambda segment: segment.paddr)
    for before, after in itertools.pairwise(segments):
        if after.paddr < before.end:
            raise BootError(f"{name}: segments at 0x{before.paddr:x}-0x{before.end:x} and "
                            f"0x{after.paddr:x}-0x{after.end:x} overlap")
    if not any(segment.flags & PF_X and segment.paddr <= entry < segment.paddr + segment.filesz
               for segment in segments):
        raise BootError(f"{name}: entry point 0x{entry:x} is not inside a loaded executable segment")
    return ElfKernel(entry, tuple(segments))


def build_elf_kernel(entry: int, segments: list[tuple[int, int, int, bytes | memoryview]],
                     align: int = 4096) -> tuple[bytes, list[bytes | memoryview]]:
    """A minimal ELF64 x86-64 executable holding only PT_LOAD segments: (headers, data pieces) to write in order.

    ``segments`` are (paddr, flags, memsz, file bytes); each segment's data starts ``align``-aligned.
    """
    header_end = ELF_HEADER_SIZE + PROGRAM_HEADER_SIZE * len(segments)
    offset = -(-header_end // align) * align
    program_headers = []
    pieces: list[bytes | memoryview] = [bytes(offset - header_end)]
    for paddr, flags, memsz, data in segments:
        program_headers.append(_PROGRAM_HEADER.pack(PT_LOAD, flags, offset, paddr, paddr, len(data), memsz, align))
        padding = -len(data) % align
        pieces += [data, bytes(padding)]
        offset += len(data) + padding
    ident = ELF_MAGIC + bytes((ELFCLASS64, ELFDATA2LSB, EV_CURRENT)) + bytes(9)
    header = _HEADER.pack(ident, ET_EXEC, EM_X86_64, EV_CURRENT, entry, ELF_HEADER_SIZE, 0, 0, ELF_HEADER_SIZE,
                          PROGRAM_HEADER_SIZE, len(segments), 0, 0, 0)
    return header + b"".join(program_headers), pieces
