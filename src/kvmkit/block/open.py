"""Opening images: format probing, the protocol underneath, and backing chains."""

from __future__ import annotations

import os

from kvmkit.block.driver import BlockDriver
from kvmkit.block.formats.qcow2.driver import Qcow2Driver
from kvmkit.block.formats.raw import RawFormat
from kvmkit.block.formats.vmdk.driver import VmdkDriver
from kvmkit.block.formats.vmdk.layout import DESCRIPTOR_SIGNATURE
from kvmkit.block.protocols.file import FileProtocol
from kvmkit.errors import ImageError

FORMATS = ("raw", "qcow2", "vmdk")
QCOW2_MAGIC = b"QFI\xfb"
VMDK_SPARSE_MAGIC = b"KDMV"
MAX_BACKING_DEPTH = 16


def probe_format(path: str) -> str | None:
    """The format the file's first bytes announce, or None when it looks like nothing (raw)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such image file") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read: {exc.strerror}") from None
    if head.startswith(QCOW2_MAGIC):
        return "qcow2"
    if head.startswith(VMDK_SPARSE_MAGIC) or head.startswith(DESCRIPTOR_SIGNATURE):
        return "vmdk"
    return None


def open_image(
    path: str,
    format: str | None = None,
    read_only: bool = False,
    cache: str = "writeback",
    backing: bool = True,
    *,
    _depth: int = 0,
) -> BlockDriver:
    """Open an image; `backing=False` leaves a qcow2's backing file closed (reads of unallocated
    clusters then return zeroes)."""
    if format is None:
        format = probe_format(path)
        if format is None:
            if not read_only:
                raise ImageError(
                    f"{path}: image format could not be determined and guessing raw for a writable image "
                    f"is refused (it could let a guest rewrite the format); pass format=raw explicitly")
            format = "raw"
    if format not in FORMATS:
        raise ImageError(f"{path}: unknown image format {format!r} (expected one of {', '.join(FORMATS)})")
    if _depth > MAX_BACKING_DEPTH:
        raise ImageError(f"{path}: backing chain deeper than {MAX_BACKING_DEPTH} (a loop?)")
    file = FileProtocol(path, read_only=read_only, cache=cache)
    try:
        if format == "raw":
            return RawFormat(file)
        if format == "vmdk":
            return VmdkDriver(file)
        folder = os.path.dirname(os.path.abspath(path))

        def open_backing(name: str, backing_format: str | None) -> BlockDriver:
            backing_path = name if os.path.isabs(name) else os.path.join(folder, name)
            return open_image(backing_path, backing_format, read_only=True, cache=cache, _depth=_depth + 1)

        return Qcow2Driver(file, open_backing=open_backing if backing else None)
    except BaseException:
        if format != "vmdk":
            file.close()
        raise
