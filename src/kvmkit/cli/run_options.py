"""QEMU's spelling of the common options, parsed into a MachineConfig with errors that name the option."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kvmkit.errors import ConfigError
from kvmkit.machine.config import MAX_CPUS, MIN_MEMORY, MachineConfig
from kvmkit.memory.layout import RAM_BACKENDS

SIZE_SUFFIXES = {"": 1 << 20, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str, option: str, default_unit: int = 1 << 20) -> int:
    """`512M`, `2G`, `1024` (MiB, as QEMU's -m) -> bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([bkmgtBKMGT]?)(?:i?[bB])?", text.strip())
    if not match:
        raise ConfigError(f"{option}: invalid size {text!r} (use e.g. 512M or 2G)")
    unit = SIZE_SUFFIXES[match.group(2).lower()] if match.group(2) else default_unit
    return int(float(match.group(1)) * unit)


def parse_keyvals(text: str, option: str, implied: str | None = None) -> dict[str, str]:
    """`a=1,b=2` (with an optional implied first key, as `-smp 2` means cpus=2)."""
    result: dict[str, str] = {}
    for index, part in enumerate(text.split(",")):
        if "=" in part:
            key, value = part.split("=", 1)
        elif index == 0 and implied:
            key, value = implied, part
        else:
            raise ConfigError(f"{option}: expected key=value, got {part!r}")
        result[key.strip()] = value
    return result


def _memory(config: MachineConfig, value: str) -> None:
    fields = parse_keyvals(value, "-m", implied="size")
    unknown = set(fields) - {"size", "slots", "maxmem"}
    if unknown:
        raise ConfigError(f"-m: unknown parameter {sorted(unknown)[0]!r}")
    config.memory = parse_size(fields["size"], "-m")
    if config.memory < MIN_MEMORY:
        raise ConfigError(f"-m: {config.memory >> 10} KiB of memory is too small to boot Linux "
                          f"(at least {MIN_MEMORY >> 20} MiB)")


def _smp(config: MachineConfig, value: str) -> None:
    fields = parse_keyvals(value, "-smp", implied="cpus")
    unknown = set(fields) - {"cpus", "maxcpus", "sockets", "cores", "threads", "dies"}
    if unknown:
        raise ConfigError(f"-smp: unknown parameter {sorted(unknown)[0]!r}")
    try:
        topology = {key: int(val) for key, val in fields.items()}
    except ValueError as exc:
        raise ConfigError(f"-smp: {value!r} is not a CPU count") from exc
    cpus = topology.get("cpus")
    if cpus is None:
        cpus = topology.get("sockets", 1) * topology.get("cores", 1) * topology.get("threads", 1)
    if not 1 <= cpus <= MAX_CPUS:
        raise ConfigError(f"-smp: the CPU count must be between 1 and {MAX_CPUS}, not {cpus}")
    config.cpus = cpus


def _existing_file(option: str) -> Callable[[str], Path]:
    def check(value: str) -> Path:
        path = Path(value)
        if not path.is_file():
            raise ConfigError(f"{option}: {value}: no such file")
        return path
    return check


ON_OFF = {"on": True, "yes": True, "true": True, "off": False, "no": False, "false": False}


MACHINE_SWITCHES = {"kernel-cache": "kernel_cache", "auto-kernel-cmdline": "auto_kernel_cmdline"}
MACHINE_CHOICES = {"ram-backend": ("ram_backend", RAM_BACKENDS)}


def _machine(config: MachineConfig, value: str) -> None:
    fields = parse_keyvals(value, "-machine", implied="type")
    kind = fields.pop("type", "pc")
    if kind not in ("pc", "q35", "microvm"):
        raise ConfigError(f"-machine: unsupported machine type {kind!r} (kvmkit provides 'pc')")
    config.machine_type = "pc"
    if "accel" in fields:
        _accel(config, fields.pop("accel"))
    for key, setting in fields.items():
        if key in MACHINE_CHOICES:
            attribute, choices = MACHINE_CHOICES[key]
            if setting not in choices:
                raise ConfigError(f"-machine: {key} takes {' or '.join(choices)}, not {setting!r}")
            setattr(config, attribute, setting)
            continue
        if key not in MACHINE_SWITCHES:
            known = ", ".join(["accel", *MACHINE_SWITCHES, *MACHINE_CHOICES])
            raise ConfigError(f"-machine: unknown property {key!r} (kvmkit's pc machine has {known})")
        flag = ON_OFF.get(setting.lower())
        if flag is None:
            raise ConfigError(f"-machine: {key} takes on or off, not {setting!r}")
        setattr(config, MACHINE_SWITCHES[key], flag)


def _accel(config: MachineConfig, value: str) -> None:
    kind = parse_keyvals(value, "-accel", implied="accel").get("accel")
    if kind != "kvm":
        raise ConfigError(f"-accel: kvmkit runs on KVM only, not {kind!r}")


def _display(config: MachineConfig, value: str) -> None:
    if value.split(",")[0] != "none":
        raise ConfigError(f"-display: kvmkit has no graphical display; use -display none, not {value!r}")


@dataclass(frozen=True)
class Option:
    takes_value: bool
    apply: Callable[[MachineConfig, str], None]
    help: str


def _set(attr: str, convert: Callable[[str], object] = str) -> Callable[[MachineConfig, str], None]:
    return lambda config, value: setattr(config, attr, convert(value))


def _append_to(attr: str) -> Callable[[MachineConfig, str], None]:
    return lambda config, value: getattr(config, attr).append(value)


def _flag(attr: str) -> Callable[[MachineConfig, str], None]:
    return lambda config, _value: setattr(config, attr, True)


def _ignored(_config: MachineConfig, _value: str) -> None:
    """Accepted for QEMU compatibility; kvmkit behaves this way anyway."""


OPTIONS: dict[str, Option] = {
    "-m": Option(True, _memory, "guest RAM, e.g. 512M or 2G"),
    "-smp": Option(True, _smp, "vCPUs: N or cpus=N[,sockets=..,cores=..,threads=..]"),
    "-kernel": Option(True, _set("kernel", _existing_file("-kernel")), "Linux bzImage to boot directly"),
    "-initrd": Option(True, _set("initrd", _existing_file("-initrd")), "initial ramdisk"),
    "-append": Option(True, _set("append"), "kernel command line"),
    "-name": Option(True, lambda c, v: setattr(c, "name", parse_keyvals(v, "-name", "guest").get("guest")),
                    "guest name"),
    "-serial": Option(True, _append_to("serials"), "serial port backend (stdio, file:P, pty, unix:P, ...)"),
    "-chardev": Option(True, _append_to("chardevs"), "character backend: BACKEND,id=ID[,...]"),
    "-monitor": Option(True, _append_to("monitors"), "human monitor: stdio, unix:PATH,server=on,wait=off"),
    "-qmp": Option(True, _append_to("qmp"), "QMP monitor: unix:PATH,server=on,wait=off or tcp:H:P,..."),
    "-drive": Option(True, _append_to("drives"), "disk: file=PATH,if=virtio|none,format=..,id=ID"),
    "-device": Option(True, _append_to("devices"), "device: DRIVER[,prop=value...]"),
    "-netdev": Option(True, _append_to("netdevs"), "network backend: tap|bridge|stream|dgram|user,id=ID"),
    "-nographic": Option(False, _flag("nographic"), "no display; serial on stdio"),
    "-display": Option(True, _display, "only 'none'"),
    "-no-reboot": Option(False, _flag("no_reboot"), "exit instead of rebooting"),
    "-no-shutdown": Option(False, _flag("no_shutdown"), "stay paused when the guest powers off"),
    "-S": Option(False, _flag("start_paused"), "start with the CPUs stopped (prelaunch)"),
    "-D": Option(True, _set("log_file", Path), "write the log to this file"),
    "-d": Option(True, lambda c, v: c.log_items.extend(v.split(",")), "log items (e.g. guest_errors,exits)"),
    "-machine": Option(True, _machine, "machine type (pc)[,kernel-cache=on|off][,auto-kernel-cmdline=on|off]"
                                     "[,ram-backend=anonymous|memfd]"),
    "-M": Option(True, _machine, "same as -machine"),
    "-accel": Option(True, _accel, "only kvm"),
    "-enable-kvm": Option(False, _ignored, "accepted; kvmkit always uses KVM"),
    "-cpu": Option(True, _ignored, "accepted; kvmkit passes the host's KVM-supported CPUID"),
    "-nodefaults": Option(False, _ignored, "accepted; kvmkit creates no default devices"),
}


def parse_run_options(argv: list[str]) -> MachineConfig:
    """Parse QEMU-style options; any problem is a ConfigError naming the option."""
    config = MachineConfig()
    args = list(argv)
    while args:
        raw = args.pop(0)
        name = "-" + raw.lstrip("-") if raw.startswith("--") else raw
        option = OPTIONS.get(name)
        if option is None:
            hint = " (kvmkit run takes QEMU-style options; see kvmkit run --help)"
            raise ConfigError(f"unknown option {raw!r}{hint}" if raw.startswith("-")
                              else f"unexpected argument {raw!r}{hint}")
        value = ""
        if option.takes_value:
            if not args:
                raise ConfigError(f"option {name} needs a value")
            value = args.pop(0)
        option.apply(config, value)
    if config.kernel is None and (config.initrd is not None or config.append):
        raise ConfigError("-initrd and -append need -kernel")
    return config


def usage() -> str:
    lines = ["usage: kvmkit run [options]   (QEMU's spelling)", ""]
    for name, option in OPTIONS.items():
        arg = " VALUE" if option.takes_value else ""
        lines.append(f"  {name + arg:<22} {option.help}")
    return "\n".join(lines)
