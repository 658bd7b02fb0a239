"""The virtio-net control virtqueue (5.1.6.5): RX mode, MAC table, MAC address, VLAN filter, announce, offloads."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass, field

from kvmkit.hw.virtio.net.header import (
    CTRL_HDR_LEN,
    MAX_VLAN_ID,
    VIRTIO_NET_CTRL_ANNOUNCE,
    VIRTIO_NET_CTRL_ANNOUNCE_ACK,
    VIRTIO_NET_CTRL_GUEST_OFFLOADS,
    VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET,
    VIRTIO_NET_CTRL_MAC,
    VIRTIO_NET_CTRL_MAC_ADDR_SET,
    VIRTIO_NET_CTRL_MAC_TABLE_SET,
    VIRTIO_NET_CTRL_RX,
    VIRTIO_NET_CTRL_VLAN,
    VIRTIO_NET_CTRL_VLAN_ADD,
    VIRTIO_NET_CTRL_VLAN_DEL,
    VIRTIO_NET_ERR,
    VIRTIO_NET_OK,
    VirtioNetCtrlHdr,
)

MAX_CTRL_REQUEST = 64 * 1024  # a MAC table of ~10000 entries; anything longer is refused unread
RX_MODES = ("promisc", "allmulti", "alluni", "nomulti", "nouni", "nobcast")
MAC_LEN = 6


class MacTableCount(ctypes.LittleEndianStructure):
    """The entry count opening each of the two MAC tables of VIRTIO_NET_CTRL_MAC_TABLE_SET."""

    _pack_ = 1
    _fields_ = [("entries", ctypes.c_uint32)]


class VlanId(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [("vid", ctypes.c_uint16)]


class GuestOffloads(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [("offloads", ctypes.c_uint64)]


@dataclass
class RxFilterState:
    """What the driver asked for through the control queue (reported by query-rx-filter style stats)."""

    modes: dict[str, bool] = field(default_factory=lambda: {mode: False for mode in RX_MODES})
    unicast: list[bytes] = field(default_factory=list)
    multicast: list[bytes] = field(default_factory=list)
    vlans: set[int] = field(default_factory=set)
    commands: int = 0
    errors: int = 0


class ControlHandler:
    """Executes control requests; `set_mac`, `ack_announce` and `set_offloads` reach back into the device."""

    def __init__(self, set_mac: Callable[[bytes], None], ack_announce: Callable[[], None],
                 set_offloads: Callable[[int], bool]) -> None:
        self.state = RxFilterState()
        self.set_mac = set_mac
        self.ack_announce = ack_announce
        self.set_offloads = set_offloads

    def reset(self) -> None:
        self.state = RxFilterState()

    def execute(self, request: bytes) -> int:
        """Run one request (class/command header + data) and return the ack byte."""
        self.state.commands += 1
        if len(request) < CTRL_HDR_LEN:
            return self._error()
        header = VirtioNetCtrlHdr.from_buffer_copy(request)
        data = request[CTRL_HDR_LEN:]
        ok = self._dispatch(header.cls, header.cmd, data)
        return VIRTIO_NET_OK if ok else self._error()

    def _error(self) -> int:
        self.state.errors += 1
        return VIRTIO_NET_ERR

    def _dispatch(self, cls: int, cmd: int, data: bytes) -> bool:
        if cls == VIRTIO_NET_CTRL_RX:
            if cmd >= len(RX_MODES) or len(data) != 1:
                return False
            self.state.modes[RX_MODES[cmd]] = bool(data[0])
            return True
        if cls == VIRTIO_NET_CTRL_MAC:
            return self._mac(cmd, data)
        if cls == VIRTIO_NET_CTRL_VLAN:
            if cmd not in (VIRTIO_NET_CTRL_VLAN_ADD, VIRTIO_NET_CTRL_VLAN_DEL) or len(data) != 2:
                return False
            vid = VlanId.from_buffer_copy(data).vid
            if vid > MAX_VLAN_ID:
                return False
            (self.state.vlans.add if cmd == VIRTIO_NET_CTRL_VLAN_ADD else self.state.vlans.discard)(vid)
            return True
        if cls == VIRTIO_NET_CTRL_ANNOUNCE and cmd == VIRTIO_NET_CTRL_ANNOUNCE_ACK:
            self.ack_announce()
            return True
        if cls == VIRTIO_NET_CTRL_GUEST_OFFLOADS and cmd == VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET:
            if len(data) != ctypes.sizeof(GuestOffloads):
                return False
            return self.set_offloads(GuestOffloads.from_buffer_copy(data).offloads)
        return False  # MQ and anything unknown: not offered

    def _mac(self, cmd: int, data: bytes) -> bool:
        if cmd == VIRTIO_NET_CTRL_MAC_ADDR_SET:
            if len(data) != MAC_LEN:
                return False
            self.set_mac(data)
            return True
        if cmd != VIRTIO_NET_CTRL_MAC_TABLE_SET:
            return False
        tables: list[list[bytes]] = []
        position = 0
        for _ in range(2):
            if position + ctypes.sizeof(MacTableCount) > len(data):
                return False
            count = MacTableCount.from_buffer_copy(data, position).entries
            position += ctypes.sizeof(MacTableCount)
            end = position + count * MAC_LEN
            if count > MAX_CTRL_REQUEST // MAC_LEN or end > len(data):
                return False
            tables.append([data[i : i + MAC_LEN] for i in range(position, end, MAC_LEN)])
            position = end
        if position != len(data):
            return False
        self.state.unicast, self.state.multicast = tables
        return True
