"""A histogram for the message path: bucket counts and a sum, for one event loop, with no
lock (a prometheus ``Histogram.observe`` takes one and costs microseconds). The gateway's
metrics (:mod:`im_gateway.metrics`) turn it into a Prometheus family at scrape time.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterable, Sequence

__all__ = ["FastHistogram"]


class FastHistogram:
    """Bucket counts and a sum, for one event loop: ``observe`` takes no lock."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_since(self, time_ms: int) -> None:
        """Observe the seconds from ``time_ms`` (wall clock, ms) to now (0 if ahead)."""
        value = _now() - time_ms * 0.001
        if value < 0.0:
            value = 0.0
        self.counts[_bisect(self.bounds, value)] += 1
        self.sum += value

    def observe_all_since(self, times_ms: Iterable[int]) -> None:
        """:meth:`observe_since` for each of ``times_ms``, with one reading of the clock
        (the messages of one frame from the hub)."""
        now = _now()
        bounds = self.bounds
        counts = self.counts
        total = 0.0
        for time_ms in times_ms:
            value = now - time_ms * 0.001
            if value < 0.0:
                value = 0.0
            counts[_bisect(bounds, value)] += 1
            total += value
        self.sum += total

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, ``+Inf`` last (Prometheus' form)."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            total += n
            out.append((_float_text(bound), total))
        out.append(("+Inf", total + self.counts[-1]))
        return out


_now = time.time
_bisect = bisect.bisect_left


def _float_text(value: float) -> str:
    return repr(float(value))
