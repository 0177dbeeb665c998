"""The gateway's metrics core: the lock-free histogram matches prometheus_client's."""

from __future__ import annotations

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


def test_null_metrics_count_nothing() -> None:
    """Metrics off: the hooks leave every count at zero."""
    off = NullMetrics()
    off.frame_out('{"type":10}')
    off.refused("internal")
    off.hole_fill()
    assert not off.enabled
    assert off.hole_fills == 0
