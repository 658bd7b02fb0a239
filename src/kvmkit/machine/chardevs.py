"""Building the serial backends a MachineConfig asks for (-serial, -chardev, -nographic)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from kvmkit.chardev.base import Chardev
from kvmkit.chardev.mux import MuxChardev
from kvmkit.chardev.spec import ChardevReference, build_chardev, parse_chardev_option, parse_serial_option
from kvmkit.errors import ConfigError
from kvmkit.machine.config import MachineConfig


@dataclass
class MachineChardevs:
    """Every backend the machine opened, by id, and the ones given to serial ports in order."""

    by_id: dict[str, Chardev | MuxChardev] = field(default_factory=dict)
    serial_backends: list[Chardev | None] = field(default_factory=list)
    monitor_muxes: list[MuxChardev] = field(default_factory=list)

    def start(self, loop: object) -> None:
        for backend in self.by_id.values():
            backend.start(loop)  # type: ignore[arg-type]

    def info(self) -> list[dict[str, object]]:
        entries: list[dict[str, object]] = []
        for backend in self.by_id.values():
            info = backend.info()
            entries.extend(info if isinstance(info, list) else [info])
        return entries

    def close(self) -> None:
        for backend in self.by_id.values():
            backend.close()


def _frontend_port(backend: Chardev | MuxChardev, label: str) -> Chardev:
    return backend.add_port(label) if isinstance(backend, MuxChardev) else backend


def build_machine_chardevs(config: MachineConfig, on_exit: Callable[[], None]) -> MachineChardevs:
    result = MachineChardevs()
    for text in config.chardevs:
        spec = parse_chardev_option(text)
        if spec.id in result.by_id:
            raise ConfigError(f"-chardev: duplicate id '{spec.id}'")
        result.by_id[spec.id] = build_chardev(spec, on_exit=on_exit)
    serials = list(config.serials)
    if not serials and config.nographic:
        serials = ["mon:stdio"]
    for index, text in enumerate(serials):
        parsed = parse_serial_option(text, index)
        if parsed is None:
            result.serial_backends.append(None)
            continue
        if isinstance(parsed, ChardevReference):
            if parsed.id not in result.by_id:
                raise ConfigError(f"-serial chardev:{parsed.id}: no -chardev with id '{parsed.id}'")
            backend = result.by_id[parsed.id]
        else:
            backend = build_chardev(parsed, on_exit=on_exit)
            result.by_id[parsed.id] = backend
            if parsed.monitor and isinstance(backend, MuxChardev):
                result.monitor_muxes.append(backend)
        result.serial_backends.append(_frontend_port(backend, f"serial{index}"))
    return result
