"""The QMP server: JSON commands and asynchronous events for machines (QEMU's machine protocol).

Each connection has its own state (greeting, capabilities negotiation, output queue).  Handlers run on the
monitor thread's executor while holding the machine's big lock; everything else runs on the monitor loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from kvmkit.monitor.errors import ErrorClass, QmpError, generic_error
from kvmkit.monitor.json_stream import JsonMessageSplitter, StreamError, parse_request
from kvmkit.monitor.listeners import close_listener, open_listener
from kvmkit.monitor.loop_thread import MonitorThread
from kvmkit.monitor.registry import CommandRegistry, EventRegistry
from kvmkit.monitor.schema import ENUM_QMP_CAPABILITY, ListType, Member, ObjectType
from kvmkit.monitor.spec import TcpEndpoint, UnixEndpoint

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
CLOSE_FLUSH_SECONDS = 1.0  # how long closing the server waits for replies in flight (e.g. to `quit`)
WRITE_HIGH_WATER = 64 * 1024
REQUEST_KEYS = frozenset({"execute", "arguments", "id"})

QMP_CAPABILITIES_ARGS = ObjectType(
    "q_obj_qmp_capabilities-arg",
    (Member("enable", ListType(ENUM_QMP_CAPABILITY), optional=True,
            doc="Capabilities to enable; this server offers none."),),
)


@dataclass(frozen=True)
class QmpVersion:
    """What the greeting and `query-version` report."""

    major: int
    minor: int
    micro: int
    package: str

    def to_json(self) -> dict[str, Any]:
        return {"qemu": {"major": self.major, "minor": self.minor, "micro": self.micro},
                "package": self.package}


def register_protocol_commands(commands: CommandRegistry) -> None:
    """Declare `qmp_capabilities` so clients see it; the server itself handles it before negotiation."""

    @commands.command("qmp_capabilities", args=QMP_CAPABILITIES_ARGS)
    def qmp_capabilities(enable: list[str] | None) -> None:
        """Leave capabilities negotiation mode and enable command mode."""
        raise QmpError(ErrorClass.COMMAND_NOT_FOUND,
                       "Capabilities negotiation is already complete, command ignored")


def _encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(", ", ": "), allow_nan=False).encode() + b"\r\n"


class _Session:
    """One client connection: its negotiation state and its bounded output queue."""

    def __init__(self, server: QmpServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.negotiated = False
        self.outgoing: asyncio.Queue[bytes] = asyncio.Queue(maxsize=server.event_backlog)
        self.splitter = JsonMessageSplitter(max_message_bytes=server.max_message_bytes)
        self.closed = False
        self.busy = False  # a command of this client is running or its reply is not queued yet
        self.tasks: list[asyncio.Task[None]] = []

    def offer_event(self, encoded: bytes) -> None:
        if not self.negotiated or self.closed:
            return
        try:
            self.outgoing.put_nowait(encoded)
        except asyncio.QueueFull:
            log.warning("QMP client %s does not read its events; dropping the connection", self.peer())
            self.abort()

    def flushed(self) -> bool:
        """Nothing more to send: no command in flight, no queued output, the transport's buffer empty."""
        if self.closed:
            return True
        return not self.busy and self.outgoing.empty() and self.writer.transport.get_write_buffer_size() == 0

    def peer(self) -> str:
        return str(self.writer.get_extra_info("peername") or "unix client")

    def close(self) -> None:
        """Close after the transport has sent what is buffered (the normal end of a connection)."""
        if self.closed:
            return
        self.closed = True
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self.writer.close()

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.writer.transport.abort()
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()

    async def write_loop(self) -> None:
        try:
            while True:
                data = await self.outgoing.get()
                self.writer.write(data)
                await self.writer.drain()
        except (ConnectionError, OSError):
            self.abort()

    async def reply(self, message: Mapping[str, Any]) -> None:
        try:
            encoded = _encode(message)
        except (TypeError, ValueError) as exc:  # a handler returned something that is not JSON
            log.error("QMP reply cannot be encoded: %s", exc)
            error = {"error": generic_error(f"Internal error: reply is not JSON ({exc})").to_json()}
            if "id" in message:
                error["id"] = message["id"]
            encoded = _encode(error)
        await self.outgoing.put(encoded)  # replies apply back-pressure to this client's reads

    async def read_loop(self) -> None:
        await self.reply({"QMP": {"version": self.server.version.to_json(), "capabilities": []}})
        while not self.closed:
            try:
                data = await self.reader.read(READ_CHUNK)
            except (ConnectionError, OSError):
                return
            if not data:
                return
            for item in self.splitter.feed(data):
                if self.closed:
                    return
                if isinstance(item, StreamError):
                    await self.reply(_error_reply(generic_error(f"JSON parse error, {item.reason}")))
                else:
                    self.busy = True
                    try:
                        await self.reply(await self.handle_text(item))
                    finally:
                        self.busy = False

    async def handle_text(self, text: bytes) -> dict[str, Any]:
        try:
            request = parse_request(text)
        except UnicodeDecodeError:
            return _error_reply(generic_error("JSON parse error, invalid UTF-8 sequence"))
        except RecursionError:
            return _error_reply(generic_error("JSON parse error, nesting too deep"))
        except ValueError as exc:
            return _error_reply(generic_error(f"JSON parse error, {getattr(exc, 'msg', exc)}"))
        if not isinstance(request, dict):
            return _error_reply(generic_error("QMP input must be a JSON object"))
        request_id = request.get("id")
        has_id = "id" in request
        try:
            result = await self.dispatch(request)
        except QmpError as exc:
            return _error_reply(exc, request_id, has_id)
        reply: dict[str, Any] = {"return": result}
        if has_id:
            reply["id"] = request_id
        return reply

    async def dispatch(self, request: dict[str, Any]) -> Any:
        if "exec-oob" in request:
            raise generic_error("QMP input member 'exec-oob' needs capability 'oob', which is not offered")
        for key in request:
            if key not in REQUEST_KEYS:
                raise generic_error(f"QMP input member '{key}' is unexpected")
        if "execute" not in request:
            raise generic_error("QMP input lacks member 'execute'")
        name = request["execute"]
        if not isinstance(name, str):
            raise generic_error("QMP input member 'execute' must be a string")
        arguments = request.get("arguments", {})
        if not isinstance(arguments, dict):
            raise generic_error("QMP input member 'arguments' must be an object")
        if not self.negotiated:
            return self.negotiate(name, arguments)
        return await self.server.run_command(name, arguments)

    def negotiate(self, name: str, arguments: dict[str, Any]) -> Any:
        if name != "qmp_capabilities":
            raise QmpError(ErrorClass.COMMAND_NOT_FOUND,
                           "Expecting capabilities negotiation with 'qmp_capabilities'")
        checked = QMP_CAPABILITIES_ARGS.validate(arguments, "")
        for capability in checked.get("enable", []):
            raise generic_error(f"Capability '{capability}' not available")
        self.negotiated = True
        return {}


