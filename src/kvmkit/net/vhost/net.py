"""Hand a virtio-net's RX/TX rings to /dev/vhost-net: the kernel then moves frames between guest RAM and the tap.

Kicks reach vhost through the transport's KVM ioeventfds (taken off the main loop while vhost runs); vhost
signals used buffers on a call eventfd that KVM turns into the queue's MSI-X interrupt by itself (an irqfd on the
vector's GSI route, see irqfd.py); while the vector is masked or MSI-X is off the main loop reads it instead.
The control queue stays in kvmkit.
"""

from __future__ import annotations

import ctypes
import fcntl
import functools
import logging
import os
from typing import Any

from kvmkit.errors import HostError
from kvmkit.hw.virtio.device import (
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_VERSION_1,
    feature_bit,
)
from kvmkit.hw.virtio.net.header import VIRTIO_NET_F_MRG_RXBUF
from kvmkit.net.tap import TapBackend
from kvmkit.net.vhost.irqfd import GsiRoutes, IrqfdVm, QueueNotifier
from kvmkit.net.vhost.structs import (
    VHOST_GET_FEATURES,
    VHOST_GET_VRING_BASE,
    VHOST_NET_SET_BACKEND,
    VHOST_SET_FEATURES,
    VHOST_SET_MEM_TABLE,
    VHOST_SET_OWNER,
    VHOST_SET_VRING_ADDR,
    VHOST_SET_VRING_BASE,
    VHOST_SET_VRING_CALL,
    VHOST_SET_VRING_KICK,
    VHOST_SET_VRING_NUM,
    VhostVringAddr,
    VhostVringFile,
    VhostVringState,
    vhost_memory_with_regions,
)

log = logging.getLogger(__name__)

VHOST_NET_DEVICE = "/dev/vhost-net"
DATA_QUEUES = (0, 1)  # RX, TX
# Features the kernel must implement itself for the rings it runs (everything else is the tap's or ours).
RING_FEATURES = (feature_bit(VIRTIO_F_INDIRECT_DESC) | feature_bit(VIRTIO_F_EVENT_IDX)
                 | feature_bit(VIRTIO_F_VERSION_1) | feature_bit(VIRTIO_NET_F_MRG_RXBUF))


