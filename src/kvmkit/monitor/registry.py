"""Run-time registries of QMP commands and events, shared by QMP, HMP and the documentation generator.

Any subsystem may register or unregister commands while the machine runs; each monitor connection looks
commands up at execution time.  There is no global registry: a MonitorHub owns one of each.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvmkit.errors import KvmkitError
from kvmkit.monitor.errors import ErrorClass, QmpError
from kvmkit.monitor.schema import EMPTY, Introspection, Member, ObjectType, SchemaType

Handler = Callable[..., Any]
EventListener = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class CommandSpec:
    """A QMP command: its name, declared arguments and return type, documentation and handler."""

    name: str
    handler: Handler
    arguments: ObjectType = EMPTY
    returns: SchemaType | None = None
    doc: str = ""

    def call(self, arguments: Mapping[str, Any] | None) -> Any:
        """Validate `arguments`, run the handler and return its result (`{}` when it returns None)."""
        checked = self.arguments.validate(arguments if arguments is not None else {}, "")
        kwargs = {m.python_name: checked.get(m.name) for m in self.arguments.members}
        result = self.handler(**kwargs)
        return {} if result is None else result


@dataclass(frozen=True)
class EventSpec:
    """A QMP event: its name, the members of its `data` object and documentation."""

    name: str
    data: ObjectType = EMPTY
    doc: str = ""


def _arguments_type(owner: str, members: Sequence[Member] | ObjectType) -> ObjectType:
    if isinstance(members, ObjectType):
        return members
    if not members:
        return EMPTY
    return ObjectType(f"q_obj_{owner}-arg", tuple(members))


class CommandRegistry:
    """The commands a machine's monitors accept; thread-safe, changeable at run time."""

    def __init__(self) -> None:
        self._commands: dict[str, CommandSpec] = {}
        self._guard = threading.Lock()

    def register(self, spec: CommandSpec) -> None:
        """Add a command; registering a name twice is a programming error (ValueError)."""
        with self._guard:
            if spec.name in self._commands:
                raise ValueError(f"QMP command '{spec.name}' is already registered")
            self._commands[spec.name] = spec

    def unregister(self, name: str) -> None:
        """Remove a command (no error if it is absent, so subsystems may tear down unconditionally)."""
        with self._guard:
            self._commands.pop(name, None)

    def command(
        self,
        name: str,
        args: Sequence[Member] | ObjectType = (),
        returns: SchemaType | None = None,
        doc: str | None = None,
    ) -> Callable[[Handler], Handler]:
        """Decorator registering `handler` as command `name` with the declared arguments and return type."""

        def register(handler: Handler) -> Handler:
            text = doc if doc is not None else (handler.__doc__ or "")
            self.register(CommandSpec(name, handler, _arguments_type(name, args), returns, text.strip()))
            return handler

        return register

    def get(self, name: str) -> CommandSpec | None:
        with self._guard:
            return self._commands.get(name)

    def names(self) -> list[str]:
        with self._guard:
            return sorted(self._commands)

    def specs(self) -> list[CommandSpec]:
        with self._guard:
            return [self._commands[n] for n in sorted(self._commands)]

    def execute(self, name: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """Run a command as a client would: unknown names raise CommandNotFound, KvmkitError becomes
        GenericError.  The caller holds the machine lock."""
        spec = self.get(name)
        if spec is None:
            raise QmpError(ErrorClass.COMMAND_NOT_FOUND, f"The command {name} has not been found")
        try:
            return spec.call(arguments)
        except KvmkitError as exc:
            raise QmpError(ErrorClass.GENERIC_ERROR, str(exc)) from exc


class EventRegistry:
    """Declared events and the listeners (monitor servers) that receive every emitted event."""

    def __init__(self) -> None:
        self._events: dict[str, EventSpec] = {}
        self._listeners: list[EventListener] = []
        self._guard = threading.Lock()

    def declare(self, spec: EventSpec) -> None:
        with self._guard:
            if spec.name in self._events:
                raise ValueError(f"QMP event '{spec.name}' is already declared")
            self._events[spec.name] = spec

    def get(self, name: str) -> EventSpec | None:
        with self._guard:
            return self._events.get(name)

    def specs(self) -> list[EventSpec]:
        with self._guard:
            return [self._events[n] for n in sorted(self._events)]

    def subscribe(self, listener: EventListener) -> None:
        with self._guard:
            self._listeners.append(listener)

    def unsubscribe(self, listener: EventListener) -> None:
        with self._guard:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def emit(self, name: str, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Emit event `name` to every listener; callable from any thread.  Returns the message sent.

        An undeclared event or data not matching the declaration is a programming error (ValueError).
        """
        spec = self.get(name)
        if spec is None:
            raise ValueError(f"QMP event '{name}' is not declared")
        try:
            checked = spec.data.validate(dict(data or {}), "")
        except QmpError as exc:
            raise ValueError(f"QMP event '{name}': {exc.desc}") from exc
        now = time.time()
        seconds = int(now)
        message: dict[str, Any] = {
            "event": name,
            "data": checked,
            "timestamp": {"seconds": seconds, "microseconds": int((now - seconds) * 1_000_000)},
        }
        with self._guard:
            listeners = list(self._listeners)
        for listener in listeners:
            listener(message)
        return message


def introspect(commands: CommandRegistry, events: EventRegistry) -> list[dict[str, Any]]:
    """`query-qmp-schema`: SchemaInfo entries for every command, event and the types they use."""
    entries: Introspection = {}
    head: list[dict[str, Any]] = []
    for spec in commands.specs():
        info: dict[str, Any] = {"name": spec.name, "meta-type": "command",
                                "arg-type": spec.arguments.introspect(entries),
                                "ret-type": (spec.returns or EMPTY).introspect(entries), "allow-oob": False}
        head.append(info)
    for event in events.specs():
        head.append({"name": event.name, "meta-type": "event", "arg-type": event.data.introspect(entries)})
    return head + list(entries.values())
