"""The "newc" cpio archive format that Linux unpacks as an initramfs, written and read by our own code."""

from __future__ import annotations

import gzip
import io
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

NEWC_MAGIC = b"070701"
TRAILER = "TRAILER!!!"
# The header is 13 eight-digit hex fields after the magic, in this order.
HEADER_FIELDS = (
    "ino", "mode", "uid", "gid", "nlink", "mtime", "filesize",
    "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check",
)
HEADER_SIZE = len(NEWC_MAGIC) + 8 * len(HEADER_FIELDS)  # 110 bytes


@dataclass(frozen=True)
class CpioEntry:
    """One archive member: a regular file, a directory, a symlink or a device node."""

    name: str
    mode: int
    data: bytes = b""
    rdev_major: int = 0
    rdev_minor: int = 0
    mtime: int = 0

    @classmethod
    def directory(cls, name: str, perm: int = 0o755) -> CpioEntry:
        return cls(name, stat.S_IFDIR | perm)

    @classmethod
    def file(cls, name: str, data: bytes, perm: int = 0o644) -> CpioEntry:
        return cls(name, stat.S_IFREG | perm, data)

    @classmethod
    def symlink(cls, name: str, target: str) -> CpioEntry:
        return cls(name, stat.S_IFLNK | 0o777, target.encode())

    @classmethod
    def char_device(cls, name: str, major: int, minor: int, perm: int = 0o600) -> CpioEntry:
        return cls(name, stat.S_IFCHR | perm, b"", major, minor)


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _header(entry: CpioEntry, ino: int) -> bytes:
    name = entry.name.encode() + b"\0"
    values = {
        "ino": ino, "mode": entry.mode, "uid": 0, "gid": 0,
        "nlink": 2 if stat.S_ISDIR(entry.mode) else 1, "mtime": entry.mtime,
        "filesize": len(entry.data), "devmajor": 0, "devminor": 0,
        "rdevmajor": entry.rdev_major, "rdevminor": entry.rdev_minor,
        "namesize": len(name), "check": 0,
    }
    fields = b"".join(b"%08X" % values[field] for field in HEADER_FIELDS)
    return NEWC_MAGIC + fields + name + _pad4(HEADER_SIZE + len(name))


def write_newc(entries: Iterable[CpioEntry]) -> bytes:
    """Serialise entries (parents before children) into one newc archive ending in the trailer."""
    out = io.BytesIO()
    ino = 1
    for entry in [*entries, CpioEntry(TRAILER, 0)]:
        out.write(_header(entry, ino if entry.name != TRAILER else 0))
        out.write(entry.data)
        out.write(_pad4(len(entry.data)))
        ino += 1
    return out.getvalue()


def write_initramfs(entries: Iterable[CpioEntry]) -> bytes:
    """A gzip-compressed newc archive, the format every Linux kernel can unpack."""
    return gzip.compress(write_newc(entries), compresslevel=6, mtime=0)


def read_newc(archive: bytes) -> Iterator[CpioEntry]:
    """Parse a newc archive (gzip-compressed or not); raises ValueError on a malformed one."""
    if archive[:2] == b"\x1f\x8b":
        archive = gzip.decompress(archive)
    offset = 0
    while True:
        if archive[offset:offset + 6] != NEWC_MAGIC:
            raise ValueError(f"bad newc magic at offset {offset}")
        raw = archive[offset + 6:offset + HEADER_SIZE]
        values = {f: int(raw[i * 8:i * 8 + 8], 16) for i, f in enumerate(HEADER_FIELDS)}
        name_start = offset + HEADER_SIZE
        name = archive[name_start:name_start + values["namesize"] - 1].decode()
        data_start = name_start + values["namesize"]
        data_start += -data_start % 4
        data = archive[data_start:data_start + values["filesize"]]
        if len(data) != values["filesize"]:
            raise ValueError(f"truncated member {name!r}")
        if name == TRAILER:
            return
        yield CpioEntry(name, values["mode"], data, values["rdevmajor"], values["rdevminor"], values["mtime"])
        offset = data_start + values["filesize"]
        offset += -offset % 4
