"""`kvmkit guest build [--flavor generic|cloud] [--json]`."""

from __future__ import annotations

import argparse
import json

from kvmkit.guest.build import build_guest
from kvmkit.guest.debian_kernel import FLAVOR_METAPACKAGES


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="kvmkit guest", description="Guest images from Debian's packages.")
    actions = parser.add_subparsers(dest="action", required=True)
    build = actions.add_parser("build", help="build (or reuse from the cache) a guest kernel and initramfs")
    build.add_argument("--flavor", choices=sorted(FLAVOR_METAPACKAGES), default="generic")
    build.add_argument("--with", dest="tools", default="", metavar="PROG[,PROG]",
                       help="host programs to carry into the guest with their libraries (e.g. fio,iperf3)")
    build.add_argument("--json", action="store_true", help="print one JSON object with the paths")
    args = parser.parse_args(argv)
    assets = build_guest(args.flavor, tuple(t for t in args.tools.split(",") if t))
    if args.json:
        print(json.dumps(assets.as_json()))
    else:
        print(f"kernel: {assets.kernel}\ninitrd: {assets.initrd}\n"
              f"built from {assets.kernel_package} {assets.kernel_version}")
    return 0
