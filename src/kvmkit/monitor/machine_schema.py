"""QAPI-style types and events of the run-control commands (QEMU's names and member spellings)."""

from __future__ import annotations

from kvmkit.core.runstate import RunState
from kvmkit.monitor.registry import EventRegistry, EventSpec
from kvmkit.monitor.schema import BOOL, INT, STR, EnumType, ListType, Member, ObjectType, object_type

RUN_STATE = EnumType("RunState", tuple(state.value for state in RunState), "The machine's run state.")
SYS_EMU_TARGET = EnumType("SysEmuTarget", ("x86_64",), "The emulated architecture.")
SHUTDOWN_CAUSE = EnumType(
    "ShutdownCause",
    ("none", "host-error", "host-qmp-quit", "host-qmp-system-reset", "host-signal", "host-ui",
     "guest-shutdown", "guest-reset", "guest-panic", "subsystem-reset", "snapshot-load"),
    "Why a machine shut down or reset.",
)
IO_OPERATION_TYPE = EnumType("IoOperationType", ("read", "write"), "The direction of a block request.")
BLOCK_ERROR_ACTION = EnumType("BlockErrorAction", ("ignore", "report", "stop"), "What an I/O error caused.")

STATUS_INFO = object_type("StatusInfo", [
    Member("running", BOOL, doc="true if the vCPUs run"),
    Member("singlestep", BOOL, doc="always false"),
    Member("status", RUN_STATE),
])
VERSION_TRIPLE = object_type("VersionTriple", [
    Member("major", INT), Member("minor", INT), Member("micro", INT),
])
VERSION_INFO = object_type("VersionInfo", [Member("qemu", VERSION_TRIPLE), Member("package", STR)])
NAME_INFO = object_type("NameInfo", [Member("name", STR, optional=True)])
COMMAND_INFO = object_type("CommandInfo", [Member("name", STR)])
KVM_INFO = object_type("KvmInfo", [Member("enabled", BOOL), Member("present", BOOL)])
HUMAN_READABLE_TEXT = object_type("HumanReadableText", [Member("human-readable-text", STR)])

CPU_INSTANCE_PROPERTIES = object_type("CpuInstanceProperties", [
    Member(name, INT, optional=True) for name in ("node-id", "socket-id", "die-id", "cluster-id", "core-id",
                                                 "thread-id")
])
CPU_INFO_FAST = object_type("CpuInfoFast", [
    Member("cpu-index", INT), Member("qom-path", STR), Member("thread-id", INT),
    Member("props", CPU_INSTANCE_PROPERTIES, optional=True), Member("target", SYS_EMU_TARGET),
])
CHARDEV_INFO = object_type("ChardevInfo", [
    Member("label", STR), Member("filename", STR), Member("frontend-open", BOOL),
])

PCI_MEMORY_REGION = object_type("PciMemoryRegion", [
    Member("bar", INT), Member("type", STR, doc="'io' or 'memory'"),
    Member("address", INT), Member("size", INT),
    Member("prefetch", BOOL, optional=True), Member("mem_type_64", BOOL, optional=True),
])
PCI_DEVICE_CLASS = object_type("PciDeviceClass", [Member("desc", STR, optional=True), Member("class", INT)])
PCI_DEVICE_ID = object_type("PciDeviceId", [
    Member("device", INT), Member("vendor", INT),
    Member("subsystem", INT, optional=True), Member("subsystem-vendor", INT, optional=True),
])
PCI_DEVICE_INFO = object_type("PciDeviceInfo", [
    Member("bus", INT), Member("slot", INT), Member("function", INT), Member("class_info", PCI_DEVICE_CLASS),
    Member("id", PCI_DEVICE_ID), Member("irq", INT, optional=True), Member("qdev_id", STR),
    Member("regions", ListType(PCI_MEMORY_REGION)),
])
PCI_INFO = object_type("PciInfo", [Member("bus", INT), Member("devices", ListType(PCI_DEVICE_INFO))])

BLOCK_DEVICE_INFO = object_type("BlockDeviceInfo", [
    Member("file", STR), Member("node-name", STR, optional=True), Member("ro", BOOL), Member("drv", STR),
    Member("backing_file_depth", INT), Member("encrypted", BOOL),
])
BLOCK_INFO = object_type("BlockInfo", [
    Member("device", STR), Member("qdev", STR, optional=True),
    Member("locked", BOOL), Member("removable", BOOL),
    Member("inserted", BLOCK_DEVICE_INFO, optional=True),
    Member("io-status", EnumType("BlockDeviceIoStatus", ("ok", "failed", "nospace")), optional=True),
])
BLOCK_DEVICE_STATS = object_type("BlockDeviceStats", [
    Member(name, INT) for name in ("rd_bytes", "wr_bytes", "rd_operations", "wr_operations",
                                   "flush_operations", "failed_rd_operations", "failed_wr_operations")
])
BLOCK_STATS = object_type("BlockStats", [
    Member("device", STR, optional=True), Member("node-name", STR, optional=True),
    Member("stats", BLOCK_DEVICE_STATS),
])

_SHUTDOWN_DATA = [
    Member("guest", BOOL, doc="true if the guest asked for it"),
    Member("reason", SHUTDOWN_CAUSE, doc="what caused it"),
]

MACHINE_EVENTS = (
    EventSpec("STOP", doc="The vCPUs stopped (a `stop` command, an error, a debug exception)."),
    EventSpec("RESUME", doc="The vCPUs resumed."),
    EventSpec("RESET", ObjectType("q_obj_RESET-arg", tuple(_SHUTDOWN_DATA)), "The machine was reset."),
    EventSpec("SHUTDOWN", ObjectType("q_obj_SHUTDOWN-arg", tuple(_SHUTDOWN_DATA)),
              "The machine shut down (emitted before the VMM exits or stays in the shutdown state)."),
    EventSpec("POWERDOWN", doc="A power-down request (ACPI power button) was sent to the guest."),
    EventSpec("BLOCK_IO_ERROR", ObjectType("q_obj_BLOCK_IO_ERROR-arg", (
        Member("device", STR, doc="the block backend, '' if it has no name"),
        Member("node-name", STR, optional=True),
        Member("operation", IO_OPERATION_TYPE),
        Member("action", BLOCK_ERROR_ACTION),
        Member("nospace", BOOL, optional=True, doc="true when the host ran out of space"),
        Member("reason", STR, doc="a human-readable description of the error"),
    )), "A disk request failed."),
)


def declare_machine_events(events: EventRegistry) -> None:
    """Declare STOP, RESUME, RESET, SHUTDOWN, POWERDOWN and BLOCK_IO_ERROR."""
    for spec in MACHINE_EVENTS:
        events.declare(spec)
