"""Socket backends with QEMU's wire formats, so kvmkit and QEMU guests can share a wire.

`stream`: one connected SOCK_STREAM peer, frames length-prefixed (kvmkit.net.framing); server=on listens and
takes one client at a time. `dgram`: one Ethernet frame per datagram, sent to remote=, received on local=.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Sequence

from kvmkit.errors import GuestError, HostError
from kvmkit.net.backend import Iovec, PollingBackend, RxSink, flatten
from kvmkit.net.framing import StreamDeframer, encode_frame

log = logging.getLogger(__name__)

RX_BATCH = 64
READ_CHUNK = 256 * 1024
TX_HIGH_WATER = 4 << 20  # bytes queued for a slow peer before the guest's TX queue is held back


class StreamBackend(PollingBackend):
    """A stream socket peer (QEMU `-netdev stream`, or passt)."""

    kind = "stream"

    def __init__(self, netdev_id: str, sock: socket.socket | None = None,
                 listener: socket.socket | None = None) -> None:
        super().__init__(netdev_id)
        self.sock = sock
        self.listener = listener
        self.deframer = StreamDeframer()
        self._out = bytearray()
        self._flush_scheduled = False
        if sock is not None:
            sock.setblocking(False)
        if listener is not None:
            listener.setblocking(False)

    @property
    def connected(self) -> bool:
        return self.sock is not None

    def start(self, loop, rx, tx) -> None:  # type: ignore[no-untyped-def]
        super().start(loop, rx, tx)
        if self.listener is not None:
            loop.add_reader(self.listener.fileno(), self._accept)

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            client, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if self.sock is not None:
            client.close()  # one peer at a time, as QEMU does
            return
        client.setblocking(False)
        self.sock = client
        self.deframer = StreamDeframer()
        self.resume_rx()

    def rx_fd(self) -> int | None:
        return self.sock.fileno() if self.sock is not None else None

    def resume_rx(self) -> None:
        if self.rx is not None and (self._held is not None or self.deframer.buffered):
            self._pump_frames(self.rx)  # frames already reassembled go first, even if the socket stays quiet
            self.rx.complete()
            if self._held is not None:
                return
        super().resume_rx()

    def receive_some(self, rx: RxSink) -> None:
        if self.sock is None:
            return
        for _ in range(RX_BATCH):
            if not self._pump_frames(rx):
                return
            try:
                data = self.sock.recv(READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self._disconnect(f"receive failed: {error.strerror}")
                return
            if not data:
                self._disconnect("peer closed the connection")
                return
            self.deframer.feed(data)
        self._pump_frames(rx)

    def _pump_frames(self, rx: RxSink) -> bool:
        """Deliver complete frames; False when the sink is full (a frame is then held)."""
        while True:
            if self._held is not None:
                if not rx.can_receive() or not rx.deliver(self._held):
                    return False
                self._held = None
            try:
                frame = self.deframer.next_frame()
            except GuestError as error:
                self._disconnect(str(error))
                return False
            if frame is None:
                return rx.can_receive()
            self._held = frame

    def _disconnect(self, reason: str) -> None:
        log.warning("-netdev %s,id=%s: %s", self.kind, self.id, reason)
        self._pause_rx()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self._out.clear()
        self._held = None
        if self.tx is not None:
            self.tx.resume_tx()

    def can_send(self) -> bool:
        return len(self._out) < TX_HIGH_WATER

    def send_batch(self, frames: Sequence[Iovec]) -> None:
        if self.sock is None:
            return  # no peer: the wire is unplugged, frames vanish as on a real cable
        for frame in frames:
            self._out += encode_frame(flatten(frame))
        self._flush()

    def _flush(self) -> None:
        self._flush_scheduled = False
        while self._out and self.sock is not None:
            try:
                sent = self.sock.send(self._out)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                self._disconnect(f"send failed: {error.strerror}")
                return
            del self._out[:sent]
        if self._out and self.loop is not None and not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_later(0.0005, self._flush_then_resume)

    def _flush_then_resume(self) -> None:
        self._flush()
        if self.can_send() and self.tx is not None:
            self.tx.resume_tx()

    def info(self) -> dict[str, object]:
        return {**super().info(), "connected": self.connected}

    def close(self) -> None:
        super().close()
        if self.listener is not None and self.loop is not None:
            self.loop.remove_reader(self.listener.fileno())
        for sock in (self.sock, self.listener):
            if sock is not None:
                sock.close()
        self.sock = self.listener = None


class DgramBackend(PollingBackend):
    """One frame per datagram (QEMU `-netdev dgram`)."""

    kind = "dgram"

    def __init__(self, netdev_id: str, sock: socket.socket, remote: object | None) -> None:
        super().__init__(netdev_id)
        self.sock = sock
        self.remote = remote
        sock.setblocking(False)
        self._buffer = bytearray(65536 + 18)

    def rx_fd(self) -> int | None:
        return self.sock.fileno()

    def receive_some(self, rx: RxSink) -> None:
        view = memoryview(self._buffer)
        for _ in range(RX_BATCH):
            if not rx.can_receive():
                return
            try:
                count = self.sock.recv_into(self._buffer)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.rx_errors += 1
                return
            if count and not rx.deliver(view[:count]):
                self.rx_errors += 1  # cannot happen while can_receive(); counted, never raised

    def send_batch(self, frames: Sequence[Iovec]) -> None:
        if self.remote is None:
            return
        for frame in frames:
            try:
                self.sock.sendto(flatten(frame), self.remote)  # type: ignore[arg-type]
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.ECONNREFUSED, errno.ENOENT):
                    self.tx_errors += 1

    def close(self) -> None:
        super().close()
        self.sock.close()


def unix_path_cleanup(path: str) -> None:
    try:
        if os.path.exists(path) and not os.path.isfile(path):
            os.unlink(path)
    except OSError as error:
        raise HostError(f"cannot remove stale socket {path}: {error.strerror}") from error
