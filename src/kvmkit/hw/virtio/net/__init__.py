"""virtio-net: the device model (device.py), its RX buffer pool, control queue and guest-visible layouts."""

from kvmkit.hw.virtio.net.device import VirtioNet

__all__ = ["VirtioNet"]
