"""Guest-visible structures of the virtio 1.x PCI transport (virtio spec 4.1.4) and our BAR layout."""

from __future__ import annotations

import ctypes

VIRTIO_PCI_VENDOR_ID = 0x1AF4
VIRTIO_PCI_MODERN_DEVICE_ID_BASE = 0x1040

# virtio_pci_cap.cfg_type
VIRTIO_PCI_CAP_COMMON_CFG = 1
VIRTIO_PCI_CAP_NOTIFY_CFG = 2
VIRTIO_PCI_CAP_ISR_CFG = 3
VIRTIO_PCI_CAP_DEVICE_CFG = 4
VIRTIO_PCI_CAP_PCI_CFG = 5

ISR_QUEUE = 0x1
ISR_CONFIG = 0x2


class VirtioPciCap(ctypes.LittleEndianStructure):
    """A vendor-specific capability locating one virtio structure inside a BAR."""

    _pack_ = 1
    _fields_ = [
        ("cap_vndr", ctypes.c_uint8),
        ("cap_next", ctypes.c_uint8),
        ("cap_len", ctypes.c_uint8),
        ("cfg_type", ctypes.c_uint8),
        ("bar", ctypes.c_uint8),
        ("id", ctypes.c_uint8),
        ("padding", ctypes.c_uint8 * 2),
        ("offset", ctypes.c_uint32),
        ("length", ctypes.c_uint32),
    ]


class VirtioPciNotifyCap(ctypes.LittleEndianStructure):
    """The notify capability: a `VirtioPciCap` followed by the queue notify offset multiplier."""

    _pack_ = 1
    _fields_ = [("cap", VirtioPciCap), ("notify_off_multiplier", ctypes.c_uint32)]


class VirtioPciCommonCfg(ctypes.LittleEndianStructure):
    """The common configuration structure (struct virtio_pci_common_cfg)."""

    _pack_ = 1
    _fields_ = [
        ("device_feature_select", ctypes.c_uint32),
        ("device_feature", ctypes.c_uint32),
        ("driver_feature_select", ctypes.c_uint32),
        ("driver_feature", ctypes.c_uint32),
        ("config_msix_vector", ctypes.c_uint16),
        ("num_queues", ctypes.c_uint16),
        ("device_status", ctypes.c_uint8),
        ("config_generation", ctypes.c_uint8),
        ("queue_select", ctypes.c_uint16),
        ("queue_size", ctypes.c_uint16),
        ("queue_msix_vector", ctypes.c_uint16),
        ("queue_enable", ctypes.c_uint16),
        ("queue_notify_off", ctypes.c_uint16),
        ("queue_desc", ctypes.c_uint64),
        ("queue_driver", ctypes.c_uint64),
        ("queue_device", ctypes.c_uint64),
    ]


COMMON_CFG_FIELDS: list[tuple[str, int, int]] = [
    (name, getattr(VirtioPciCommonCfg, name).offset, getattr(VirtioPciCommonCfg, name).size)
    for name, _ in VirtioPciCommonCfg._fields_
]


def common_cfg_field_at(offset: int) -> tuple[str, int, int] | None:
    """(name, offset, size) of the common-config field containing byte `offset`."""
    for name, start, size in COMMON_CFG_FIELDS:
        if start <= offset < start + size:
            return name, start, size
    return None


# Our single 64-bit memory BAR (index 4): every virtio structure plus the MSI-X table and PBA.
VIRTIO_BAR_INDEX = 4
VIRTIO_BAR_SIZE = 0x8000
COMMON_CFG_OFFSET = 0x0000
ISR_CFG_OFFSET = 0x1000
DEVICE_CFG_OFFSET = 0x2000
NOTIFY_CFG_OFFSET = 0x3000
MSIX_TABLE_OFFSET = 0x4000
MSIX_PBA_OFFSET = 0x6000
REGION_SIZE = 0x1000
NOTIFY_OFF_MULTIPLIER = 4
