"""Argument validation and introspection of the command schema."""

from __future__ import annotations

import pytest

from kvmkit.monitor.errors import QmpError
from kvmkit.monitor.registry import CommandRegistry, EventRegistry, EventSpec, introspect
from kvmkit.monitor.schema import BOOL, INT, NUMBER, STR, EnumType, ListType, Member, ObjectType

MODE = EnumType("DriveMode", ("ro", "rw"))
DRIVE = ObjectType("Drive", (Member("file", STR), Member("mode", MODE, optional=True, default="rw")))
ARGS = ObjectType("q_obj_x-arg", (
    Member("count", INT), Member("ratio", NUMBER, optional=True), Member("force", BOOL, optional=True),
    Member("drives", ListType(DRIVE), optional=True),
))


def desc_of(arguments: object) -> str:
    with pytest.raises(QmpError) as info:
        ARGS.validate(arguments, "")
    assert info.value.error_class == "GenericError"
    return info.value.desc


def test_missing_required_parameter_is_named() -> None:
    assert desc_of({}) == "Parameter 'count' is missing"


def test_unknown_parameter_is_named() -> None:
    assert desc_of({"count": 1, "colour": "red"}) == "Invalid parameter 'colour'"


def test_string_for_integer_is_rejected() -> None:
    assert desc_of({"count": "1"}) == "Parameter 'count' expects an integer"


def test_boolean_is_not_an_integer() -> None:
    assert desc_of({"count": True}) == "Parameter 'count' expects an integer"


def test_integer_beyond_64_bits_is_rejected() -> None:
    assert desc_of({"count": 1 << 70}) == "Parameter 'count' expects an integer that fits in 64 bits"


def test_number_accepts_integers_and_floats() -> None:
    assert ARGS.validate({"count": 1, "ratio": 2}, "")["ratio"] == 2
    assert ARGS.validate({"count": 1, "ratio": 0.5}, "")["ratio"] == 0.5


def test_enum_value_outside_the_set_is_rejected() -> None:
    desc = desc_of({"count": 1, "drives": [{"file": "a", "mode": "rx"}]})
    assert desc == "Parameter 'drives[0].mode' does not accept value 'rx' (expects one of 'ro', 'rw')"


def test_nested_error_names_the_path() -> None:
    assert desc_of({"count": 1, "drives": [{"file": "a"}, {}]}) == "Parameter 'drives[1].file' is missing"


def test_list_of_wrong_type_is_rejected() -> None:
    assert desc_of({"count": 1, "drives": {"file": "a"}}) == "Parameter 'drives' expects an array of Drive"


def test_defaults_fill_absent_optional_members() -> None:
    checked = ARGS.validate({"count": 1, "drives": [{"file": "a"}]}, "")
    assert checked["drives"] == [{"file": "a", "mode": "rw"}]


def test_handler_receives_python_names_and_none_for_absent_optionals() -> None:
    registry = CommandRegistry()
    seen: dict[str, object] = {}

    @registry.command("x-set", args=[Member("cpu-index", INT), Member("label", STR, optional=True)])
    def handler(cpu_index: int, label: str | None) -> None:
        seen.update(cpu_index=cpu_index, label=label)

    assert registry.execute("x-set", {"cpu-index": 3}) == {}
    assert seen == {"cpu_index": 3, "label": None}


def test_handler_does_not_run_when_validation_fails() -> None:
    registry = CommandRegistry()
    calls: list[int] = []

    @registry.command("x-count", args=[Member("n", INT)])
    def handler(n: int) -> None:
        calls.append(n)

    with pytest.raises(QmpError):
        registry.execute("x-count", {"n": "7"})
    assert calls == []


def test_registering_a_name_twice_is_refused() -> None:
    registry = CommandRegistry()
    registry.command("x-one")(lambda: None)
    with pytest.raises(ValueError, match="x-one"):
        registry.command("x-one")(lambda: None)


def test_introspection_describes_arguments_with_optional_defaults() -> None:
    registry = CommandRegistry()
    registry.command("x-take", args=ARGS, returns=ListType(DRIVE))(lambda **kwargs: [])
    entries = {entry["name"]: entry for entry in introspect(registry, EventRegistry())}
    command = entries["x-take"]
    assert (command["arg-type"], command["ret-type"]) == ("q_obj_x-arg", "[Drive]")
    assert entries["q_obj_x-arg"]["members"][1] == {"name": "ratio", "type": "number", "default": None}
    assert entries["[Drive]"] == {"name": "[Drive]", "meta-type": "array", "element-type": "Drive"}
    assert entries["DriveMode"]["values"] == ["ro", "rw"]
    assert entries["int"] == {"name": "int", "meta-type": "builtin", "json-type": "int"}


def test_event_emission_validates_declared_data() -> None:
    events = EventRegistry()
    events.declare(EventSpec("X_EVENT", ObjectType("q_obj_X_EVENT-arg", (Member("ok", BOOL),))))
    with pytest.raises(ValueError, match="X_EVENT"):
        events.emit("X_EVENT", {"ok": "yes"})


def test_undeclared_event_is_refused() -> None:
    with pytest.raises(ValueError, match="NOPE"):
        EventRegistry().emit("NOPE")


def test_emitted_event_reaches_every_listener_with_timestamp() -> None:
    events = EventRegistry()
    events.declare(EventSpec("X_TICK"))
    received: list[dict[str, object]] = []
    events.subscribe(received.append)
    events.subscribe(received.append)
    events.emit("X_TICK")
    assert [m["event"] for m in received] == ["X_TICK", "X_TICK"]
    assert set(received[0]["timestamp"]) == {"seconds", "microseconds"}  # type: ignore[arg-type]
