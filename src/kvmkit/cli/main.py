"""The `kvmkit` command: a subcommand per job; errors print one line, not a traceback (unless -d)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from kvmkit import __version__
from kvmkit.errors import KvmkitError

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    # name: (module under kvmkit.cli, one-line help)
    "run": ("run", "boot a virtual machine (QEMU-style options: -m, -smp, -kernel, ...)"),
    "lab": ("lab", "run a command inside the nested KVM lab"),
    "guest": ("guest", "build guest kernels and initramfs images"),
    "host-check": ("", "say whether this host can boot unmodified guests"),
    "img": ("img", "create, inspect, check and convert disk images"),
    "demo": ("demo", "boot a Linux guest and show it working"),
}


def _usage() -> str:
    lines = [f"kvmkit {__version__}: a virtual machine monitor for Linux KVM", "", "usage: kvmkit COMMAND ...", ""]
    lines += [f"  {name:<11} {summary}" for name, (_, summary) in SUBCOMMANDS.items()]
    lines += ["", "`kvmkit COMMAND --help` describes each command; -d before COMMAND shows tracebacks."]
    return "\n".join(lines)


def _host_check(argv: list[str]) -> int:
    import argparse  # here, not at the top: `kvmkit run` starts faster without argparse and json
    import json

    parser = argparse.ArgumentParser(prog="kvmkit host-check", description=SUBCOMMANDS["host-check"][1])
    parser.add_argument("--json", action="store_true", help="print a JSON object")
    args = parser.parse_args(argv)
    from kvmkit.cli.host_check import check_host

    verdict = check_host()
    print(json.dumps({"can_boot": verdict.can_boot, "message": verdict.message}) if args.json else verdict.message)
    return 0 if verdict.can_boot else 1


def _entry_point(name: str) -> Callable[[list[str]], int]:
    if name == "host-check":
        return _host_check
    module = __import__(f"kvmkit.cli.{SUBCOMMANDS[name][0]}", fromlist=["main"])
    if name == "img":
        return module.run_img
    return module.main


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = False
    while argv and argv[0] in ("-d", "--debug"):
        debug = True
        argv.pop(0)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"kvmkit {__version__}")
        return 0
    name = argv.pop(0)
    if name not in SUBCOMMANDS:
        print(f"kvmkit: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="kvmkit: %(levelname)s %(name)s: %(message)s")
    try:
        return _entry_point(name)(argv)
    except KvmkitError as exc:
        if debug:
            raise
        print(f"kvmkit {name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
