"""QEMU's `-chardev` and `-serial` spellings, parsed into specs and built into backends."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace

from kvmkit.chardev.base import Chardev
from kvmkit.chardev.file import FileChardev
from kvmkit.chardev.mux import MuxChardev
from kvmkit.chardev.null import NullChardev
from kvmkit.chardev.pty import PtyChardev
from kvmkit.chardev.socket import SocketAddress, SocketChardev
from kvmkit.chardev.stdio import StdioChardev
from kvmkit.errors import ConfigError

_ID_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*\Z")
_TRUE_WORDS = {"on", "yes", "true", "y"}
_FALSE_WORDS = {"off", "no", "false", "n"}

# Keys each backend accepts besides `id` and `mux`.
_BACKEND_KEYS: dict[str, frozenset[str]] = {
    "null": frozenset(),
    "pty": frozenset(),
    "stdio": frozenset({"signal"}),
    "file": frozenset({"path", "append"}),
    "socket": frozenset({"path", "host", "port", "server", "wait"}),
}
_SOCKET_OPTION_KEYS = frozenset({"server", "wait"})


@dataclass(frozen=True)
class ChardevSpec:
    """One character backend as the user asked for it."""

    backend: str
    id: str
    path: str | None = None
    host: str | None = None
    port: int | None = None
    server: bool = False
    wait: bool = True
    append: bool = False
    mux: bool = False
    monitor: bool = False  # `mon:` prefix: an HMP monitor shares the backend


@dataclass(frozen=True)
class ChardevReference:
    """`-serial chardev:ID`: a backend defined by a `-chardev` option."""

    id: str


# -- option text ---------------------------------------------------------------------------------
def split_option_text(text: str) -> list[str]:
    """Split at commas, where ",," stands for a literal comma (QEMU's quoting)."""
    parts: list[str] = []
    current: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == ",":
            if text.startswith(",,", index):
                current.append(",")
                index += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    parts.append("".join(current))
    return parts


def _key_values(option: str, text: str, parts: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for part in parts:
        key, has_value, value = part.partition("=")
        if not key:
            raise ConfigError(f"{option} '{text}': empty parameter")
        if not has_value:
            # Legacy flag spellings: "server" means server=on, "nowait" means wait=off.
            key, value = ("wait", "off") if key == "nowait" else (key, "on")
        if key in values:
            raise ConfigError(f"{option} '{text}': parameter '{key}' given twice")
        values[key] = value
    return values


def _parse_bool(option: str, text: str, key: str, value: str) -> bool:
    word = value.lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ConfigError(f"{option} '{text}': parameter '{key}' expects on or off, not '{value}'")


def _parse_port(option: str, text: str, value: str) -> int:
    if not value.isdigit() or int(value) > 65535:
        raise ConfigError(f"{option} '{text}': parameter 'port' must be 0-65535, not '{value}'")
    return int(value)


# -- -chardev ------------------------------------------------------------------------------------
def parse_chardev_option(text: str) -> ChardevSpec:
    """Parse `-chardev BACKEND,id=ID[,key=value...]`."""
    option = "-chardev"
    backend, *parts = split_option_text(text)
    if backend not in _BACKEND_KEYS:
        raise ConfigError(f"{option} '{text}': unknown backend '{backend}'")
    values = _key_values(option, text, parts)
    for key in values:
        if key not in _BACKEND_KEYS[backend] | {"id", "mux"}:
            raise ConfigError(f"{option} '{text}': unknown parameter '{key}' for backend '{backend}'")
    chardev_id = values.pop("id", "")
    if not _ID_PATTERN.match(chardev_id):
        raise ConfigError(f"{option} '{text}': parameter 'id' is missing or not a valid identifier")
    mux = _parse_bool(option, text, "mux", values.pop("mux", "off"))
    spec = ChardevSpec(backend=backend, id=chardev_id, mux=mux)
    if backend == "file":
        if not values.get("path"):
            raise ConfigError(f"{option} '{text}': backend 'file' needs parameter 'path'")
        append = _parse_bool(option, text, "append", values.get("append", "off"))
        spec = replace(spec, path=values["path"], append=append)
    elif backend == "socket":
        spec = _socket_spec(option, text, spec, values)
    elif backend == "stdio" and "signal" in values:
        _parse_bool(option, text, "signal", values["signal"])
    return spec


def _socket_spec(option: str, text: str, spec: ChardevSpec, values: dict[str, str]) -> ChardevSpec:
    has_path = "path" in values
    has_inet = "host" in values or "port" in values
    if has_path == has_inet:
        raise ConfigError(f"{option} '{text}': socket needs either 'path' or 'host'/'port'")
    server = _parse_bool(option, text, "server", values.get("server", "off"))
    wait = _parse_bool(option, text, "wait", values.get("wait", "on"))
    if has_path:
        if not values["path"]:
            raise ConfigError(f"{option} '{text}': parameter 'path' is empty")
        return replace(spec, path=values["path"], server=server, wait=wait)
    if "port" not in values:
        raise ConfigError(f"{option} '{text}': socket needs parameter 'port'")
    port = _parse_port(option, text, values["port"])
    return replace(spec, host=values.get("host", ""), port=port, server=server, wait=wait)


# -- -serial -------------------------------------------------------------------------------------
def parse_serial_option(text: str, index: int = 0) -> ChardevSpec | ChardevReference | None:
    """Parse a `-serial` shorthand; None for `none`. Generated ids are "serialN" like QEMU's."""
    option = "-serial"
    chardev_id = f"serial{index}"
    if text == "none":
        return None
    if text.startswith("mon:"):
        inner = parse_serial_option(text[len("mon:") :], index)
        if not isinstance(inner, ChardevSpec):
            raise ConfigError(f"{option} '{text}': 'mon:' needs a backend, not '{text[4:]}'")
        return replace(inner, mux=True, monitor=True)
    if text.startswith("chardev:"):
        reference = text[len("chardev:") :]
        if not _ID_PATTERN.match(reference):
            raise ConfigError(f"{option} '{text}': '{reference}' is not a valid chardev id")
        return ChardevReference(reference)
    if text in ("stdio", "null", "pty"):
        return ChardevSpec(backend=text, id=chardev_id)
    if text.startswith("file:"):
        path = text[len("file:") :]
        if not path:
            raise ConfigError(f"{option} '{text}': 'file:' needs a path")
        return ChardevSpec(backend="file", id=chardev_id, path=path)
    if text.startswith(("unix:", "tcp:")):
        return _serial_socket(option, text, chardev_id)
    raise ConfigError(f"{option} '{text}': unknown or unsupported serial backend")


def _serial_socket(option: str, text: str, chardev_id: str) -> ChardevSpec:
    kind, _, rest = text.partition(":")
    target, *parts = split_option_text(rest)
    values = _key_values(option, text, parts)
    for key in values:
        if key not in _SOCKET_OPTION_KEYS:
            raise ConfigError(f"{option} '{text}': unknown parameter '{key}'")
    server = _parse_bool(option, text, "server", values.get("server", "off"))
    wait = _parse_bool(option, text, "wait", values.get("wait", "on"))
    spec = ChardevSpec(backend="socket", id=chardev_id, server=server, wait=wait)
    if kind == "unix":
        if not target:
            raise ConfigError(f"{option} '{text}': 'unix:' needs a path")
        return replace(spec, path=target)
    host, colon, port_text = target.rpartition(":")
    if not colon:
        raise ConfigError(f"{option} '{text}': 'tcp:' needs HOST:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return replace(spec, host=host, port=_parse_port(option, text, port_text))


# -- building ------------------------------------------------------------------------------------
def build_chardev(
    spec: ChardevSpec, on_exit: Callable[[], None] | None = None, wait_for_client: bool = True
) -> Chardev | MuxChardev:
    """Open the backend `spec` describes (a MuxChardev when mux=on).

    A server socket with wait=on blocks here until its first client connects, as QEMU does,
    unless `wait_for_client` is False.
    """
    chardev: Chardev
    if spec.backend == "null":
        chardev = NullChardev(spec.id)
    elif spec.backend == "file":
        chardev = FileChardev(spec.id, spec.path or "", append=spec.append)
    elif spec.backend == "stdio":
        chardev = StdioChardev(spec.id, on_exit=on_exit)
    elif spec.backend == "pty":
        chardev = PtyChardev(spec.id)
        print(f"char device redirected to {chardev.path} (label {spec.id})", file=sys.stderr)
    elif spec.backend == "socket":
        address = SocketAddress(path=spec.path, host=spec.host, port=spec.port)
        socket_chardev = SocketChardev(spec.id, address, server=spec.server, wait=spec.wait)
        if spec.server and spec.wait and wait_for_client:
            print(f"kvmkit: waiting for connection on: {socket_chardev.filename()}", file=sys.stderr)
            socket_chardev.wait_for_client()
        chardev = socket_chardev
    else:
        raise ConfigError(f"chardev '{spec.id}': unknown backend '{spec.backend}'")
    return MuxChardev(chardev, on_exit=on_exit) if spec.mux else chardev
