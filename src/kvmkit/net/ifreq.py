"""Linux interface ioctls (TUN/TAP set-up, interface flags, bridge ports) with `struct ifreq` as ctypes."""

from __future__ import annotations

import ctypes
import fcntl
import socket

from kvmkit.errors import HostError

IFNAMSIZ = 16

# <linux/if_tun.h>: _IOW('T', nr, int) and friends
TUNSETIFF = 0x400454CA
TUNGETFEATURES = 0x800454CF
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNSETSNDBUF = 0x400454D4
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08

# <linux/sockios.h>
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCBRADDIF = 0x89A2
SIOCBRDELIF = 0x89A3
IFF_UP = 0x1


class Ifreq(ctypes.Structure):
    """struct ifreq with the members kvmkit uses (name, then flags or ifindex), padded to 40 bytes."""

    _fields_ = [
        ("name", ctypes.c_char * IFNAMSIZ),
        ("flags", ctypes.c_short),
        ("pad", ctypes.c_char * 22),
    ]


class IfreqIndex(ctypes.Structure):
    """struct ifreq as SIOCBRADDIF reads it: name and ifr_ifindex."""

    _fields_ = [
        ("name", ctypes.c_char * IFNAMSIZ),
        ("ifindex", ctypes.c_int),
        ("pad", ctypes.c_char * 20),
    ]


def check_ifname(name: str, what: str) -> bytes:
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ or b"/" in raw or b"\0" in raw or name.strip() != name:
        raise HostError(f"{what}: {name!r} is not a valid interface name (1-15 characters)")
    return raw


def set_interface_up(name: str, what: str) -> None:
    """Bring interface `name` up (SIOCSIFFLAGS)."""
    request = Ifreq(name=check_ifname(name, what))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            fcntl.ioctl(sock.fileno(), SIOCGIFFLAGS, request)
            request.flags |= IFF_UP
            fcntl.ioctl(sock.fileno(), SIOCSIFFLAGS, request)
        except OSError as error:
            raise HostError(f"{what}: cannot bring {name} up: {error.strerror}") from error


def add_bridge_port(bridge: str, port: str, what: str) -> None:
    """Attach interface `port` to Linux bridge `bridge` (SIOCBRADDIF, like `ip link set PORT master BR`)."""
    try:
        index = socket.if_nametoindex(port)
    except OSError as error:
        raise HostError(f"{what}: no interface {port!r}: {error.strerror}") from error
    request = IfreqIndex(name=check_ifname(bridge, what), ifindex=index)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            fcntl.ioctl(sock.fileno(), SIOCBRADDIF, request)
        except OSError as error:
            raise HostError(f"{what}: cannot add {port} to bridge {bridge!r}: {error.strerror} "
                            "(does the bridge exist? `ip link add NAME type bridge`)") from error
