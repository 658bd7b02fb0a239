"""What the block lab tests put on each disk, where, and the guest script that checks and writes it.

Every writable disk is 64 MiB and gets the same workload so one guest boot can exercise several formats at once:
the first 16 MiB hold an ext2 filesystem, the host writes patterns (with qemu-io, or into a raw seed) above that,
and the guest writes its own patterns elsewhere. Disks are found in the guest by their virtio serial.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

MiB = 1 << 20
DISK_SIZE = 64 * MiB
FILESYSTEM_KIB = 16 * 1024
SECTOR = 512


@dataclass(frozen=True)
class Region:
    """`data` expected at byte `offset` of the virtual disk."""

    name: str
    offset: int
    data: bytes

    @property
    def md5(self) -> str:
        return hashlib.md5(self.data).hexdigest()


def filled(name: str, offset: int, length: int, byte: int) -> Region:
    return Region(name, offset, bytes([byte]) * length)


def text_lines(name: str, offset: int, length: int) -> Region:
    """Compressible but not uniform data (for images made with `qemu-img convert -c`)."""
    line_bytes = len(f"kvmkit block line {0:012d}\n")
    text = "".join(f"kvmkit block line {n:012d}\n" for n in range(length // line_bytes + 1)).encode()
    assert len(text) >= length
    return Region(name, offset, text[:length])


# Written by the host before the first boot (qemu-io write -P BYTE OFFSET LENGTH).
HOST_REGIONS = (
    filled("host-a5", 20 * MiB, 64 * 1024, 0xA5),
    filled("host-3c", 40 * MiB + 3 * SECTOR, 3 * SECTOR, 0x3C),  # not cluster aligned
)
# Written by the host into the raw seed of the compressed image.
HOST_TEXT_REGIONS = (
    text_lines("host-text-a", 20 * MiB, 256 * 1024),
    text_lines("host-text-b", 40 * MiB + 3 * SECTOR, 70 * 1024),
)
# Written by the guest on the first boot: (region, dd flags).
GUEST_WRITES = (
    (filled("guest-5a", 24 * MiB, MiB, 0x5A), ""),
    (filled("guest-c3", 48 * MiB + 3 * 4096, 8192, 0xC3), "oflag=direct"),
    (filled("guest-77", 60 * MiB + SECTOR, SECTOR, 0x77), "oflag=direct"),
    # over the end of host-a5: a partial overwrite of a cluster the host allocated
    (filled("guest-e1", 20 * MiB + 60 * 1024, 8192, 0xE1), "oflag=direct"),
)
SEQ_COUNT = 20000
BIG_FILE_BYTES = 3 * MiB


def after_guest_writes(host_regions: tuple[Region, ...]) -> list[Region]:
    """What the disk holds after the first boot, host regions clipped where the guest wrote over them."""
    image = {}
    for region in (*host_regions, *(r for r, _ in GUEST_WRITES)):
        for index, byte in enumerate(region.data):
            image[region.offset + index] = byte
    expected = []
    for region in (*host_regions, *(r for r, _ in GUEST_WRITES)):
        data = bytes(image[region.offset + i] for i in range(len(region.data)))
        expected.append(Region(region.name, region.offset, data))
    return expected


def seq_file_md5() -> str:
    return hashlib.md5("".join(f"{n}\n" for n in range(1, SEQ_COUNT + 1)).encode()).hexdigest()


def big_file_md5() -> str:
    return hashlib.md5(b"\x42" * BIG_FILE_BYTES).hexdigest()


SCRIPT_HELPERS = r"""
disk() { for d in /sys/block/vd*; do [ "$(cat $d/serial 2>/dev/null)" = "$1" ] && echo /dev/${d##*/}; done; }
check() {  # NAME DEVICE OFFSET LENGTH MD5
    got=$(dd if=$2 bs=512 skip=$(($3 / 512)) count=$(($4 / 512)) iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)
    if [ "$got" = "$5" ]; then echo "CHECK $1 ok"; else echo "CHECK $1 FAIL got $got"; fi
}
filecheck() {  # NAME PATH MD5
    got=$(md5sum $2 | cut -d' ' -f1)
    if [ "$got" = "$3" ]; then echo "CHECK $1 ok"; else echo "CHECK $1 FAIL got $got"; fi
}
expect() {  # NAME COMMAND... : the command must succeed
    name=$1; shift
    if "$@" >/tmp/out 2>&1; then echo "CHECK $name ok"
    else echo "CHECK $name FAIL $(tail -n 2 /tmp/out | tr '\n' ' ')"; fi
}
refuse() {  # NAME COMMAND... : the command must fail
    name=$1; shift
    if "$@" >/tmp/out 2>&1; then echo "CHECK $name FAIL it succeeded"; else echo "CHECK $name ok"; fi
}
fill() {  # DEVICE OFFSET LENGTH OCTAL-BYTE DD-FLAGS (via a file: O_DIRECT writes need whole sectors, not pipe reads)
    dd if=/dev/zero bs=512 count=$(($3 / 512)) 2>/dev/null | tr '\0' "\\$4" > /tmp/fill
    dd if=/tmp/fill of=$1 bs=512 seek=$(($2 / 512)) conv=notrunc $5
}
"""


def check_lines(label: str, device: str, regions: list[Region] | tuple[Region, ...]) -> list[str]:
    return [f"check {label}:{r.name} {device} {r.offset} {len(r.data)} {r.md5}" for r in regions]


def first_boot_lines(label: str, serial: str, host_regions: tuple[Region, ...]) -> list[str]:
    """Check the host's data, write the guest's, make and fill a filesystem, check again uncached."""
    dev = f"${label}"
    lines = [f'{label}=$(disk {serial}); echo "DISK {label} {dev}"']
    lines += check_lines(label, dev, host_regions)
    for region, flags in GUEST_WRITES:
        byte = f"{region.data[0]:03o}"
        lines.append(f"expect {label}:write-{region.name} fill {dev} {region.offset} {len(region.data)} {byte} "
                     f"'{flags}'")
    lines += [
        f"expect {label}:mkfs mke2fs -F {dev} {FILESYSTEM_KIB}",
        f"mkdir -p /mnt/{label}",
        f"expect {label}:mount mount -t ext2 {dev} /mnt/{label}",
        f"seq 1 {SEQ_COUNT} > /mnt/{label}/seq.txt",
        f"dd if=/dev/zero bs=4096 count={BIG_FILE_BYTES // 4096} 2>/dev/null | tr '\\0' '\\102' "
        f"> /mnt/{label}/big.bin",
        f"mkdir -p /mnt/{label}/dir && for n in 1 2 3 4 5; do echo file-$n > /mnt/{label}/dir/f$n; done",
        f"expect {label}:umount umount /mnt/{label}",
        f"echo 3 > /proc/sys/vm/drop_caches; blockdev --flushbufs {dev}",
    ]
    lines += check_lines(label, dev, after_guest_writes(host_regions))
    return lines


def second_boot_lines(label: str, serial: str, host_regions: tuple[Region, ...]) -> list[str]:
    """Everything the first boot left must still be there."""
    dev = f"${label}"
    lines = [f'{label}=$(disk {serial}); echo "DISK {label} {dev}"']
    lines += check_lines(label, dev, after_guest_writes(host_regions))
    lines += [
        f"mkdir -p /mnt/{label}",
        f"expect {label}:mount-again mount -t ext2 -o ro {dev} /mnt/{label}",
        f"filecheck {label}:seq.txt /mnt/{label}/seq.txt {seq_file_md5()}",
        f"filecheck {label}:big.bin /mnt/{label}/big.bin {big_file_md5()}",
        f"expect {label}:dir-files sh -c 'cat /mnt/{label}/dir/f1 /mnt/{label}/dir/f5 | tr \"\\n\" , "
        f"| grep -qx file-1,file-5,'",
        f"umount /mnt/{label}",
    ]
    return lines


def readonly_lines(label: str, serial: str, host_regions: tuple[Region, ...]) -> list[str]:
    dev = f"${label}"
    return [
        f'{label}=$(disk {serial}); echo "DISK {label} {dev}"',
        *check_lines(label, dev, host_regions),
        f"expect {label}:sysfs-ro grep -qx 1 /sys/block/${{{label}#/dev/}}/ro",
        f"refuse {label}:dd-write dd if=/dev/zero of={dev} bs=4096 count=1 seek=100 oflag=direct",
        f"refuse {label}:mkfs mke2fs -F {dev} 1024",
    ]
