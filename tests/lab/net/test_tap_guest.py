"""A kvmkit guest on a tap: static address, ping the lab host, iperf3 both ways (userspace and vhost=on)."""

from __future__ import annotations

import pytest

from harness.guest_run import kvmkit_command, run_guest
from lab.net.netlab import guest_ip, iperf_rates, iperf_script, iperf_server, tap

pytestmark = [pytest.mark.lab, pytest.mark.extended]


@pytest.mark.parametrize("vhost", ["off", "on"])
def test_guest_on_tap_pings_and_moves_data_both_ways(net_guest, vhost):
    script = (guest_ip("10.0.2.15/24") + "ping -c 3 -W 2 10.0.2.2 && echo PING-OK\n"
              + iperf_script("10.0.2.2", "IPERF") + "\ncat /sys/class/net/eth0/statistics/rx_dropped\n")
    with tap("kvt0", "10.0.2.2/24"), iperf_server("10.0.2.2"):
        run = run_guest(kvmkit_command(
            net_guest, script, "-netdev", f"tap,id=n0,ifname=kvt0,script=no,downscript=no,vhost={vhost}",
            "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56"), timeout=240)
    assert run.guest_status == 0, run.output + run.stderr
    assert "PING-OK" in run.output, run.output
    rates = iperf_rates(run.output, "IPERF")
    print(f"vhost={vhost}: guest->host {rates.get('tx', 0) / 1e6:.1f} Mbit/s, "
          f"host->guest {rates.get('rx', 0) / 1e6:.1f} Mbit/s")
    assert rates.get("tx", 0) > 1e6 and rates.get("rx", 0) > 1e6, run.output
