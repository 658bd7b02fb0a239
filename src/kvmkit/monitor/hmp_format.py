"""Turns QMP results into the human monitor's text (one function per `info` command)."""

from __future__ import annotations

from typing import Any


def format_status(status: dict[str, Any]) -> str:
    text = "VM status: " + ("running" if status.get("running") else "paused")
    if not status.get("running") and status.get("status") != "paused":
        text += f" ({status.get('status')})"
    return text + "\n"


def format_version(version: dict[str, Any]) -> str:
    qemu = version.get("qemu", {})
    return f"{qemu.get('major')}.{qemu.get('minor')}.{qemu.get('micro')} ({version.get('package', '')})\n"


def format_block(devices: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for device in devices:
        inserted = device.get("inserted")
        if inserted is None:
            lines.append(f"{device.get('device')}: [not inserted]")
        else:
            mode = ", read-only" if inserted.get("ro") else ""
            lines.append(f"{device.get('device')}: {inserted.get('file')} ({inserted.get('drv')}{mode})")
        if device.get("qdev"):
            lines.append(f"    Attached to:      {device['qdev']}")
        if device.get("removable"):
            lines.append(f"    Removable device: {'locked' if device.get('locked') else 'not locked'}")
    return "".join(line + "\n" for line in lines)


def format_pci(buses: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for bus in buses:
        for dev in bus.get("devices", []):
            lines.append(f"  Bus {dev.get('bus', 0):2d}, device {dev.get('slot', 0):3d}, "
                         f"function {dev.get('function', 0)}:")
            class_info = dev.get("class_info", {})
            ident = dev.get("id", {})
            label = class_info.get("desc") or f"Class {class_info.get('class', 0):04x}"
            lines.append(f"    {label}: PCI device {ident.get('vendor', 0):04x}:{ident.get('device', 0):04x}")
            if "subsystem-vendor" in ident and "subsystem" in ident:
                lines.append(f"      PCI subsystem {ident['subsystem-vendor']:04x}:{ident['subsystem']:04x}")
            if dev.get("irq") is not None:
                lines.append(f"      IRQ {dev['irq']}.")
            for region in dev.get("regions", []):
                kind = "I/O" if region.get("type") == "io" else "Memory"
                start = region.get("address", 0)
                end = start + region.get("size", 0) - 1
                lines.append(f"      BAR{region.get('bar')}: {kind} at 0x{start:x} [0x{end:x}].")
            lines.append(f"      id \"{dev.get('qdev_id', '')}\"")
    return "".join(line + "\n" for line in lines)


def format_cpus(cpus: list[dict[str, Any]], current: int) -> str:
    return "".join(
        f"{'*' if cpu.get('cpu-index') == current else ' '} CPU #{cpu.get('cpu-index')}: "
        f"thread_id={cpu.get('thread-id')}\n"
        for cpu in cpus
    )


def format_chardev(chardevs: list[dict[str, Any]]) -> str:
    return "".join(f"{dev.get('label')}: filename={dev.get('filename')}\n" for dev in chardevs)
