"""`kvmkit img` called through run_img."""

from __future__ import annotations

import io
import json
import os
import struct

from block_judges import images_identical, needs_qemu, qemu

from kvmkit.block.open import open_image
from kvmkit.cli.img import parse_size, run_img


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_img(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_sizes_accept_binary_suffixes():
    assert [parse_size(s) for s in ("512", "64k", "10M", "2G", "1T")] == [512, 65536, 10 << 20, 2 << 30, 1 << 40]


def test_create_then_info_json_has_qemu_keys(tmp_path):
    base = str(tmp_path / "base.raw")
    assert run("create", "-f", "raw", base, "1M")[0] == 0
    top = str(tmp_path / "top.qcow2")
    code, _, err = run("create", "-f", "qcow2", "-b", "base.raw", "-F", "raw",
                       "-o", "cluster_size=4k,lazy_refcounts=on", top)
    assert (code, err) == (0, "")
    code, out, _ = run("info", "--output", "json", top)
    info = json.loads(out)
    assert code == 0
    assert info["virtual-size"] == 1 << 20
    assert info["cluster-size"] == 4096
    assert info["format"] == "qcow2"
    assert info["backing-filename"] == "base.raw"
    assert info["backing-filename-format"] == "raw"
    assert info["dirty-flag"] is False
    assert info["format-specific"]["data"]["lazy-refcounts"] is True


def test_compat_0_10_creates_version_2(tmp_path):
    path = str(tmp_path / "v2.qcow2")
    assert run("create", "-f", "qcow2", "-o", "compat=0.10", path, "1M")[0] == 0
    with open(path, "rb") as f:
        f.seek(4)
        assert struct.unpack(">I", f.read(4))[0] == 2


def test_errors_are_one_line_without_traceback(tmp_path):
    code, _, err = run("info", str(tmp_path / "missing.qcow2"))
    assert code != 0
    assert err.startswith("kvmkit img: ") and err.count("\n") == 1
    assert run("create", "-f", "qcow2", str(tmp_path / "x"), "ten")[0] != 0
    assert run("frobnicate")[2].startswith("kvmkit img: ")


def test_check_reports_leak_exit_3_and_repairs_it(tmp_path):
    path = str(tmp_path / "leak.qcow2")
    run("create", "-f", "qcow2", path, "1M")
    with open_image(path) as image:
        image.refcounts.allocate(1)  # a cluster nobody references
    assert run("check", path)[0] == 3
    code, out, _ = run("check", "-r", "leaks", path)
    assert code == 0 and "1 leaked clusters" in out
    assert run("check", path)[0] == 0


def test_check_reports_corruption_exit_2(tmp_path):
    path = str(tmp_path / "c.qcow2")
    run("create", "-f", "qcow2", path, "1M")
    with open_image(path) as image:
        image.pwrite(0, [bytearray(b"a" * 512)])
        image.refcounts.set(image.refcounts.top - 1, 0)  # the data cluster's refcount lost
    code, out, _ = run("check", "--output", "json", path)
    assert code == 2
    assert json.loads(out)["corruptions"] >= 1


@needs_qemu
def test_convert_between_every_format_pair_keeps_content(tmp_path):
    src = str(tmp_path / "src.qcow2")
    qemu("qemu-img", "create", "-f", "qcow2", src, "3M")
    qemu("qemu-io", "-c", "write -P 0x3c 100k 1M", "-c", "write -P 0x7e 2M 64k", src)
    previous = src
    for fmt in ("vmdk", "raw", "qcow2", "vmdk", "qcow2"):
        dst = str(tmp_path / f"{len(os.listdir(tmp_path))}.{fmt}")
        code, _, err = run("convert", "-O", fmt, "-p", previous, dst)
        assert (code, err) == (0, "")
        assert images_identical(src, dst)
        previous = dst
