"""Just enough of ELF64 to read one named section out of a kernel module."""

from __future__ import annotations

import ctypes


class Elf64Header(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("e_ident", ctypes.c_uint8 * 16), ("e_type", ctypes.c_uint16), ("e_machine", ctypes.c_uint16),
        ("e_version", ctypes.c_uint32), ("e_entry", ctypes.c_uint64), ("e_phoff", ctypes.c_uint64),
        ("e_shoff", ctypes.c_uint64), ("e_flags", ctypes.c_uint32), ("e_ehsize", ctypes.c_uint16),
        ("e_phentsize", ctypes.c_uint16), ("e_phnum", ctypes.c_uint16), ("e_shentsize", ctypes.c_uint16),
        ("e_shnum", ctypes.c_uint16), ("e_shstrndx", ctypes.c_uint16),
    ]


class Elf64SectionHeader(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [
        ("sh_name", ctypes.c_uint32), ("sh_type", ctypes.c_uint32), ("sh_flags", ctypes.c_uint64),
        ("sh_addr", ctypes.c_uint64), ("sh_offset", ctypes.c_uint64), ("sh_size", ctypes.c_uint64),
        ("sh_link", ctypes.c_uint32), ("sh_info", ctypes.c_uint32), ("sh_addralign", ctypes.c_uint64),
        ("sh_entsize", ctypes.c_uint64),
    ]


def read_section(image: bytes, wanted: str) -> bytes:
    """The contents of section `wanted`; ValueError if the file is not ELF64 or has no such section."""
    if image[:4] != b"\x7fELF" or image[4] != 2:
        raise ValueError("not an ELF64 file")
    header = Elf64Header.from_buffer_copy(image)
    sections = [
        Elf64SectionHeader.from_buffer_copy(image, header.e_shoff + i * header.e_shentsize)
        for i in range(header.e_shnum)
    ]
    names = sections[header.e_shstrndx]
    for section in sections:
        start = names.sh_offset + section.sh_name
        name = image[start:image.index(b"\0", start)].decode()
        if name == wanted:
            return image[section.sh_offset:section.sh_offset + section.sh_size]
    raise ValueError(f"no {wanted} section")
