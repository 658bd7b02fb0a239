"""`kvmkit run [QEMU-style options]`: build a PC and run it until it shuts down."""

from __future__ import annotations

import logging
import sys

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


def main(argv: list[str]) -> int:
    if any(arg in ("-h", "--help", "-help") for arg in argv):
        print(usage())
        return 0
    config = parse_run_options(argv)
    _configure_logging(str(config.log_file) if config.log_file else None, config.log_items)
    from kvmkit.machine.monitor_glue import attach_monitors
    from kvmkit.machine.pc import PcMachine

    machine = PcMachine(config)
    hub = attach_monitors(machine, config)
    try:
        return machine.run()
    finally:
        if hub is not None:
            hub.close()
