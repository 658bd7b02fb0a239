"""`kvmkit run [QEMU-style options]`: build a PC and run it until it shuts down."""

from __future__ import annotations

import faulthandler
import logging
import signal
import sys
from types import FrameType
from typing import Any

from kvmkit.cli.run_options import parse_run_options, usage


def _configure_logging(log_file: str | None, items: list[str]) -> None:
    if not log_file and not items:
        return
    level = logging.DEBUG if items else logging.INFO
    handler: logging.Handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(name)s: %(message)s"))
    root = logging.getLogger("kvmkit")
    root.addHandler(handler)
    root.setLevel(level)


class SignalShutdown:
    """SIGTERM, SIGINT and SIGHUP end the VMM as they end QEMU: SHUTDOWN (reason host-signal), exit 0.

    Installed before the machine is built, so a chardev that chains signal handlers (stdio restoring the
    terminal) runs first and then hands the signal here.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self) -> None:
        self.machine: Any = None

    def install(self) -> None:
        for signum in self.SIGNALS:
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        machine = self.machine
        if machine is None:  # still building the machine: nothing to shut down yet
            raise SystemExit(128 + signum)
        print(f"kvmkit: terminating on signal {signum}", file=sys.stderr, flush=True)
        machine.loop.call_soon_threadsafe(lambda: machine.request_shutdown("host-signal"))


def main(argv: list[str]) -> int:
    if any(arg in ("-h", "--help", "-help") for arg in argv):
        print(usage())
        return 0
    config = parse_run_options(argv)
    _configure_logging(str(config.log_file) if config.log_file else None, config.log_items)
    from kvmkit.machine.monitor_glue import attach_monitors
    from kvmkit.machine.pc import PcMachine

    signals = SignalShutdown()
    signals.install()
    machine = PcMachine(config)
    # `kill -USR1 PID`: every thread's stack (at once, from C) and then the virtio queues' indices on stderr
    signal.signal(signal.SIGUSR1, lambda signum, frame: print(machine.debug_state(), file=sys.stderr, flush=True))
    faulthandler.register(signal.SIGUSR1, all_threads=True, chain=True)
    signals.machine = machine
    monitors = attach_monitors(machine, config)
    try:
        return machine.run()
    finally:
        if monitors is not None:
            monitors.close()
