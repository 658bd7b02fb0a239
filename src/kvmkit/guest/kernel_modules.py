"""Find kernel modules in an unpacked kernel package and order them by their declared dependencies."""

from __future__ import annotations

from pathlib import Path

from kvmkit.errors import HostError
from kvmkit.guest.elf import read_section


def module_name(path: Path) -> str:
    """The kernel's name for a module file: `virtio-rng.ko` is `virtio_rng`."""
    return path.name.split(".ko")[0].replace("-", "_")


class ModuleTree:
    """The modules of one kernel release (`lib/modules/<release>`), indexed by module name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths = {module_name(p): p for p in sorted(root.rglob("*.ko"))}
        builtin = root / "modules.builtin"
        self.builtin = (
            {module_name(Path(line.strip())) for line in builtin.read_text().splitlines() if line.strip()}
            if builtin.exists() else set()
        )

    def depends(self, name: str) -> list[str]:
        """The `depends=` list from the module's .modinfo section."""
        modinfo = read_section(self.paths[name].read_bytes(), ".modinfo")
        for item in modinfo.split(b"\0"):
            if item.startswith(b"depends="):
                return [d for d in item[len(b"depends="):].decode().split(",") if d]
        return []

    def load_order(self, wanted: list[str]) -> list[str]:
        """Wanted modules plus their dependencies, each after everything it depends on.

        Built-in modules are skipped; an unknown module is an error naming it.
        """
        order: list[str] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            name = name.replace("-", "_")
            if name in order or name in self.builtin:
                return
            if name not in self.paths:
                raise HostError(f"kernel module {name!r} is neither built in nor in {self.root}")
            if name in visiting:
                raise HostError(f"kernel module dependency cycle through {name!r}")
            visiting.add(name)
            for dep in self.depends(name):
                visit(dep)
            visiting.discard(name)
            order.append(name)

        for name in wanted:
            visit(name)
        return order
