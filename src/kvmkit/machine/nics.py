"""Network devices of the pc machine: `-netdev` backends and `-device virtio-net-pci,netdev=ID[,mac=..][,rate=..]`.

`rate=BYTES_PER_SEC` and `pps=PACKETS_PER_SEC` (K/M/G suffixes, powers of 1000) limit each direction of the
device by back-pressure; `kvmkit-set-net-rate` changes them at run time. QEMU's `-nic TYPE,...,model=virtio`
shorthand is accepted too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvmkit.cli.run_options import parse_keyvals
from kvmkit.errors import ConfigError
from kvmkit.hw.virtio.pci_transport import VirtioPciTransport

if TYPE_CHECKING:  # the network code is imported only by machines that have NICs
    from kvmkit.hw.virtio.net import VirtioNet
    from kvmkit.net.backend import NetBackend
    from kvmkit.net.rate_limit import RateLimit
    from kvmkit.net.spec import NetdevSpec

NIC_DRIVERS: tuple[str, ...] = ("virtio-net-pci", "virtio-net")
NIC_KEYS = {"netdev", "mac", "id", "rate", "pps", "bus", "addr", "mq", "vectors", "romfile"}


@dataclass
class NicSpec:
    """One `-device virtio-net-pci`."""

    netdev: str
    mac: bytes
    id: str
    limit: RateLimit


@dataclass
class Nic:
    """A NIC of the running machine: the device, its PCI function and its backend."""

    id: str
    device: VirtioNet
    transport: VirtioPciTransport
    backend: NetBackend


def default_mac(seed: str, index: int) -> bytes:
    """A stable locally administered MAC (52:54:00 like QEMU, then bytes derived from the machine and NIC)."""
    digest = hashlib.sha256(f"{seed}/{index}".encode()).digest()
    return bytes((0x52, 0x54, 0x00, digest[0], digest[1], digest[2]))


def parse_nic(text: str, index: int, seed: str) -> NicSpec | None:
    driver, _, rest = text.partition(",")
    if driver not in NIC_DRIVERS:
        return None
    from kvmkit.hw.virtio.net.header import parse_mac
    from kvmkit.net.rate_limit import RateLimit, parse_rate

    fields = parse_keyvals(rest, f"-device {driver}") if rest else {}
    unknown = set(fields) - NIC_KEYS
    if unknown:
        raise ConfigError(f"-device {driver}: unknown property {sorted(unknown)[0]!r}")
    if not fields.get("netdev"):
        raise ConfigError(f"-device {driver}: netdev=ID is required")
    try:
        mac = parse_mac(fields["mac"]) if "mac" in fields else default_mac(seed, index)
    except ValueError as error:
        raise ConfigError(f"-device {driver}: mac={error}") from None
    limit = RateLimit(parse_rate(fields.get("rate", "0"), f"-device {driver},rate"),
                      parse_rate(fields.get("pps", "0"), f"-device {driver},pps"))
    return NicSpec(fields["netdev"], mac, fields.get("id", f"net{index}"), limit)


def expand_nic_shorthand(text: str, index: int) -> tuple[str, str]:
    """QEMU's `-nic tap,ifname=..,model=virtio,mac=..` as a (-netdev, -device) pair."""
    kind, _, rest = text.partition(",")
    fields = parse_keyvals(rest, f"-nic {kind}") if rest else {}
    model = fields.pop("model", "virtio-net-pci")
    if model not in ("virtio", *NIC_DRIVERS):
        raise ConfigError(f"-nic: model={model!r} is not supported (kvmkit has virtio-net-pci)")
    device = ["virtio-net-pci", f"netdev=nic{index}"]
    for key in ("mac", "rate", "pps"):
        if key in fields:
            device.append(f"{key}={fields.pop(key)}")
    netdev = ",".join([kind, f"id=nic{index}", *(f"{k}={v}" for k, v in fields.items())])
    return netdev, ",".join(device)


def add_network_devices(machine: Any) -> list[Nic]:
    """Create the machine's NICs from its config; stored as `machine.nics`."""
    config = machine.config
    netdev_texts = list(config.netdevs)
    device_texts = list(config.devices)
    for index, text in enumerate(getattr(config, "nics", []) or []):
        if text.split(",")[0] == "none":
            continue
        netdev, device = expand_nic_shorthand(text, index)
        netdev_texts.append(netdev)
        device_texts.append(device)
    if not netdev_texts and not any(text.partition(",")[0] in NIC_DRIVERS for text in device_texts):
        machine.nics = []
        return machine.nics
    from kvmkit.hw.virtio.net import VirtioNet
    from kvmkit.net.spec import open_backend, parse_netdev, wants_vhost

    specs: dict[str, NetdevSpec] = {}
    for text in netdev_texts:
        spec = parse_netdev(text)
        if spec.id in specs:
            raise ConfigError(f"-netdev: two netdevs have the id '{spec.id}'")
        specs[spec.id] = spec
    seed = config.name or str(config.kernel)
    nic_specs = [nic for index, text in enumerate(device_texts)
                 if (nic := parse_nic(text, index, seed)) is not None]
    used: set[str] = set()
    for nic in nic_specs:
        if nic.netdev not in specs:
            raise ConfigError(f"-device virtio-net-pci: no -netdev with id '{nic.netdev}'")
        if nic.netdev in used:
            raise ConfigError(f"-device virtio-net-pci: netdev '{nic.netdev}' is used by two NICs")
        used.add(nic.netdev)
    for unused in sorted(set(specs) - used):
        raise ConfigError(f"-netdev {specs[unused].kind},id={unused}: no -device virtio-net-pci,netdev={unused}")
    from kvmkit.machine.pc import KvmMsiSink

    nics: list[Nic] = []
    machine.nics = nics
    for index, nic in enumerate(nic_specs):
        spec = specs[nic.netdev]
        backend = open_backend(spec)
        device = VirtioNet(nic.id, machine.dma, backend, nic.mac, machine.loop, nic.limit)
        if wants_vhost(spec):
            from kvmkit.net.vhost.net import attach_vhost

            attach_vhost(device, machine, spec)
        transport = VirtioPciTransport(device, KvmMsiSink(machine.vm), name=f"virtio-net{index}")
        machine.pci.add(transport)
        kick_fds = transport.attach_ioeventfds(machine.vm, machine.loop)
        if device.vhost is not None:
            from kvmkit.net.vhost.net import bind_kick_fds

            bind_kick_fds(device, transport, kick_fds)
        nics.append(Nic(nic.id, device, transport, backend))
    return nics


def find_nic(machine: Any, name: str) -> Nic:
    for nic in getattr(machine, "nics", []):
        if name in (nic.id, nic.backend.id):
            return nic
    raise ConfigError(f"no network device or netdev named '{name}'")
