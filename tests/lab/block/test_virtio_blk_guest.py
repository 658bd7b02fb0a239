"""A Linux guest on kvmkit's virtio-blk, over images made by qemu-img, judged by the guest and by qemu-img.

Two kvmkit boots on the same six disks: qcow2, raw (if=none + -device, cache=none), vmdk, a qcow2 overlay on a
backing file (cache=none), a qcow2 compressed by `qemu-img convert -c`, and a read-only raw disk. The first boot
reads the host's patterns, writes its own, makes and fills an ext2 filesystem; the second finds it all intact.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.guest_run import GuestRun, kvmkit_command, run_guest
from lab.block.disk_plan import (
    DISK_SIZE,
    HOST_REGIONS,
    HOST_TEXT_REGIONS,
    SCRIPT_HELPERS,
    Region,
    after_guest_writes,
    first_boot_lines,
    readonly_lines,
    second_boot_lines,
)

pytestmark = [pytest.mark.lab, pytest.mark.extended]

WRITABLE = ("q", "r", "v", "o", "c")  # labels (and serials) of the disks the guest writes
BOOT_TIMEOUT = 400
LOOP_FILESYSTEM_BYTES = 256 << 20
SCRIPT_SERIAL = "plan"
# The plan is ~7 KiB, far over the kernel's 2047-byte command line: it travels on a small read-only raw disk
# (NUL padded to whole sectors) and the command line carries only this loader.
LOADER = (f'for d in /sys/block/vd*; do [ "$(cat $d/serial)" = {SCRIPT_SERIAL} ] && '
          "tr -d '\\000' < /dev/${d##*/} > /tmp/plan.sh; done; sh /tmp/plan.sh\n")


@dataclass
class Disks:
    """The images of one run and the facts the host recorded about them."""

    folder: Path
    sha256_before: dict[str, str] = field(default_factory=dict)
    boots: list[GuestRun] = field(default_factory=list)

    def path(self, name: str) -> Path:
        return self.folder / name


def sh(*argv: str | Path) -> str:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{argv}: {done.stdout}{done.stderr}"
    return done.stdout


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def host_regions(label: str) -> tuple[Region, ...]:
    return HOST_TEXT_REGIONS if label == "c" else HOST_REGIONS


def qemu_io_write(path: Path, fmt: str) -> None:
    commands = [arg for r in HOST_REGIONS for arg in ("-c", f"write -P {r.data[0]:#x} {r.offset} {len(r.data)}")]
    sh("qemu-io", "-f", fmt, *commands, path)


def make_images(folder: Path) -> Disks:
    disks = Disks(folder)
    for name, fmt in (("q.qcow2", "qcow2"), ("r.img", "raw"), ("v.vmdk", "vmdk"), ("base.qcow2", "qcow2"),
                      ("ro.img", "raw")):
        sh("qemu-img", "create", "-q", "-f", fmt, folder / name, str(DISK_SIZE))
        qemu_io_write(folder / name, fmt)
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", folder / "o.qcow2")
    seed = folder / "seed.img"
    with open(seed, "wb") as f:
        f.truncate(DISK_SIZE)
        for region in HOST_TEXT_REGIONS:
            f.seek(region.offset)
            f.write(region.data)
    sh("qemu-img", "convert", "-c", "-O", "qcow2", seed, folder / "c.qcow2")
    for name in ("base.qcow2", "ro.img"):
        disks.sha256_before[name] = sha256(folder / name)
    return disks


def write_plan_disk(folder: Path, boot: int) -> Path:
    """The boot's script on a raw image the loader finds by serial."""
    path = folder / f"plan{boot}.img"
    script = boot_script(boot).encode()
    path.write_bytes(script + b"\0" * (-len(script) % 512 or 512))
    return path


def drive_options(folder: Path, plan_disk: Path) -> list[str]:
    cache = "none" if accepts_direct_io(folder) else "writeback"
    return [
        "-drive", f"file={plan_disk},format=raw,readonly=on,serial={SCRIPT_SERIAL}",
        "-drive", f"file={folder / 'q.qcow2'},format=qcow2,if=virtio,serial=q",
        "-drive", f"file={folder / 'r.img'},format=raw,if=none,id=rawdisk,cache={cache}",
        "-device", "virtio-blk-pci,drive=rawdisk,serial=r",
        "-drive", f"file={folder / 'v.vmdk'},format=vmdk,serial=v",
        "-drive", f"file={folder / 'o.qcow2'},cache={cache},serial=o",
        "-drive", f"file={folder / 'c.qcow2'},format=qcow2,serial=c",
        "-drive", f"file={folder / 'ro.img'},readonly=on,serial=ro",
    ]


