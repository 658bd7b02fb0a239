"""`-drive` and `-device virtio-blk-pci` in QEMU's spelling, turned into opened block drivers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvmkit.cli.run_options import parse_keyvals
from kvmkit.errors import ConfigError

if TYPE_CHECKING:
    from kvmkit.block.driver import BlockDriver

DRIVE_KEYS = {"file", "if", "format", "id", "readonly", "cache", "media", "index", "discard", "aio", "serial"}
CACHE_MODES = {"none", "writeback", "writethrough", "directsync", "unsafe"}
TRUE_WORDS, FALSE_WORDS = {"on", "yes", "true"}, {"off", "no", "false"}


@dataclass
class DriveSpec:
    """One `-drive` option, validated."""

    id: str
    file: str
    interface: str
    format: str | None
    read_only: bool
    cache: str
    serial: str = ""


@dataclass
class BlkDeviceSpec:
    """One `-device virtio-blk-pci,drive=ID[,serial=..][,id=..]`."""

    drive: str
    serial: str
    id: str | None


def _flag(option: str, key: str, value: str) -> bool:
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise ConfigError(f"{option}: {key}={value!r} must be on or off")


def parse_drive(text: str, index: int) -> DriveSpec:
    fields = parse_keyvals(text, "-drive")
    unknown = set(fields) - DRIVE_KEYS
    if unknown:
        raise ConfigError(f"-drive: unknown parameter {sorted(unknown)[0]!r}")
    if not fields.get("file"):
        raise ConfigError("-drive: file=PATH is required")
    interface = fields.get("if", "virtio")
    if interface not in ("virtio", "none"):
        raise ConfigError(f"-drive: if={interface!r} is not supported (use if=virtio or if=none)")
    cache = fields.get("cache", "writeback")
    if cache not in CACHE_MODES:
        raise ConfigError(f"-drive: cache={cache!r} is not one of {', '.join(sorted(CACHE_MODES))}")
    return DriveSpec(
        id=fields.get("id", f"drive{index}"), file=fields["file"], interface=interface,
        format=fields.get("format"), read_only=_flag("-drive", "readonly", fields.get("readonly", "off")),
        cache="none" if cache in ("none", "directsync") else "writeback", serial=fields.get("serial", ""),
    )


def parse_blk_device(text: str) -> BlkDeviceSpec | None:
    """A virtio-blk device, or None when the -device is some other driver."""
    driver, _, rest = text.partition(",")
    if driver not in ("virtio-blk-pci", "virtio-blk"):
        return None
    fields = parse_keyvals(rest, "-device") if rest else {}
    unknown = set(fields) - {"drive", "serial", "id", "bus", "addr"}
    if unknown:
        raise ConfigError(f"-device {driver}: unknown property {sorted(unknown)[0]!r}")
    if "drive" not in fields:
        raise ConfigError(f"-device {driver}: drive=ID is required")
    return BlkDeviceSpec(fields["drive"], fields.get("serial", ""), fields.get("id"))


@dataclass
class OpenedDrive:
    spec: DriveSpec
    driver: BlockDriver
    serial: str
    device_id: str | None = None


def open_drives(drive_texts: list[str], device_texts: list[str]) -> list[OpenedDrive]:
    """Open every drive that a virtio-blk device will use (if=virtio drives get one implicitly)."""
    specs = [parse_drive(text, index) for index, text in enumerate(drive_texts)]
    by_id = {spec.id: spec for spec in specs}
    if len(by_id) != len(specs):
        raise ConfigError("-drive: two drives have the same id")
    wanted: list[tuple[DriveSpec, str, str | None]] = [(s, s.serial, None) for s in specs if s.interface == "virtio"]
    for text in device_texts:
        device = parse_blk_device(text)
        if device is None:
            continue
        spec = by_id.get(device.drive)
        if spec is None:
            raise ConfigError(f"-device virtio-blk-pci: no -drive with id '{device.drive}'")
        if spec.interface != "none":
            raise ConfigError(f"-device virtio-blk-pci: drive '{device.drive}' needs if=none "
                              "(if=virtio already creates its own device)")
        wanted.append((spec, device.serial or spec.serial, device.id))
    opened: list[OpenedDrive] = []
    if not wanted:
        return opened
    from kvmkit.block.open import open_image  # the block layer (qcow2, vmdk, zstd) only for machines with disks

    try:
        for spec, serial, device_id in wanted:
            driver = open_image(spec.file, spec.format, read_only=spec.read_only, cache=spec.cache)
            opened.append(OpenedDrive(spec, driver, serial, device_id))
    except BaseException:
        for drive in opened:
            drive.driver.close()
        raise
    return opened
