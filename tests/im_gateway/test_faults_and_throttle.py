"""The test-only fault hooks (parsing, the dropped push) and counted logging."""

from __future__ import annotations

import logging

import pytest

from im_gateway.errors import ConfigError
from im_gateway.faults import Faults, from_env
from im_gateway.throttle import Throttled


def test_fault_hooks_are_off_unless_named() -> None:
    """No variable (or a blank one) means no hooks; named hooks get their counts."""
    assert from_env("") is None
    assert from_env("  ") is None
    faults = from_env("crash-after-store:3, drop-push:2")
    assert faults is not None
    assert (faults.crash_after_store, faults.drop_push) == (3, 2)


@pytest.mark.parametrize(
    "value", ["crash", "drop-push", "drop-push:x", "explode:1", "drop-push:-1"]
)
def test_unknown_or_malformed_fault_hooks_are_refused(value: str) -> None:
    """A hook that is not known, or has no count, is a ConfigError naming the variable."""
    with pytest.raises(ConfigError, match="IM_GATEWAY_FAULTS"):
        from_env(value)


def test_drop_push_drops_exactly_the_nth_push() -> None:
    """drop-push:N answers True for the N-th push only."""
    faults = Faults(drop_push=3)
    assert [faults.drop() for _ in range(6)] == [False, False, True, False, False, False]
    assert not any(Faults().drop() for _ in range(3))


def test_throttled_logs_once_per_interval_with_the_count(caplog: pytest.LogCaptureFixture) -> None:
    """The first hit is logged at once; later ones within the interval are only counted,
    and the next line carries their count."""
    logger = logging.getLogger("tests.throttle")
    throttled = Throttled(logger, "failed %d times", interval=3600)
    with caplog.at_level(logging.WARNING, logger="tests.throttle"):
        assert throttled.hit()
        assert not throttled.hit()
        assert not throttled.hit(5)
    assert [r.getMessage() for r in caplog.records] == ["failed 1 times"]
    eager = Throttled(logger, "lost %d", interval=0)
    with caplog.at_level(logging.WARNING, logger="tests.throttle"):
        caplog.clear()
        assert eager.hit(2, exc=TimeoutError("slow"))
        assert eager.hit()
    assert [r.getMessage() for r in caplog.records] == [
        "lost 2 (last: TimeoutError: slow)",
        "lost 1",
    ]