def _error_reply(error: QmpError, request_id: Any = None, has_id: bool = False) -> dict[str, Any]:
    reply: dict[str, Any] = {"error": error.to_json()}
    if has_id:
        reply["id"] = request_id
    return reply


class QmpServer:
    """Serves QMP on any number of unix/TCP listeners; events go to every negotiated connection.

    `lock` (e.g. the machine's threading.RLock) is held around every command handler.  `event_backlog`
    bounds each connection's queued output: a client that stops reading is disconnected, alone.
    """

    def __init__(
        self,
        commands: CommandRegistry,
        events: EventRegistry,
        lock: AbstractContextManager[Any],
        thread: MonitorThread,
        version: QmpVersion,
        *,
        max_message_bytes: int = 1 << 20,
        event_backlog: int = 1000,
    ) -> None:
        self.commands = commands
        self.events = events
        self.lock = lock
        self.thread = thread
        self.version = version
        self.max_message_bytes = max_message_bytes
        self.event_backlog = event_backlog
        self._sessions: set[_Session] = set()
        self._listeners: list[tuple[asyncio.Server, str]] = []
        self._closed = False
        events.subscribe(self._on_event)

    # ---- API for other threads -------------------------------------------------------------------
    def listen(self, endpoint: UnixEndpoint | TcpEndpoint) -> str:
        """Start listening on `endpoint`; returns the bound address (`unix:PATH` or `tcp:HOST:PORT`)."""
        return self.thread.run(self._listen(endpoint))

    def emit_event(self, name: str, data: Mapping[str, Any] | None = None) -> None:
        """Emit a declared event to every negotiated client of every monitor (thread-safe)."""
        self.events.emit(name, data)

    def connection_count(self) -> int:
        return self.thread.run(self._count())

    def close(self) -> None:
        """Stop listening and disconnect every client; the monitor thread keeps running."""
        if self._closed:
            return
        self._closed = True
        self.events.unsubscribe(self._on_event)
        if not self.thread.in_loop_thread():
            self.thread.run(self._close())

    # ---- on the loop -------------------------------------------------------------------------------
    async def _count(self) -> int:
        return len(self._sessions)

    async def _listen(self, endpoint: UnixEndpoint | TcpEndpoint) -> str:
        server, address = await open_listener(endpoint, self._on_connection)
        self._listeners.append((server, address))
        return address

    async def _close(self) -> None:
        for server, _address in self._listeners:
            server.close()
        # Let clients get what is already on its way (the reply to `quit`, the SHUTDOWN event), briefly.
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(CLOSE_FLUSH_SECONDS):
                await asyncio.sleep(0)
                while not all(session.flushed() for session in self._sessions):
                    await asyncio.sleep(0.01)
        for session in list(self._sessions):
            session.abort()
        for server, address in self._listeners:
            await close_listener(server, address)
        self._listeners.clear()

    def _on_event(self, message: dict[str, Any]) -> None:
        self.thread.call_soon(self._broadcast, _encode(message))

    def _broadcast(self, encoded: bytes) -> None:
        for session in list(self._sessions):
            session.offer_event(encoded)

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._closed:
            writer.transport.abort()
            return
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        session = _Session(self, reader, writer)
        self._sessions.add(session)
        writer_task = asyncio.create_task(session.write_loop())
        session.tasks = [writer_task, asyncio.current_task()]  # type: ignore[list-item]
        try:
            await session.read_loop()
            await self._flush(session)
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug in the server must not take the monitor thread down
            log.exception("QMP connection failed")
        finally:
            self._sessions.discard(session)
            session.close()
            with contextlib.suppress(asyncio.CancelledError):
                await writer_task

    async def _flush(self, session: _Session) -> None:
        """Let queued replies reach a client that half-closed its side after its last command."""
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(1.0):
                while not session.outgoing.empty() and not session.closed:
                    await asyncio.sleep(0.01)

    async def run_command(self, name: str, arguments: dict[str, Any]) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.thread.executor, self._run_locked, name, arguments)

    def _run_locked(self, name: str, arguments: dict[str, Any]) -> Any:
        try:
            with self.lock:
                return self.commands.execute(name, arguments)
        except QmpError:
            raise
        except Exception as exc:
            log.exception("QMP command '%s' failed", name)
            raise generic_error(f"Internal error in command '{name}': {exc}") from exc
