"""The gateway's metrics core: the lock-free histogram matches prometheus_client's."""

from __future__ import annotations

from unittest import mock

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from im_gateway.metrics import LATENCY_BUCKETS, FastHistogram, NullMetrics


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=50))
def test_fast_histogram_buckets_match_prometheus_client(values: list[float]) -> None:
    """Same cumulative buckets (``le``: a value on a bound counts in it) and sum."""
    ours = FastHistogram(LATENCY_BUCKETS)
    registry = CollectorRegistry()
    theirs = Histogram("h", "h", buckets=LATENCY_BUCKETS, registry=registry)
    for value in values:
        ours.observe(value)
        theirs.observe(value)
    expected = [
        (s.labels["le"], s.value)
        for family in registry.collect()
        for s in family.samples
        if s.name == "h_bucket"
    ]
    assert ours.buckets() == expected
    assert abs(ours.sum - (registry.get_sample_value("h_sum") or 0.0)) < 1e-6


@given(st.lists(st.integers(min_value=0, max_value=2 * 10**12), max_size=20))
def test_observing_a_frame_s_times_at_once_is_observing_each(times: list[int]) -> None:
    """observe_all_since (one clock reading per frame) counts and sums as observe_since
    does for each time, at the same clock reading (times ahead of it count as 0)."""
    clock = 1.7e9
    one, many = FastHistogram(LATENCY_BUCKETS), FastHistogram(LATENCY_BUCKETS)
    with mock.patch("im_gateway.histogram._now", return_value=clock):
        for t in times:
            one.observe_since(t)
        many.observe_all_since(times)
    assert many.counts == one.counts
    assert abs(many.sum - one.sum) <= 1e-6 * max(1.0, abs(one.sum))


def test_null_metrics_count_nothing() -> None:
    """Metrics off: the hooks leave every count at zero."""
    off = NullMetrics()
    off.frame_out('{"type":10}')
    off.refused("internal")
    off.hole_fill()
    assert not off.enabled
    assert off.hole_fills == 0
