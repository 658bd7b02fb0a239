"""Parsing QEMU's -chardev and -serial spellings."""

from __future__ import annotations

import pytest

from kvmkit.chardev.file import FileChardev
from kvmkit.chardev.mux import MuxChardev
from kvmkit.chardev.null import NullChardev
from kvmkit.chardev.spec import (
    ChardevReference,
    ChardevSpec,
    build_chardev,
    parse_chardev_option,
    parse_serial_option,
    split_option_text,
)
from kvmkit.errors import ConfigError


def test_double_comma_is_a_literal_comma() -> None:
    assert split_option_text("file,id=a,path=/tmp/x,,y") == ["file", "id=a", "path=/tmp/x,y"]


def test_chardev_stdio_with_mux() -> None:
    assert parse_chardev_option("stdio,id=con0,mux=on") == ChardevSpec("stdio", "con0", mux=True)


def test_chardev_file_with_append() -> None:
    spec = parse_chardev_option("file,id=log,path=/tmp/serial.log,append=on")
    assert (spec.backend, spec.path, spec.append) == ("file", "/tmp/serial.log", True)


def test_chardev_unix_socket_server_without_wait() -> None:
    spec = parse_chardev_option("socket,id=s,path=/run/vm.sock,server=on,wait=off")
    assert (spec.path, spec.server, spec.wait) == ("/run/vm.sock", True, False)


def test_chardev_tcp_socket_with_legacy_flags() -> None:
    spec = parse_chardev_option("socket,id=s,host=127.0.0.1,port=4444,server,nowait")
    assert (spec.host, spec.port, spec.server, spec.wait) == ("127.0.0.1", 4444, True, False)


def test_chardev_pty_and_null() -> None:
    assert parse_chardev_option("pty,id=p").backend == "pty"
    assert parse_chardev_option("null,id=n").backend == "null"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("file,id=x,path=/p,colour=red", "colour"),
        ("file,id=x", "path"),
        ("stdio", "id"),
        ("stdio,id=9bad", "id"),
        ("serial,id=x", "serial"),
        ("socket,id=s,path=/a,host=h,port=1", "path"),
        ("socket,id=s,host=h,port=99999", "port"),
        ("socket,id=s,path=/a,server=maybe", "server"),
        ("null,id=a,id=b", "id"),
    ],
)
def test_malformed_chardev_specs_name_the_bad_key(text: str, named: str) -> None:
    with pytest.raises(ConfigError, match=rf"-chardev .*'{named}'"):
        parse_chardev_option(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("stdio", ChardevSpec("stdio", "serial0")),
        ("null", ChardevSpec("null", "serial0")),
        ("pty", ChardevSpec("pty", "serial0")),
        ("file:/tmp/a,b", ChardevSpec("file", "serial0", path="/tmp/a,b")),
        ("unix:/s,server=on,wait=off", ChardevSpec("socket", "serial0", path="/s", server=True, wait=False)),
        (
            "tcp::4444,server,nowait",
            ChardevSpec("socket", "serial0", host="", port=4444, server=True, wait=False),
        ),
        ("tcp:[::1]:23", ChardevSpec("socket", "serial0", host="::1", port=23)),
        ("chardev:con0", ChardevReference("con0")),
        ("mon:stdio", ChardevSpec("stdio", "serial0", mux=True, monitor=True)),
    ],
)
def test_serial_shorthands(text: str, expected: object) -> None:
    assert parse_serial_option(text) == expected


def test_serial_none_means_no_port() -> None:
    assert parse_serial_option("none") is None


def test_serial_ids_follow_the_port_index() -> None:
    assert parse_serial_option("null", index=1) == ChardevSpec("null", "serial1")


@pytest.mark.parametrize("text", ["vc", "file:", "tcp:4444", "unix:/s,colour=on", "mon:none", "tcp:h:x"])
def test_malformed_serial_specs_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError, match="-serial"):
        parse_serial_option(text)


def test_build_file_and_null_backends(tmp_path) -> None:
    path = tmp_path / "out.txt"
    chardev = build_chardev(parse_chardev_option(f"file,id=f,path={path}"))
    assert isinstance(chardev, FileChardev)
    assert chardev.info() == {"label": "f", "filename": f"file:{path}", "frontend-open": False}
    chardev.close()
    assert isinstance(build_chardev(parse_chardev_option("null,id=n")), NullChardev)


def test_build_with_mux_returns_a_mux_over_the_backend() -> None:
    chardev = build_chardev(parse_chardev_option("null,id=n,mux=on"))
    assert isinstance(chardev, MuxChardev)
    assert isinstance(chardev.backend, NullChardev)
