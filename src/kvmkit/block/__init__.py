"""Block layer: synchronous, thread-safe image drivers (raw, qcow2, vmdk) over host-file protocols."""

from kvmkit.block.driver import BlockDriver, ImageInfo

__all__ = ["BlockDriver", "ImageInfo"]
