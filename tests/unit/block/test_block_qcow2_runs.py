"""qcow2 writes that allocate runs of whole clusters at once: few host writes, same result as cluster by cluster."""

from __future__ import annotations

import random

import pytest
from block_judges import (
    assert_image_matches,
    images_identical,
    needs_qemu,
    qemu,
    qemu_check_clean,
    qemu_io,
    run_workers,
)

from kvmkit.block.create import create_image
from kvmkit.block.formats.qcow2.check import check_qcow2
from kvmkit.block.open import open_image

MiB = 1 << 20


def _count_writes(image) -> list[tuple[int, int]]:
    """Record (offset, length) of every write the image's file protocol receives from now on."""
    calls: list[tuple[int, int]] = []
    write_at = image.file.write_at

    def counting(offset, bufs, length=None):
        calls.append((offset, sum(memoryview(b).nbytes for b in bufs)))
        write_at(offset, bufs, length)

    image.file.write_at = counting
    return calls


@pytest.mark.parametrize("l2_exists", [False, True])
def test_one_mib_write_to_fresh_image_makes_few_host_writes(tmp_path, l2_exists):
    path = str(tmp_path / "f.qcow2")
    create_image(path, "qcow2", 64 * MiB, options={"cluster_size": 65536})
    data = random.Random(1).randbytes(MiB)
    with open_image(path) as image:
        if l2_exists:
            image.pwrite(32 * MiB, [bytearray(512)])  # the L2 table covering offset 0 now exists
        calls = _count_writes(image)
        image.pwrite(0, [bytearray(data[: MiB // 3]), bytearray(data[MiB // 3 :])])
        assert len(calls) <= 4, calls
        assert max(n for _, n in calls) >= MiB  # the data went out in one write
        back = bytearray(MiB)
        image.pread(0, [back])
    assert back == data


@pytest.mark.parametrize("l2_exists", [False, True])
def test_failed_data_write_gives_its_clusters_back(tmp_path, l2_exists):
    path = str(tmp_path / "e.qcow2")
    create_image(path, "qcow2", 64 * MiB, options={"cluster_size": 65536})
    with open_image(path) as image:
        if l2_exists:
            image.pwrite(32 * MiB, [bytearray(512)])
        write_at = image.file.write_at

        def failing(offset, bufs, length=None):
            if sum(memoryview(b).nbytes for b in bufs) >= MiB:
                raise OSError(28, "No space left on device")
            write_at(offset, bufs, length)

        image.file.write_at = failing
        with pytest.raises(OSError):
            image.pwrite(0, [bytearray(b"x" * MiB)])
        image.file.write_at = write_at
        back = bytearray(MiB)
        image.pread(0, [back])
    assert back == bytes(MiB)
    with open_image(path, read_only=True) as image:
        result = check_qcow2(image)
    assert (result.corruptions, result.leaks) == (0, 0)


def test_allocate_runs_skip_used_clusters_and_fall_back_to_the_end(tmp_path):
    path = str(tmp_path / "a.qcow2")
    create_image(path, "qcow2", 64 * MiB, options={"cluster_size": 4096})
    with open_image(path) as image:
        refcounts = image.refcounts
        first = refcounts.allocate(200)
        for cluster in range(first, first + 200, 2):  # 100 one-cluster holes
            refcounts.decrement(cluster)
        refcounts.release_quarantine()
        top = refcounts.top
        run = refcounts.allocate(3)
        assert run >= top  # no hole fits three clusters: the run comes from the end
        assert [refcounts.get(c) for c in range(run, run + 3)] == [1, 1, 1]
        assert refcounts.allocate(1) == first  # single clusters still fill the holes, first fit
        refcounts.set(first + 1, 0)
        refcounts.set(first + 3, 0)  # a hole of four: first+1 .. first+4
        assert refcounts.allocate(3) == first + 1
        assert [refcounts.get(c) for c in range(first, first + 6)] == [1, 1, 1, 1, 0, 1]
    with open_image(path, read_only=True) as image:
        assert check_qcow2(image).corruptions == 0  # the clusters taken here are leaks, nothing worse


def _layout(cs: int, extended: bool) -> tuple[int, list[str]]:
    """Image size and qemu-io commands leaving a mix of cluster states: allocated (A), zero (Z), zero keeping a
    preallocated cluster (P), partly written (S: only some subclusters with extended L2), unallocated (U)."""
    clusters = max(24, 3 * cs // 8) if cs <= 4096 else 24  # small clusters: runs cross L2 tables
    pattern = "UUAZPUSAAUUUZZPPUUSU"
    commands = []
    sub = cs // 32 if extended else cs // 4
    for index in range(clusters * 2 // 3):  # the last third stays unallocated
        state, at = pattern[index % len(pattern)], index * cs
        if state == "A":
            commands.append(f"write -P {index % 200 + 1} {at} {cs}")
        elif state == "Z":
            commands.append(f"write -z -u {at} {cs}")
        elif state == "P":
            commands += [f"write -P 0xee {at} {cs}", f"write -z {at} {cs}"]
        elif state == "S":
            commands.append(f"write -P 0x5a {at + sub} {sub}")
    return clusters * cs, commands


def _apply(reference: bytearray, commands: list[str]) -> None:
    """What the qemu-io commands of `_layout` did, applied to a raw reference."""
    for command in commands:
        words = command.split()
        at, n = int(words[-2]), int(words[-1])
        reference[at : at + n] = bytes([int(words[2], 0)]) * n if words[1] == "-P" else bytes(n)


@needs_qemu
@pytest.mark.parametrize("with_backing", [True, False])
@pytest.mark.parametrize(("cs", "extended"), [(512, False), (4096, False), (65536, False), (2 * MiB, False),
                                               (65536, True), (2 * MiB, True)])
def test_multi_cluster_writes_over_mixed_clusters_pass_qemu_judges(tmp_path, cs, extended, with_backing):
    size, commands = _layout(cs, extended)
    rng = random.Random(cs + extended)
    path = str(tmp_path / "m.qcow2")
    options = f"cluster_size={cs},extended_l2={'on' if extended else 'off'}"
    reference = bytearray(size)
    if with_backing:
        base = str(tmp_path / "base.raw")
        reference[:] = rng.randbytes(size)
        with open(base, "wb") as f:
            f.write(reference)
        qemu("qemu-img", "create", "-q", "-f", "qcow2", "-o", options, "-b", base, "-F", "raw", path)
    else:
        qemu("qemu-img", "create", "-q", "-f", "qcow2", "-o", options, path, str(size))
    for start in range(0, len(commands), 500):
        qemu_io(path, *commands[start : start + 500])
    _apply(reference, commands)
    with open_image(path) as image:
        tail = rng.randbytes(size - size // 3)  # one long run over every state (and, small clusters, new L2 tables)
        image.pwrite(size // 3, [bytearray(tail)])
        reference[size // 3 :] = tail
        for k in range(40):
            clusters = rng.randrange(1, 9)
            if k % 2:  # whole clusters
                at = rng.randrange(0, size // cs - clusters + 1) * cs
                n = clusters * cs
            else:  # ragged ends around whole clusters
                at = rng.randrange(0, size - clusters * cs)
                n = min(size - at, clusters * cs + rng.randrange(0, cs))
            data = rng.randbytes(n)
            cut = rng.randrange(0, n + 1)
            image.pwrite(at, [bytearray(data[:cut]), bytearray(data[cut:])])
            reference[at : at + n] = data
        back = bytearray(size)
        image.pread(0, [back])
        assert back == reference
    assert_image_matches(path, reference, tmp_path)


def test_concurrent_overlapping_whole_cluster_runs_stay_consistent(tmp_path):
    cs = 4096
    path = str(tmp_path / "c.qcow2")
    create_image(path, "qcow2", 4 * MiB, options={"cluster_size": cs})
    with open_image(path) as image:

        def worker(index: int) -> None:
            rng = random.Random(index)
            for _ in range(60):
                at = rng.randrange(0, 4 * MiB // cs - 16) * cs
                image.pwrite(at, [bytearray(bytes([index + 1]) * rng.randrange(1, 17) * cs)])
                if rng.random() < 0.2:
                    image.write_zeroes(at, cs * 2)

        errors = run_workers(worker, 6)
        content = bytearray(4 * MiB)
        image.pread(0, [content])
    assert errors == []
    for at in range(0, len(content), cs):  # every cluster holds one writer's data, whole
        assert content[at : at + cs].count(content[at]) == cs
    with open_image(path, read_only=True) as image:
        result = check_qcow2(image)
    assert (result.corruptions, result.leaks) == (0, 0)


@needs_qemu
def test_convert_writes_contiguous_data_in_few_large_writes(tmp_path):
    from kvmkit.cli.img import copy_image

    src = str(tmp_path / "src.raw")
    content = bytearray(random.Random(3).randbytes(20 * MiB))
    content[9 * MiB : 11 * MiB] = bytes(2 * MiB)  # skipped: stays unallocated
    with open(src, "wb") as f:
        f.write(content)
    dst = str(tmp_path / "dst.qcow2")
    create_image(dst, "qcow2", len(content))
    with open_image(src, "raw", read_only=True) as source, open_image(dst) as destination:
        calls = _count_writes(destination)
        copy_image(source, destination)
        assert destination.block_status(9 * MiB, 2 * MiB) == (False, 2 * MiB)
    assert len(calls) <= 12, calls  # per data run: refcounts, data, L2 entries (cluster by cluster: 48 per MiB)
    assert max(n for _, n in calls) >= 4 * MiB
    assert qemu_check_clean(dst)
    assert images_identical(src, dst)
