"""Connection caps and the throttled log of refused handshakes: pure state, no loop."""

from __future__ import annotations

import logging

import pytest

from im_gateway.admission import ConnectionCaps, RejectionLog
from im_gateway.errors import ConfigError
from transmit_hub.types import UserId

A, B = UserId(1), UserId(2)


def test_per_user_cap_refuses_with_429_and_frees_on_release() -> None:
    """A user's third connection under a cap of 2 is refused (429, nothing taken); a
    release makes room again; other users are unaffected."""
    caps = ConnectionCaps(per_user=2, total=10)
    assert caps.admit(A) is None
    assert caps.admit(A) is None
    refused = caps.admit(A)
    assert refused is not None
    assert refused.status == 429
    assert "--max-connections-per-user" in refused.reason
    assert caps.held(A) == 2
    assert caps.count == 2
    assert caps.admit(B) is None
    caps.release(A)
    assert caps.admit(A) is None


def test_total_cap_refuses_with_503() -> None:
    """Beyond the gateway's total the upgrade is refused with 503, whoever asks."""
    caps = ConnectionCaps(per_user=5, total=2)
    assert caps.admit(A) is None
    assert caps.admit(B) is None
    refused = caps.admit(UserId(3))
    assert refused is not None
    assert refused.status == 503
    assert "--max-connections" in refused.reason
    assert caps.count == 2


def test_release_without_admit_changes_nothing() -> None:
    """A release for a user holding no slot cannot drive the count negative."""
    caps = ConnectionCaps(per_user=1, total=1)
    caps.release(A)
    assert caps.count == 0
    assert caps.admit(A) is None
    caps.release(A)
    caps.release(A)
    assert caps.count == 0
    assert caps.held(A) == 0


def test_caps_must_be_positive() -> None:
    """A cap of 0 is a configuration error, not a gateway that admits nobody."""
    with pytest.raises(ConfigError, match="at least 1"):
        ConnectionCaps(per_user=0, total=1)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rejection_log_writes_one_line_per_interval_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1,000 refusals in a burst log one line at once and one line with the count after
    the interval, at INFO; never a line per refusal."""
    clock = Clock()
    log = RejectionLog(10.0, clock)
    with caplog.at_level(logging.INFO, logger="im_gateway.admission"):
        assert log.hit("401 token expired")
        for _ in range(999):
            assert not log.hit("401 bad signature")
        clock.now += 10.0
        assert log.hit("401 bad signature")
        assert not log.flush()
        log.hit("401 x")
        clock.now += 1.0
        log.hit("401 y")
        assert log.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert all(r.levelno == logging.INFO for r in caplog.records)
    assert len(lines) == 3, lines
    assert lines[0] == "refused a WebSocket handshake: 401 token expired"
    assert lines[1].startswith("refused 1000 WebSocket handshakes in the last 10 s")
    assert lines[2] == "refused 2 WebSocket handshakes since the last report (last: 401 y)"
