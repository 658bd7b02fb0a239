"""Parsing a bzImage: the setup header and where the protected-mode kernel starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kvmkit.boot.setup_header import (
    BOOT_FLAG_MAGIC,
    HEADER_MAGIC,
    SETUP_HEADER_END,
    SETUP_HEADER_OFFSET,
    XLF_KERNEL_64,
    SetupHeader,
)
from kvmkit.errors import BootError

MIN_PROTOCOL = 0x0206
"""Oldest boot protocol we accept (cmdline_size appeared in 2.06)."""

XLOADFLAGS_PROTOCOL = 0x020C
"""xloadflags, and with it the 64-bit entry flag, appeared in protocol 2.12."""

SECTOR_SIZE = 512
DEFAULT_SETUP_SECTS = 4
"""A setup_sects of 0 means 4 for historical reasons."""

_JUMP_OFFSET_BYTE = 0x201
"""The setup header ends at 0x202 + the byte here (the short jump's displacement)."""


def _version_text(version: int) -> str:
    return f"{version >> 8}.{version & 0xFF:02d}"


@dataclass(frozen=True)
class BzImage:
    """A parsed bzImage: the header fields the loader needs and the image bytes."""

    path: Path
    setup_sects: int
    protocol_version: int
    loadflags: int
    relocatable_kernel: bool
    kernel_alignment: int
    initrd_addr_max: int
    cmdline_size: int
    xloadflags: int
    protected_mode_offset: int
    """File offset of the protected-mode kernel: (setup_sects + 1) * 512."""
    init_size: int
    pref_address: int
    header_bytes: bytes = field(repr=False)
    """The setup header as the image carries it, up to its declared end (for the zero page)."""
    data: bytes = field(repr=False)

    @property
    def protocol_text(self) -> str:
        return _version_text(self.protocol_version)

    @property
    def protected_mode_kernel(self) -> memoryview:
        """The bytes loaded at the protected-mode load address (1 MiB)."""
        return memoryview(self.data)[self.protected_mode_offset :]

    @classmethod
    def parse(cls, path: str | Path) -> BzImage:
        """Read and validate the bzImage at ``path``; raise BootError naming the file on any problem."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BootError(f"kernel {path}: no such file") from None
        except OSError as exc:
            raise BootError(f"kernel {path}: cannot read: {exc.strerror or exc}") from None
        return cls.from_bytes(path, data)

    @classmethod
    def from_bytes(cls, path: Path, data: bytes) -> BzImage:
        """Validate ``data`` (the contents of ``path``) as a 64-bit-capable bzImage."""
        if len(data) < SETUP_HEADER_END:
            raise BootError(
                f"kernel {path}: truncated ({len(data)} bytes, a bzImage header needs {SETUP_HEADER_END})"
            )
        hdr = SetupHeader.from_buffer_copy(data, SETUP_HEADER_OFFSET)
        if hdr.boot_flag != BOOT_FLAG_MAGIC:
            raise BootError(f"kernel {path}: not a bzImage (boot flag 0x{hdr.boot_flag:04x} != 0xaa55)")
        if hdr.header != HEADER_MAGIC:
            raise BootError(f"kernel {path}: not a bzImage (no 'HdrS' setup header magic at 0x202)")
        if hdr.version < MIN_PROTOCOL:
            raise BootError(
                f"kernel {path}: boot protocol {_version_text(hdr.version)} is too old "
                f"(need {_version_text(MIN_PROTOCOL)} or newer)"
            )
        if hdr.version < XLOADFLAGS_PROTOCOL or not hdr.xloadflags & XLF_KERNEL_64:
            raise BootError(
                f"kernel {path}: no 64-bit entry point (XLF_KERNEL_64 not set, protocol "
                f"{_version_text(hdr.version)}); a 64-bit bzImage is required"
            )
        setup_sects = hdr.setup_sects or DEFAULT_SETUP_SECTS
        pm_offset = (setup_sects + 1) * SECTOR_SIZE
        pm_length = len(data) - pm_offset
        # syssize counts 16-byte paragraphs of the protected-mode part, rounded up.
        if pm_length <= 0 or pm_length < hdr.syssize * 16 - 15:
            raise BootError(
                f"kernel {path}: truncated (protected-mode kernel at 0x{pm_offset:x} has "
                f"{max(pm_length, 0)} bytes, header says {hdr.syssize * 16})"
            )
        header_end = min(_JUMP_OFFSET_BYTE + 1 + data[_JUMP_OFFSET_BYTE], SETUP_HEADER_END)
        return cls(
            path=path,
            setup_sects=setup_sects,
            protocol_version=hdr.version,
            loadflags=hdr.loadflags,
            relocatable_kernel=bool(hdr.relocatable_kernel),
            kernel_alignment=hdr.kernel_alignment,
            initrd_addr_max=hdr.initrd_addr_max,
            cmdline_size=hdr.cmdline_size,
            xloadflags=hdr.xloadflags,
            protected_mode_offset=pm_offset,
            init_size=hdr.init_size,
            pref_address=hdr.pref_address,
            header_bytes=bytes(data[SETUP_HEADER_OFFSET:header_end]),
            data=data,
        )
