"""A token bucket per connection: pure arithmetic over a clock the caller passes in."""

from __future__ import annotations

from .errors import ConfigError


class TokenBucket:
    """Allow ``rate`` frames per second on average and bursts of up to ``burst``.

    A ``rate`` of 0 disables the limit.
    """

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate < 0 or burst < 0:
            raise ConfigError("rate and burst must not be negative")
        self._rate = rate
        self._burst = max(burst, 1.0)
        self._tokens = self._burst
        self._last = now

    def allow(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens at time ``now`` (seconds, monotonic); False (nothing taken)
        when fewer are left."""
        if self._rate == 0:
            return True
        tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if tokens < cost:
            self._tokens = tokens
            return False
        self._tokens = tokens - cost
        return True

    def wait(self, now: float, cost: float = 1.0) -> float:
        """Seconds from ``now`` until ``cost`` tokens are there (0: now)."""
        if self._rate == 0:
            return 0.0
        tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        return max(0.0, (min(cost, self._burst) - tokens) / self._rate)
