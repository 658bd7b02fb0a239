"""`-netdev TYPE,id=ID,...` in QEMU's spelling, turned into an opened backend."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from kvmkit.cli.run_options import parse_keyvals, parse_size
from kvmkit.errors import ConfigError, HostError
from kvmkit.net.backend import NetBackend
from kvmkit.net.ifreq import add_bridge_port, set_interface_up
from kvmkit.net.sockets import DgramBackend, StreamBackend, unix_path_cleanup
from kvmkit.net.tap import TapBackend

# A tap's send buffer bounds the frames queued in the host stack on the guest's behalf; once full, writes (and
# vhost-net's transmit) stall until the stack frees space. QEMU sets it to INT_MAX unless told otherwise.
TAP_SNDBUF_UNLIMITED = 2**31 - 1
TRUE_WORDS, FALSE_WORDS = {"on", "yes", "true"}, {"off", "no", "false"}
COMMON_KEYS = {"id"}
KEYS = {
    "tap": {"ifname", "script", "downscript", "vhost", "vnet_hdr", "vhostforce", "sndbuf"},
    "bridge": {"br", "helper", "vhost", "sndbuf"},
    "stream": {"server", "addr.type", "addr.path", "addr.host", "addr.port", "addr.abstract", "reconnect"},
    "dgram": {"local.type", "local.host", "local.port", "local.path", "remote.type", "remote.host",
              "remote.port", "remote.path"},
    "user": {"net", "host", "dhcpstart", "hostfwd", "interface", "passt", "ipv6", "ipv4"},
}


@dataclass
class NetdevSpec:
    """One validated -netdev option."""

    kind: str
    id: str
    options: dict[str, str]

    @property
    def what(self) -> str:
        return f"-netdev {self.kind},id={self.id}"

    def flag(self, key: str, default: bool) -> bool:
        value = self.options.get(key)
        if value is None:
            return default
        if value in TRUE_WORDS:
            return True
        if value in FALSE_WORDS:
            return False
        raise ConfigError(f"{self.what}: {key}={value!r} must be on or off")

    def send_buffer(self) -> int:
        """The tap's send buffer in bytes (`sndbuf=`, as QEMU: 0 or absent means unlimited)."""
        text = self.options.get("sndbuf", "0")
        size = parse_size(text, f"{self.what}: sndbuf", default_unit=1)
        return min(size, TAP_SNDBUF_UNLIMITED) if size else TAP_SNDBUF_UNLIMITED


def parse_netdev(text: str) -> NetdevSpec:
    kind, _, rest = text.partition(",")
    if kind not in KEYS:
        raise ConfigError(f"-netdev {kind!r}: unknown type (kvmkit has {', '.join(KEYS)})")
    fields = parse_keyvals(rest, f"-netdev {kind}") if rest else {}
    netdev_id = fields.get("id", "")
    if not netdev_id:
        raise ConfigError(f"-netdev {kind}: id=ID is required")
    unknown = set(fields) - KEYS[kind] - COMMON_KEYS
    if unknown:
        raise ConfigError(f"-netdev {kind},id={netdev_id}: unknown parameter {sorted(unknown)[0]!r}")
    spec = NetdevSpec(kind, netdev_id, fields)
    if kind == "tap":
        for key in ("script", "downscript"):
            if fields.get(key, "no") != "no":
                raise ConfigError(f"{spec.what}: {key}= must be 'no' (kvmkit runs no scripts; set the tap up "
                                  "beforehand or use -netdev bridge)")
    if kind == "bridge" and "helper" in fields:
        raise ConfigError(f"{spec.what}: helper= is not used: kvmkit attaches the tap to the bridge itself")
    return spec


def wants_vhost(spec: NetdevSpec) -> bool:
    return spec.kind in ("tap", "bridge") and spec.flag("vhost", False)


def open_backend(spec: NetdevSpec) -> NetBackend:
    """Create the host side of a -netdev."""
    options = spec.options
    if spec.kind == "tap":
        return TapBackend(spec.id, options.get("ifname", ""), vnet_hdr=spec.flag("vnet_hdr", True),
                          sndbuf=spec.send_buffer())
    if spec.kind == "bridge":
        return open_bridge(spec)
    if spec.kind == "stream":
        return open_stream(spec)
    if spec.kind == "dgram":
        return open_dgram(spec)
    from kvmkit.net.user import PasstBackend

    return PasstBackend(spec.id, options)


def open_bridge(spec: NetdevSpec) -> TapBackend:
    bridge = spec.options.get("br", "br0")
    if not os.path.isdir(f"/sys/class/net/{bridge}/bridge"):
        raise HostError(f"{spec.what}: {bridge!r} is not an existing Linux bridge "
                        f"(create it: ip link add {bridge} type bridge; ip link set {bridge} up)")
    backend = TapBackend(spec.id, "kvmkit%d", vnet_hdr=True, sndbuf=spec.send_buffer())
    backend.kind = "bridge"
    try:
        add_bridge_port(bridge, backend.ifname, spec.what)
        set_interface_up(backend.ifname, spec.what)
    except HostError:
        backend.close()
        raise
    return backend


def _address(spec: NetdevSpec, prefix: str) -> tuple[int, object]:
    options = spec.options
    kind = options.get(f"{prefix}.type", "inet")
    if kind == "unix":
        path = options.get(f"{prefix}.path")
        if not path:
            raise ConfigError(f"{spec.what}: {prefix}.path= is required with {prefix}.type=unix")
        return socket.AF_UNIX, path
    if kind == "inet":
        host, port = options.get(f"{prefix}.host", "127.0.0.1"), options.get(f"{prefix}.port")
        if port is None or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{spec.what}: {prefix}.port= must be a port number 1-65535")
        return socket.AF_INET6 if ":" in host else socket.AF_INET, (host, int(port))
    raise ConfigError(f"{spec.what}: {prefix}.type={kind!r} must be unix or inet")


def open_stream(spec: NetdevSpec) -> StreamBackend:
    family, address = _address(spec, "addr")
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if spec.flag("server", False):
            if family == socket.AF_UNIX:
                unix_path_cleanup(str(address))
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)  # type: ignore[arg-type]
            sock.listen(1)
            return StreamBackend(spec.id, listener=sock)
        sock.connect(address)  # type: ignore[arg-type]
        return StreamBackend(spec.id, sock=sock)
    except OSError as error:
        sock.close()
        raise HostError(f"{spec.what}: cannot {'listen on' if spec.flag('server', False) else 'connect to'} "
                        f"{address}: {error.strerror}") from error


def open_dgram(spec: NetdevSpec) -> DgramBackend:
    if not any(key.startswith("local.") for key in spec.options):
        raise ConfigError(f"{spec.what}: local.type=...,local.host/port or local.path is required")
    family, local = _address(spec, "local")
    remote = None
    if any(key.startswith("remote.") for key in spec.options):
        remote_family, remote = _address(spec, "remote")
        if remote_family != family:
            raise ConfigError(f"{spec.what}: local and remote addresses must be of the same type")
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_UNIX:
            unix_path_cleanup(str(local))
        sock.bind(local)  # type: ignore[arg-type]
    except OSError as error:
        sock.close()
        raise HostError(f"{spec.what}: cannot bind {local}: {error.strerror}") from error
    return DgramBackend(spec.id, sock, remote)
