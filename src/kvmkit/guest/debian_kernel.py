"""Fetch a Debian kernel package with apt and unpack it into kvmkit's cache."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kvmkit.errors import HostError

FLAVOR_METAPACKAGES = {"generic": "linux-image-amd64", "cloud": "linux-image-cloud-amd64"}


def cache_root() -> Path:
    """`$KVMKIT_CACHE`, else `$XDG_CACHE_HOME/kvmkit`, else `~/.cache/kvmkit`."""
    if "KVMKIT_CACHE" in os.environ:
        return Path(os.environ["KVMKIT_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "kvmkit"


@dataclass(frozen=True)
class UnpackedKernel:
    """A kernel package unpacked on disk: the bzImage and its module tree."""

    package: str
    version: str
    vmlinuz: Path
    modules: Path

    @property
    def release(self) -> str:
        return self.modules.name


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise HostError(f"{argv[0]} is not installed (needed to fetch guest kernels)") from exc
    if done.returncode != 0:
        raise HostError(f"`{' '.join(argv)}` failed: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout


def resolve_kernel_package(flavor: str) -> tuple[str, str]:
    """The concrete `linux-image-<release>` package the flavour's metapackage points at, and its version."""
    if flavor not in FLAVOR_METAPACKAGES:
        raise HostError(f"unknown guest flavor {flavor!r} (choose from {', '.join(FLAVOR_METAPACKAGES)})")
    meta = FLAVOR_METAPACKAGES[flavor]
    depends = _run(["apt-cache", "depends", meta])
    match = re.search(r"Depends: (linux-image-\S+)", depends)
    if not match:
        raise HostError(f"apt does not know {meta}; run `apt-get update` first")
    package = match.group(1)
    policy = _run(["apt-cache", "policy", package])
    version = re.search(r"Candidate: (\S+)", policy)
    if not version or version.group(1) == "(none)":
        raise HostError(f"apt has no installable version of {package}")
    return package, version.group(1)


def fetch_kernel(flavor: str) -> UnpackedKernel:
    """Download (once) and unpack the flavour's current kernel package under the cache."""
    package, version = resolve_kernel_package(flavor)
    target = cache_root() / "kernels" / f"{package}_{version}"
    if not (target / ".complete").exists():
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            os.chmod(tmp, 0o755)  # apt's sandbox user must be able to write here
            _run(["apt-get", "download", "-q", f"{package}={version}"], cwd=Path(tmp))
            deb = next(Path(tmp).glob("*.deb"))
            unpack = Path(tmp) / "root"
            _run(["dpkg-deb", "-x", str(deb), str(unpack)])
            unpack.rename(target)
        (target / ".complete").write_text(version)
    vmlinuz = next((target / "boot").glob("vmlinuz-*"))
    modules = next((target / "lib" / "modules").iterdir())
    return UnpackedKernel(package, version, vmlinuz, modules)
