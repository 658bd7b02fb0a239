"""A small schema language for QMP commands and events: types, members and argument validation.

Every command and event declares its arguments (and a command its return value) once with these types;
the same declaration validates what a client sends, produces `query-qmp-schema` introspection and the
Markdown reference.  Validation failures are QmpError GenericError with QEMU-style messages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvmkit.monitor.errors import generic_error

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 64) - 1  # QAPI integers are int64 or uint64; accept the union of both


class _NoDefault:
    def __repr__(self) -> str:
        return "NO_DEFAULT"


NO_DEFAULT: Any = _NoDefault()

Introspection = dict[str, dict[str, Any]]


class SchemaType:
    """Base of every schema type: a name, a validator and an introspection entry."""

    name: str
    description: str  # how a message names it: "a string", "an integer", ...

    def validate(self, value: Any, path: str) -> Any:
        """Return `value` (normalised) or raise GenericError naming `path`."""
        raise NotImplementedError

    def introspect(self, entries: Introspection) -> str:
        """Add this type's SchemaInfo (and its dependencies') to `entries`; return the name to reference."""
        raise NotImplementedError

    def _expects(self, path: str) -> Exception:
        return generic_error(f"Parameter '{path}' expects {self.description}")


@dataclass(frozen=True)
class BuiltinType(SchemaType):
    """A JSON scalar (or any value): str, int, bool, number, any, null."""

    name: str
    json_type: str
    description: str

    def validate(self, value: Any, path: str) -> Any:
        match self.json_type:
            case "string":
                ok = isinstance(value, str)
            case "int":
                ok = isinstance(value, int) and not isinstance(value, bool)
            case "boolean":
                ok = isinstance(value, bool)
            case "number":
                ok = isinstance(value, int | float) and not isinstance(value, bool)
            case "null":
                ok = value is None
            case _:
                ok = True
        if not ok:
            raise self._expects(path)
        if self.json_type == "int" and not INT64_MIN <= value <= INT64_MAX:
            raise generic_error(f"Parameter '{path}' expects an integer that fits in 64 bits")
        return value

    def introspect(self, entries: Introspection) -> str:
        info = {"name": self.name, "meta-type": "builtin", "json-type": self.json_type}
        entries.setdefault(self.name, info)
        return self.name


STR = BuiltinType("str", "string", "a string")
INT = BuiltinType("int", "int", "an integer")
BOOL = BuiltinType("bool", "boolean", "a boolean")
NUMBER = BuiltinType("number", "number", "a number")
ANY = BuiltinType("any", "value", "any value")
NULL = BuiltinType("null", "null", "null")


@dataclass(frozen=True)
class EnumType(SchemaType):
    """A string restricted to a fixed set of values."""

    name: str
    values: tuple[str, ...]
    doc: str = ""

    @property
    def description(self) -> str:  # type: ignore[override]
        return "one of " + ", ".join(f"'{v}'" for v in self.values)

    def validate(self, value: Any, path: str) -> Any:
        if not isinstance(value, str):
            raise generic_error(f"Parameter '{path}' expects a string ({self.description})")
        if value not in self.values:
            raise generic_error(
                f"Parameter '{path}' does not accept value '{value}' (expects {self.description})")
        return value

    def introspect(self, entries: Introspection) -> str:
        entries.setdefault(
            self.name,
            {"name": self.name, "meta-type": "enum", "values": list(self.values),
             "members": [{"name": v} for v in self.values]},
        )
        return self.name


@dataclass(frozen=True)
class ListType(SchemaType):
    """A JSON array whose elements all have one type."""

    element: SchemaType

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"[{self.element.name}]"

    @property
    def description(self) -> str:  # type: ignore[override]
        return f"an array of {self.element.name}"

    def validate(self, value: Any, path: str) -> Any:
        if not isinstance(value, list):
            raise self._expects(path)
        return [self.element.validate(item, f"{path}[{index}]") for index, item in enumerate(value)]

    def introspect(self, entries: Introspection) -> str:
        element_name = self.element.introspect(entries)
        entries.setdefault(self.name, {"name": self.name, "meta-type": "array", "element-type": element_name})
        return self.name


@dataclass(frozen=True)
class Member:
    """One member of an object (a command argument, an event or return field)."""

    name: str
    type: SchemaType
    optional: bool = False
    default: Any = NO_DEFAULT
    doc: str = ""

    @property
    def python_name(self) -> str:
        """The keyword a handler receives this argument as (`cpu-index` -> `cpu_index`)."""
        return self.name.replace("-", "_")


@dataclass(frozen=True)
class ObjectType(SchemaType):
    """A JSON object with declared members; unknown members are rejected."""

    name: str
    members: tuple[Member, ...] = ()
    doc: str = ""
    by_name: dict[str, Member] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {m.name: m for m in self.members})
        if len(self.by_name) != len(self.members):
            raise ValueError(f"object type {self.name} declares a member twice")

    description = "an object"

    def validate(self, value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise self._expects(path or self.name)
        prefix = f"{path}." if path else ""
        for key in value:
            if key not in self.by_name:
                raise generic_error(f"Invalid parameter '{prefix}{key}'")
        result: dict[str, Any] = {}
        for member in self.members:
            if member.name in value:
                result[member.name] = member.type.validate(value[member.name], prefix + member.name)
            elif not member.optional:
                raise generic_error(f"Parameter '{prefix}{member.name}' is missing")
            elif member.default is not NO_DEFAULT:
                result[member.name] = member.default
        return result

    def introspect(self, entries: Introspection) -> str:
        if self.name in entries:
            return self.name
        info: dict[str, Any] = {"name": self.name, "meta-type": "object", "members": []}
        entries[self.name] = info  # placed first so recursive types terminate
        for member in self.members:
            entry: dict[str, Any] = {"name": member.name, "type": member.type.introspect(entries)}
            if member.optional:
                entry["default"] = None
            info["members"].append(entry)
        return self.name


EMPTY = ObjectType("q_empty", (), "An object with no members.")


def object_type(name: str, members: Sequence[Member], doc: str = "") -> ObjectType:
    """Shorthand for ObjectType with a member list."""
    return ObjectType(name, tuple(members), doc)


ENUM_QMP_CAPABILITY = EnumType("QMPCapability", ("oob",), "Optional QMP protocol features.")
