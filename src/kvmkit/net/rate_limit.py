"""Token buckets for per-device rate limiting by back-pressure.

A bucket holds up to `burst` tokens and refills at `rate` tokens per second. Taking is allowed while the
bucket is not in debt (tokens > 0) and may drive it negative by one frame's size: a frame is never split
or dropped, the device simply stops taking the next one until the debt is paid back. Over any interval
the admitted amount is at most `burst + rate * seconds + one frame`. Time spent refusing frames earns its tokens
even past the burst (up to LATE_TIMER_ALLOWANCE), so a late refill timer does not lower the rate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]
BURST_SECONDS = 0.02  # a bucket holds 20 ms worth of its rate (plus one frame's slack)
# A burst need not hold a whole frame (a frame may take the bucket into debt), so the floor is two full-size
# Ethernet frames: a 64 KiB floor let a 1 Mbit/s limit pass half a second of extra data after every idle spell.
MIN_BYTE_BURST = 2 * 1514
MIN_PACKET_BURST = 16
# How late a refill timer may fire and still have its lateness made good: while frames wait (the bucket said no),
# the time they waited earns tokens beyond the burst, so a busy main loop does not cost the guest bandwidth.
LATE_TIMER_ALLOWANCE = 0.2


class TokenBucket:
    """One token bucket; `rate` 0 means unlimited."""

    def __init__(self, rate: float, burst: float, clock: Clock = time.monotonic) -> None:
        self.clock = clock
        self.rate = 0.0
        self.burst = 0.0
        self.tokens = 0.0
        self._backlogged = False  # a frame was refused since the last refill: the wait earns tokens
        self._stamp = clock()
        self.configure(rate, burst)

    def configure(self, rate: float, burst: float) -> None:
        """Change rate and burst; the bucket starts full so a new limit applies from now on."""
        if rate < 0 or burst < 0:
            raise ValueError("a token bucket's rate and burst must not be negative")
        self.rate, self.burst = float(rate), float(burst)
        self.tokens, self._stamp = self.burst, self.clock()

    @property
    def unlimited(self) -> bool:
        return self.rate == 0

    def _refill(self) -> None:
        now = self.clock()
        elapsed, self._stamp = max(now - self._stamp, 0.0), now
        if elapsed == 0:
            return  # nothing earned; tokens a late timer earned past the burst stay until spent or idle
        ceiling = self.burst + (self.rate * LATE_TIMER_ALLOWANCE if self._backlogged else 0.0)
        self.tokens = min(ceiling, self.tokens + elapsed * self.rate)
        self._backlogged = False

    def may_take(self) -> bool:
        """Whether one more frame may go now (the bucket is not in debt)."""
        if self.unlimited:
            return True
        self._refill()
        if self.tokens > 0:
            return True
        self._backlogged = True
        return False

    def take(self, amount: float) -> None:
        """Account for `amount` tokens spent (may leave the bucket in debt)."""
        if not self.unlimited:
            self._refill()
            self.tokens -= amount

    def delay(self) -> float:
        """Seconds until `may_take()` becomes true again (0 if it already is)."""
        if self.unlimited:
            return 0.0
        self._refill()
        if self.tokens > 0:
            return 0.0
        self._backlogged = True
        return (-self.tokens + 1e-9) / self.rate + 1e-4


@dataclass
class RateLimit:
    """Limits of one direction of one device: bytes and packets per second (0 = unlimited)."""

    bytes_per_sec: int = 0
    packets_per_sec: int = 0


class RateLimiter:
    """A pair of buckets (bytes, packets) that admit frames one at a time."""

    def __init__(self, limit: RateLimit | None = None, clock: Clock = time.monotonic) -> None:
        self.bytes = TokenBucket(0, 0, clock)
        self.packets = TokenBucket(0, 0, clock)
        self.limit = RateLimit()
        self.unlimited = True  # a plain attribute: datapaths test it per frame
        self.set_limit(limit or RateLimit())

    def set_limit(self, limit: RateLimit) -> None:
        if limit.bytes_per_sec < 0 or limit.packets_per_sec < 0:
            raise ValueError("rate limits must not be negative")
        self.limit = limit
        self.bytes.configure(limit.bytes_per_sec, max(limit.bytes_per_sec * BURST_SECONDS, MIN_BYTE_BURST))
        self.packets.configure(limit.packets_per_sec,
                               max(limit.packets_per_sec * BURST_SECONDS, MIN_PACKET_BURST))
        self.unlimited = self.bytes.unlimited and self.packets.unlimited

    def may_take(self) -> bool:
        return self.bytes.may_take() and self.packets.may_take()

    def take(self, nbytes: int) -> None:
        self.bytes.take(nbytes)
        self.packets.take(1)

    def delay(self) -> float:
        return max(self.bytes.delay(), self.packets.delay())


def parse_rate(text: str, what: str) -> int:
    """`1000`, `10K`, `2.5M`, `1G` (powers of 1000, as network rates are) -> an integer per second."""
    from kvmkit.errors import ConfigError

    units = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3}
    value = text.strip().upper()
    suffix = value[-1:] if value[-1:] in ("K", "M", "G") else ""
    number = value[: len(value) - len(suffix)]
    try:
        amount = float(number) * units[suffix]
    except ValueError:
        raise ConfigError(f"{what}={text!r} is not a rate (a number with an optional K, M or G)") from None
    if amount < 0 or amount != amount or amount == float("inf"):
        raise ConfigError(f"{what}={text!r} must be a finite number >= 0")
    return int(amount)
