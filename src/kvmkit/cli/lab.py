"""`kvmkit lab [OPTIONS] -- COMMAND [ARGS...]`: run COMMAND in the nested KVM lab (docs/cli.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from kvmkit.lab.runner import LabOptions, run_in_lab


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="kvmkit lab",
        description="Run COMMAND inside a nested KVM host (QEMU TCG with AMD SVM, the host's root shared "
                    "read-only, the current directory read-write). Exits with COMMAND's status; 125 if the "
                    "lab itself fails.")
    parser.add_argument("--smp", type=int, default=2, help="lab CPUs (default 2)")
    parser.add_argument("--mem", default="4G", help="lab memory (default 4G)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before the lab is killed")
    parser.add_argument("--console", action="store_true", help="also show the lab kernel's console on stderr")
    parser.add_argument("--append", default="", metavar="PARAMS",
                        help="extra lab kernel parameters, e.g. 'loglevel=7' for every kernel message")
    parser.add_argument("--hang-limit", type=float, default=120.0, metavar="S",
                        help="give the lab up (exit 120) after S seconds without its init's heartbeat (default 120)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("a command is needed after `--`")
    if args.smp < 1:
        parser.error("--smp must be at least 1")
    options = LabOptions(smp=args.smp, mem=args.mem, timeout=args.timeout, show_console=args.console,
                         kernel_append=args.append, hang_limit=args.hang_limit, workdir=Path.cwd())
    return run_in_lab(command, options)
