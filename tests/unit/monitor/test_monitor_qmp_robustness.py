"""The QMP server facing malformed, hostile, slow and vanishing clients on a raw socket."""

from __future__ import annotations

import json
import random
import threading
from typing import Any

from kvmkit.monitor.hub import MonitorHub


def error_of(reply: dict[str, Any]) -> tuple[str, str]:
    return reply["error"]["class"], reply["error"]["desc"]


def test_bad_json_is_generic_error_and_connection_continues(raw: Any) -> None:
    raw.send(b'{"execute": "query-status",,}\n')
    error_class, desc = error_of(raw.receive())
    assert (error_class, desc.startswith("JSON parse error, ")) == ("GenericError", True)
    assert raw.command("query-status")["return"]["status"] == "running"


def test_non_object_input_is_rejected(raw: Any) -> None:
    raw.send(b'[1, 2, 3]\n')
    assert error_of(raw.receive()) == ("GenericError", "QMP input must be a JSON object")


def test_top_level_scalar_is_rejected(raw: Any) -> None:
    raw.send(b'42\n')
    assert error_of(raw.receive()) == ("GenericError", "QMP input must be a JSON object")


def test_unknown_top_level_key_is_rejected_with_id_echoed(raw: Any) -> None:
    reply = raw.command("query-status", colour="blue", id="req-1")
    assert error_of(reply) == ("GenericError", "QMP input member 'colour' is unexpected")
    assert reply["id"] == "req-1"


def test_non_string_execute_is_rejected(raw: Any) -> None:
    raw.send(b'{"execute": 42}\n')
    assert error_of(raw.receive()) == ("GenericError", "QMP input member 'execute' must be a string")


def test_non_object_arguments_are_rejected(raw: Any) -> None:
    assert error_of(raw.command("query-status", arguments=[])) == (
        "GenericError", "QMP input member 'arguments' must be an object")


def test_missing_execute_is_rejected(raw: Any) -> None:
    raw.send(b'{"arguments": {}}\n')
    assert error_of(raw.receive()) == ("GenericError", "QMP input lacks member 'execute'")


def test_wrong_argument_type_names_the_parameter(raw: Any) -> None:
    reply = raw.command("human-monitor-command", {"command-line": 5})
    assert error_of(reply) == ("GenericError", "Parameter 'command-line' expects a string")


def test_unknown_argument_is_rejected(raw: Any) -> None:
    reply = raw.command("query-status", {"verbose": True})
    assert error_of(reply) == ("GenericError", "Invalid parameter 'verbose'")


def test_oob_execution_is_refused_since_not_offered(raw: Any) -> None:
    raw.send(b'{"exec-oob": "query-status"}\n')
    assert raw.receive()["error"]["class"] == "GenericError"


def test_id_of_any_json_type_is_echoed(raw: Any) -> None:
    assert raw.command("query-name", id={"n": [1, 2]}) == {"return": {"name": "vm0"}, "id": {"n": [1, 2]}}


def test_command_before_negotiation_is_command_not_found(raw_client_factory: Any) -> None:
    client = raw_client_factory(negotiate=False)
    assert error_of(client.command("query-status")) == (
        "CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'")


def test_events_wait_for_negotiation(hub: MonitorHub, raw_client_factory: Any) -> None:
    client = raw_client_factory(negotiate=False)
    hub.events.emit("POWERDOWN")
    client.send(b'{"execute": "qmp_capabilities"}\n')
    assert client.receive() == {"return": {}}  # the event emitted before negotiation was not sent
    hub.events.emit("RESUME")
    assert client.receive()["event"] == "RESUME"


def test_requesting_unoffered_capability_fails_negotiation(raw_client_factory: Any) -> None:
    client = raw_client_factory(negotiate=False)
    assert error_of(client.command("qmp_capabilities", {"enable": ["oob"]})) == (
        "GenericError", "Capability 'oob' not available")


def test_second_qmp_capabilities_is_command_not_found(raw: Any) -> None:
    assert error_of(raw.command("qmp_capabilities")) == (
        "CommandNotFound", "Capabilities negotiation is already complete, command ignored")


def test_message_split_across_writes_and_lines_is_assembled(raw: Any) -> None:
    raw.send(b'{"execute":\n')
    raw.send(b' "query-name", "id": 7}')
    assert raw.receive() == {"return": {"name": "vm0"}, "id": 7}


def test_two_messages_in_one_write_get_two_replies(raw: Any) -> None:
    raw.send(b'{"execute": "query-name", "id": 1}{"execute": "query-kvm", "id": 2}\n')
    assert [raw.receive()["id"], raw.receive()["id"]] == [1, 2]


def test_two_mebibyte_line_is_refused_and_connection_continues(raw: Any) -> None:
    raw.send(b'{"execute": "query-status", "arguments": {"x": "' + b"a" * (2 << 20) + b'"}}\n')
    error_class, desc = error_of(raw.receive())
    assert (error_class, "longer than 1048576 bytes" in desc) == ("GenericError", True)
    assert raw.command("query-status")["return"]["running"] is True