class VhostNet:
    """One /dev/vhost-net instance bound to a device's data queues and a tap."""

    def __init__(self, tap: TapBackend, memory: Any, loop: Any, what: str, vm: IrqfdVm | None = None,
                 routes: GsiRoutes | None = None) -> None:
        self.what = what
        self.tap = tap
        self.memory = memory
        self.loop = loop
        self.vm = vm
        self.routes = routes
        self.fd = os.open(VHOST_NET_DEVICE, os.O_RDWR | os.O_CLOEXEC)
        self.running = False
        self.kick_fds: list[int] = []
        self.call_fds: list[int] = []
        self.notifiers: list[QueueNotifier] = []
        try:
            self._ioctl(VHOST_SET_OWNER, 0, "VHOST_SET_OWNER")
            features = ctypes.c_uint64()
            self._ioctl(VHOST_GET_FEATURES, features, "VHOST_GET_FEATURES")
            self.features = features.value
        except HostError:
            os.close(self.fd)
            raise

    def _ioctl(self, request: int, argument: Any, name: str) -> None:
        try:
            fcntl.ioctl(self.fd, request, argument)
        except OSError as error:
            raise HostError(f"{self.what}: vhost-net {name}: {error.strerror}") from error

    def supported_features(self) -> int:
        return self.features

    def unsupported_ring_features(self) -> int:
        return RING_FEATURES & ~self.features

    def _host_address(self, gpa: int, length: int) -> int:
        for region in self.memory.regions:
            if region.gpa <= gpa and gpa + length <= region.gpa + region.size:
                return int(region.host_address + (gpa - region.gpa))
        raise HostError(f"{self.what}: ring at {gpa:#x} is not in guest RAM")

    def start(self, device: Any) -> None:
        """DRIVER_OK: program features, memory and the two data rings, then attach the tap."""
        self._ioctl(VHOST_SET_FEATURES, ctypes.c_uint64(device.driver_features & RING_FEATURES),
                    "VHOST_SET_FEATURES")
        regions = self.memory.regions
        table = vhost_memory_with_regions(len(regions))()
        table.nregions = len(regions)
        for slot, region in zip(table.regions, regions, strict=True):
            slot.guest_phys_addr, slot.memory_size = region.gpa, region.size
            slot.userspace_addr = region.host_address
        self._ioctl(VHOST_SET_MEM_TABLE, table, "VHOST_SET_MEM_TABLE")
        self.tap.close_polling()
        for index in DATA_QUEUES:
            queue = device.queues[index]
            if not queue.ready:
                continue
            layout = queue.layout
            self._ioctl(VHOST_SET_VRING_NUM, VhostVringState(index, queue.size), "VHOST_SET_VRING_NUM")
            self._ioctl(VHOST_SET_VRING_BASE, VhostVringState(index, queue.last_avail_idx),
                        "VHOST_SET_VRING_BASE")
            addr = VhostVringAddr(index=index,
                                  desc_user_addr=self._host_address(queue.desc_addr, layout.desc_table_bytes),
                                  used_user_addr=self._host_address(queue.device_addr, layout.used_bytes),
                                  avail_user_addr=self._host_address(queue.driver_addr, layout.avail_bytes))
            self._ioctl(VHOST_SET_VRING_ADDR, addr, "VHOST_SET_VRING_ADDR")
            kick = self.kick_fds[index]
            self.loop.remove_reader(kick)
            self._ioctl(VHOST_SET_VRING_KICK, VhostVringFile(index, kick), "VHOST_SET_VRING_KICK")
            call = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.call_fds.append(call)
            notifier = QueueNotifier(call, index, device.transport, self.loop, self.vm, self.routes)
            self.notifiers.append(notifier)
            notifier.update()
            self._ioctl(VHOST_SET_VRING_CALL, VhostVringFile(index, call), "VHOST_SET_VRING_CALL")
            self._ioctl(VHOST_NET_SET_BACKEND, VhostVringFile(index, self.tap.fd), "VHOST_NET_SET_BACKEND")
        self.running = True

    def irqfd_queues(self) -> int:
        """How many data queues KVM interrupts by irqfd right now (the rest go through the main loop)."""
        return sum(notifier.bound for notifier in self.notifiers)

    def vector_changed(self, vector: int, address: int, data: int, masked: bool) -> None:
        """MSI-X listener: a vector's message or mask (or MSI-X enable) changed; rebind the irqfds."""
        for notifier in self.notifiers:
            notifier.update()

    def stop(self) -> None:
        """Device reset: detach the tap, fetch the ring positions, give the kicks back to the main loop."""
        if not self.running:
            return
        self.running = False
        for index in DATA_QUEUES:
            try:
                self._ioctl(VHOST_NET_SET_BACKEND, VhostVringFile(index, -1), "VHOST_NET_SET_BACKEND")
                self._ioctl(VHOST_GET_VRING_BASE, VhostVringState(index, 0), "VHOST_GET_VRING_BASE")
            except HostError as error:
                log.warning("%s", error)
        for notifier in self.notifiers:
            notifier.stop()
        self.notifiers.clear()
        for call in self.call_fds:
            os.close(call)
        self.call_fds.clear()
        self.tap.restart_polling()
        self._reattach_kicks()

    def _reattach_kicks(self) -> None:
        transport_kick = self._transport_kick
        if transport_kick is None:
            return
        for index in DATA_QUEUES:
            self.loop.add_reader(self.kick_fds[index], functools.partial(transport_kick, self.kick_fds[index],
                                                                         index))

    _transport_kick: Any = None


def attach_vhost(device: Any, machine: Any, spec: Any) -> None:
    """Give `device` a vhost-net (for `vhost=on`), or say clearly why it stays in userspace."""
    what = spec.what
    if not isinstance(device.backend, TapBackend) or not device.backend.has_vnet_hdr:
        raise HostError(f"{what}: vhost=on needs a tap with vnet_hdr=on")
    if not os.path.exists(VHOST_NET_DEVICE):
        print(f"kvmkit: {what}: vhost=on but {VHOST_NET_DEVICE} is absent (modprobe vhost_net); "
              "falling back to the userspace virtio-net datapath", flush=True)
        return
    vm = getattr(machine, "vm", None)
    routes = None
    if vm is not None:
        routes = getattr(machine, "gsi_routes", None)
        if routes is None:
            from kvmkit.machine.irq import pc_gsi_routes

            routes = machine.gsi_routes = GsiRoutes(vm, pc_gsi_routes())
    try:
        device.vhost = VhostNet(device.backend, machine.memory, machine.loop, what, vm, routes)
    except (OSError, HostError) as error:
        reason = error.strerror if isinstance(error, OSError) else str(error)
        print(f"kvmkit: {what}: vhost=on but vhost-net is unusable ({reason}); "
              "falling back to the userspace virtio-net datapath", flush=True)


def bind_kick_fds(device: Any, transport: Any, kick_fds: list[int]) -> None:
    """Tell the vhost of `device` which ioeventfds carry its queue kicks (after attach_ioeventfds)."""
    if device.vhost is not None:
        device.vhost.kick_fds = kick_fds
        device.vhost._transport_kick = transport._eventfd_kicked
        msix = getattr(transport, "msix", None)
        if msix is not None:
            msix.add_vector_listener(device.vhost.vector_changed)
