"""`-netdev tap,...,sndbuf=`: the tap's send buffer, unlimited by default as in QEMU (checked with TUNGETSNDBUF)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from kvmkit.errors import ConfigError
from kvmkit.net.spec import TAP_SNDBUF_UNLIMITED, parse_netdev

TUNGETSNDBUF = 0x800454D3
PROBE = f"""
import ctypes, fcntl, sys
from kvmkit.net.spec import open_backend, parse_netdev
for text in sys.argv[1:]:
    backend = open_backend(parse_netdev(text))
    value = ctypes.c_int()
    fcntl.ioctl(backend.fd, {TUNGETSNDBUF}, value)
    print(value.value)
    backend.close()
"""


@pytest.mark.parametrize(("text", "expected"), [
    ("tap,id=n0", TAP_SNDBUF_UNLIMITED),
    ("tap,id=n0,sndbuf=0", TAP_SNDBUF_UNLIMITED),
    ("tap,id=n0,sndbuf=64k", 64 * 1024),
    ("tap,id=n0,sndbuf=1048576", 1 << 20),
    ("tap,id=n0,sndbuf=8G", TAP_SNDBUF_UNLIMITED),
    ("bridge,id=n0,br=br0,sndbuf=2M", 2 << 20),
])
def test_sndbuf_option_parses_as_qemu(text: str, expected: int) -> None:
    assert parse_netdev(text).send_buffer() == expected


def test_bad_sndbuf_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="sndbuf"):
        parse_netdev("tap,id=n0,sndbuf=lots").send_buffer()


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun") or not shutil.which("unshare"),
                    reason="needs root, /dev/net/tun and unshare (a tap in a private network namespace)")
def test_tap_gets_the_send_buffer() -> None:
    """Taps in a network namespace of the test's own: the kernel reports the buffer kvmkit set."""
    result = subprocess.run(["unshare", "-n", sys.executable, "-c", PROBE,
                             "tap,id=a,ifname=kvt0", "tap,id=b,ifname=kvt1,sndbuf=96k"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(TAP_SNDBUF_UNLIMITED), str(96 * 1024)]
