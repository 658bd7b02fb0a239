"""Opening listening sockets for monitor endpoints (shared by the QMP and HMP servers)."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Awaitable, Callable

from kvmkit.errors import HostError
from kvmkit.monitor.spec import TcpEndpoint, UnixEndpoint

ConnectionCallback = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def describe(endpoint: UnixEndpoint | TcpEndpoint) -> str:
    if isinstance(endpoint, UnixEndpoint):
        return f"unix:{endpoint.path}"
    return f"tcp:{endpoint.host}:{endpoint.port}"


def _remove_stale_socket(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise HostError(f"cannot listen on unix:{path}: the path exists and is not a socket")
    os.unlink(path)


async def open_listener(
    endpoint: UnixEndpoint | TcpEndpoint, on_connection: ConnectionCallback
) -> tuple[asyncio.Server, str]:
    """Listen on `endpoint`; return the server and its bound address (`unix:PATH` or `tcp:HOST:PORT`)."""
    try:
        if isinstance(endpoint, UnixEndpoint):
            _remove_stale_socket(endpoint.path)
            server = await asyncio.start_unix_server(on_connection, path=endpoint.path)
            return server, f"unix:{endpoint.path}"
        server = await asyncio.start_server(on_connection, host=endpoint.host or None, port=endpoint.port,
                                            reuse_address=True)
    except OSError as exc:
        raise HostError(f"cannot listen on {describe(endpoint)}: {exc.strerror or exc}") from exc
    host, port = server.sockets[0].getsockname()[:2]
    return server, f"tcp:{host}:{port}"


async def close_listener(server: asyncio.Server, address: str) -> None:
    server.close()
    await server.wait_closed()
    if address.startswith("unix:"):
        try:
            os.unlink(address[len("unix:"):])
        except OSError:
            pass
