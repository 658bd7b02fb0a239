"""`kvmkit guest build`: the initramfs is a valid newc archive with init, busybox and ordered modules."""

import json
import subprocess
import sys
from pathlib import Path

from kvmkit.guest.build import GUEST_MODULES
from kvmkit.guest.cpio import read_newc
from kvmkit.guest.kernel_modules import ModuleTree


def test_guest_build_json_prints_absolute_existing_paths():
    done = subprocess.run([sys.executable, "-m", "kvmkit.cli.main", "guest", "build", "--json"],
                          capture_output=True, text=True, check=True)
    paths = json.loads(done.stdout)
    for key in ("kernel", "initrd"):
        assert Path(paths[key]).is_absolute() and Path(paths[key]).is_file()


def test_initramfs_reads_back_with_init_busybox_and_modules(generic_guest):
    members = {entry.name: entry for entry in read_newc(generic_guest.initrd.read_bytes())}
    assert members["init"].data.startswith(b"#!/bin/busybox sh")
    assert members["bin/busybox"].data[:4] == b"\x7fELF"
    order = members["etc/kvmkit-modules"].data.decode().split()
    for module in ("virtio_pci", "virtio_blk", "virtio_net", "virtio_console", "virtio_rng"):
        assert module in order
        assert f"lib/modules/{module}.ko" in members


def test_modules_load_after_their_dependencies(generic_guest):
    members = {entry.name: entry for entry in read_newc(generic_guest.initrd.read_bytes())}
    order = members["etc/kvmkit-modules"].data.decode().split()
    tree = ModuleTree(next((generic_guest.kernel.parent.parent / "lib" / "modules").iterdir()))
    for index, module in enumerate(order):
        for dependency in tree.depends(module):
            assert dependency in order[:index], f"{module} loads before its dependency {dependency}"
    assert order.index("virtio_ring") < order.index("virtio_pci") < order.index("virtio_blk")
    assert order.index("net_failover") < order.index("virtio_net")
    assert set(GUEST_MODULES) <= set(order)


def test_cloud_flavor_builds_its_own_image(cloud_guest, generic_guest):
    assert cloud_guest.kernel != generic_guest.kernel
    assert "cloud" in cloud_guest.kernel.name
    names = {entry.name for entry in read_newc(cloud_guest.initrd.read_bytes())}
    assert "lib/modules/virtio_blk.ko" in names


def test_tools_guest_carries_programs_with_their_libraries(tools_guest):
    members = {entry.name: entry for entry in read_newc(tools_guest.initrd.read_bytes())}
    assert members["usr/bin/fio"].data[:4] == b"\x7fELF"
    assert members["usr/bin/iperf3"].data[:4] == b"\x7fELF"
    assert "lib64/ld-linux-x86-64.so.2" in members
    assert any(name.endswith("/libiperf.so.0") for name in members)
    names = list(members)
    for name in names:
        parent = name.rsplit("/", 1)[0] if "/" in name else None
        if parent:
            assert parent in members and names.index(parent) < names.index(name), f"{name} before its folder"
