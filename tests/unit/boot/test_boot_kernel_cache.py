"""The extracted-kernel cache: miss then hit, invalidation, damaged entries, read-only caches."""

import json
import logging
import os

import pytest

from harness.kernel_images import TEXT_ADDR, bzimage_with_payload, compress, synthetic_vmlinux
from kvmkit.boot.bzimage import BzImage
from kvmkit.boot.kernel_cache import KernelCache, cached_vmlinux, default_cache_dir

LOGGER = "kvmkit.boot.kernel_cache"


@pytest.fixture
def kernel(tmp_path, bzimage_bytes):
    path = tmp_path / "vmlinuz"
    path.write_bytes(bzimage_with_payload(bzimage_bytes, compress(synthetic_vmlinux(), "xz")))
    return path


@pytest.fixture
def cache(tmp_path):
    return KernelCache(tmp_path / "cache" / "vmlinux")


def test_default_directory_follows_the_kvmkit_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("KVMKIT_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "vmlinux"


def test_miss_extracts_and_stores_then_hits(kernel, cache, caplog):
    caplog.set_level(logging.INFO, LOGGER)
    image = BzImage.parse(kernel)
    assert cache.lookup(image) is None
    stored = cached_vmlinux(image, cache)
    assert stored is not None and stored.kernel.entry == TEXT_ADDR
    assert "extracted the vmlinux" in caplog.text
    assert sorted(p.suffix for p in cache.directory.iterdir()) == [".elf", ".json"]  # no partial files left
    caplog.clear()
    again = cached_vmlinux(BzImage.parse(kernel), cache)
    assert again is not None and again.path == stored.path
    assert "booting the cached vmlinux" in caplog.text
    meta = json.loads(next(cache.directory.glob("*.json")).read_text())
    assert meta["source"] == os.path.realpath(kernel) and meta["size"] == kernel.stat().st_size


def test_cached_file_holds_only_the_loadable_segments(kernel, cache):
    stored = cached_vmlinux(BzImage.parse(kernel), cache)
    assert stored is not None
    data = stored.path.read_bytes()
    for segment in stored.kernel.segments:
        assert segment.offset % 4096 == 0
        assert data[segment.offset:segment.offset + 11] in (b"\x90" * 11, b"KERNEL-DATA")


def test_a_changed_kernel_is_a_miss_and_replaces_the_entry(kernel, cache, bzimage_bytes):
    first = cached_vmlinux(BzImage.parse(kernel), cache)
    other = bytearray(bzimage_with_payload(bzimage_bytes, compress(synthetic_vmlinux(TEXT_ADDR + 4), "xz")))
    kernel.write_bytes(other)
    assert cache.lookup(BzImage.parse(kernel)) is None
    second = cached_vmlinux(BzImage.parse(kernel), cache)
    assert second.kernel.entry == TEXT_ADDR + 4
    assert second.path != first.path


def test_recaching_under_the_same_key_writes_a_new_elf_and_drops_the_old(tmp_path, cache, bzimage_bytes):
    payloads = [compress(synthetic_vmlinux(entry), "xz") for entry in (TEXT_ADDR, TEXT_ADDR + 4)]
    width = max(len(p) for p in payloads)  # same file size: bytes after the xz stream are ignored
    kernel = tmp_path / "vmlinuz-same-key"
    kernel.write_bytes(bzimage_with_payload(bzimage_bytes, payloads[0].ljust(width, b"\0")))
    first = cached_vmlinux(BzImage.parse(kernel), cache)
    stat = kernel.stat()
    kernel.write_bytes(bzimage_with_payload(bzimage_bytes, payloads[1].ljust(width, b"\0")))
    os.utime(kernel, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache.lookup(BzImage.parse(kernel)) is None  # same key, other content
    second = cached_vmlinux(BzImage.parse(kernel), cache)
    assert second.kernel.entry == TEXT_ADDR + 4
    assert second.path != first.path and not first.path.exists()
    assert len(list(cache.directory.iterdir())) == 2


def test_a_record_naming_a_path_outside_the_cache_is_ignored(kernel, cache, tmp_path):
    stored = cached_vmlinux(BzImage.parse(kernel), cache)
    meta = next(cache.directory.glob("*.json"))
    (tmp_path / "elsewhere.elf").write_bytes(stored.path.read_bytes())
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "elf": "../../elsewhere.elf"}))
    assert cache.lookup(BzImage.parse(kernel)) is None


def test_same_size_and_mtime_but_other_content_fails_the_content_check(kernel, cache, caplog):
    cached_vmlinux(BzImage.parse(kernel), cache)
    stat = kernel.stat()
    other = bytearray(kernel.read_bytes())
    other[-20] ^= 0xFF  # inside the compressed payload
    kernel.write_bytes(other)
    os.utime(kernel, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    caplog.set_level(logging.INFO, LOGGER)
    assert cache.lookup(BzImage.parse(kernel)) is None
    assert "changed since it was cached" in caplog.text


@pytest.mark.parametrize("damage", ["truncate-elf", "garbage-elf", "remove-elf", "garbage-json", "wrong-format"])
def test_damaged_entries_are_misses_and_get_replaced(kernel, cache, damage):
    stored = cached_vmlinux(BzImage.parse(kernel), cache)
    meta = next(cache.directory.glob("*.json"))
    if damage == "truncate-elf":
        os.truncate(stored.path, 4096)
    elif damage == "garbage-elf":
        stored.path.write_bytes(b"\0" * 8192)
    elif damage == "remove-elf":
        stored.path.unlink()
    elif damage == "garbage-json":
        meta.write_text("{not json")
    else:
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "format": 999}))
    assert cache.lookup(BzImage.parse(kernel)) is None
    assert cached_vmlinux(BzImage.parse(kernel), cache) is not None
    assert cache.lookup(BzImage.parse(kernel)) is not None


def test_read_only_cache_falls_back_to_the_guest_decompressing(kernel, cache, monkeypatch, caplog):
    caplog.set_level(logging.INFO, LOGGER)
    monkeypatch.setattr(KernelCache, "writable", lambda self: False)
    assert cached_vmlinux(BzImage.parse(kernel), cache) is None
    assert "not writable" in caplog.text and "the guest decompresses" in caplog.text
    assert not cache.directory.exists()


def test_read_only_cache_still_serves_what_it_holds(kernel, cache, monkeypatch):
    cached_vmlinux(BzImage.parse(kernel), cache)
    monkeypatch.setattr(KernelCache, "writable", lambda self: False)
    assert cached_vmlinux(BzImage.parse(kernel), cache) is not None


def test_a_cache_that_cannot_be_written_falls_back(kernel, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    caplog.set_level(logging.INFO, LOGGER)
    assert cached_vmlinux(BzImage.parse(kernel), KernelCache(blocker / "vmlinux")) is None
    assert "the guest decompresses" in caplog.text


def test_unsupported_compression_falls_back(tmp_path, bzimage_bytes, cache, caplog):
    path = tmp_path / "vmlinuz-lz4"
    path.write_bytes(bzimage_with_payload(bzimage_bytes, compress(synthetic_vmlinux(), "lz4")))
    caplog.set_level(logging.INFO, LOGGER)
    assert cached_vmlinux(BzImage.parse(path), cache) is None
    assert "lz4-compressed" in caplog.text


def test_trailing_zeros_are_not_stored_but_still_loaded_as_zeros(kernel, cache):
    stored = cached_vmlinux(BzImage.parse(kernel), cache)
    data_segment = stored.kernel.segments[1]
    assert data_segment.filesz == len(b"KERNEL-DATA")
    assert data_segment.memsz == 0x3000
