"""Network benchmark (run inside the lab): iperf3 in a guest on a tap, kvmkit (userspace and vhost=on) vs QEMU.

    kvmkit lab --timeout 1500 -- .venv/bin/python -m bench.net [--reps N] [--seconds S]

Every VMM boots `--reps` times on the same tap set-up (host side 10.0.9.2, guest 10.0.9.15) and runs three iperf3
jobs against a server on the lab host: TCP guest->host, TCP host->guest, and UDP 64-byte datagrams guest->host
(the small-packet rate, in packets per second). Medians and kvmkit/QEMU ratios go to bench/results/net.json/.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from harness.guest_run import kvmkit_command, qemu_command, run_guest
from kvmkit.guest.build import build_guest
from lab.net.netlab import iperf_rates, iperf_server, tap

RESULTS = Path(__file__).resolve().parent / "results"
SMALL_PACKET = 64
TAP_OPTIONS = "tap,id=n0,ifname=kvb0,script=no,downscript=no"
DEVICE = ("-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:99")
VMMS = {
    "kvmkit": lambda assets, script: kvmkit_command(assets, script, "-netdev", f"{TAP_OPTIONS},vhost=off", *DEVICE),
    "kvmkit-vhost": lambda assets, script: kvmkit_command(assets, script, "-netdev", f"{TAP_OPTIONS},vhost=on",
                                                          *DEVICE),
    "qemu": lambda assets, script: qemu_command(assets, script, "-netdev", f"{TAP_OPTIONS},vhost=off", *DEVICE),
    "qemu-vhost": lambda assets, script: qemu_command(assets, script, "-netdev", f"{TAP_OPTIONS},vhost=on", *DEVICE),
}
# each kvmkit path against QEMU's same path: userspace to userspace, vhost-net to vhost-net
BASELINES = {"kvmkit": "qemu", "kvmkit-vhost": "qemu-vhost"}
METRICS = ("tcp-tx-mbit", "tcp-rx-mbit", "udp-64-kpps")


def guest_script(seconds: int) -> str:
    jobs = (("tx", ""), ("rx", "-R"), ("udp", f"-u -l {SMALL_PACKET} -b 0"))
    lines = ["ip link set eth0 up", "ip addr add 10.0.9.15/24 dev eth0", "ping -c 2 -W 2 10.0.9.2 >/dev/null"]
    # a job whose control connection failed (the server still busy with the last one) is tried once more
    lines += [f"for try in 1 2; do r=$(iperf3 -c 10.0.9.2 -t {seconds} -f k {flags} 2>&1 | grep receiver); "
              f"[ -n \"$r\" ] && break; sleep 1; done; echo \"BENCH {name} $r\""
              for name, flags in jobs]
    return "\n".join(lines) + "\n"


def one_run(vmm: str, assets, seconds: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    run = run_guest(VMMS[vmm](assets, guest_script(seconds)), timeout=300)
    rates = iperf_rates(run.output, "BENCH")
    if len(rates) < 3:
        print(f"{vmm}: incomplete run\n{run.output[-2000:]}\n{run.stderr[-2000:]}", flush=True)
    nan = float("nan")  # a job that reported nothing is missing, not zero: it must not drag a median down
    return {"tcp-tx-mbit": rates["tx"] / 1e6 if "tx" in rates else nan,
            "tcp-rx-mbit": rates["rx"] / 1e6 if "rx" in rates else nan,
            "udp-64-kpps": rates["udp"] / (SMALL_PACKET * 8) / 1e3 if "udp" in rates else nan}


def _median(values: list[float]) -> float:
    measured = [value for value in values if value == value]
    return statistics.median(measured) if measured else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args()
    assets = build_guest("generic", tools=("iperf3",))
    samples: dict[str, list[dict[str, float]]] = {vmm: [] for vmm in VMMS}
    with tap("kvb0", "10.0.9.2/24"), iperf_server("10.0.9.2"):
        for rep in range(args.reps):
            for vmm in VMMS:
                samples[vmm].append(one_run(vmm, assets, args.seconds))
                print(f"rep {rep} {vmm}: {samples[vmm][-1]}", flush=True)
    write_results(samples, args.reps, args.seconds)


def write_results(samples: dict[str, list[dict[str, float]]], reps: int, seconds: int) -> None:
    """Medians over the runs that completed, ratios to QEMU, to bench/results/net.json and net.md."""
    medians = {vmm: {m: _median([s[m] for s in runs]) for m in METRICS} for vmm, runs in samples.items()}
    complete = {vmm: sum(all(s[m] == s[m] for m in METRICS) for s in runs) for vmm, runs in samples.items()}
    ratios = {vmm: {m: (medians[vmm][m] / medians[base][m] if medians[base][m] == medians[base][m] else None)
                    for m in METRICS} for vmm, base in BASELINES.items()}
    vs_qemu_userspace = {m: (medians["kvmkit-vhost"][m] / medians["qemu"][m]
                             if medians["qemu"][m] == medians["qemu"][m] else None) for m in METRICS}
    RESULTS.mkdir(exist_ok=True)
    samples_json = {vmm: [{m: (v if v == v else None) for m, v in run.items()} for run in runs]
                    for vmm, runs in samples.items()}  # a missing job is null in JSON
    summary = {"reps": reps, "seconds": seconds, "samples": samples_json, "complete_runs": complete,
               "medians": medians, "ratios_vs_qemu": ratios, "kvmkit_vhost_vs_qemu_userspace": vs_qemu_userspace}
    (RESULTS / "net.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["# Network benchmark (inside the lab: nested KVM under TCG, absolute numbers are low)", "",
             f"{reps} boots per VMM, iperf3 {seconds} s per job, medians over the runs that completed "
             f"({', '.join(f'{vmm} {n}' for vmm, n in complete.items())}); each kvmkit path is compared with "
             "QEMU's same path (userspace virtio-net to userspace, vhost-net to vhost-net); the last column "
             "compares kvmkit's vhost path with QEMU's userspace path.", "",
             "| metric | " + " | ".join(VMMS) + " | kvmkit/qemu | kvmkit-vhost/qemu-vhost | kvmkit-vhost/qemu |",
             "|---|" + "---|" * (len(VMMS) + 3)]
    for metric in METRICS:
        cells = [f"{medians[vmm][metric]:.2f}" for vmm in VMMS]
        wanted = [ratios["kvmkit"][metric], ratios["kvmkit-vhost"][metric], vs_qemu_userspace[metric]]
        cells += [f"{r:.2f}" if r is not None else "n/a" for r in wanted]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    (RESULTS / "net.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
