"""Splitting the monitor byte stream into JSON texts."""

from __future__ import annotations

from kvmkit.monitor.json_stream import JsonMessageSplitter, StreamError


def test_object_split_over_several_feeds_is_one_message() -> None:
    splitter = JsonMessageSplitter()
    assert splitter.feed(b'{"a": ') == []
    assert splitter.feed(b'"}"}\n') == [b'{"a": "}"}']


def test_escaped_quote_does_not_end_a_string() -> None:
    assert JsonMessageSplitter().feed(b'{"a": "x\\"}"}') == [b'{"a": "x\\"}"}']


def test_escape_at_end_of_a_feed_is_carried_over() -> None:
    splitter = JsonMessageSplitter()
    assert splitter.feed(b'{"a": "x\\') == []
    assert splitter.feed(b'"y"}') == [b'{"a": "x\\"y"}']


def test_top_level_scalars_are_messages_of_their_own() -> None:
    assert JsonMessageSplitter().feed(b'42 "s" {}') == [b"42", b'"s"', b"{}"]


def test_oversized_message_is_reported_once_and_skipped_to_its_end() -> None:
    splitter = JsonMessageSplitter(max_message_bytes=16)
    out = splitter.feed(b'{"a": "' + b"x" * 100 + b'"} {"b": 1}')
    assert out == [StreamError("message longer than 16 bytes"), b'{"b": 1}']


def test_control_byte_resets_an_unfinished_message() -> None:
    splitter = JsonMessageSplitter()
    assert splitter.feed(b'{"a": [1, ') == []
    assert splitter.feed(b'\x00{"b": 2}') == [StreamError("invalid byte 0x00 in input"), b'{"b": 2}']


def test_excessive_nesting_is_reported_and_skipped() -> None:
    splitter = JsonMessageSplitter(max_depth=4)
    assert splitter.feed(b"[[[[[[]]]]]] []") == [StreamError("nesting deeper than 4 levels"), b"[]"]
