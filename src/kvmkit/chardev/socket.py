"""The socket backend: a unix or TCP stream, as a listening server (one client at a time) or a client."""

from __future__ import annotations

import logging
import os
import socket
import stat
from dataclasses import dataclass

from kvmkit.chardev.base import Chardev
from kvmkit.errors import HostError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SocketAddress:
    """Where the socket lives: a unix `path`, or a TCP `host` and `port`."""

    path: str | None = None
    host: str | None = None
    port: int | None = None

    def describe(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        return f"tcp:{self.host or ''}:{self.port}"


class SocketChardev(Chardev):
    """A stream socket (`-chardev socket`); output is dropped only while no peer is connected."""

    def __init__(self, label: str, address: SocketAddress, server: bool, wait: bool = False) -> None:
        super().__init__(label)
        self.address = address
        self.server = server
        self.wait = wait
        self._listener: socket.socket | None = None
        self._client: socket.socket | None = None
        self._peer = ""
        if server:
            self._listener = self._listen()
            if address.path is None:
                self.address = SocketAddress(host=address.host, port=self._listener.getsockname()[1])
        else:
            self._connect()

    # -- setup ---------------------------------------------------------------------------------
    def _listen(self) -> socket.socket:
        address = self.address
        try:
            if address.path is not None:
                self._remove_stale_socket(address.path)
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                listener.bind(address.path)
            else:
                host = address.host or "0.0.0.0"
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                listener = socket.socket(family, socket.SOCK_STREAM)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((host, address.port or 0))
            listener.listen(1)
        except OSError as exc:
            raise HostError(f"chardev '{self.label}': cannot listen on {address.describe()}: {exc}") from exc
        listener.setblocking(False)
        return listener

    def _remove_stale_socket(self, path: str) -> None:
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise HostError(f"chardev '{self.label}': '{path}' exists and is not a socket")
        os.unlink(path)

    def _connect(self) -> None:
        address = self.address
        try:
            if address.path is not None:
                client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                client.connect(address.path)
            else:
                client = socket.create_connection((address.host or "localhost", address.port or 0))
        except OSError as exc:
            raise HostError(f"chardev '{self.label}': cannot connect to {address.describe()}: {exc}") from exc
        self._adopt_client(client)

    def _adopt_client(self, client: socket.socket) -> None:
        client.setblocking(True)  # sends wait for a slow peer; receives use MSG_DONTWAIT
        if client.family in (socket.AF_INET, socket.AF_INET6):
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            host, port = client.getpeername()[:2]
            self._peer = f"{host}:{port}"
        self._client = client

    # -- connection management -----------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._client is not None

    def wait_for_client(self, timeout: float | None = None) -> bool:
        """Block until a client connects (server with wait=on); False on timeout."""
        if self._listener is None or self._client is not None:
            return self._client is not None
        self._listener.settimeout(timeout)
        try:
            client, _ = self._listener.accept()
        except TimeoutError:
            return False
        finally:
            self._listener.setblocking(False)
        self._adopt_client(client)
        self._update_watch()
        return True

    def _accept_pending(self) -> None:
        assert self._listener is not None
        try:
            client, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.debug("chardev %s: accept failed: %s", self.label, exc)
            return
        self._adopt_client(client)

    def _disconnect(self) -> None:
        client, self._client = self._client, None
        self._peer = ""
        if client is not None:
            client.close()
        self._update_watch()

    # -- Chardev -------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        client = self._client
        if client is None or not data:
            return
        try:
            client.sendall(data)
        except OSError as exc:
            log.debug("chardev %s: peer gone while writing: %s", self.label, exc)
            self._disconnect()

    def fileno_for_input(self) -> int | None:
        if self._closed:
            return None
        if self._client is not None:
            return self._client.fileno()
        return self._listener.fileno() if self._listener is not None else None

    def _watch_without_room(self) -> bool:
        return self._client is None and self._listener is not None

    def on_readable(self) -> None:
        if self._client is None and self._listener is not None and not self._closed:
            self._accept_pending()
            self._update_watch()
            return
        super().on_readable()

    def _read_input(self, limit: int) -> bytes:
        client = self._client
        if client is None:
            return b""
        try:
            data = client.recv(limit, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError as exc:
            log.debug("chardev %s: receive failed: %s", self.label, exc)
            data = b""
        if not data:
            self._disconnect()
        return data

    def filename(self) -> str:
        text = self.address.describe()
        if self.server:
            text += ",server=on"
        if self._client is None:
            return f"disconnected:{text}"
        return f"{text} <-> {self._peer}" if self._peer else text

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            if self.address.path is not None:
                try:
                    os.unlink(self.address.path)
                except OSError:
                    pass
