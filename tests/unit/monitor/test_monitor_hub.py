"""MonitorHub life cycle, listeners and the Markdown reference."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest

from kvmkit.errors import ConfigError, HostError
from kvmkit.monitor.hub import MonitorHub


def test_stale_socket_file_is_replaced(hub: MonitorHub, socket_dir: str) -> None:
    path = f"{socket_dir}/stale.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()
    assert hub.add_qmp(f"unix:{path},server=on,wait=off") == f"unix:{path}"


def test_regular_file_at_socket_path_is_host_error(hub: MonitorHub, socket_dir: str) -> None:
    path = f"{socket_dir}/file"
    with open(path, "w") as handle:
        handle.write("keep me")
    with pytest.raises(HostError, match="is not a socket"):
        hub.add_qmp(f"unix:{path},server=on,wait=off")
    assert os.path.exists(path)


def test_unlistenable_directory_is_host_error(hub: MonitorHub) -> None:
    with pytest.raises(HostError, match=r"unix:/nonexistent-dir/q\.sock"):
        hub.add_qmp("unix:/nonexistent-dir/q.sock,server=on,wait=off")


def test_bad_spec_is_config_error(hub: MonitorHub) -> None:
    with pytest.raises(ConfigError, match="-qmp"):
        hub.add_qmp("unix:/tmp/x.sock")


def test_close_removes_sockets_and_stops_thread(machine: object, socket_dir: str) -> None:
    hub = MonitorHub(machine, threading.RLock())  # type: ignore[arg-type]
    path = f"{socket_dir}/q.sock"
    hub.add_qmp(f"unix:{path},server=on,wait=off")
    hub.close()
    assert not os.path.exists(path)
    assert not hub.thread._thread.is_alive()


def test_docgen_documents_every_command_and_event() -> None:
    result = subprocess.run([sys.executable, "-m", "kvmkit.monitor.docgen"], capture_output=True, text=True,
                            check=True, timeout=30)
    for heading in ("### `query-status`", "### `human-monitor-command`", "### `BLOCK_IO_ERROR`",
                    "### `StatusInfo`", "### `ShutdownCause`"):
        assert heading in result.stdout
