"""Fixtures of the virtio-net unit tests."""

from __future__ import annotations

import pytest

from harness.net_rig import NetRig, make_rig


@pytest.fixture
def rig() -> NetRig:
    return make_rig()
