"""The cache of extracted kernels: a bzImage's vmlinux, stripped to its PT_LOAD segments, under the kvmkit cache.

Each entry is two files under ``<cache>/vmlinux/``: ``<key>.json`` (what was extracted from what) and the ELF it
names, ``<key>-<payload digest>.elf`` (a minimal ELF64 with only the loadable segments, page-aligned, so loading
is one ``preadv`` per segment; trailing zero bytes, the bss and brk, are not stored: memsz covers them). Both are
written to a temporary name and renamed, the JSON last; an ELF file never changes once written (its name carries
the digest of the payload it came from), so a VM rebooting from an entry is not disturbed by another process
re-caching a changed kernel.

The key is cheap: the bzImage's real path, size and mtime_ns. The inode is recorded but not compared, because
the lab's 9p share (``multidevs=remap``) renumbers inodes and a cache filled on the host must hit inside it. The
content check is the SHA-256 of the compressed payload (the vmlinux is a function of it), computed from the
bzImage bytes that are read anyway. A cached ELF is re-validated like any kernel ELF before it is loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from kvmkit.boot.bzimage import BzImage
from kvmkit.boot.elf import HEADERS_READ, PF_R, ElfKernel, build_elf_kernel, parse_elf_kernel
from kvmkit.boot.vmlinux import UnsupportedPayload, extract_vmlinux, payload_of
from kvmkit.errors import BootError

log = logging.getLogger(__name__)

CACHE_FORMAT = 3
"""Bumped when what is stored changes (2: trailing zeros are not stored; 3: the ELF is content-named)."""


def default_cache_dir() -> Path:
    """``<kvmkit cache>/vmlinux`` (``$KVMKIT_CACHE``, ``$XDG_CACHE_HOME/kvmkit`` or ``~/.cache/kvmkit``)."""
    from kvmkit.guest.debian_kernel import cache_root

    return cache_root() / "vmlinux"


@dataclass(frozen=True)
class CachedKernel:
    """A cached, validated vmlinux: the ELF file to read segments from and its parsed headers."""

    path: Path
    kernel: ElfKernel


def _source_record(image: BzImage) -> dict[str, object]:
    st = os.stat(image.path)
    return {"source": os.path.realpath(image.path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "inode": st.st_ino}


def _key(record: dict[str, object]) -> str:
    text = f"{record['source']}\0{record['size']}\0{record['mtime_ns']}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _payload_digest(image: BzImage) -> str:
    return hashlib.sha256(payload_of(image)).hexdigest()


def open_cached_elf(path: Path) -> CachedKernel:
    """Parse a cached ELF's headers (BootError if it is not a valid kernel ELF)."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        head = file.read(HEADERS_READ)
    return CachedKernel(path, parse_elf_kernel(head, size, f"cached kernel {path}"))


