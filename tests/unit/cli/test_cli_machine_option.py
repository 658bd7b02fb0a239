"""`-machine pc,kernel-cache=on|off,auto-kernel-cmdline=on|off,ram-backend=anonymous|memfd`."""

import pytest

from kvmkit.cli.run_options import parse_run_options
from kvmkit.errors import ConfigError


def test_kernel_cache_is_on_by_default():
    assert parse_run_options([]).kernel_cache is True


@pytest.mark.parametrize("value, expected", [("off", False), ("on", True), ("no", False), ("OFF", False)])
def test_kernel_cache_switch(value, expected):
    assert parse_run_options(["-machine", f"pc,kernel-cache={value}"]).kernel_cache is expected
    assert parse_run_options(["-M", f"kernel-cache={value}"]).kernel_cache is expected


def test_kernel_cache_takes_on_or_off():
    with pytest.raises(ConfigError, match="kernel-cache"):
        parse_run_options(["-machine", "pc,kernel-cache=maybe"])


def test_auto_kernel_cmdline_switch():
    assert parse_run_options([]).auto_kernel_cmdline is True
    config = parse_run_options(["-machine", "pc,accel=kvm,auto-kernel-cmdline=off,kernel-cache=off"])
    assert (config.auto_kernel_cmdline, config.kernel_cache) == (False, False)


def test_unknown_machine_properties_are_named():
    with pytest.raises(ConfigError, match="unknown property 'usb'"):
        parse_run_options(["-machine", "pc,usb=off"])
    with pytest.raises(ConfigError, match="kvm"):
        parse_run_options(["-machine", "pc,accel=tcg"])


def test_ram_backend_choice():
    assert parse_run_options([]).ram_backend == "anonymous"
    assert parse_run_options(["-machine", "pc,ram-backend=memfd"]).ram_backend == "memfd"
    with pytest.raises(ConfigError, match="anonymous or memfd"):
        parse_run_options(["-machine", "pc,ram-backend=file"])
