"""The null backend: output vanishes, input never comes."""

from __future__ import annotations

from kvmkit.chardev.base import Chardev


class NullChardev(Chardev):
    """Discards everything the device writes (`-chardev null`)."""

    def write(self, data: bytes) -> None:
        return None

    def filename(self) -> str:
        return "null"
