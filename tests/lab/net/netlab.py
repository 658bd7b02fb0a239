"""Host-side plumbing of the network lab tests: taps, bridges, netns, iperf3 servers, guest scripts.

Everything uses the tests' own names (kvt*, kvbr*, kvns*) and private addresses inside the lab VM.
"""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from harness.guest_run import GuestRun, run_guest

IPERF_LINE = re.compile(r"([\d.]+)\s+([KMG])bits/sec.*\b(sender|receiver)\b")
UNIT = {"K": 1e3, "M": 1e6, "G": 1e9}


def sh(*argv: str, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and done.returncode:
        raise AssertionError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


@contextmanager
def tap(name: str, address: str) -> Iterator[str]:
    sh("ip", "link", "del", name, check=False)
    sh("ip", "tuntap", "add", "dev", name, "mode", "tap")
    sh("ip", "addr", "add", address, "dev", name)
    sh("ip", "link", "set", name, "up")
    try:
        yield name
    finally:
        sh("ip", "link", "del", name, check=False)


@contextmanager
def bridge(name: str, address: str) -> Iterator[str]:
    sh("ip", "link", "del", name, check=False)
    sh("ip", "link", "add", name, "type", "bridge")
    sh("ip", "addr", "add", address, "dev", name)
    sh("ip", "link", "set", name, "up")
    try:
        yield name
    finally:
        sh("ip", "link", "del", name, check=False)


@contextmanager
def iperf_server(address: str, port: int = 5201, netns: str | None = None) -> Iterator[None]:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    server = subprocess.Popen([*prefix, "iperf3", "-s", "-B", address, "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        server.kill()
        server.wait()


def iperf_rates(output: str, tag: str) -> dict[str, float]:
    """Receiver-side bits per second of the iperf3 runs the guest tagged `tag` (lines `TAG <iperf line>`)."""
    rates: dict[str, float] = {}
    for line in output.splitlines():
        if line.startswith(tag + " ") and "receiver" in line:
            match = IPERF_LINE.search(line)
            if match:
                rates[line.split()[1]] = float(match.group(1)) * UNIT[match.group(2)]
    return rates


def iperf_script(server: str, tag: str, seconds: int = 3, extra: str = "") -> str:
    """Guest shell: iperf3 guest->host (`TAG tx ...`) and host->guest (`TAG rx ...`), receiver lines kept."""
    return "\n".join(
        f"iperf3 -c {server} -t {seconds} -f k {extra} {flag} 2>&1 | grep -E 'receiver|error' "
        f"| sed 's/^/{tag} {name} /'"
        for name, flag in (("tx", ""), ("rx", "-R")))


def guest_ip(address: str, device: str = "eth0") -> str:
    return f"ip link set {device} up\nip addr add {address} dev {device}\n"


def ping_until(peer: str, tag: str, tries: int = 90) -> str:
    """Guest shell: ping `peer` until it answers (the peer may still be booting); prints TAG ok|fail."""
    return (f"i=0; until ping -c 1 -W 1 {peer} >/dev/null 2>&1; do i=$((i+1)); "
            f"[ $i -ge {tries} ] && break; done\n"
            f"if ping -c 3 -W 2 {peer}; then echo '{tag} ok'; else echo '{tag} fail'; fi\n")


def run_parallel(*argvs: list[str], timeout: float = 300) -> list[GuestRun]:
    results: list[GuestRun | None] = [None] * len(argvs)

    def one(index: int, argv: list[str]) -> None:
        results[index] = run_guest(argv, timeout=timeout)

    threads = [threading.Thread(target=one, args=(i, argv)) for i, argv in enumerate(argvs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(result is not None for result in results)
    return results  # type: ignore[return-value]
