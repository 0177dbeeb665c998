"""The per-connection token bucket."""

from __future__ import annotations

from im_gateway.ratelimit import TokenBucket


def test_burst_then_rate() -> None:
    """A full bucket allows `burst` frames at once, then `rate` per second."""
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.allow(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.allow(0.05)
    assert bucket.allow(0.1)
    assert not bucket.allow(0.1)
    assert [bucket.allow(10.0) for _ in range(4)] == [True, True, True, False]


def test_zero_rate_disables_the_limit() -> None:
    """rate 0 means no limit."""
    bucket = TokenBucket(rate=0, burst=0, now=0.0)
    assert all(bucket.allow(0.0) for _ in range(10_000))