def boot_script(boot: int) -> str:
    lines = [SCRIPT_HELPERS]
    for label in WRITABLE:
        plan = first_boot_lines if boot == 1 else second_boot_lines
        lines += plan(label, label, host_regions(label))
    lines += readonly_lines("ro", "ro", HOST_REGIONS)
    lines.append("sync")
    return "\n".join(lines) + "\n"


def accepts_direct_io(folder: Path) -> bool:
    probe = folder / ".direct-io-probe"
    probe.write_bytes(b"")
    try:
        os.close(os.open(probe, os.O_RDWR | os.O_DIRECT))
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Iterator[Path]:
    """A folder whose filesystem takes O_DIRECT (cache=none): the lab's /tmp is a tmpfs that refuses it, so
    there an ext2 on a loop device stands in."""
    folder = tmp_path_factory.mktemp("blk")
    if accepts_direct_io(folder):
        yield folder
        return
    backing, mountpoint = folder / "ext4.img", folder / "ext4"
    with open(backing, "wb") as f:
        f.truncate(LOOP_FILESYSTEM_BYTES)
    mountpoint.mkdir()
    sh("mkfs.ext2", "-q", "-F", backing)  # ext2: no journal to write
    mounted = subprocess.run(["mount", "-t", "ext2", "-o", "loop", str(backing), str(mountpoint)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:  # cache=none then falls back to writeback; test_cache_none_exercised says so
        yield folder
        return
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)


@pytest.fixture(scope="module")
def disks(generic_guest, image_folder) -> Disks:
    disks = make_images(image_folder)
    for boot in (1, 2):
        plan_disk = write_plan_disk(image_folder, boot)
        argv = kvmkit_command(generic_guest, LOADER, *drive_options(image_folder, plan_disk))
        disks.boots.append(run_guest(argv, timeout=BOOT_TIMEOUT))
    return disks


def planned_checks(script: str) -> int:
    return sum(line.split(" ", 1)[0] in ("check", "filecheck", "expect", "refuse") for line in script.splitlines())


def checks(run: GuestRun) -> list[tuple[str, str]]:
    """Every CHECK line in order (a name repeats when a region is checked before and after the guest's writes)."""
    found = []
    for line in run.lines():
        if line.startswith("CHECK "):
            _, name, status = line.split(" ", 2)
            found.append((name, status))
    return found


def describe(run: GuestRun) -> str:
    return f"exit {run.returncode} after {run.seconds:.0f}s\n--- output\n{run.output[-4000:]}\n--- stderr\n" \
           f"{run.stderr[-2000:]}"


@pytest.mark.parametrize("boot", [1, 2])
def test_guest_boot_checks_all_pass(disks, boot):
    run = disks.boots[boot - 1]
    assert run.returncode == 0 and run.guest_status == 0, describe(run)
    found = checks(run)
    failed = [(name, status) for name, status in found if status != "ok"]
    assert not failed, f"{failed}\n{describe(run)}"
    assert len(found) == planned_checks(boot_script(boot)), describe(run)


def test_guest_sees_every_disk_by_serial(disks):
    for run in disks.boots:
        found = [line.split() for line in run.lines() if line.startswith("DISK ")]
        assert len(found) == 6 and all(len(words) == 3 for words in found), describe(run)


@pytest.mark.parametrize("name", ["q.qcow2", "o.qcow2", "c.qcow2", "v.vmdk"])
def test_qemu_img_check_finds_no_errors(disks, name):
    sh("qemu-img", "check", disks.path(name))


@pytest.mark.parametrize("label,name", [("q", "q.qcow2"), ("r", "r.img"), ("v", "v.vmdk"), ("o", "o.qcow2"),
                                        ("c", "c.qcow2")])
def test_host_finds_every_pattern_where_it_belongs(disks, label, name):
    flat = disks.path(f"{label}.flat")
    sh("qemu-img", "convert", "-O", "raw", disks.path(name), flat)
    data = flat.read_bytes()
    assert len(data) == DISK_SIZE
    for region in after_guest_writes(host_regions(label)):
        assert data[region.offset : region.offset + len(region.data)] == region.data, region.name
    assert data[1024 + 56 : 1024 + 58] == b"\x53\xef", "no ext2 superblock where the guest made one"
    flat.unlink()


def test_overlay_leaves_backing_file_unchanged(disks):
    assert sha256(disks.path("base.qcow2")) == disks.sha256_before["base.qcow2"]
    info = sh("qemu-img", "info", disks.path("o.qcow2"))
    assert "backing file: base.qcow2" in info


def test_readonly_image_unchanged(disks):
    assert sha256(disks.path("ro.img")) == disks.sha256_before["ro.img"]


def test_cache_none_exercised(disks):
    if not accepts_direct_io(disks.folder):
        pytest.skip("no filesystem here takes O_DIRECT (lab tmpfs, loop mount failed): cache=none not exercised")
