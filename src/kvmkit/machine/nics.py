"""Network devices of the pc machine (-netdev/-device virtio-net-pci): being built; until then a clear error."""

from __future__ import annotations

from typing import Any

from kvmkit.errors import ConfigError

NIC_DRIVERS: tuple[str, ...] = ()


def add_network_devices(machine: Any) -> None:
    """Create the machine's NICs from its config."""
    if machine.config.netdevs:
        raise ConfigError("-netdev: kvmkit has no network backends yet")
