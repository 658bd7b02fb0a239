"""Monitor commands of the network layer: set_link, query-net-stats and kvmkit-set-net-rate."""

from __future__ import annotations

from typing import Any

from kvmkit.errors import ConfigError
from kvmkit.monitor.registry import CommandRegistry
from kvmkit.monitor.schema import ANY, BOOL, INT, STR, ListType, Member
from kvmkit.net.rate_limit import RateLimit


def register_net_commands(commands: CommandRegistry, machine: Any) -> None:
    """Register the commands for `machine.nics` (a list of kvmkit.machine.nics.Nic)."""
    from kvmkit.machine.nics import find_nic

    @commands.command("set_link", args=[Member("name", STR, doc="the NIC's id or its netdev's id"),
                                         Member("up", BOOL, doc="true to plug the cable, false to pull it")])
    def set_link(name: str, up: bool) -> None:
        """Set a NIC's link state; the guest sees the carrier change."""
        find_nic(machine, name).device.set_link(up)

    @commands.command("query-net-stats", returns=ListType(ANY),
                      args=[Member("name", STR, optional=True, doc="only this NIC")])
    def query_net_stats(name: str | None = None) -> list[dict[str, Any]]:
        """Packet, byte, drop and throttle counters of every NIC (drops never come from the rate limiter)."""
        nics = [find_nic(machine, name)] if name else list(getattr(machine, "nics", []))
        return [nic.device.stats() for nic in nics]

    @commands.command("kvmkit-set-net-rate", args=[
        Member("name", STR, doc="the NIC's id or its netdev's id"),
        Member("bytes-per-sec", INT, optional=True, doc="bytes per second each way, 0 = unlimited"),
        Member("packets-per-sec", INT, optional=True, doc="packets per second each way, 0 = unlimited")])
    def set_net_rate(name: str, bytes_per_sec: int | None = None, packets_per_sec: int | None = None) -> None:
        """Change a NIC's rate limit at run time (enforced by back-pressure, frames are never dropped)."""
        device = find_nic(machine, name).device
        current = device.rx_limiter.limit
        limit = RateLimit(current.bytes_per_sec if bytes_per_sec is None else bytes_per_sec,
                          current.packets_per_sec if packets_per_sec is None else packets_per_sec)
        if limit.bytes_per_sec < 0 or limit.packets_per_sec < 0:
            raise ConfigError("kvmkit-set-net-rate: rates must be >= 0 (0 = unlimited)")
        device.set_rate_limit(limit)
