"""Shared fixtures: guest images, and the rule that `lab` tests run only where KVM can boot Linux."""

from __future__ import annotations

import os

import pytest

from kvmkit.cli.host_check import check_host
from kvmkit.guest.build import GuestAssets, build_guest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("KVMKIT_IN_LAB") or check_host().can_boot:
        return
    skip = pytest.mark.skip(reason="needs a KVM that boots Linux: run through `kvmkit lab` (make test-lab)")
    for item in items:
        if "lab" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def generic_guest() -> GuestAssets:
    return build_guest("generic")


@pytest.fixture(scope="session")
def cloud_guest() -> GuestAssets:
    return build_guest("cloud")


@pytest.fixture(scope="session")
def tools_guest() -> GuestAssets:
    """The generic guest with fio and iperf3 (and their libraries) in /usr/bin."""
    return build_guest("generic", tools=("fio", "iperf3"))
