"""Carry host programs (with their shared libraries and the dynamic loader) into a guest initramfs."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

from kvmkit.errors import HostError
from kvmkit.guest.cpio import CpioEntry

LDD_LINE = re.compile(r"(?:\S+ => )?(/\S+) \(0x[0-9a-f]+\)")


def program_path(name: str) -> Path:
    found = shutil.which(name)
    if found is None:
        raise HostError(f"guest tool {name!r} is not installed on the host (apt-get install {name})")
    return Path(found)


def shared_libraries(binary: Path) -> list[Path]:
    """The libraries `ldd` says the binary loads, loader included, as the paths the loader will look for."""
    done = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return []  # a static binary
    return [Path(match.group(1)) for line in done.stdout.splitlines() if (match := LDD_LINE.search(line.strip()))]


def program_files(names: tuple[str, ...]) -> dict[PurePosixPath, Path]:
    """Guest path -> host file for each program (placed in /usr/bin) and every library it needs."""
    files: dict[PurePosixPath, Path] = {}
    for name in names:
        binary = program_path(name)
        files[PurePosixPath("usr/bin") / name] = binary
        for library in shared_libraries(binary):
            files[PurePosixPath(str(library).lstrip("/"))] = library
    return files


def program_entries(names: tuple[str, ...], existing_dirs: set[str]) -> list[CpioEntry]:
    """cpio members for the programs: missing parent directories first, then the files (dereferenced)."""
    files = program_files(names)
    directories: set[str] = set()
    for guest_path in files:
        directories.update(str(parent) for parent in guest_path.parents if str(parent) != ".")
    entries = [CpioEntry.directory(d) for d in sorted(directories - existing_dirs, key=lambda d: d.count("/"))]
    for guest_path, host_path in sorted(files.items()):
        entries.append(CpioEntry.file(str(guest_path), host_path.resolve().read_bytes(), 0o755))
    return entries
