"""Block benchmark (run inside the lab): the same fio workload in a guest on kvmkit and on QEMU, and image convert.

    kvmkit lab --timeout 1500 -- .venv/bin/python -m bench.block [--reps N] [--runtime S]

Each VMM boots once with two disks of the same content, raw and qcow2 (fresh copies per VMM), and runs fio with
O_DIRECT: 1 MiB sequential write and read (iodepth 8) and 4 KiB random read (iodepth 32), each `--reps` times.
Host side, `kvmkit img convert` and `qemu-img convert` turn the same files raw->qcow2 and qcow2->raw.
Medians and kvmkit/QEMU ratios go to bench/results/block.json and block.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness.guest_run import kvmkit_command, qemu_command, run_guest
from kvmkit.guest.build import GuestAssets, build_guest

RESULTS = Path(__file__).resolve().parent / "results"
IMAGE_MIB = 256  # default --image-mib; fio works on the first 3/4 of each disk
# name -> (fio arguments, terse field of bandwidth KiB/s, terse field of IOPS), fields counted from 1
JOBS = {
    "seq-write-1M": ("--rw=write --bs=1M --iodepth=8", 48, 49),
    "seq-read-1M": ("--rw=read --bs=1M --iodepth=8", 7, 8),
    "rand-read-4K": ("--rw=randread --bs=4k --iodepth=32", 7, 8),
}
GOALS = {"seq-write-1M": 0.9, "seq-read-1M": 0.9, "rand-read-4K": 0.5}
DISKS = {"vda": "raw", "vdb": "qcow2"}


def guest_script(reps: int, runtime: int, image_mib: int = IMAGE_MIB) -> str:
    """Short: the whole script travels base64'd on the kernel command line (at most 2047 bytes)."""
    lines = [f"j() {{ fio --name=$1 --filename=/dev/$2 --direct=1 --ioengine=libaio $3 --size={image_mib * 3 // 4}M "
             f"--runtime={runtime} --time_based --output-format=terse --terse-version=3 | cut -d';' -f$4; }}",
             f"for rep in $(seq 1 {reps}); do"]
    for device, fmt in DISKS.items():
        for job, (args, bw_field, iops_field) in JOBS.items():
            lines.append(f'echo "BENCH {fmt} {job} $rep $(j {job} {device} \'{args}\' {bw_field},{iops_field})"')
    lines.append("done")
    return "\n".join(lines) + "\n"


def parse_results(output: str) -> dict[str, dict[str, list[dict[str, float]]]]:
    found: dict[str, dict[str, list[dict[str, float]]]] = {}
    for line in output.splitlines():
        words = line.strip().split()
        if len(words) != 5 or words[0] != "BENCH" or ";" not in words[4]:
            continue
        bandwidth, iops = (float(x) for x in words[4].split(";"))
        found.setdefault(words[1], {}).setdefault(words[2], []).append({"MiB/s": bandwidth / 1024, "IOPS": iops})
    return found


def make_images(folder: Path, image_mib: int) -> dict[str, Path]:
    raw = folder / "seed.raw"
    with open(raw, "wb") as f:
        chunk = os.urandom(1 << 20)
        for _ in range(image_mib):
            f.write(chunk)
    qcow2 = folder / "seed.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", raw, qcow2], check=True)
    return {"raw": raw, "qcow2": qcow2}


def fresh_copies(seeds: dict[str, Path], folder: Path, vmm: str) -> dict[str, Path]:
    copies = {}
    for fmt, seed in seeds.items():
        copies[fmt] = folder / f"{vmm}.{fmt}"
        shutil.copyfile(seed, copies[fmt])
    return copies


def boot(vmm: str, assets: GuestAssets, images: dict[str, Path], script: str) -> dict:
    drives = []
    for fmt in DISKS.values():
        drives += ["-drive", f"file={images[fmt]},format={fmt},if=virtio"]  # the lab /tmp (tmpfs) refuses O_DIRECT
    if vmm == "kvmkit":
        argv = kvmkit_command(assets, script, *drives, memory="512M", cpus=2)
    else:
        argv = qemu_command(assets, script, *drives, memory="512M", cpus=2)
    run = run_guest(argv, timeout=1200)
    if run.guest_status != 0:
        print(f"{vmm}: guest failed (exit {run.returncode})\n{run.output[-3000:]}\n{run.stderr[-3000:]}",
              file=sys.stderr)
    return {"seconds": run.seconds, "results": parse_results(run.output)}


def median_of(samples: list[dict[str, float]], key: str) -> float:
    return statistics.median(s[key] for s in samples) if samples else 0.0


def time_convert(argv: list[str], reps: int) -> float:
    times = []
    for _ in range(reps):
        Path(argv[-1]).unlink(missing_ok=True)
        started = time.monotonic()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        times.append(time.monotonic() - started)
    Path(argv[-1]).unlink(missing_ok=True)
    return statistics.median(times)


