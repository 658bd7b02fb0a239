"""Serves the human monitor on unix/TCP sockets (`-monitor unix:PATH,server=on,wait=off`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import AbstractContextManager
from typing import Any

from kvmkit.monitor.hmp import HmpFrontend, HmpInterpreter
from kvmkit.monitor.listeners import close_listener, open_listener
from kvmkit.monitor.loop_thread import MonitorThread
from kvmkit.monitor.spec import TcpEndpoint, UnixEndpoint

log = logging.getLogger(__name__)


class HmpServer:
    """Each connection gets its own HmpFrontend; lines run on the executor holding `lock`."""

    def __init__(
        self, interpreter: HmpInterpreter, lock: AbstractContextManager[Any], thread: MonitorThread
    ) -> None:
        self.interpreter = interpreter
        self.lock = lock
        self.thread = thread
        self._listeners: list[tuple[asyncio.Server, str]] = []
        self._writers: set[asyncio.StreamWriter] = set()

    def listen(self, endpoint: UnixEndpoint | TcpEndpoint) -> str:
        """Start listening; returns the bound address."""
        return self.thread.run(self._listen(endpoint))

    def close(self) -> None:
        if not self.thread.in_loop_thread():
            self.thread.run(self._close())

    async def _listen(self, endpoint: UnixEndpoint | TcpEndpoint) -> str:
        server, address = await open_listener(endpoint, self._on_connection)
        self._listeners.append((server, address))
        return address

    async def _close(self) -> None:
        for server, _address in self._listeners:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for server, address in self._listeners:
            await close_listener(server, address)
        self._listeners.clear()

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        self._writers.add(writer)

        def write(data: bytes) -> None:  # called on the executor thread
            self.thread.call_soon(writer.write, data)

        frontend = HmpFrontend(self.interpreter, write, self.lock)
        try:
            frontend.open()
            while True:
                data = await reader.read(frontend.can_receive())
                if not data:
                    break
                await loop.run_in_executor(self.thread.executor, frontend.receive, data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        except Exception:
            log.exception("HMP connection failed")
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()
