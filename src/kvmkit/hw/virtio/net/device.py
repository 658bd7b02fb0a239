"""virtio-net (virtio 1.x, 5.1) on a kvmkit.net backend: batched RX/TX, mergeable buffers, offloads, control
queue, link state and rate limiting by back-pressure."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from kvmkit.hw.virtio.device import VIRTIO_ID_NET, VirtioDevice, feature_bit
from kvmkit.hw.virtio.net.ctrl import MAX_CTRL_REQUEST, ControlHandler
from kvmkit.hw.virtio.net.header import (
    NET_HDR_LEN,
    OFFLOAD_FEATURES,
    VIRTIO_NET_F_CTRL_GUEST_OFFLOADS,
    VIRTIO_NET_F_CTRL_MAC_ADDR,
    VIRTIO_NET_F_CTRL_RX,
    VIRTIO_NET_F_CTRL_RX_EXTRA,
    VIRTIO_NET_F_CTRL_VLAN,
    VIRTIO_NET_F_CTRL_VQ,
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_ECN,
    VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_ANNOUNCE,
    VIRTIO_NET_S_LINK_UP,
    VirtioNetConfig,
    format_mac,
)
from kvmkit.hw.virtio.net.rx import RxPool
from kvmkit.hw.virtio.virtqueue import DmaLike, VirtqueueElement, VirtqueueError, split_buffers
from kvmkit.net.backend import MAX_FRAME, Iovec, MainLoopLike, NetBackend
from kvmkit.net.rate_limit import RateLimit, RateLimiter

log = logging.getLogger(__name__)

RX_QUEUE, TX_QUEUE, CTRL_QUEUE = 0, 1, 2
QUEUE_SIZE = 256
TX_BATCH = 64  # frames per send_batch under a rate limit (unlimited, all available chains go in one batch)
MIN_TX_CHAIN = NET_HDR_LEN + 14  # header + Ethernet header
MAX_TX_CHAIN = NET_HDR_LEN + MAX_FRAME


@dataclass
class TxCounters:
    packets: int = 0
    bytes: int = 0
    dropped: int = 0  # frames discarded because the link is down: never the limiter
    errors: int = 0  # malformed frames from the guest (too short or too long)
    throttled: int = 0


class VirtioNet(VirtioDevice):
    """A virtio network card. Queues: 0 receive, 1 transmit, 2 control."""

    device_type = VIRTIO_ID_NET
    config_type = VirtioNetConfig

    def __init__(self, name: str, dma: DmaLike, backend: NetBackend, mac: bytes, loop: MainLoopLike,
                 limit: RateLimit | None = None) -> None:
        super().__init__(name, dma, num_queues=3, queue_max_size=QUEUE_SIZE)
        self.backend = backend
        self.loop = loop
        self.mac = bytes(mac)
        self.link_up = True
        self.config.mac[:] = list(self.mac)
        self.config.status = VIRTIO_NET_S_LINK_UP
        self.config.max_virtqueue_pairs = 1
        self.rx = RxPool(self.queues[RX_QUEUE], lambda: self.notify_queue(RX_QUEUE),
                         header_from_backend=backend.has_vnet_hdr)
        self.tx = TxCounters()
        self.rx_limiter = RateLimiter(limit)
        self.tx_limiter = RateLimiter(limit)
        self.ctrl = ControlHandler(self._set_mac, self._ack_announce, self._set_guest_offloads)
        self.active = False
        self._rx_timer: Any = None
        self._tx_timer: Any = None
        self._tx_poll = False  # a second look at the TX ring is queued (see _poll_tx_soon)
        self.vhost: Any = None  # kvmkit.net.vhost.VhostNet when the kernel moves the data
        backend.start(loop, self, self)

    # features -------------------------------------------------------------------------------------

    def device_features(self) -> int:
        features = super().device_features()
        for bit in (VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_CTRL_VQ,
                    VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_RX_EXTRA, VIRTIO_NET_F_CTRL_VLAN,
                    VIRTIO_NET_F_CTRL_MAC_ADDR):
            features |= feature_bit(bit)
        if self.backend.supports_offloads():
            for bit in OFFLOAD_FEATURES:
                features |= feature_bit(bit)
        if self.vhost is not None:
            features &= ~self.vhost.unsupported_ring_features()
        return features

    def set_driver_features(self, features: int) -> None:
        super().set_driver_features(features)
        self.rx.mergeable = self.has_feature(VIRTIO_NET_F_MRG_RXBUF)
        self._apply_offloads(features)

    def _apply_offloads(self, features: int) -> None:
        def has(bit: int) -> bool:
            return bool(features & feature_bit(bit))

        self.backend.set_offloads(has(VIRTIO_NET_F_GUEST_CSUM), has(VIRTIO_NET_F_GUEST_TSO4),
                                  has(VIRTIO_NET_F_GUEST_TSO6), has(VIRTIO_NET_F_GUEST_ECN))

    def _set_guest_offloads(self, offloads: int) -> bool:
        if not self.has_feature(VIRTIO_NET_F_CTRL_GUEST_OFFLOADS) or offloads & ~self.driver_features:
            return False
        self._apply_offloads(offloads)
        return True

    # config, link, MAC ----------------------------------------------------------------------------

    def _set_mac(self, mac: bytes) -> None:
        self.mac = bytes(mac)
        self.config.mac[:] = list(self.mac)

    def _ack_announce(self) -> None:
        self.config.status &= ~VIRTIO_NET_S_ANNOUNCE

    def set_link(self, up: bool) -> None:
        """Plug or unplug the cable: the driver sees VIRTIO_NET_S_LINK_UP change (config interrupt)."""
        if up == self.link_up:
            return
        self.link_up = up
        self.config.status = (self.config.status & ~VIRTIO_NET_S_LINK_UP) | (VIRTIO_NET_S_LINK_UP if up else 0)
        config_changed: Callable[[], None] | None = getattr(self.transport, "config_changed", None)
        if config_changed is not None:
            config_changed()
        if up:
            self.backend.resume_rx()
            self.handle_queue(TX_QUEUE)

    # rate limits ----------------------------------------------------------------------------------

    def set_rate_limit(self, limit: RateLimit) -> None:
        self.rx_limiter.set_limit(limit)
        self.tx_limiter.set_limit(RateLimit(limit.bytes_per_sec, limit.packets_per_sec))
        self.resume_tx()
        self.backend.resume_rx()

    # RxSink (called by the backend) ---------------------------------------------------------------

    def can_receive(self) -> bool:
        if not (self.active and self.link_up) or (self.vhost is not None and self.vhost.running):
            return False
        if not self.rx.posted and not self._refill_rx():
            return False
        if self.rx_limiter.unlimited or self.rx_limiter.may_take():
            return True
        self.rx.counters.throttled += 1
        if self._rx_timer is None:
            self._rx_timer = self.loop.call_later(self.rx_limiter.delay(), self._rx_tokens_back)
        return False

    def _rx_tokens_back(self) -> None:
        self._rx_timer = None
        self.backend.resume_rx()

    def direct_iovecs(self) -> list[memoryview] | None:
        return self.rx.direct_iovecs()

    def commit(self, nbytes: int) -> None:
        if not self.rx_limiter.unlimited:
            header = NET_HDR_LEN if self.backend.has_vnet_hdr else 0  # the limit counts frames, as on transmit
            self.rx_limiter.take(max(nbytes - header, 0))
        self.rx.commit(nbytes)

    def deliver(self, frame: bytes | bytearray | memoryview) -> bool:
        accepted = self.rx.deliver(frame) or (self._refill_rx() > 0 and self.rx.deliver(frame))
        if accepted and not self.rx_limiter.unlimited:
            self.rx_limiter.take(len(frame))
        return accepted

    def complete(self) -> None:
        try:
            self.rx.complete()
        except VirtqueueError as error:
            self.fail(str(error))
            return
        self._refill_rx(rearm=False)

    def _refill_rx(self, rearm: bool = True) -> int:
        """Take the buffers the driver posted since; `rearm` (out of room for a frame) also asks for a kick.

        While frames flow, buffers are picked up after each batch (complete) without asking the driver to
        kick, as QEMU keeps RX notifications off while it has buffers: every refill kick is a guest exit."""
        try:
            return self.rx.refill(rearm)
        except VirtqueueError as error:
            self.fail(str(error))
            return 0

    # queues ---------------------------------------------------------------------------------------

    def activate(self) -> None:
        self.active = True
        if self.vhost is not None:
            self.vhost.start(self)
            return
        self.handle_queue(RX_QUEUE)

    @property
    def vhost_running(self) -> bool:
        return self.vhost is not None and self.vhost.running

    def handle_queue(self, index: int) -> None:
        if self.vhost_running and index != CTRL_QUEUE:
            return
        if index == RX_QUEUE:
            self.rx.refill(rearm=False)  # the kick is re-armed when the buffers run out (_refill_rx)
            if self.rx.posted:
                self.backend.resume_rx()
        elif index == TX_QUEUE:
            self._transmit()
        elif index == CTRL_QUEUE:
            self._control()

    def resume_tx(self) -> None:
        if self.active:
            try:
                self._transmit()
            except VirtqueueError as error:
                self.fail(str(error))

    def _transmit(self) -> None:
        """Send what the driver queued: a batch per backend call, one used-idx update and at most one interrupt
        per batch. Unlimited, every available chain is taken at once; a rate limit pops one frame at a time."""
        queue = self.queues[TX_QUEUE]
        backend = self.backend
        pop, can_send = queue.pop, backend.can_send
        strip = 0 if backend.has_vnet_hdr else NET_HDR_LEN
        limiter = None if self.tx_limiter.unlimited else self.tx_limiter
        counters = self.tx
        while True:
            frames: list[Iovec] = []
            elements: list[VirtqueueElement] = []
            if limiter is None:
                if can_send() and not queue.pop_all(elements, rearm=False):
                    queue.pop_all(elements)  # the ring is empty: ask for a kick for the next frame
            else:
                while len(elements) < TX_BATCH and can_send():
                    if not limiter.may_take():
                        self._hold_tx()
                        break
                    element = pop()
                    if element is None:
                        break
                    elements.append(element)
                    length = sum(map(len, element.out_bufs))
                    if self.link_up and not element.in_bufs and MIN_TX_CHAIN <= length <= MAX_TX_CHAIN:
                        limiter.take(length - NET_HDR_LEN)  # only frames that go out count
            if not elements:
                return
            link_up = self.link_up
            shortest, longest = MIN_TX_CHAIN, MAX_TX_CHAIN
            sent_bytes = 0
            for element in elements:
                out = element.out_bufs
                length = sum(map(len, out))
                if element.in_bufs or not shortest <= length <= longest:
                    counters.errors += 1
                elif not link_up:
                    counters.dropped += 1
                else:
                    frames.append(split_buffers(out, strip)[1] if strip else out)
                    sent_bytes += length
            counters.packets += len(frames)
            counters.bytes += sent_bytes - NET_HDR_LEN * len(frames)
            if frames:
                backend.send_batch(frames)
            queue.fill_many([(element.head, 0) for element in elements])
            queue.flush()
            self.notify_queue(TX_QUEUE)
            if limiter is None:
                self._poll_tx_soon()  # the driver was not told to kick again: look once more, then re-arm
                return
            if len(elements) < TX_BATCH:
                return

    def _poll_tx_soon(self) -> None:
        """Come back to the TX ring from the main loop rather than re-arm its kick now (as QEMU's tx=bh): a
        guest sending a stream queues frames meanwhile without exiting for each; a pass that finds the ring
        empty publishes avail_event, so the next frame kicks again."""
        if not self._tx_poll:
            self._tx_poll = True
            self.loop.call_soon(self._poll_tx)  # a bottom half: no timer, no clock read (each pass of a stream)

    def _poll_tx(self) -> None:
        self._tx_poll = False
        self.resume_tx()

    def _hold_tx(self) -> None:
        self.tx.throttled += 1
        if self._tx_timer is None:
            self._tx_timer = self.loop.call_later(self.tx_limiter.delay(), self._tx_tokens_back)

    def _tx_tokens_back(self) -> None:
        self._tx_timer = None
        self.resume_tx()

    def _control(self) -> None:
        queue = self.queues[CTRL_QUEUE]
        while (element := queue.pop()) is not None:
            ack_len = 0
            if element.in_len >= 1 and element.out_len <= MAX_CTRL_REQUEST:
                request = b"".join(bytes(view) for view in element.out_bufs)
                ack = self.ctrl.execute(request)
                element.in_bufs[0][0] = ack
                ack_len = 1
            else:
                self.ctrl.state.errors += 1
            queue.fill(element, ack_len)
        queue.flush()
        self.notify_queue(CTRL_QUEUE)

    def reset(self) -> None:
        if self.vhost is not None:
            self.vhost.stop()
        super().reset()
        self.active = False
        self.rx.forget()
        self.rx.mergeable = False
        self.ctrl.reset()
        self.config.mac[:] = list(self.mac)

    # monitor --------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters for query-net-stats (drops count only device discards; the limiter never drops)."""
        return {
            "name": self.name, "netdev": self.backend.id, "mac": format_mac(self.mac), "link-up": self.link_up,
            "vhost": self.vhost_running,
            "vhost-irqfd": self.vhost.irqfd_queues() if self.vhost_running else 0,
            "rx": {**asdict(self.rx.counters), "errors": self.backend.rx_errors},
            "tx": {**asdict(self.tx), "errors": self.tx.errors + self.backend.tx_errors},
            "rate": {"bytes-per-sec": self.rx_limiter.limit.bytes_per_sec,
                     "packets-per-sec": self.rx_limiter.limit.packets_per_sec},
            "rx-filter": {**self.ctrl.state.modes, "vlans": sorted(self.ctrl.state.vlans),
                          "ctrl-commands": self.ctrl.state.commands, "ctrl-errors": self.ctrl.state.errors},
            "backend": self.backend.info(),
        }

