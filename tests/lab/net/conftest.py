"""Fixtures of the network lab tests: a guest carrying iperf3."""

from __future__ import annotations

import pytest

from kvmkit.guest.build import GuestAssets, build_guest


@pytest.fixture(scope="session")
def net_guest() -> GuestAssets:
    return build_guest("generic", tools=("iperf3",))