def convert_bench(seeds: dict[str, Path], folder: Path, reps: int, image_mib: int) -> list[dict]:
    kvmkit = [sys.executable, "-m", "kvmkit.cli.main", "img", "convert"]
    rows = []
    for source, target in (("raw", "qcow2"), ("qcow2", "raw")):
        out = str(folder / f"converted.{target}")
        base = ["-f", source, "-O", target, str(seeds[source]), out]
        ours = time_convert([*kvmkit, *base], reps)
        theirs = time_convert(["qemu-img", "convert", *base], reps)
        rows.append({"convert": f"{source}->{target}", "MiB": image_mib, "kvmkit_s": ours, "qemu_img_s": theirs,
                     "ratio": theirs / ours if ours else 0.0})
    return rows


def summarize(runs: dict[str, dict], converts: list[dict], reps: int, runtime: int) -> dict:
    rows = []
    for fmt in DISKS.values():
        for job in JOBS:
            key = "IOPS" if job.startswith("rand") else "MiB/s"
            our_runs = runs["kvmkit"]["results"].get(fmt, {}).get(job, [])
            their_runs = runs["qemu"]["results"].get(fmt, {}).get(job, [])
            ours, theirs = median_of(our_runs, key), median_of(their_runs, key)
            ratio = ours / theirs if our_runs and their_runs and theirs else None  # a missing job is not a 0
            rows.append({"format": fmt, "job": job, "unit": key, "kvmkit": round(ours, 1), "qemu": round(theirs, 1),
                         "runs": [len(our_runs), len(their_runs)],
                         "ratio": round(ratio, 3) if ratio is not None else None, "goal": GOALS[job],
                         "met": ratio is not None and ratio >= GOALS[job]})
    return {"reps": reps, "fio_runtime_s": runtime, "where": "inside the kvmkit lab (nested KVM under QEMU TCG)",
            "guest": rows, "convert": converts,
            "boot_seconds": {vmm: round(run["seconds"], 1) for vmm, run in runs.items()}, "raw": runs}


def markdown(summary: dict) -> str:
    lines = ["# Block benchmark: kvmkit vs QEMU (virtio-blk, same guest, same images)", "",
             f"Measured {summary['where']}; fio O_DIRECT libaio, {summary['fio_runtime_s']} s per job, "
             f"median of {summary['reps']} runs, {summary.get('image_mib', IMAGE_MIB)} MiB disks. "
             "Absolute numbers are lab numbers (nested, TCG outer layer): compare the ratios.", "",
             "| format | job | unit | kvmkit | QEMU | runs (kvmkit, QEMU) | ratio | goal |",
             "|---|---|---|---:|---:|---|---:|---|"]
    for row in summary["guest"]:
        if row["ratio"] is None:
            ratio, mark = "n/a", "not measured (a guest did not finish this job)"
        else:
            ratio, mark = f"{row['ratio']:.2f}", "met" if row["met"] else "NOT met"
        runs = row.get("runs", [summary["reps"]] * 2)
        lines.append(f"| {row['format']} | {row['job']} | {row['unit']} | {row['kvmkit']} | {row['qemu']} | "
                     f"{runs[0]}, {runs[1]} | {ratio} | >= {row['goal']:.0%} {mark} |")
    lines += ["", "| img convert | MiB | kvmkit s | qemu-img s | speed ratio |", "|---|---:|---:|---:|---:|"]
    for row in summary["convert"]:
        lines.append(f"| {row['convert']} | {row['MiB']} | {row['kvmkit_s']:.2f} | {row['qemu_img_s']:.2f} | "
                     f"{row['ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--runtime", type=int, default=3, help="seconds per fio job")
    parser.add_argument("--skip-qemu", action="store_true", help="only kvmkit (profiling)")
    parser.add_argument("--image-mib", type=int, default=IMAGE_MIB, help="size of each disk and converted image")
    parser.add_argument("--convert-reps", type=int, help="img convert repetitions (default: --reps)")
    args = parser.parse_args()
    assets = build_guest("generic", tools=("fio", "iperf3"))
    script = guest_script(args.reps, args.runtime, args.image_mib)
    RESULTS.mkdir(parents=True, exist_ok=True)
    partial = RESULTS / "block.partial.json"  # what a run cut short by the lab timeout still leaves
    with tempfile.TemporaryDirectory(prefix="kvmkit-bench-block-") as tmp:
        folder = Path(tmp)
        seeds = make_images(folder, args.image_mib)
        runs = {}
        for vmm in ("kvmkit", "qemu"):
            if vmm == "qemu" and args.skip_qemu:
                runs[vmm] = {"seconds": 0.0, "results": {}}
                continue
            images = fresh_copies(seeds, folder, vmm)
            runs[vmm] = boot(vmm, assets, images, script)
            partial.write_text(json.dumps(runs, indent=2) + "\n")
            for image in images.values():
                image.unlink()
        converts = convert_bench(seeds, folder, args.convert_reps or args.reps, args.image_mib)
    summary = summarize(runs, converts, args.reps, args.runtime)
    summary["image_mib"] = args.image_mib
    partial.unlink(missing_ok=True)
    (RESULTS / "block.json").write_text(json.dumps(summary, indent=2) + "\n")
    (RESULTS / "block.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
