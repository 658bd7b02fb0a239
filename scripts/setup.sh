#!/usr/bin/env bash
# Everything kvmkit needs on a Debian 12 machine (as root): Debian packages, the venv, the guest images.
# Idempotent and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
    qemu-system-x86 qemu-utils busybox-static e2fsprogs passt iperf3 fio iproute2
    python3 python3-venv python3-pip ca-certificates
)

missing=()
for package in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
# The guest images come from Debian's kernel packages: apt must know them (a fresh machine may have no lists).
policy=$(apt-cache policy linux-image-amd64 linux-image-cloud-amd64 2>/dev/null || true)
if ! grep -q "Candidate: [0-9]" <<< "$policy"; then
    echo "setup: refreshing apt's package lists"
    apt-get update -q
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

stamp=.venv/.kvmkit-setup
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: creating .venv"
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[dev]'
    echo "$want" > "$stamp"
fi

# Guest kernels and initramfs images (cached under ~/.cache/kvmkit, keyed by content).
.venv/bin/kvmkit guest build --flavor generic > /dev/null
.venv/bin/kvmkit guest build --flavor cloud > /dev/null
# Guests with tools for the block and network tests and benchmarks (built here: the lab cannot write the cache).
# The network tests boot two small guests at once: they carry iperf3 alone, so the initramfs fits in 256 MiB.
.venv/bin/kvmkit guest build --flavor generic --with fio,iperf3 > /dev/null
.venv/bin/kvmkit guest build --flavor generic --with iperf3 > /dev/null

# Byte-compile everything the VMM and the tests import: Python reads .pyc files even where it may not write them
# (PYTHONDONTWRITEBYTECODE, the lab's read-only root), and compiling ~150 modules at every start costs seconds
# in the lab.
.venv/bin/python -m compileall -q -j 0 src tests bench .venv/lib > /dev/null || true
