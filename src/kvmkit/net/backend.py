"""The network backend API: a device's posted RX buffers handed over in advance, completions in batches.

A NIC frontend (virtio-net) implements `RxSink`: it pops the guest's receive buffers from its ring ahead of
time and exposes them as memoryviews into guest RAM. A backend, when its host fd is readable, either reads
frames straight into those views (`direct_iovecs()` then `commit(nbytes)`, zero copy: tap) or hands over
frames it had to reassemble (`deliver(frame)`: stream sockets), and ends every batch with `complete()`,
which publishes the used entries at once and interrupts the guest once (a sink also publishes on its own
every few tens of KiB, so the guest starts on large frames early). A sink that cannot take more
(no buffers posted, rate limit reached, link down) answers `can_receive() == False`: the backend then stops
polling its fd, so frames wait in the kernel's queue, and `resume_rx()` restarts it. Nothing is dropped.

TX is batched likewise: the frontend gathers the frames it popped and calls `send_batch(frames)` once;
`can_send()` False means "stop popping, I'll call `TxSink.resume_tx()` when I can take more".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

Iovec = Sequence[memoryview]
VNET_HDR_LEN = 12  # struct virtio_net_hdr_mrg_rxbuf: the virtio 1.x header, num_buffers included
MAX_FRAME = 65535 + 14 + 4  # the largest (GSO) frame any backend hands over, Ethernet + VLAN header


class MainLoopLike(Protocol):
    def add_reader(self, fd: int, cb: Callable[[], object]) -> None: ...

    def remove_reader(self, fd: int) -> None: ...

    def call_later(self, delay: float, cb: Callable[[], object]) -> object: ...

    def call_soon(self, cb: Callable[[], object]) -> None: ...


class RxSink(Protocol):
    """The receive side of a NIC as a backend sees it."""

    def can_receive(self) -> bool: ...

    def direct_iovecs(self) -> list[memoryview] | None: ...

    def commit(self, nbytes: int) -> None: ...

    def deliver(self, frame: bytes | memoryview) -> bool: ...

    def complete(self) -> None: ...


class TxSink(Protocol):
    """What a backend calls when it can take frames again."""

    def resume_tx(self) -> None: ...


class NetBackend:
    """Base of every backend. `has_vnet_hdr`: frames carry the 12-byte virtio-net header both ways."""

    kind = "none"
    has_vnet_hdr = False

    def __init__(self, netdev_id: str) -> None:
        self.id = netdev_id
        self.rx: RxSink | None = None
        self.tx: TxSink | None = None
        self.loop: MainLoopLike | None = None
        self.tx_errors = 0
        self.rx_errors = 0

    def start(self, loop: MainLoopLike, rx: RxSink, tx: TxSink) -> None:
        """Connect to the frontend and start polling."""
        self.loop, self.rx, self.tx = loop, rx, tx
        self.resume_rx()

    def resume_rx(self) -> None:
        """The sink can take frames again (new buffers posted, tokens refilled, link up)."""

    def can_send(self) -> bool:
        return True

    def send_batch(self, frames: Sequence[Iovec]) -> None:
        """Send frames (each a scatter list; with the vnet header first if `has_vnet_hdr`). Frames must be
        consumed (written or copied) before this returns: they are views into guest RAM."""
        raise NotImplementedError

    def set_offloads(self, csum: bool, tso4: bool, tso6: bool, ecn: bool) -> None:
        """What the guest accepts on receive (only meaningful with a vnet header)."""

    def supports_offloads(self) -> bool:
        return False

    def info(self) -> dict[str, object]:
        return {"id": self.id, "type": self.kind}

    def close(self) -> None:
        """Stop polling and release host resources."""


class PollingBackend(NetBackend):
    """A backend with one readable fd: registered on the loop only while the sink can receive."""

    def __init__(self, netdev_id: str) -> None:
        super().__init__(netdev_id)
        self._watched_fd: int | None = None
        self._held: bytes | memoryview | None = None  # a frame read but not yet accepted by the sink

    def rx_fd(self) -> int | None:
        raise NotImplementedError

    def resume_rx(self) -> None:
        fd = self.rx_fd()
        if self.loop is None or fd is None or self._watched_fd == fd:
            return
        self._pause_rx()
        self.loop.add_reader(fd, self._readable)
        self._watched_fd = fd

    def _pause_rx(self) -> None:
        if self._watched_fd is not None and self.loop is not None:
            self.loop.remove_reader(self._watched_fd)
        self._watched_fd = None

    def _readable(self) -> None:
        assert self.rx is not None
        try:
            self.receive_some(self.rx)
        finally:
            self.rx.complete()
        if self._held is not None or not self.rx.can_receive():
            self._pause_rx()  # back-pressure: frames stay queued in the kernel until resume_rx()

    def receive_some(self, rx: RxSink) -> None:
        """Move up to a batch of frames from the fd into `rx` (only while it can receive)."""
        raise NotImplementedError

    def close(self) -> None:
        self._pause_rx()


def flatten(frame: Iovec) -> bytes:
    return b"".join(bytes(part) for part in frame)
