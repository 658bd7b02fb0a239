"""<linux/vhost.h> and <linux/vhost_types.h>: the ioctl numbers and structures vhost-net takes, as ctypes."""

from __future__ import annotations

import ctypes

VHOST_VIRTIO = 0xAF
_IOC_WRITE, _IOC_READ = 1, 2


def _ioc(direction: int, number: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (VHOST_VIRTIO << 8) | number


class VhostVringState(ctypes.Structure):
    """struct vhost_vring_state: a queue index and a number (size or base index)."""

    _fields_ = [("index", ctypes.c_uint), ("num", ctypes.c_uint)]


class VhostVringFile(ctypes.Structure):
    """struct vhost_vring_file: a queue index and an fd (-1 to detach)."""

    _fields_ = [("index", ctypes.c_uint), ("fd", ctypes.c_int)]


class VhostVringAddr(ctypes.Structure):
    """struct vhost_vring_addr: the three ring areas as addresses in this process."""

    _fields_ = [
        ("index", ctypes.c_uint),
        ("flags", ctypes.c_uint),
        ("desc_user_addr", ctypes.c_uint64),
        ("used_user_addr", ctypes.c_uint64),
        ("avail_user_addr", ctypes.c_uint64),
        ("log_guest_addr", ctypes.c_uint64),
    ]


class VhostMemoryRegion(ctypes.Structure):
    """struct vhost_memory_region: one guest RAM range and where it is mapped in this process."""

    _fields_ = [
        ("guest_phys_addr", ctypes.c_uint64),
        ("memory_size", ctypes.c_uint64),
        ("userspace_addr", ctypes.c_uint64),
        ("flags_padding", ctypes.c_uint64),
    ]


class VhostMemoryHeader(ctypes.Structure):
    """struct vhost_memory without its flexible array of regions."""

    _fields_ = [("nregions", ctypes.c_uint32), ("padding", ctypes.c_uint32)]


def vhost_memory_with_regions(count: int) -> type[ctypes.Structure]:
    """struct vhost_memory followed by `count` regions."""

    class VhostMemory(ctypes.Structure):
        _fields_ = [("nregions", ctypes.c_uint32), ("padding", ctypes.c_uint32),
                    ("regions", VhostMemoryRegion * count)]

    return VhostMemory


U64 = ctypes.sizeof(ctypes.c_uint64)
VHOST_GET_FEATURES = _ioc(_IOC_READ, 0x00, U64)
VHOST_SET_FEATURES = _ioc(_IOC_WRITE, 0x00, U64)
VHOST_SET_OWNER = _ioc(0, 0x01, 0)
VHOST_RESET_OWNER = _ioc(0, 0x02, 0)
VHOST_SET_MEM_TABLE = _ioc(_IOC_WRITE, 0x03, ctypes.sizeof(VhostMemoryHeader))
VHOST_SET_VRING_NUM = _ioc(_IOC_WRITE, 0x10, ctypes.sizeof(VhostVringState))
VHOST_SET_VRING_ADDR = _ioc(_IOC_WRITE, 0x11, ctypes.sizeof(VhostVringAddr))
VHOST_SET_VRING_BASE = _ioc(_IOC_WRITE, 0x12, ctypes.sizeof(VhostVringState))
VHOST_GET_VRING_BASE = _ioc(_IOC_READ | _IOC_WRITE, 0x12, ctypes.sizeof(VhostVringState))
VHOST_SET_VRING_KICK = _ioc(_IOC_WRITE, 0x20, ctypes.sizeof(VhostVringFile))
VHOST_SET_VRING_CALL = _ioc(_IOC_WRITE, 0x21, ctypes.sizeof(VhostVringFile))
VHOST_NET_SET_BACKEND = _ioc(_IOC_WRITE, 0x30, ctypes.sizeof(VhostVringFile))
