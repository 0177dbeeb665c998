"""The pipeline's linger rule (:class:`im_gateway.pipeline.Pace`), without a loop."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from im_gateway.pipeline import Pace


@given(
    size=st.integers(min_value=1, max_value=256),
    gap=st.floats(min_value=1e-4, max_value=0.02),
    linger=st.floats(min_value=1e-4, max_value=0.02),
    batches=st.integers(min_value=1, max_value=50),
)
def test_steady_arrivals_linger_when_one_more_message_is_expected(
    size: int, gap: float, linger: float, batches: int
) -> None:
    """Batches of ``size`` every ``gap`` s: from the first batch on, a linger is worth it
    exactly when ``size / gap`` x ``linger`` >= 1 (the averages start from 0 together)."""
    pace = Pace()
    for _ in range(batches):
        pace.observe(size, gap)
    expected = size * linger >= gap
    # Float rounding may tip the exact boundary either way; away from it the rule holds.
    if abs(size * linger - gap) > 1e-9 * max(gap, size * linger):
        assert pace.worth(linger) is expected


def test_sparse_traffic_does_not_linger_and_dense_traffic_does() -> None:
    """250 msgs/s (one every 4 ms) with a 3 ms linger: less than one message expected, no
    wait; 1,000 msgs/s: three expected, the batch waits."""
    sparse, dense = Pace(), Pace()
    for _ in range(20):
        sparse.observe(1, 0.004)
        dense.observe(4, 0.004)
    assert not sparse.worth(0.003)
    assert dense.worth(0.003)


def test_the_averages_follow_a_change_of_rate_and_reset_forgets() -> None:
    """After dense traffic thins out the averages follow within a few batches; reset()
    (traffic stopped) starts over."""
    pace = Pace()
    for _ in range(20):
        pace.observe(4, 0.004)
    assert pace.worth(0.003)
    for _ in range(20):
        pace.observe(1, 0.004)
    assert not pace.worth(0.003)
    pace.reset()
    assert (pace.sizes, pace.gaps) == (0.0, 0.0)
