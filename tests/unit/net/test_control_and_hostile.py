"""The control queue, hostile rings and frames, the rate limiter's arithmetic and the stream framing."""

from __future__ import annotations

import struct

import pytest

from harness.net_rig import make_rig
from kvmkit.errors import GuestError
from kvmkit.hw.virtio.device import STATUS_DEVICE_NEEDS_RESET
from kvmkit.hw.virtio.net.header import (
    NET_HDR_LEN,
    VIRTIO_NET_CTRL_MAC,
    VIRTIO_NET_CTRL_MAC_ADDR_SET,
    VIRTIO_NET_CTRL_MAC_TABLE_SET,
    VIRTIO_NET_CTRL_MQ,
    VIRTIO_NET_CTRL_RX,
    VIRTIO_NET_CTRL_RX_PROMISC,
    VIRTIO_NET_CTRL_VLAN,
    VIRTIO_NET_CTRL_VLAN_ADD,
    VIRTIO_NET_ERR,
    VIRTIO_NET_OK,
    VirtioNetCtrlHdr,
)
from kvmkit.net.framing import StreamDeframer, encode_frame
from kvmkit.net.rate_limit import LATE_TIMER_ALLOWANCE, RateLimit, RateLimiter, TokenBucket, parse_rate


def control(rig, cls: int, cmd: int, data: bytes) -> int:
    queue = rig.driver.queues[2]
    _, (ack_addr,) = queue.post([bytes(VirtioNetCtrlHdr(cls, cmd)) + data], [1])
    (entry,) = queue.take_used()
    assert entry[1] == 1
    return rig.machine.dma.read(ack_addr, 1)[0]


def test_control_queue_acks_what_linux_sends_and_refuses_the_rest(rig):
    assert control(rig, VIRTIO_NET_CTRL_RX, VIRTIO_NET_CTRL_RX_PROMISC, b"\x01") == VIRTIO_NET_OK
    table = struct.pack("<I", 1) + bytes.fromhex("525400aabbcc") + struct.pack("<I", 2) + bytes(12)
    assert control(rig, VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, table) == VIRTIO_NET_OK
    assert control(rig, VIRTIO_NET_CTRL_VLAN, VIRTIO_NET_CTRL_VLAN_ADD, struct.pack("<H", 100)) == VIRTIO_NET_OK
    new_mac = bytes.fromhex("525400010203")
    assert control(rig, VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_ADDR_SET, new_mac) == VIRTIO_NET_OK
    assert bytes(rig.driver.device_config(i, 1) for i in range(6)) == new_mac
    state = rig.device.ctrl.state
    assert state.modes["promisc"] and state.vlans == {100} and len(state.multicast) == 2
    # malformed or not offered: an error ack, never an exception
    assert control(rig, VIRTIO_NET_CTRL_VLAN, VIRTIO_NET_CTRL_VLAN_ADD, struct.pack("<H", 5000)) == VIRTIO_NET_ERR
    lying = struct.pack("<I", 1_000_000) + bytes(6)
    assert control(rig, VIRTIO_NET_CTRL_MAC, VIRTIO_NET_CTRL_MAC_TABLE_SET, lying) == VIRTIO_NET_ERR
    assert control(rig, VIRTIO_NET_CTRL_MQ, 0, struct.pack("<H", 4)) == VIRTIO_NET_ERR
    assert control(rig, 99, 0, b"") == VIRTIO_NET_ERR
    assert rig.device.stats()["rx-filter"]["ctrl-errors"] == 4


def test_a_control_request_without_room_for_the_ack_is_completed_empty(rig):
    queue = rig.driver.queues[2]
    queue.post([bytes(VirtioNetCtrlHdr(VIRTIO_NET_CTRL_RX, 0)) + b"\x01"], [])
    assert queue.take_used()[0][1] == 0


def test_a_readable_rx_buffer_makes_the_device_need_reset_without_raising(rig):
    queue = rig.driver.queues[0]
    queue.post([b"not writable"], [])
    assert rig.driver.status & STATUS_DEVICE_NEEDS_RESET


def test_a_tiny_rx_buffer_makes_the_device_need_reset(rig):
    queue = rig.driver.queues[0]
    queue.post([], [NET_HDR_LEN - 2])
    assert rig.driver.status & STATUS_DEVICE_NEEDS_RESET


