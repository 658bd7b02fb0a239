"""`kvmkit demo`: boot a Linux guest with kvmkit and show it working (inside the lab when this host can't)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from kvmkit.cli.host_check import check_host
from kvmkit.guest.build import build_guest
from kvmkit.guest.debian_kernel import FLAVOR_METAPACKAGES

DEMO_SCRIPT = """\
echo "== kvmkit demo: inside the guest =="
dmesg | head -n 1
echo "CPUs: $(nproc)   memory: $(free -m | awk '/Mem:/ {print $2}') MiB"
echo "PCI devices:"; for d in /sys/bus/pci/devices/*; do echo "  ${d##*/} $(cat $d/vendor):$(cat $d/device)"; done
echo "virtio disk: $(cat /sys/block/vda/size) sectors"
echo "hello from kvmkit" | dd of=/dev/vda bs=512 conv=sync 2>/dev/null && sync
echo "read back from disk: $(dd if=/dev/vda bs=17 count=1 2>/dev/null)"
echo "uptime: $(cut -d' ' -f1 /proc/uptime) s"
"""


def _kvmkit(*args: str) -> list[str]:
    return [sys.executable, "-m", "kvmkit.cli.main", *args]


def run_demo(flavor: str, cpus: int) -> int:
    assets = build_guest(flavor)
    with tempfile.TemporaryDirectory(prefix="kvmkit-demo-") as tmp:
        disk = Path(tmp) / "demo.qcow2"
        subprocess.run(_kvmkit("img", "create", "-f", "qcow2", str(disk), "64M"), check=True,
                       stdout=subprocess.DEVNULL)
        import base64

        script = base64.b64encode(DEMO_SCRIPT.encode()).decode()
        argv = _kvmkit("run", "-name", "demo", "-m", "512M", "-smp", str(cpus),
                       "-kernel", str(assets.kernel), "-initrd", str(assets.initrd),
                       "-append", f"console=ttyS0 quiet kvmkit.cmd={script}",
                       "-drive", f"file={disk},format=qcow2,if=virtio,id=disk0",
                       "-nographic", "-no-reboot")
        print(f"kvmkit demo: booting {assets.kernel.name} ({flavor}) with {cpus} vCPUs and a qcow2 disk",
              flush=True)
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, check=False)
        check = subprocess.run(["qemu-img", "check", str(disk)], capture_output=True, text=True, check=False)
        print(f"kvmkit demo: kvmkit exited {done.returncode}; qemu-img check of the guest's disk: "
              f"{check.stdout.strip().splitlines()[-1] if check.stdout.strip() else check.stderr.strip()}")
        return done.returncode


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kvmkit demo", description=__doc__)
    parser.add_argument("--flavor", choices=sorted(FLAVOR_METAPACKAGES), default="generic")
    parser.add_argument("--smp", type=int, default=2)
    args = parser.parse_args(argv)
    verdict = check_host()
    if verdict.can_boot or os.environ.get("KVMKIT_IN_LAB"):
        return run_demo(args.flavor, args.smp)
    print(f"kvmkit demo: {verdict.message}", flush=True)
    print("kvmkit demo: starting the lab (QEMU TCG with nested KVM) and running the demo there", flush=True)
    build_guest(args.flavor)  # on the host: the lab's root is read-only
    from kvmkit.lab.runner import LabOptions, run_in_lab

    return run_in_lab(_kvmkit("demo", "--flavor", args.flavor, "--smp", str(args.smp)),
                      LabOptions(workdir=Path.cwd()))
