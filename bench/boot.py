"""Boot benchmark (run inside the lab): process start to the guest's first userspace line, and PIO exits/s.

    kvmkit lab --timeout 1800 -- .venv/bin/python -m bench.boot [--reps N]

In one lab boot, the same bzImage and initramfs are booted by kvmkit with its defaults, by kvmkit doing exactly
the guest work QEMU does (`kvmkit-plain`: no kernel cache, nothing added to the command line), by QEMU `-M pc` and
by QEMU `-M microvm` (all KVM, 1 vCPU, 256 MiB, `quiet`), `--reps` times each, interleaved. The clock starts when
the VMM process is spawned and stops when the guest's script prints its first line. Then a PIO-heavy guest loop
(`dd` from /dev/port over 4096 unassigned ports per block: one exit per byte) measures exits per second, and the
VMM is stopped. Medians and ratios go to bench/results/boot.json and boot.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness.guest_run import kvmkit_command, qemu_command
from kvmkit.guest.build import GuestAssets, build_guest

RESULTS = Path(__file__).resolve().parent / "results"
FIRST_LINE = "kvmkit-bench-userspace"
PIO_BLOCKS = 40  # x 4096 port reads
PIO_SCRIPT = (f"echo {FIRST_LINE}; s=$(cut -d' ' -f1 /proc/uptime); "
              f"dd if=/dev/port of=/dev/null bs=4096 skip=1 count={PIO_BLOCKS} 2>/dev/null; "
              "e=$(cut -d' ' -f1 /proc/uptime); echo PIO_SECONDS $(awk \"BEGIN{print $e-$s}\")")


def vmm_commands(assets: GuestAssets, script: str) -> dict[str, list[str]]:
    return {
        "kvmkit": kvmkit_command(assets, script),
        "kvmkit-plain": kvmkit_command(assets, script, "-machine", "pc,kernel-cache=off,auto-kernel-cmdline=off"),
        "qemu-pc": qemu_command(assets, script),
        "qemu-microvm": qemu_command(assets, script, machine="microvm"),
    }


def time_to_first_line(argv: list[str], timeout: float = 300) -> tuple[float, str]:
    """Seconds from spawn to FIRST_LINE on stdout, and the output up to the PIO result (then the VMM is stopped:
    what a VMM does after the guest's script is not measured, and QEMU's microvm does not power off)."""
    started = time.monotonic()
    first = float("nan")
    lines: list[str] = []
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True) as process:
        assert process.stdout is not None
        watchdog = threading.Timer(timeout, process.kill)  # a silent, stuck VMM must not stall the benchmark
        watchdog.daemon = True
        watchdog.start()
        try:
            for line in process.stdout:
                lines.append(line)
                if FIRST_LINE in line and first != first:  # nan check: first time only
                    first = time.monotonic() - started
                if line.startswith("PIO_SECONDS"):
                    break
        finally:
            watchdog.cancel()
            process.kill()
    return first, "".join(lines)


def pio_exits_per_second(output: str) -> float:
    for line in output.splitlines():
        if line.startswith("PIO_SECONDS"):
            seconds = float(line.split()[1])
            return PIO_BLOCKS * 4096 / seconds if seconds > 0 else float("nan")
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    assets = build_guest("generic")
    boot: dict[str, list[float]] = {name: [] for name in vmm_commands(assets, "")}
    pio: dict[str, list[float]] = {name: [] for name in boot}
    for rep in range(args.reps):
        for name, argv in vmm_commands(assets, PIO_SCRIPT).items():
            seconds, output = time_to_first_line(argv)
            boot[name].append(seconds)
            pio[name].append(pio_exits_per_second(output))
            print(f"rep {rep} {name}: first userspace line at {seconds:.2f} s, "
                  f"{pio[name][-1]:.0f} PIO exits/s", flush=True)
    medians = {name: statistics.median([v for v in values if v == v] or [float("nan")])
               for name, values in boot.items()}
    pio_medians = {name: statistics.median(values) for name, values in pio.items()}
    result = {
        "runs": args.reps, "guest": {"kernel": assets.kernel.name, "memory": "256M", "cpus": 1},
        "seconds_to_first_userspace_line": boot, "median_seconds": medians,
        "kvmkit_vs_qemu_pc": medians["qemu-pc"] / medians["kvmkit"],
        "kvmkit_vs_qemu_microvm": medians["qemu-microvm"] / medians["kvmkit"],
        "kvmkit_plain_vs_qemu_pc": medians["qemu-pc"] / medians["kvmkit-plain"],
        "pio_exits_per_second": pio, "median_pio_exits_per_second": pio_medians,
        "where": "inside the kvmkit lab (QEMU TCG + nested KVM), 2 lab vCPUs",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "boot.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Boot benchmark", "", f"{args.reps} runs each, in one lab boot; medians.", "",
             "| VMM | seconds to first userspace line | speed vs kvmkit | PIO exits/s |", "|---|---|---|---|"]
    for name in boot:
        lines.append(f"| {name} | {medians[name]:.2f} | {medians[name] / medians['kvmkit']:.2f}x "
                     f"| {pio_medians[name]:.0f} |")
    lines += ["", "`speed vs kvmkit` above 1 means that VMM took longer than kvmkit.", "",
              "- `kvmkit`: defaults. The bzImage's vmlinux comes from kvmkit's kernel cache (filled by `kvmkit guest "
              "build` or the first boot), so the guest does not decompress itself; kvmkit appends `pci=noearly` "
              "(its machine has no chipset that Linux's early PCI quirks or AGP/GART probe look for).",
              "- `kvmkit-plain`: `-machine pc,kernel-cache=off,auto-kernel-cmdline=off`: the guest does the same "
              "work as under QEMU.",
              "- QEMU: `-enable-kvm -cpu host -nodefaults`, `-M pc` (SeaBIOS) and `-M microvm` (qboot).",
              "- Absolute times are lab times (nested KVM under TCG, where every exit costs 100+ us); compare ratios.",
              ""]
    (RESULTS / "boot.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
