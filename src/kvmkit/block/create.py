"""Creating new images: raw, qcow2 and vmdk."""

from __future__ import annotations

import os
from typing import Any

from kvmkit.block.formats.qcow2.create import create_qcow2
from kvmkit.block.formats.vmdk.driver import create_vmdk
from kvmkit.block.open import FORMATS, open_image
from kvmkit.errors import ConfigError, KvmkitError


def create_image(
    path: str,
    format: str,
    size: int | None = None,
    *,
    backing_file: str | None = None,
    backing_format: str | None = None,
    options: dict[str, Any] | None = None,
) -> None:
    """Create an empty image. qcow2 options: cluster_size, compat ("1.1" default, "0.10" for v2),
    lazy_refcounts, refcount_bits, compression_type; vmdk: subformat. Without a size, a backing
    file's size is used."""
    options = dict(options or {})
    if format not in FORMATS:
        raise ConfigError(f"{path}: unknown image format {format!r} (expected one of {', '.join(FORMATS)})")
    if backing_file and format != "qcow2":
        raise ConfigError(f"{path}: backing files need format qcow2, not {format}")
    if size is None:
        if not backing_file:
            raise ConfigError(f"{path}: an image size is needed")
        folder = os.path.dirname(os.path.abspath(path))
        resolved = backing_file if os.path.isabs(backing_file) else os.path.join(folder, backing_file)
        try:
            with open_image(resolved, backing_format, read_only=True) as backing:
                size = backing.size
        except KvmkitError as exc:
            raise ConfigError(f"{path}: cannot open backing file: {exc}") from None
    if size < 0:
        raise ConfigError(f"{path}: negative image size {size}")
    if format == "raw":
        _reject_unknown(path, options, set())
        with open(path, "wb") as f:
            f.truncate(size)
    elif format == "qcow2":
        _reject_unknown(path, options, {"cluster_size", "compat", "lazy_refcounts", "refcount_bits",
                                        "compression_type"})
        create_qcow2(
            path, size,
            cluster_size=int(options.get("cluster_size", 65536)),
            compat=str(options.get("compat", "1.1")),
            backing_file=backing_file, backing_format=backing_format,
            lazy_refcounts=_flag(options.get("lazy_refcounts", False)),
            refcount_bits=int(options.get("refcount_bits", 16)),
            compression_type=str(options.get("compression_type", "zlib")),
        )
    else:
        _reject_unknown(path, options, {"subformat"})
        create_vmdk(path, size, subformat=str(options.get("subformat", "monolithicSparse")))


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("on", "true", "yes", "1"):
        return True
    if text in ("off", "false", "no", "0"):
        return False
    raise ConfigError(f"expected on/off, got {value!r}")


def _reject_unknown(path: str, options: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown option(s) {', '.join(unknown)} for this format")