def test_control_character_resynchronises_after_garbage(raw: Any) -> None:
    raw.send(b'{"execute": "query-status", "arguments": {\n')  # never finished
    raw.send(b"\x1b")
    assert raw.receive()["error"]["desc"] == "JSON parse error, invalid byte 0x1b in input"
    assert raw.command("query-name") == {"return": {"name": "vm0"}}


def test_invalid_utf8_is_a_parse_error(raw: Any) -> None:
    raw.send(b'{"execute": "query-\xc3\x28"}\n')
    assert error_of(raw.receive()) == ("GenericError", "JSON parse error, invalid UTF-8 sequence")


def test_deep_nesting_is_refused(raw: Any) -> None:
    raw.send(b"[" * 5000 + b"]" * 5000 + b"\n")
    assert "nesting deeper than" in raw.receive()["error"]["desc"]
    assert raw.command("query-name")["return"] == {"name": "vm0"}


def test_client_disconnecting_mid_command_leaves_server_serving(
    machine: Any, hub: MonitorHub, raw_client_factory: Any, waiter: Any
) -> None:
    machine.stop_gate = threading.Event()
    leaver = raw_client_factory()
    leaver.send(b'{"execute": "stop"}\n')
    leaver.close()
    machine.stop_gate.set()
    assert machine.stop_finished.wait(5)
    assert waiter(lambda: hub.qmp.connection_count() == 0)
    other = raw_client_factory()
    assert other.command("query-status")["return"]["status"] == "paused"


def test_client_that_never_reads_is_dropped_alone(
    hub: MonitorHub, raw_client_factory: Any, waiter: Any
) -> None:
    sleeper = raw_client_factory()
    reader = raw_client_factory()
    reason = "x" * 1024
    received = 0
    for _batch in range(64):
        for _ in range(16):
            hub.events.emit("BLOCK_IO_ERROR", {"device": "drive0", "operation": "write", "action": "report",
                                               "reason": reason})
        for _ in range(16):
            assert reader.receive()["event"] == "BLOCK_IO_ERROR"
            received += 1
        if hub.qmp.connection_count() == 1:
            break
    assert waiter(lambda: hub.qmp.connection_count() == 1)
    assert reader.command("query-status")["return"]["running"] is True
    assert received < 64 * 16  # the sleeper was dropped before the flood ended
    del sleeper


def test_random_garbage_then_well_formed_command_succeeds(raw: Any) -> None:
    rng = random.Random(20261126)
    pieces = [b"{", b"}", b"[", b"]", b'"', b"\\", b":", b",", b"\n", b" ", b"null", b"true", b"1e999",
              b'"execute"', b'"arguments"', b'"id"', b'"query-status"', b'"stop"', b"\xff", b"\xc3", b"-",
              b"{}", b"[]", b"\x00"]
    commands = ["query-status", "query-name", "qmp_capabilities", "nope", "human-monitor-command"]
    for count in range(3000):
        if count % 250 == 0:  # read what piled up so neither side's buffers fill
            raw.send(b"\x1b\n" + json.dumps({"execute": "query-kvm", "id": count}).encode())
            while raw.receive().get("id") != count:
                pass
        kind = rng.randrange(3)
        if kind == 0:
            message = b"".join(rng.choice(pieces) for _ in range(rng.randrange(1, 12)))
        elif kind == 1:
            value: Any = rng.choice([None, 1, -1, 2**70, "s", [], {}, True, 1.5])
            request = {rng.choice(["execute", "arguments", "id", "x"]): value,
                       "execute": rng.choice(commands + [value])}
            if rng.random() < 0.5:
                request["arguments"] = rng.choice([{}, {"command-line": value}, {"q": value}, value])
            message = json.dumps(request).encode()
        else:
            message = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
        raw.send(message)
    raw.send(b"\x1b\n")  # resynchronise as the QMP specification recommends
    reply = raw.command("query-status", id="final")
    while reply.get("id") != "final":
        reply = raw.receive_reply()
    assert reply == {"return": {"running": True, "singlestep": False, "status": "running"}, "id": "final"}


def test_duplicate_keys_are_a_parse_error(raw: Any) -> None:
    raw.send(b'{"execute": "quit", "execute": "query-name"}\n')
    assert error_of(raw.receive()) == ("GenericError", "JSON parse error, duplicate key 'execute'")


def test_non_finite_numbers_are_a_parse_error(raw: Any) -> None:
    raw.send(b'{"execute": "query-name", "id": NaN}{"execute": "query-name", "id": 1e999}\n')
    assert [raw.receive()["error"]["desc"], raw.receive()["error"]["desc"]] == [
        "JSON parse error, invalid literal 'NaN'", "JSON parse error, number '1e999' out of range"]


def test_reply_that_is_not_json_becomes_an_error(hub: MonitorHub, raw: Any) -> None:
    hub.commands.command("x-nan")(lambda: float("nan"))
    reply = raw.command("x-nan", id=3)
    assert (reply["error"]["class"], reply["id"]) == ("GenericError", 3)


def test_events_emitted_from_many_threads_all_arrive(hub: MonitorHub, raw: Any) -> None:
    def emit_some() -> None:
        for _ in range(10):
            hub.qmp.emit_event("RESET", {"guest": True, "reason": "guest-reset"})

    threads = [threading.Thread(target=emit_some) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [raw.receive()["event"] for _ in range(40)] == ["RESET"] * 40
