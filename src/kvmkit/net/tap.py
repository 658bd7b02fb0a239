"""TAP backend: `-netdev tap,id=ID,ifname=NAME,script=no,downscript=no[,vhost=on]`, with IFF_VNET_HDR offloads.

Receive reads each frame with one readv straight into the guest's posted buffers (header included; a
staging buffer only when too little room is posted for the largest frame) and transmit writes each frame with
one writev straight out of guest RAM.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from collections.abc import Sequence

from kvmkit.errors import HostError
from kvmkit.net.backend import MAX_FRAME, VNET_HDR_LEN, Iovec, PollingBackend, RxSink, flatten
from kvmkit.net.ifreq import (
    IFF_NO_PI,
    IFF_TAP,
    IFF_VNET_HDR,
    TUN_F_CSUM,
    TUN_F_TSO4,
    TUN_F_TSO6,
    TUN_F_TSO_ECN,
    TUNSETIFF,
    TUNSETOFFLOAD,
    TUNSETSNDBUF,
    TUNSETVNETHDRSZ,
    Ifreq,
    check_ifname,
)

RX_BATCH = 64  # frames per readable callback before yielding to the main loop
RX_BATCH_BYTES = 256 * 1024  # ... or bytes: TX kicks (the guest's ACKs) must not wait behind a long RX batch
TX_PENDING_LIMIT = 256  # frames copied aside when the tap queue is full, before we push back


def open_tap(ifname: str, vnet_hdr: bool, what: str, sndbuf: int | None = None) -> tuple[int, str]:
    """Open /dev/net/tun and attach to (or create) tap `ifname`, with send buffer `sndbuf` bytes when given;
    returns (fd, actual name)."""
    request = Ifreq(name=check_ifname(ifname, what) if ifname else b"",
                    flags=IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0))
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise HostError(f"{what}: cannot open /dev/net/tun: {error.strerror}") from error
    try:
        fcntl.ioctl(fd, TUNSETIFF, request)
        if vnet_hdr:
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, ctypes.c_int(VNET_HDR_LEN))
        if sndbuf is not None:
            fcntl.ioctl(fd, TUNSETSNDBUF, ctypes.c_int(sndbuf))
    except OSError as error:
        os.close(fd)
        hint = " (needs CAP_NET_ADMIN, or a tap owned by this user)" if error.errno == errno.EPERM else ""
        raise HostError(f"{what}: cannot attach tap {ifname or '(new)'}: {error.strerror}{hint}") from error
    return fd, request.name.decode()


class TapBackend(PollingBackend):
    """A Linux TAP interface; with `vnet_hdr` the kernel does checksum and segmentation offloads."""

    kind = "tap"

    def __init__(self, netdev_id: str, ifname: str, vnet_hdr: bool = True, fd: int | None = None,
                 sndbuf: int | None = None) -> None:
        super().__init__(netdev_id)
        what = f"-netdev tap,id={netdev_id}"
        if fd is None:
            fd, ifname = open_tap(ifname, vnet_hdr, what, sndbuf)
        self.fd = fd
        self.ifname = ifname
        self.has_vnet_hdr = vnet_hdr
        self._pending: list[bytes] = []
        self._kernel_owned = False
        staging = bytearray(VNET_HDR_LEN + MAX_FRAME)
        self._staging_view = memoryview(staging)
        self._staging_iov = [staging]

    def rx_fd(self) -> int | None:
        return self.fd if self.fd >= 0 and not self._kernel_owned else None

    def close_polling(self) -> None:
        """vhost-net reads and writes the tap from now on: stop touching it."""
        self._kernel_owned = True
        self._pause_rx()

    def restart_polling(self) -> None:
        self._kernel_owned = False
        self.resume_rx()

    def supports_offloads(self) -> bool:
        return self.has_vnet_hdr

    def set_offloads(self, csum: bool, tso4: bool, tso6: bool, ecn: bool) -> None:
        if not self.has_vnet_hdr:
            return
        flags = (TUN_F_CSUM if csum else 0)
        if csum:
            flags |= (TUN_F_TSO4 if tso4 else 0) | (TUN_F_TSO6 if tso6 else 0)
            flags |= TUN_F_TSO_ECN if ecn and (tso4 or tso6) else 0
        try:
            fcntl.ioctl(self.fd, TUNSETOFFLOAD, flags)
        except OSError as error:
            raise HostError(f"-netdev tap,id={self.id}: TUNSETOFFLOAD {flags:#x}: {error.strerror}") from error

    def resume_rx(self) -> None:
        if self._held is not None and self.rx is not None and self.rx_fd() is not None:
            if self.rx.can_receive() and self.rx.deliver(self._held):
                self._held = None
            self.rx.complete()
            if self._held is not None:
                return
        super().resume_rx()

    def receive_some(self, rx: RxSink) -> None:
        fd, readv = self.fd, os.readv
        can_receive, direct_iovecs, commit = rx.can_receive, rx.direct_iovecs, rx.commit
        budget = RX_BATCH_BYTES
        for _ in range(RX_BATCH):
            if budget <= 0 or not can_receive():
                return
            held = self._held
            if held is None:
                iovecs = direct_iovecs()
                try:
                    if iovecs is not None:
                        count = readv(fd, iovecs)  # one frame straight into guest RAM, header included
                        commit(count)
                        budget -= count
                        continue
                    # staging: the posted buffers may be too small to read the largest frame into
                    held = self._staging_view[: readv(fd, self._staging_iov)]
                except BlockingIOError:
                    return
                except OSError as error:
                    if error.errno not in (errno.EAGAIN, errno.EINTR):
                        self.rx_errors += 1
                    return
            if not rx.deliver(held):
                self._held = bytes(held)  # kept until the guest posts more buffers
                return
            self._held = None
            budget -= len(held)

    def can_send(self) -> bool:
        return len(self._pending) < TX_PENDING_LIMIT

    def send_batch(self, frames: Sequence[Iovec]) -> None:
        fd, writev, pending = self.fd, os.writev, self._pending
        for frame in frames:
            if pending:
                pending.append(flatten(frame))
                continue
            try:
                writev(fd, frame)
            except BlockingIOError:
                pending.append(flatten(frame))
                self._watch_writable()
            except OSError:
                self.tx_errors += 1  # e.g. EINVAL for a vnet header the kernel rejects: the guest's fault

    def _watch_writable(self) -> None:
        # The main loop only waits for readability; poll for space shortly instead.
        if self.loop is not None:
            self.loop.call_later(0.001, self._drain_pending)

    def _drain_pending(self) -> None:
        while self._pending:
            try:
                os.write(self.fd, self._pending[0])
            except BlockingIOError:
                self._watch_writable()
                return
            except OSError:
                self.tx_errors += 1
            self._pending.pop(0)
        if self.tx is not None:
            self.tx.resume_tx()

    def info(self) -> dict[str, object]:
        return {**super().info(), "ifname": self.ifname, "vnet-hdr": self.has_vnet_hdr}

    def close(self) -> None:
        super().close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
