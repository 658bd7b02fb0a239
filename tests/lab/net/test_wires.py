"""Guests joined by a Linux bridge, by a stream socket (kvmkit <-> QEMU), and a guest behind passt."""

from __future__ import annotations

import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from harness.guest_run import kvmkit_command, qemu_command, run_guest
from lab.net.netlab import bridge, guest_ip, ping_until, run_parallel, sh

pytestmark = [pytest.mark.lab, pytest.mark.extended]


def test_two_kvmkit_guests_on_one_bridge_ping_each_other(net_guest):
    with bridge("kvbr0", "192.168.100.1/24"):
        runs = run_parallel(*(
            kvmkit_command(net_guest, guest_ip(f"192.168.100.{mine}/24") + ping_until(f"192.168.100.{peer}", "PEER")
                           + ping_until("192.168.100.1", "HOST", tries=5) + "sleep 6\n",
                           "-netdev", "bridge,id=n0,br=kvbr0", "-device", f"virtio-net-pci,netdev=n0,"
                           f"mac=52:54:00:00:01:{mine:02x}")
            for mine, peer in ((11, 12), (12, 11))))
    for run in runs:
        assert "PEER ok" in run.output and "HOST ok" in run.output, run.output + run.stderr


def test_kvmkit_and_qemu_guests_share_a_stream_socket(net_guest):
    directory = Path(tempfile.mkdtemp(prefix="kvmkit-wire-"))
    path = directory / "wire.sock"
    kvmkit = kvmkit_command(net_guest, guest_ip("10.0.3.1/24") + ping_until("10.0.3.2", "PEER") + "sleep 6\n",
                            "-netdev", f"stream,id=n0,server=on,addr.type=unix,addr.path={path}",
                            "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:00:03:01")
    # No reconnect=: the lab's QEMU (7.2) rejects it ("Parameter 'reconnect' is unexpected"), and the socket
    # exists before QEMU starts.
    qemu = qemu_command(net_guest, guest_ip("10.0.3.2/24") + ping_until("10.0.3.1", "PEER") + "sleep 6\n",
                        "-netdev", f"stream,id=n0,server=off,addr.type=unix,addr.path={path}",
                        "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:00:03:02")
    results: dict[str, object] = {}
    first = threading.Thread(target=lambda: results.setdefault("kvmkit", run_guest(kvmkit, timeout=300)))
    first.start()
    deadline = time.monotonic() + 120
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    results["qemu"] = run_guest(qemu, timeout=300)
    first.join()
    for name in ("kvmkit", "qemu"):
        run = results[name]
        assert "PEER ok" in run.output, f"{name}:\n{run.output}{run.stderr}"  # type: ignore[attr-defined]


def test_guest_behind_passt_reaches_a_tcp_service_on_the_host(net_guest):
    netns = "kvns-user"
    sh("ip", "netns", "del", netns, check=False)
    sh("ip", "netns", "add", netns)
    try:
        for argv in (("ip", "link", "add", "kvd0", "type", "dummy"), ("ip", "addr", "add", "10.0.4.1/24", "dev",
                     "kvd0"), ("ip", "link", "set", "kvd0", "up"), ("ip", "link", "set", "lo", "up"),
                     ("ip", "route", "add", "default", "via", "10.0.4.254", "dev", "kvd0")):
            sh("ip", "netns", "exec", netns, *argv)
        greeting = b"hello-from-the-lab-host\n"
        server = subprocess.Popen(["ip", "netns", "exec", netns, "python3", "-c",
                                   "import socket,sys\ns=socket.create_server(('0.0.0.0',5555))\n"
                                   "c,_=s.accept();c.sendall(sys.argv[1].encode()+b'\\n');c.close()",
                                   greeting.decode().strip()])
        script = (guest_ip("10.0.2.15/24") + "ip route add default via 10.0.2.2\n"
                  "for i in 1 2 3 4 5 6 7 8 9 10; do nc 10.0.2.2 5555 > /tmp/got && [ -s /tmp/got ] && break; "
                  "sleep 1; done\necho \"GOT $(cat /tmp/got)\"\n")
        argv = ["ip", "netns", "exec", netns, *kvmkit_command(
            net_guest, script, "-netdev", "user,id=n0,net=10.0.2.0/24,host=10.0.2.2",
            "-device", "virtio-net-pci,netdev=n0")]
        run = run_guest(argv, timeout=240)
        server.kill()
    finally:
        sh("ip", "netns", "del", netns, check=False)
    assert f"GOT {greeting.decode().strip()}" in run.output, run.output + run.stderr
