"""Errors a monitor command reports to its client, in QEMU's QMP error classes."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorClass(StrEnum):
    """The `class` member of a QMP error response (QEMU's QapiErrorClass)."""

    GENERIC_ERROR = "GenericError"
    COMMAND_NOT_FOUND = "CommandNotFound"
    DEVICE_NOT_FOUND = "DeviceNotFound"
    DEVICE_NOT_ACTIVE = "DeviceNotActive"
    KVM_MISSING_CAP = "KVMMissingCap"


class QmpError(Exception):
    """A command failed; `error_class` and `desc` become the client's `{"error": ...}` object."""

    def __init__(self, error_class: ErrorClass | str, desc: str) -> None:
        super().__init__(desc)
        self.error_class = ErrorClass(error_class)
        self.desc = desc

    def to_json(self) -> dict[str, Any]:
        """The `error` member of a QMP response."""
        return {"class": self.error_class.value, "desc": self.desc}


def generic_error(desc: str) -> QmpError:
    """The most common failure: a GenericError with a human-readable description."""
    return QmpError(ErrorClass.GENERIC_ERROR, desc)
