"""The QMP server driven by QEMU's own client library, qemu.qmp."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from qemu.qmp import ExecuteError, QMPClient

from kvmkit.core.runstate import RunState
from kvmkit.errors import ImageError
from kvmkit.monitor.schema import INT, Member

TIMEOUT = 10


def run_client(path: str, body: Callable[[QMPClient], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        client = QMPClient("kvmkit-test")
        await asyncio.wait_for(client.connect(path), TIMEOUT)
        try:
            return await asyncio.wait_for(body(client), TIMEOUT)
        finally:
            await client.disconnect()

    return asyncio.run(main())


def execute(path: str, command: str, arguments: dict[str, Any] | None = None) -> Any:
    async def body(client: QMPClient) -> Any:
        return await client.execute(command, arguments)

    return run_client(path, body)


def execute_error(path: str, command: str, arguments: dict[str, Any] | None = None) -> tuple[str, str]:
    with pytest.raises(ExecuteError) as info:
        execute(path, command, arguments)
    return info.value.error.error.class_, info.value.error.error.desc


def test_greeting_names_kvmkit_and_offers_no_capabilities(qmp_path: str) -> None:
    async def body(client: QMPClient) -> Any:
        return client.greeting

    greeting = run_client(qmp_path, body)
    assert greeting.QMP.version["package"] == "kvmkit 0.1.0"
    assert greeting.QMP.version["qemu"] == {"major": 0, "minor": 1, "micro": 0}
    assert list(greeting.QMP.capabilities) == []


def test_query_status_reports_running_machine(qmp_path: str) -> None:
    assert execute(qmp_path, "query-status") == {"running": True, "singlestep": False, "status": "running"}


@pytest.mark.parametrize("command", ["query-version", "query-name", "query-commands", "query-kvm",
                                     "query-cpus-fast", "query-chardev", "query-pci", "query-block",
                                     "query-blockstats", "query-status", "query-qmp-schema"])
def test_query_result_matches_its_declared_return_type(hub: Any, qmp_path: str, command: str) -> None:
    result = execute(qmp_path, command)
    spec = hub.commands.get(command)
    assert spec.returns.validate(result, "result") == result


def test_query_cpus_fast_lists_every_vcpu(qmp_path: str) -> None:
    cpus = execute(qmp_path, "query-cpus-fast")
    assert [(c["cpu-index"], c["thread-id"], c["target"]) for c in cpus] == [(0, 4000, "x86_64"),
                                                                             (1, 4001, "x86_64")]


def test_query_name_is_empty_object_for_unnamed_machine(machine: Any, qmp_path: str) -> None:
    machine.name = None
    assert execute(qmp_path, "query-name") == {}


def test_stop_and_cont_events_reach_another_connection(machine: Any, qmp_path: str) -> None:
    async def main() -> list[str]:
        watcher, actor = QMPClient("watcher"), QMPClient("actor")
        await watcher.connect(qmp_path)
        await actor.connect(qmp_path)
        try:
            assert await actor.execute("stop") == {}
            first = await asyncio.wait_for(watcher.events.get(), TIMEOUT)
            assert await actor.execute("cont") == {}
            second = await asyncio.wait_for(watcher.events.get(), TIMEOUT)
            return [first["event"], second["event"], sorted(first["timestamp"])]
        finally:
            await actor.disconnect()
            await watcher.disconnect()

    assert asyncio.run(main()) == ["STOP", "RESUME", ["microseconds", "seconds"]]
    assert machine.status == RunState.RUNNING


def test_quit_emits_shutdown_then_requests_exit(machine: Any, qmp_path: str) -> None:
    async def body(client: QMPClient) -> Any:
        assert await client.execute("quit") == {}
        return await client.events.get()

    event = run_client(qmp_path, body)
    assert (event["event"], event["data"]) == ("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
    assert machine.quit_requests == 1


def test_system_reset_emits_reset_event(qmp_path: str) -> None:
    async def body(client: QMPClient) -> Any:
        await client.execute("system_reset")
        return await client.events.get()

    event = run_client(qmp_path, body)
    assert (event["event"], event["data"]["reason"]) == ("RESET", "host-qmp-system-reset")


def test_powerdown_failure_reaches_client_as_generic_error(qmp_path: str) -> None:
    assert execute_error(qmp_path, "system_powerdown") == ("GenericError",
                                                           "the machine has no ACPI power button")


def test_cont_after_shutdown_requires_reset(machine: Any, qmp_path: str) -> None:
    machine.status = RunState.SHUTDOWN
    assert execute_error(qmp_path, "cont") == ("GenericError", "Resetting the Virtual Machine is required")


def test_unknown_command_is_command_not_found(qmp_path: str) -> None:
    assert execute_error(qmp_path, "no-such-command") == ("CommandNotFound",
                                                          "The command no-such-command has not been found")


def test_missing_argument_is_reported_by_name(qmp_path: str) -> None:
    assert execute_error(qmp_path, "human-monitor-command") == ("GenericError",
                                                                "Parameter 'command-line' is missing")


def test_human_monitor_command_returns_hmp_text(qmp_path: str) -> None:
    text = execute(qmp_path, "human-monitor-command", {"command-line": "info status"})
    assert text == "VM status: running\n"


def test_human_monitor_command_uses_given_cpu_index(qmp_path: str) -> None:
    text = execute(qmp_path, "human-monitor-command", {"command-line": "info cpus", "cpu-index": 1})
    assert text == "  CPU #0: thread_id=4000\n* CPU #1: thread_id=4001\n"


def test_registers_of_missing_cpu_is_generic_error(qmp_path: str) -> None:
    error_class, desc = execute_error(qmp_path, "x-query-registers", {"cpu-index": 9})
    assert (error_class, desc.startswith("CPU index 9 does not exist")) == ("GenericError", True)


def test_command_registered_at_run_time_is_listed_and_callable(hub: Any, qmp_path: str) -> None:
    @hub.commands.command("x-double", args=[Member("value", INT)], returns=INT)
    def double(value: int) -> int:
        return value * 2

    assert execute(qmp_path, "x-double", {"value": 21}) == 42
    assert {"name": "x-double"} in execute(qmp_path, "query-commands")


def test_unregistered_command_is_no_longer_found(hub: Any, qmp_path: str) -> None:
    hub.commands.unregister("query-kvm")
    assert execute_error(qmp_path, "query-kvm")[0] == "CommandNotFound"


def test_kvmkit_error_from_handler_becomes_generic_error(hub: Any, qmp_path: str) -> None:
    @hub.commands.command("x-broken-image")
    def broken() -> None:
        raise ImageError("disk.qcow2: bad magic")

    assert execute_error(qmp_path, "x-broken-image") == ("GenericError", "disk.qcow2: bad magic")


def test_unexpected_handler_exception_is_reported_not_fatal(hub: Any, qmp_path: str) -> None:
    @hub.commands.command("x-buggy")
    def buggy() -> None:
        raise ZeroDivisionError("oops")

    assert execute_error(qmp_path, "x-buggy") == ("GenericError", "Internal error in command 'x-buggy': oops")
    assert execute(qmp_path, "query-status")["running"] is True


def test_handlers_run_holding_the_machine_lock(hub: Any, machine_lock: Any, qmp_path: str) -> None:
    @hub.commands.command("x-lock-held", returns=INT)
    def lock_held() -> int:
        return int(machine_lock._is_owned())

    assert execute(qmp_path, "x-lock-held") == 1


def test_handler_waits_while_machine_holds_the_lock(hub: Any, machine_lock: Any, qmp_path: str) -> None:
    machine_lock.acquire()
    done = threading.Event()

    def client() -> None:
        execute(qmp_path, "query-status")
        done.set()

    thread = threading.Thread(target=client)
    thread.start()
    assert not done.wait(0.3)
    machine_lock.release()
    assert done.wait(TIMEOUT)
    thread.join()


def test_query_qmp_schema_describes_commands_and_their_types(qmp_path: str) -> None:
    schema = execute(qmp_path, "query-qmp-schema")
    by_name = {entry["name"]: entry for entry in schema}
    status = by_name["query-status"]
    assert status["meta-type"] == "command"
    assert by_name[status["ret-type"]]["meta-type"] == "object"
    assert {m["name"] for m in by_name[status["ret-type"]]["members"]} == {"running", "singlestep", "status"}
    assert by_name["STOP"]["meta-type"] == "event"


def test_query_qmp_schema_references_only_declared_types(qmp_path: str) -> None:
    schema = execute(qmp_path, "query-qmp-schema")
    names = {entry["name"] for entry in schema}
    referenced = set()
    for entry in schema:
        referenced.update(entry[key] for key in ("arg-type", "ret-type", "element-type") if key in entry)
        referenced.update(member["type"] for member in entry.get("members", []) if "type" in member)
    assert referenced <= names


def test_tcp_listener_serves_qmp(hub: Any) -> None:
    address = hub.add_qmp("tcp:127.0.0.1:0,server=on,wait=off")
    host, port = address[len("tcp:"):].rsplit(":", 1)
    assert execute((host, int(port)), "query-status")["status"] == "running"


def test_two_unix_listeners_serve_at_once(hub: Any, socket_dir: str, qmp_path: str) -> None:
    second = f"{socket_dir}/second.sock"
    hub.add_qmp(f"unix:{second},server=on,wait=off")
    assert execute(second, "query-name") == execute(qmp_path, "query-name") == {"name": "vm0"}
