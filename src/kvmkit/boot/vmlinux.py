"""Booting the uncompressed kernel: pull the vmlinux ELF out of a bzImage and load its segments into guest RAM.

A bzImage carries the kernel as a compressed ELF (setup header ``payload_offset``/``payload_length``) behind a
decompressor that also randomizes the load address (KASLR). Extracting it on the host once and loading the
PT_LOAD segments at their physical addresses skips the in-guest decompression (seconds under nested
virtualization); the 64-bit entry is the ELF entry point (startup_64's physical address) with the zero page in
RSI, as Firecracker boots. KASLR is then not performed: the kernel runs at its link address.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from kvmkit.boot.bzimage import BzImage
from kvmkit.boot.e820 import E820Entry, E820Type
from kvmkit.boot.elf import ElfKernel, parse_elf_kernel
from kvmkit.boot.guest_ram import GuestRam
from kvmkit.boot.layout import KERNEL_LOAD_ADDR
from kvmkit.boot.setup_header import SETUP_HEADER_OFFSET, SetupHeader
from kvmkit.errors import BootError

PAYLOAD_PROTOCOL = 0x0208
"""payload_offset and payload_length appeared in boot protocol 2.08."""
MAX_VMLINUX_SIZE = 512 << 20
"""A decompressed kernel larger than this is refused (a decompression bomb, not a kernel)."""
XZ_MAGIC = b"\xfd7zXZ\x00"
GZIP_MAGIC = b"\x1f\x8b"
OTHER_FORMATS = ((b"BZh", "bzip2"), (b"\x5d\x00\x00", "lzma"), (b"\x89LZO", "lzo"), (b"\x02\x21\x4c\x18", "lz4"),
                 (b"\x28\xb5\x2f\xfd", "zstd"))
_ZERO_CHUNK = memoryview(bytes(1 << 20))


class UnsupportedPayload(BootError):
    """The bzImage's payload cannot be extracted here (old protocol, or a compression kvmkit does not decode)."""


def payload_of(image: BzImage) -> memoryview:
    """The compressed kernel inside ``image`` (validated against the file's bounds)."""
    if image.protocol_version < PAYLOAD_PROTOCOL:
        raise UnsupportedPayload(f"kernel {image.path}: boot protocol {image.protocol_text} has no payload fields")
    hdr = SetupHeader.from_buffer_copy(image.data, SETUP_HEADER_OFFSET)
    start = image.protected_mode_offset + hdr.payload_offset
    end = start + hdr.payload_length
    if hdr.payload_length == 0 or end > len(image.data):
        raise BootError(f"kernel {image.path}: payload 0x{hdr.payload_offset:x}+0x{hdr.payload_length:x} lies "
                        "outside the file")
    return memoryview(image.data)[start:end]


def compression_of(payload: bytes | memoryview) -> str:
    """The payload's compression by its magic: "xz", "gzip", another known name, or "unknown"."""
    head = bytes(payload[:8])
    if head.startswith(XZ_MAGIC):
        return "xz"
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    return next((name for magic, name in OTHER_FORMATS if head.startswith(magic)), "unknown")


def decompress_payload(payload: bytes | memoryview, name: str, limit: int = MAX_VMLINUX_SIZE) -> bytes:
    """Decompress an xz or gzip kernel payload (at most ``limit`` bytes out; trailing bytes are ignored)."""
    import lzma  # only when extracting: most runs boot a cached vmlinux
    import zlib

    kind = compression_of(payload)
    if kind not in ("xz", "gzip"):
        raise UnsupportedPayload(f"{name}: the kernel is {kind}-compressed; kvmkit extracts xz and gzip")
    try:
        if kind == "xz":
            xz = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
            data, done = xz.decompress(payload, max_length=limit + 1), xz.eof
        else:
            gz = zlib.decompressobj(16 + zlib.MAX_WBITS)
            data = gz.decompress(payload, limit + 1)
            done = gz.eof
    except (lzma.LZMAError, zlib.error) as exc:
        raise BootError(f"{name}: corrupt {kind} payload: {exc}") from None
    if len(data) > limit:
        raise BootError(f"{name}: the decompressed kernel exceeds {limit >> 20} MiB")
    if not done:
        raise BootError(f"{name}: truncated {kind} payload")
    return data


def extract_vmlinux(image: BzImage) -> tuple[bytes, ElfKernel]:
    """Decompress the vmlinux ELF out of a bzImage and validate it; UnsupportedPayload if not possible here."""
    name = f"kernel {image.path}"
    data = decompress_payload(payload_of(image), name)
    return data, parse_elf_kernel(data, len(data), f"{name} (vmlinux)")


def check_segments_fit(kernel: ElfKernel, e820: Sequence[E820Entry], name: str) -> int:
    """Raise BootError unless every segment lies in one RAM range above the boot structures; return the end."""
    if kernel.start < KERNEL_LOAD_ADDR:
        raise BootError(f"{name}: a segment at 0x{kernel.start:x} would overwrite the boot structures below "
                        f"0x{KERNEL_LOAD_ADDR:x}")
    for entry in e820:
        if entry.type == E820Type.RAM and entry.addr <= kernel.start and kernel.end <= entry.end:
            return kernel.end
    raise BootError(f"{name} does not fit: it loads at 0x{kernel.start:x}-0x{kernel.end:x}, which is not inside "
                    "one guest RAM range; give the VM more memory")


def load_segments(ram: GuestRam, fd: int, kernel: ElfKernel, name: str) -> None:
    """Read each segment from ``fd`` straight into guest memory and zero the rest of its memory size."""
    for segment in kernel.segments:
        view = ram.view(segment.paddr, segment.memsz)
        done = 0
        while done < segment.filesz:
            count = os.preadv(fd, [view[done:segment.filesz]], segment.offset + done)
            if count <= 0:
                raise BootError(f"{name}: file ends inside the segment at 0x{segment.paddr:x}")
            done += count
        for start in range(segment.filesz, segment.memsz, len(_ZERO_CHUNK)):
            length = min(len(_ZERO_CHUNK), segment.memsz - start)
            view[start:start + length] = _ZERO_CHUNK[:length]