def test_oversized_tx_frames_are_errors_not_crashes(rig):
    queue = rig.driver.queues[1]
    queue.post([bytes(NET_HDR_LEN), bytes(70000)], [])
    assert len(queue.take_used()) == 1
    assert rig.device.stats()["tx"]["errors"] == 1


def test_a_peer_sending_an_absurd_length_is_disconnected(rig):
    rig.driver.queues[0].post([], [2048])
    rig.peer.sendall(struct.pack(">I", 1 << 30) + b"junk")
    rig.loop.pump()
    assert not rig.device.backend.connected
    assert rig.device.stats()["rx"]["dropped"] == 0


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_admits_rate_times_time_plus_burst_and_goes_into_debt_by_one_frame():
    clock = FakeClock()
    bucket = TokenBucket(1000, 100, clock)
    admitted = 0
    for _ in range(10_000):
        if bucket.may_take():
            bucket.take(60)
            admitted += 60
        clock.now += 0.001
    # 10 s at 1000 B/s, plus the burst, plus at most one frame of debt
    assert 10_000 - 60 <= admitted <= 10_000 + 100 + 60
    bucket.take(500)
    assert not bucket.may_take()
    assert bucket.delay() == pytest.approx((-bucket.tokens) / 1000, abs=1e-3)


def test_rate_limiter_needs_both_buckets_and_unlimited_is_free():
    clock = FakeClock()
    limiter = RateLimiter(RateLimit(bytes_per_sec=0, packets_per_sec=100), clock)
    for _ in range(16):
        assert limiter.may_take()
        limiter.take(1500)
    assert not limiter.may_take()
    clock.now += 0.05
    assert limiter.may_take()
    assert RateLimiter().unlimited and RateLimiter().delay() == 0


def test_parse_rate_units_and_errors():
    assert parse_rate("10M", "rate") == 10_000_000 and parse_rate("2.5K", "rate") == 2500
    with pytest.raises(Exception, match="rate="):
        parse_rate("fast", "rate")


def test_stream_framing_survives_arbitrary_chunking():
    frames = [bytes([n]) * (60 + n * 37) for n in range(20)]
    wire = b"".join(encode_frame(f) for f in frames)
    deframer = StreamDeframer()
    got = []
    for start in range(0, len(wire), 7):
        deframer.feed(wire[start : start + 7])
        while (frame := deframer.next_frame()) is not None:
            got.append(bytes(frame))
    assert got == frames and deframer.buffered == 0
    deframer.feed(struct.pack(">I", 70000))
    with pytest.raises(GuestError):
        deframer.next_frame()


def test_rx_limit_pauses_the_backend_and_resumes_on_the_timer():
    rig = make_rig()
    clock = FakeClock()
    rig.device.rx_limiter = RateLimiter(RateLimit(bytes_per_sec=1000, packets_per_sec=0), clock)
    rig.device.rx_limiter.bytes.tokens = 1  # just one frame's worth of credit left
    queue = rig.driver.queues[0]
    for _ in range(4):
        queue.post([], [2048], kick=False)
    queue.kick()
    rig.send_frames(bytes(100), bytes(100))
    rig.loop.pump()
    assert len(queue.take_used()) == 1 and rig.loop.readers == {} and rig.loop.timers
    clock.now += 1.0
    rig.loop.fire_timers()
    rig.loop.pump()
    assert len(queue.take_used()) == 1
    stats = rig.device.stats()["rx"]
    assert stats["dropped"] == 0 and stats["throttled"] >= 1


def test_token_bucket_keeps_its_rate_when_refill_timers_fire_late_but_never_exceeds_it():
    clock = FakeClock()
    bucket = TokenBucket(100_000, 3028, clock)  # a 30 ms burst
    admitted, start = 0, clock.now
    while clock.now - start < 10:
        while bucket.may_take():
            bucket.take(1514)
            admitted += 1514
        clock.now += bucket.delay() + 0.05  # the main loop wakes 50 ms late every time
    elapsed = clock.now - start
    assert 0.97 * 100_000 * elapsed <= admitted <= 100_000 * elapsed + 3028 + 1514
    clock.now += 5  # the wait after a refusal earns at most the allowance past the burst ...
    assert bucket.may_take() and bucket.tokens <= 3028 + 100_000 * LATE_TIMER_ALLOWANCE
    bucket.take(bucket.tokens)
    clock.now += 5  # ... and an idle spell no more than the burst
    assert bucket.may_take() and bucket.tokens <= 3028
