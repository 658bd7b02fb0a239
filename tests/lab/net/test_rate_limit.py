"""Rate limiting by back-pressure: iperf3 throughput within 10% of the limit each way, changed at run time through
the monitor, and no frame dropped by the device.

The flows are UDP offered at 1.25x the limit: what arrives is what the limiter let through. TCP through the limit
measured the nested lab as much as the limiter (a tap queue seconds deep, retransmission timeouts: 0.54-0.96 of a
1 Mbit/s limit from run to run host->guest, while the same lab moved 13 Mbit/s unlimited)."""

from __future__ import annotations

import time

import pytest

from harness.monitored_run import start_monitored_run, with_qmp
from lab.net.netlab import guest_ip, iperf_rates, iperf_script, iperf_server, sh, tap

pytestmark = [pytest.mark.lab, pytest.mark.extended]
# Well below what the nested lab moves unlimited (~6-10 Mbit/s quiet; guest->host fell to 1.2 Mbit/s at load ~7).
FIRST_RATE, SECOND_RATE = 125_000, 62_500  # bytes per second (1 and 0.5 Mbit/s)
DATAGRAM = 1400  # UDP payload: 1442-byte frames, so the payload rate is 0.97 of the frame rate the limiter counts
RATE_CHANGED, STATS_TAKEN = "10.0.5.3", "10.0.5.4"  # host addresses the guest waits for between phases


def _wait_for(run, marker: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while marker not in run.output():
        if run.process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no {marker!r}:\n{run.output()}")
        time.sleep(0.2)


def _wait_for_host(address: str) -> str:
    """Guest shell: wait until the host answers on `address` (its go-ahead), instead of sleeping a guess."""
    return f"until ping -c 1 -W 1 {address} >/dev/null 2>&1; do :; done\n"


def _udp_script(tag: str, rate: int) -> str:
    offered = int(rate * 8 * 1.25)
    return iperf_script("10.0.5.2", tag, seconds=4, extra=f"-u -l {DATAGRAM} -b {offered}")


def test_rate_limit_holds_iperf_throughput_and_drops_nothing(net_guest):
    script = (guest_ip("10.0.5.15/24") + "ping -c 1 -W 2 10.0.5.2 >/dev/null\n"
              + _udp_script("PHASE1", FIRST_RATE) + "\necho PHASE1-DONE\n" + _wait_for_host(RATE_CHANGED)
              + _udp_script("PHASE2", SECOND_RATE) + "\necho PHASE2-DONE\n" + _wait_for_host(STATS_TAKEN))
    with tap("kvt1", "10.0.5.2/24") as ifname, iperf_server("10.0.5.2"):
        run = start_monitored_run(net_guest, script, "-netdev", "tap,id=n0,ifname=kvt1,script=no,downscript=no",
                                  "-device", f"virtio-net-pci,netdev=n0,id=nic0,rate={FIRST_RATE}", paused=False)
        try:
            _wait_for(run, "PHASE1-DONE")

            async def slow_down(client):  # type: ignore[no-untyped-def]
                await client.execute("kvmkit-set-net-rate", {"name": "nic0", "bytes-per-sec": SECOND_RATE})

            with_qmp(run.qmp_path, slow_down)
            sh("ip", "addr", "add", f"{RATE_CHANGED}/24", "dev", ifname)
            _wait_for(run, "PHASE2-DONE")

            async def stats(client):  # type: ignore[no-untyped-def]
                return await client.execute("query-net-stats", {"name": "nic0"})

            counters = with_qmp(run.qmp_path, stats)[0]
            sh("ip", "addr", "add", f"{STATS_TAKEN}/24", "dev", ifname)
            run.wait_exit(120)
            output = run.output()
        finally:
            run.close()
    for phase, rate in (("PHASE1", FIRST_RATE), ("PHASE2", SECOND_RATE)):
        measured = iperf_rates(output, phase)
        print(f"{phase} limit {rate * 8 / 1e6:.1f} Mbit/s: guest->host {measured.get('tx', 0) / 1e6:.2f}, "
              f"host->guest {measured.get('rx', 0) / 1e6:.2f} Mbit/s")
        for direction in ("tx", "rx"):
            ratio = measured.get(direction, 0) / (rate * 8)
            assert 0.9 <= ratio <= 1.1, f"{phase} {direction}: {ratio:.3f} of the limit\n{output}"
    print("counters:", counters)
    assert counters["rx"]["dropped"] == 0 and counters["tx"]["dropped"] == 0
    assert counters["rx"]["throttled"] > 0 and counters["tx"]["throttled"] > 0
    assert counters["rate"]["bytes-per-sec"] == SECOND_RATE
