"""Parsing `-qmp` / `-monitor` endpoint spellings."""

from __future__ import annotations

import pytest

from kvmkit.errors import ConfigError
from kvmkit.monitor.spec import StdioEndpoint, TcpEndpoint, UnixEndpoint, parse_endpoint


def test_unix_socket_spec() -> None:
    assert parse_endpoint("unix:/run/vm.qmp,server=on,wait=off") == UnixEndpoint("/run/vm.qmp")


def test_tcp_spec_with_host_and_port() -> None:
    assert parse_endpoint("tcp:127.0.0.1:4444,server=on,wait=off") == TcpEndpoint("127.0.0.1", 4444)


def test_tcp_spec_with_bracketed_ipv6_host() -> None:
    assert parse_endpoint("tcp:[::1]:4444,server,nowait") == TcpEndpoint("::1", 4444)


def test_stdio_spec() -> None:
    assert parse_endpoint("stdio", "-monitor") == StdioEndpoint()


@pytest.mark.parametrize(("spec", "fragment"), [
    ("unix:/tmp/q", "server=on"),
    ("unix:/tmp/q,server=on", "wait=on is not supported"),
    ("unix:/tmp/q,server=maybe,wait=off", "'server' expects on or off"),
    ("unix:/tmp/q,server=on,wait=off,colour=red", "unknown option 'colour=red'"),
    ("tcp:localhost:99999,server=on,wait=off", "invalid TCP port '99999'"),
    ("tcp:localhost,server=on,wait=off", "is not HOST:PORT"),
    ("udp:1.2.3.4:5,server=on,wait=off", "unsupported monitor backend 'udp'"),
    ("unix:,server=on,wait=off", "path is empty"),
    ("unix:/" + "a" * 200 + ",server=on,wait=off", "longer than 107 bytes"),
    ("/tmp/qmp.sock", "is not a monitor address"),
])
def test_bad_spec_is_config_error_naming_the_option(spec: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=r"^-qmp: ") as info:
        parse_endpoint(spec)
    assert fragment in str(info.value)
