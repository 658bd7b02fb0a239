"""The human monitor: commands, formatting, the chardev frontend and the unix socket server."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from kvmkit.core.runstate import RunState
from kvmkit.errors import ConfigError
from kvmkit.monitor.hmp import PROMPT
from kvmkit.monitor.hub import MonitorHub


def run(hub: MonitorHub, line: str) -> str:
    return hub.hmp.execute(line)


def test_info_status_reports_running(hub: MonitorHub) -> None:
    assert run(hub, "info status") == "VM status: running\n"


def test_info_status_shows_non_paused_reason(hub: MonitorHub, machine: Any) -> None:
    machine.status = RunState.GUEST_PANICKED
    assert run(hub, "info status") == "VM status: paused (guest-panicked)\n"


def test_info_version(hub: MonitorHub) -> None:
    assert run(hub, "info version") == "0.1.0 (kvmkit 0.1.0)\n"


def test_info_block_shows_file_format_and_mode(hub: MonitorHub) -> None:
    assert run(hub, "info block").splitlines()[0] == "drive0: disk.img (raw, read-only)"


def test_info_pci_lists_ids_irq_and_bars(hub: MonitorHub) -> None:
    text = run(hub, "info pci")
    assert "Host bridge: PCI device 8086:1237" in text
    assert "Class 0100: PCI device 1af4:1042" in text
    assert "IRQ 11." in text
    assert "BAR4: Memory at 0xfe000000 [0xfe003fff]." in text


def test_info_cpus_marks_the_current_cpu(hub: MonitorHub) -> None:
    assert run(hub, "info cpus") == "* CPU #0: thread_id=4000\n  CPU #1: thread_id=4001\n"


def test_info_registers_of_a_given_cpu(hub: MonitorHub) -> None:
    assert run(hub, "info registers 1") == "RAX=0000000000000001 RIP=000000000000fff0\n"


def test_info_registers_with_bad_index_prints_error(hub: MonitorHub) -> None:
    assert run(hub, "info registers x") == "Error: 'x' is not a CPU index\n"


def test_info_chardev(hub: MonitorHub) -> None:
    assert run(hub, "info chardev") == "serial0: filename=pty:/dev/pts/7\n"


def test_stop_and_cont_change_machine_state(hub: MonitorHub, machine: Any) -> None:
    assert run(hub, "stop") == ""
    assert machine.status == RunState.PAUSED
    assert run(hub, "cont") == ""
    assert machine.status == RunState.RUNNING


def test_quit_requests_exit(hub: MonitorHub, machine: Any) -> None:
    run(hub, "quit")
    assert machine.quit_requests == 1


def test_command_failure_prints_error_line(hub: MonitorHub) -> None:
    assert run(hub, "system_powerdown") == "Error: the machine has no ACPI power button\n"


def test_unknown_command_is_reported(hub: MonitorHub) -> None:
    assert run(hub, "frobnicate now") == "unknown command: 'frobnicate'\n"


def test_unknown_info_subcommand_is_reported(hub: MonitorHub) -> None:
    assert run(hub, "info nothing").startswith("unknown info command: 'nothing'")


def test_help_lists_commands_and_info_subcommands(hub: MonitorHub) -> None:
    text = run(hub, "help")
    for expected in ("system_reset -- reset the system", "info status -- show the current VM status", "quit"):
        assert expected in text


def test_command_unregistered_from_qmp_is_unavailable_in_hmp(hub: MonitorHub) -> None:
    hub.commands.unregister("query-chardev")
    assert run(hub, "info chardev") == "Error: The command query-chardev has not been found\n"


def test_frontend_runs_lines_and_prints_prompt(hub: MonitorHub) -> None:
    output: list[bytes] = []
    frontend = hub.hmp_frontend(output.append)
    frontend.open()
    frontend.receive(b"info sta")
    frontend.receive(b"tus\r\n")
    text = b"".join(output).decode()
    assert text.endswith(f"{PROMPT}VM status: running\r\n{PROMPT}")


def test_frontend_backspace_edits_the_line(hub: MonitorHub) -> None:
    output: list[bytes] = []
    hub.hmp_frontend(output.append).receive(b"info statux\x7fs\n")
    assert b"".join(output).decode() == f"VM status: running\r\n{PROMPT}"


def test_frontend_rejects_overlong_line(hub: MonitorHub) -> None:
    output: list[bytes] = []
    frontend = hub.hmp_frontend(output.append)
    frontend.receive(b"x" * 5000 + b"\n")
    assert b"".join(output).decode().startswith("Error: line longer than 4096 bytes ignored")


def test_frontend_echo_mode_echoes_typed_characters(hub: MonitorHub) -> None:
    output: list[bytes] = []
    hub.hmp_frontend(output.append, echo=True).receive(b"stop\r")
    assert b"".join(output).startswith(b"stop\r\n")


def test_frontend_always_accepts_input(hub: MonitorHub) -> None:
    frontend = hub.hmp_frontend(lambda data: None)
    frontend.receive(b"y" * 4096)
    assert frontend.can_receive() >= 1


def receive_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while not data.endswith(marker):
        chunk = sock.recv(4096)
        if not chunk:
            raise EOFError(data)
        data += chunk
    return data


def test_hmp_over_unix_socket(hub: MonitorHub, socket_dir: str) -> None:
    path = f"{socket_dir}/hmp.sock"
    hub.add_hmp(f"unix:{path},server=on,wait=off")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        banner = receive_until(sock, PROMPT.encode())
        sock.sendall(b"info status\n")
        reply = receive_until(sock, PROMPT.encode())
    assert banner.startswith(b"kvmkit monitor")
    assert reply == f"VM status: running\r\n{PROMPT}".encode()


def test_monitor_stdio_is_left_to_the_chardev_layer(hub: MonitorHub) -> None:
    with pytest.raises(ConfigError, match="chardev layer"):
        hub.add_hmp("stdio")