class KernelCache:
    """Extracted kernels under one directory (see the module docstring for the layout)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory if directory is not None else default_cache_dir()

    def _record(self, image: BzImage) -> tuple[dict[str, object], Path]:
        record = _source_record(image)
        return record, self.directory / f"{_key(record)}.json"

    def _read_record(self, meta_path: Path) -> dict[str, object] | None:
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def lookup(self, image: BzImage) -> CachedKernel | None:
        """The cached vmlinux for ``image``, or None (missing, stale or damaged; logged at debug level)."""
        record, meta_path = self._record(image)
        meta = self._read_record(meta_path)
        if meta is None or meta.get("format") != CACHE_FORMAT or any(
                meta.get(field) != record[field] for field in ("source", "size", "mtime_ns")):
            log.debug("kernel cache: %s does not describe %s", meta_path, image.path)
            return None
        if meta.get("payload_sha256") != _payload_digest(image):
            log.info("kernel cache: %s changed since it was cached (payload digest differs)", image.path)
            return None
        name = meta.get("elf")
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".elf"):
            log.info("kernel cache: %s names no valid ELF file", meta_path)
            return None
        elf_path = self.directory / name
        try:
            cached = open_cached_elf(elf_path)
        except (OSError, BootError) as exc:
            log.info("kernel cache: ignoring %s: %s", elf_path, exc)
            return None
        if os.stat(elf_path).st_size != meta.get("elf_size"):
            log.info("kernel cache: ignoring %s: its size differs from the record", elf_path)
            return None
        return cached

    def writable(self) -> bool:
        """Whether entries can be added (the directory, or its nearest existing parent, is writable)."""
        directory = self.directory
        while not directory.exists() and directory != directory.parent:
            directory = directory.parent
        return os.access(directory, os.W_OK)

    def store(self, image: BzImage) -> CachedKernel:
        """Extract ``image``'s vmlinux and cache it (OSError if the cache cannot be written)."""
        data, kernel = extract_vmlinux(image)
        view = memoryview(data)
        segments = []
        for segment in kernel.segments:
            contents = view[segment.offset:segment.offset + segment.filesz]
            # Trailing zeros (a vmlinux stores its bss and brk: 24 of its 60 MB) become memsz-only: zeroing guest
            # memory is far cheaper than reading zeros, above all through the lab's 9p share.
            keep = len(bytes(contents).rstrip(b"\0"))
            if segment.paddr <= kernel.entry < segment.end:
                keep = max(keep, kernel.entry - segment.paddr + 1)
            segments.append((segment.paddr, segment.flags | PF_R, segment.memsz, contents[:keep]))
        header, pieces = build_elf_kernel(kernel.entry, segments)
        record, meta_path = self._record(image)
        digest = _payload_digest(image)
        elf_path = meta_path.with_name(f"{meta_path.stem}-{digest[:16]}.elf")
        previous = self._read_record(meta_path)
        self.directory.mkdir(parents=True, exist_ok=True)
        elf_size = len(header) + sum(len(piece) for piece in pieces)
        _write_atomically(elf_path, [header, *pieces])
        meta = {"format": CACHE_FORMAT, **record, "payload_sha256": digest, "elf": elf_path.name,
                "elf_size": elf_size, "entry": kernel.entry, "segments": len(segments)}
        _write_atomically(meta_path, [json.dumps(meta, indent=1).encode()])
        old_name = previous.get("elf") if previous else None
        if isinstance(old_name, str) and old_name != elf_path.name and Path(old_name).name == old_name:
            (self.directory / old_name).unlink(missing_ok=True)  # the kernel changed: its old vmlinux goes
        return open_cached_elf(elf_path)


def _write_atomically(path: Path, pieces: list[bytes | memoryview]) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as file:
            for piece in pieces:
                file.write(piece)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def cached_vmlinux(image: BzImage, cache: KernelCache | None = None) -> CachedKernel | None:
    """The vmlinux to boot for ``image``, extracting and caching it first if the cache is writable.

    None means: boot the bzImage and let the guest decompress (the reason is logged at info level).
    """
    cache = cache if cache is not None else KernelCache()
    try:
        found = cache.lookup(image)
        if found is not None:
            log.info("kernel: booting the cached vmlinux %s for %s (entry 0x%x, no in-guest decompression, "
                     "no KASLR)", found.path, image.path, found.kernel.entry)
            return found
        if not cache.writable():
            log.info("kernel: no cached vmlinux for %s and the kernel cache %s is not writable; the guest "
                     "decompresses the bzImage", image.path, cache.directory)
            return None
        started = time.monotonic()
        stored = cache.store(image)
    except UnsupportedPayload as exc:
        log.info("kernel: %s; the guest decompresses the bzImage", exc)
        return None
    except (OSError, BootError) as exc:
        log.info("kernel: cannot use a cached vmlinux for %s (%s); the guest decompresses the bzImage",
                 image.path, exc)
        return None
    log.info("kernel: extracted the vmlinux of %s into %s in %.1f s; booting it (entry 0x%x, no in-guest "
             "decompression, no KASLR)", image.path, stored.path, time.monotonic() - started, stored.kernel.entry)
    return stored
