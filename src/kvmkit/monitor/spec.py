"""Parses monitor endpoint options: `-qmp unix:PATH,server=on,wait=off`, `tcp:HOST:PORT,...`, `stdio`."""

from __future__ import annotations

from dataclasses import dataclass

from kvmkit.errors import ConfigError

UNIX_PATH_MAX = 107  # sockaddr_un.sun_path minus the terminating NUL


@dataclass(frozen=True)
class UnixEndpoint:
    """A listening unix socket at `path`."""

    path: str


@dataclass(frozen=True)
class TcpEndpoint:
    """A listening TCP socket; an empty host means every interface, port 0 an ephemeral port."""

    host: str
    port: int


@dataclass(frozen=True)
class StdioEndpoint:
    """The VMM's own stdin/stdout (a chardev frontend multiplexed by the chardev layer)."""


Endpoint = UnixEndpoint | TcpEndpoint | StdioEndpoint

_ON = {"on", "yes", "true"}
_OFF = {"off", "no", "false"}


def _flag(option: str, key: str, value: str | None) -> bool:
    if value is None:  # a bare `server` means on, as in QEMU
        return True
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise ConfigError(f"{option}: '{key}' expects on or off, not '{value}'")


def _parse_options(option: str, items: list[str]) -> None:
    server = False
    wait = True
    for item in items:
        key, sep, value = item.partition("=")
        if key == "server":
            server = _flag(option, key, value if sep else None)
        elif key == "wait":
            wait = _flag(option, key, value if sep else None)
        elif key == "nowait" and not sep:
            wait = False
        else:
            raise ConfigError(f"{option}: unknown option '{item}' (expected server=on,wait=off)")
    if not server:
        raise ConfigError(f"{option}: only listening monitors are supported; add server=on")
    if wait:
        raise ConfigError(f"{option}: wait=on is not supported (kvmkit never blocks startup for a client); "
                          "add wait=off")


def _parse_port(option: str, text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise ConfigError(f"{option}: invalid TCP port '{text}' (expected 0-65535)")
    return int(text)


def parse_endpoint(text: str, option: str = "-qmp") -> Endpoint:
    """Parse one monitor endpoint spelling; ConfigError names `option` and what is wrong."""
    if text == "stdio":
        return StdioEndpoint()
    kind, sep, rest = text.partition(":")
    if not sep:
        raise ConfigError(f"{option}: '{text}' is not a monitor address (expected "
                          "unix:PATH,server=on,wait=off, tcp:HOST:PORT,server=on,wait=off or stdio)")
    address, *items = rest.split(",")
    if kind == "unix":
        if not address:
            raise ConfigError(f"{option}: unix socket path is empty")
        if len(address.encode()) > UNIX_PATH_MAX:
            raise ConfigError(f"{option}: unix socket path '{address}' is longer than {UNIX_PATH_MAX} bytes")
        _parse_options(option, items)
        return UnixEndpoint(address)
    if kind == "tcp":
        if address.startswith("["):  # [v6-address]:port
            host, bracket, port_text = address[1:].partition("]:")
            if not bracket:
                raise ConfigError(f"{option}: '{address}' is not [IPV6]:PORT")
        else:
            host, colon, port_text = address.rpartition(":")
            if not colon:
                raise ConfigError(f"{option}: '{address}' is not HOST:PORT")
        port = _parse_port(option, port_text)
        _parse_options(option, items)
        return TcpEndpoint(host, port)
    raise ConfigError(f"{option}: unsupported monitor backend '{kind}' (expected unix, tcp or stdio)")
