"""`-netdev user`: kvmkit starts passt(1) and speaks its unix stream protocol (QEMU's stream framing).

passt gets one end of a socketpair (`--fd`), stays in the foreground (`-f`) as our child and quits with the
connection (`-1`). Host services are reachable from the guest at the gateway address (passt maps it to the
host), as with QEMU's slirp.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import socket
import subprocess

from kvmkit.errors import ConfigError, HostError
from kvmkit.net.sockets import StreamBackend

log = logging.getLogger(__name__)


def passt_argv(netdev_id: str, options: dict[str, str], fd: int) -> list[str]:
    """passt's command line for QEMU-style user options (net=, host=, dhcpstart=, hostfwd=, interface=)."""
    what = f"-netdev user,id={netdev_id}"
    binary = options.get("passt") or shutil.which("passt")
    if not binary:
        raise HostError(f"{what}: passt is not installed (Debian package 'passt'), or give passt=PATH")
    argv = [binary, "-f", "-q", "-1", "--fd", str(fd)]
    if "net" in options:
        try:
            network = ipaddress.IPv4Network(options["net"], strict=False)
        except ValueError as error:
            raise ConfigError(f"{what}: net={options['net']!r}: {error}") from error
        guest = options.get("dhcpstart", str(network.network_address + 15))
        gateway = options.get("host", str(network.network_address + 2))
        argv += ["-a", guest, "-n", str(network.prefixlen), "-g", gateway]
    elif "host" in options:
        argv += ["-g", options["host"]]
    if "interface" in options:
        argv += ["-i", options["interface"]]
    for forward in filter(None, options.get("hostfwd", "").split(";")):
        argv += ["-t" if forward.startswith("tcp:") else "-u", hostfwd_to_passt(forward, what)]
    return argv


def hostfwd_to_passt(rule: str, what: str) -> str:
    """QEMU's `tcp::HOSTPORT-:GUESTPORT` as passt's `HOSTPORT:GUESTPORT`."""
    try:
        _proto, rest = rule.split(":", 1)
        host, guest = rest.split("-", 1)
        host_port = host.rsplit(":", 1)[1]
        guest_port = guest.rsplit(":", 1)[1]
        int(host_port), int(guest_port)
    except (ValueError, IndexError):
        raise ConfigError(f"{what}: hostfwd={rule!r} is not PROTO::HOSTPORT-:GUESTPORT") from None
    return f"{host_port}:{guest_port}"


class PasstBackend(StreamBackend):
    """A StreamBackend whose peer is a passt child process."""

    kind = "user"

    def __init__(self, netdev_id: str, options: dict[str, str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        argv = passt_argv(netdev_id, options, theirs.fileno())
        try:
            self.process = subprocess.Popen(argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        except OSError as error:
            ours.close()
            raise HostError(f"-netdev user,id={netdev_id}: cannot start {argv[0]}: {error.strerror}") from error
        finally:
            theirs.close()
        self.argv = argv
        super().__init__(netdev_id, sock=ours)

    def info(self) -> dict[str, object]:
        return {**super().info(), "passt-pid": self.process.pid}

    def close(self) -> None:
        super().close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.process.kill()
