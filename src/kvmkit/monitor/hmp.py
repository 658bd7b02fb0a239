"""The human monitor: text commands built on the QMP command registry (HMP formats what QMP returns).

`HmpInterpreter` runs one line; `HmpFrontend` is a chardev frontend (receive/can_receive, output through a
callable) so the same monitor serves a unix socket or a multiplexed `-monitor stdio`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from kvmkit.monitor import hmp_format
from kvmkit.monitor.errors import QmpError
from kvmkit.monitor.registry import CommandRegistry

log = logging.getLogger(__name__)

PROMPT = "(kvmkit) "


@dataclass(frozen=True)
class HmpCall:
    """The context one HMP line runs in: the interpreter and the monitor's current CPU."""

    interpreter: HmpInterpreter
    cpu_index: int = 0

    def qmp(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run a QMP command from the registry."""
        return self.interpreter.commands.execute(name, arguments)


@dataclass(frozen=True)
class HmpCommand:
    """One human command: `run(call, words)` returns the text to print."""

    name: str
    params: str
    help: str
    run: Callable[[HmpCall, list[str]], str]


def _simple(qmp_name: str) -> Callable[[HmpCall, list[str]], str]:
    def run(call: HmpCall, words: list[str]) -> str:
        call.qmp(qmp_name)
        return ""

    return run


def _formatted(qmp_name: str, formatter: Callable[[Any], str]) -> Callable[[HmpCall, list[str]], str]:
    def run(call: HmpCall, words: list[str]) -> str:
        return formatter(call.qmp(qmp_name))

    return run


def _info_cpus(call: HmpCall, words: list[str]) -> str:
    return hmp_format.format_cpus(call.qmp("query-cpus-fast"), call.cpu_index)


def _info_registers(call: HmpCall, words: list[str]) -> str:
    index = call.cpu_index
    if words:
        if not words[0].isdigit():
            raise QmpError("GenericError", f"'{words[0]}' is not a CPU index")
        index = int(words[0])
    result = call.qmp("x-query-registers", {"cpu-index": index})
    text = str(result.get("human-readable-text", ""))
    return text if text.endswith("\n") or not text else text + "\n"


def _help(call: HmpCall, words: list[str]) -> str:
    return call.interpreter.help_text(words[0] if words else None)


def _info(call: HmpCall, words: list[str]) -> str:
    return call.interpreter.run_info(call, words)


class HmpInterpreter:
    """Parses and runs human monitor lines against a CommandRegistry (the caller holds the machine lock)."""

    def __init__(self, commands: CommandRegistry) -> None:
        self.commands = commands
        self._top: dict[str, HmpCommand] = {}
        self._info: dict[str, HmpCommand] = {}
        for command in (
            HmpCommand("help", "[command]", "show the help", _help),
            HmpCommand("info", "[subcommand]", "show information about the machine", _info),
            HmpCommand("stop", "", "stop emulation", _simple("stop")),
            HmpCommand("cont", "", "resume emulation", _simple("cont")),
            HmpCommand("system_reset", "", "reset the system", _simple("system_reset")),
            HmpCommand("system_powerdown", "", "send a system power down event", _simple("system_powerdown")),
            HmpCommand("quit", "", "quit the emulator", _simple("quit")),
        ):
            self.add(command)
        for command in (
            HmpCommand("status", "", "show the current VM status", _formatted("query-status",
                                                                              hmp_format.format_status)),
            HmpCommand("version", "", "show the version",
                       _formatted("query-version", hmp_format.format_version)),
            HmpCommand("block", "", "show the block devices",
                       _formatted("query-block", hmp_format.format_block)),
            HmpCommand("pci", "", "show PCI info", _formatted("query-pci", hmp_format.format_pci)),
            HmpCommand("cpus", "", "show infos for each CPU", _info_cpus),
            HmpCommand("registers", "[cpu-index]", "show the cpu registers", _info_registers),
            HmpCommand("chardev", "", "show the character devices",
                       _formatted("query-chardev", hmp_format.format_chardev)),
        ):
            self.add(command, info=True)

    def add(self, command: HmpCommand, info: bool = False) -> None:
        """Add a command (or an `info` subcommand); other subsystems may extend the human monitor."""
        (self._info if info else self._top)[command.name] = command

    def execute(self, line: str, cpu_index: int = 0) -> str:
        """Run one line and return its output; failures print as `Error: ...`, never raise."""
        words = line.split()
        if not words:
            return ""
        command = self._top.get(words[0])
        if command is None:
            return f"unknown command: '{words[0]}'\n"
        try:
            return command.run(HmpCall(self, cpu_index), words[1:])
        except QmpError as exc:
            return f"Error: {exc.desc}\n"
        except Exception as exc:  # a broken command must not take the monitor down
            log.exception("HMP command '%s' failed", line)
            return f"Error: internal error: {exc}\n"

    def help_text(self, name: str | None = None) -> str:
        """`help` output: every command, or one."""
        if name is not None and name not in self._top:
            return f"unknown command: '{name}'\n"
        names = [name] if name is not None else sorted(self._top)
        text = "".join(_help_line(self._top[n]) for n in names)
        if name in (None, "info"):
            text += "".join(_help_line(self._info[n], "info ") for n in sorted(self._info))
        return text

    def run_info(self, call: HmpCall, words: list[str]) -> str:
        """`info SUBCOMMAND ...`; a bare `info` lists the subcommands."""
        if not words:
            return "".join(_help_line(self._info[name], "info ") for name in sorted(self._info))
        command = self._info.get(words[0])
        if command is None:
            return f"unknown info command: '{words[0]}' (try 'info' for a list)\n"
        return command.run(call, words[1:])


def _help_line(command: HmpCommand, prefix: str = "") -> str:
    usage = f"{prefix}{command.name} {command.params}".rstrip()
    return f"{usage} -- {command.help}\n"


class HmpFrontend:
    """A human monitor session as a chardev frontend: bytes in through `receive`, text out via `write`.

    Lines end with CR or LF; each runs under `lock`.  A line longer than `max_line` is rejected.
    """

    def __init__(
        self,
        interpreter: HmpInterpreter,
        write: Callable[[bytes], None],
        lock: AbstractContextManager[Any],
        *,
        echo: bool = False,
        max_line: int = 4096,
        banner: str = "kvmkit monitor - type 'help' for more information",
    ) -> None:
        self.interpreter = interpreter
        self.write = write
        self.lock = lock
        self.echo = echo
        self.max_line = max_line
        self.banner = banner
        self.cpu_index = 0
        self._line = bytearray()
        self._overflow = False
        self._after_cr = False

    def open(self) -> None:
        """Print the banner and the first prompt (call when the backend connects)."""
        self.write(f"{self.banner}\r\n{PROMPT}".encode())

    def can_receive(self) -> int:
        return max(1, self.max_line - len(self._line))

    def receive(self, data: bytes) -> None:
        for byte in data:
            if byte == 0x0A and self._after_cr:  # the LF of a CRLF pair
                self._after_cr = False
                continue
            self._after_cr = byte == 0x0D
            if byte in (0x0A, 0x0D):
                self._end_line()
            elif byte in (0x08, 0x7F):
                if self._line:
                    del self._line[-1]
                    if self.echo:
                        self.write(b"\b \b")
            elif byte >= 0x20 or byte == 0x09:
                if len(self._line) >= self.max_line:
                    self._overflow = True
                    continue
                self._line.append(byte)
                if self.echo:
                    self.write(bytes([byte]))

    def _end_line(self) -> None:
        line = self._line.decode("utf-8", errors="replace")
        self._line.clear()
        if self.echo:
            self.write(b"\r\n")
        if self._overflow:
            self._overflow = False
            output = f"Error: line longer than {self.max_line} bytes ignored\n"
        else:
            with self.lock:
                output = self.interpreter.execute(line, self.cpu_index)
        self.write((output.replace("\n", "\r\n") + PROMPT).encode())
