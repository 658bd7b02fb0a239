"""Run states of a machine, spelled as QEMU's QMP names them."""

from enum import StrEnum


class RunState(StrEnum):
    """The machine's run state (QMP `query-status` values)."""

    PRELAUNCH = "prelaunch"
    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"
    INTERNAL_ERROR = "internal-error"
    GUEST_PANICKED = "guest-panicked"
    INMIGRATE = "inmigrate"
    POSTMIGRATE = "postmigrate"
    FINISH_MIGRATE = "finish-migrate"
    RESTORE_VM = "restore-vm"
    DEBUG = "debug"
