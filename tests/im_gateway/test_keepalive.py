"""The idle sweep's upkeep (:mod:`im_gateway.keepalive`): what it does to one connection,
and that passing over a connection until its ``upkeep_at`` changes nothing."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from im_gateway.close_codes import CLOSE_IDLE, CLOSE_INTERNAL
from im_gateway.keepalive import NEVER, sweep_idle, upkeep
from tests.helpers import wait_until
from transmit_hub.types import UserId

USER = UserId(7)


@dataclass
class Conn:
    """A connection as :func:`upkeep` sees it: the session's times, the socket's
    ``heard_at`` and ``ping_now``, the writer's ``closing`` and ``close``; what was done
    to it, with the times."""

    user: UserId = USER
    last_seen: float = 0.0
    pinged_at: float = 0.0
    heard_at: float = 0.0
    upkeep_at: float = 0.0
    open: bool = True
    closing: bool = False
    done: list[tuple[float, str]] = field(default_factory=list)
    now: float = 0.0

    def ping_now(self) -> bool:
        if self.open:
            self.done.append((self.now, "ping"))
        return self.open

    def close(self, code: int, reason: str = "") -> None:
        self.closing = True
        self.done.append((self.now, f"close {code}"))


def visit(conn: Conn, now: float, idle: float, interval: float, pong_timeout: float) -> float:
    conn.now = now
    return upkeep(conn, conn, conn, now, idle, interval, pong_timeout)  # type: ignore[arg-type]


def test_a_quiet_client_is_pinged_and_closed_when_its_pong_is_late() -> None:
    conn = Conn()
    assert visit(conn, 10.0, 0, 20, 5) == 20.0  # due at last_seen + interval
    assert visit(conn, 20.0, 0, 20, 5) == 25.0  # pinged; its pong is due by 25
    assert conn.done == [(20.0, "ping")]
    assert visit(conn, 25.0, 0, 20, 5) == 25.0  # not late yet (late: more than 5 s)
    assert visit(conn, 25.5, 0, 20, 5) == NEVER
    assert conn.done == [(20.0, "ping"), (25.5, f"close {CLOSE_INTERNAL}")]
    assert visit(conn, 99.0, 0, 20, 5) == NEVER  # closing: nothing more
    assert len(conn.done) == 2


def test_a_pong_puts_the_next_ping_an_interval_after_it() -> None:
    conn = Conn()
    visit(conn, 20.0, 0, 20, 5)
    conn.heard_at = 21.0
    assert visit(conn, 25.0, 0, 20, 5) == 41.0
    assert visit(conn, 41.0, 0, 20, 5) == 46.0
    assert conn.done == [(20.0, "ping"), (41.0, "ping")]


def test_an_idle_client_is_closed_whatever_its_pongs() -> None:
    conn = Conn(heard_at=250.0)
    assert visit(conn, 260.0, 300, 20, 5) == 270.0  # the next ping, before the idle limit
    assert visit(conn, 300.0, 300, 20, 5) == NEVER
    assert conn.done[-1] == (300.0, f"close {CLOSE_IDLE}")


def test_a_socket_not_open_is_looked_at_again_at_the_next_sweep() -> None:
    conn = Conn(open=False)
    assert visit(conn, 30.0, 0, 20, 5) == 30.0
    assert conn.done == []
    assert conn.pinged_at == 0.0


@pytest.mark.parametrize("idle", [True, False])
def test_a_mass_close_is_counted_not_logged_per_connection(
    idle: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A network cut closes thousands of connections in one sweep: at most one INFO line
    (with a count) per 5 s, and each user named at DEBUG only."""
    caplog.set_level(logging.DEBUG, logger="im_gateway.keepalive")
    conns = [Conn(user=UserId(i), pinged_at=0.0 if idle else 30.0) for i in range(1, 501)]
    for conn in conns:
        assert visit(conn, 60.0, 50.0 if idle else 0, 20, 5) == NEVER
    assert all(conn.closing for conn in conns)
    info = [r for r in caplog.records if r.levelno >= logging.INFO]
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(info) <= 1, [r.getMessage() for r in info]
    assert len(debug) == 500


# One connection's life: (seconds later, what happens then).
_events = st.lists(
    st.tuples(
        st.sampled_from([0.0, 0.25, 1.0, 2.5, 5.0, 7.5, 20.0, 31.0]),
        st.sampled_from(["sweep", "sweep", "sweep", "frame", "pong", "drop", "reopen"]),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(
    events=_events,
    idle=st.sampled_from([0.0, 30.0, 61.0]),
    interval=st.sampled_from([0.0, 5.0, 20.0]),
    pong_timeout=st.sampled_from([0.0, 2.5, 20.0, 33.0]),
)
def test_passing_over_a_connection_until_its_upkeep_at_changes_nothing(
    events: list[tuple[float, str]], idle: float, interval: float, pong_timeout: float
) -> None:
    """Two copies of a connection see the same frames, pongs and socket states; the
    sweep looks at one at every sweep (as before ``upkeep_at``) and at the other only
    once its ``upkeep_at`` has come: they are pinged and closed at the same times."""
    every, skipping = Conn(), Conn()
    now = 0.0
    for later, what in events:
        now += later
        for conn in (every, skipping):
            if what == "frame":
                conn.last_seen = now
            elif what == "pong":
                conn.heard_at = now
            elif what in ("drop", "reopen"):
                conn.open = what == "reopen"
            elif conn is every:
                visit(conn, now, idle, interval, pong_timeout)
            elif conn.upkeep_at <= now:
                conn.upkeep_at = visit(conn, now, idle, interval, pong_timeout)
    assert skipping.done == every.done
    assert skipping.pinged_at == every.pinged_at


@settings(max_examples=300, deadline=None)
@given(
    interval=st.sampled_from([4.0, 20.0, 30.0]),
    pong_timeout=st.sampled_from([0.0, 20.0, 60.0]),
    delays=st.lists(st.floats(min_value=0.0, max_value=0.999), min_size=8, max_size=8),
    start=st.floats(min_value=0.0, max_value=0.999),
)
def test_a_ping_goes_out_within_a_quarter_interval_after_the_interval(
    interval: float, pong_timeout: float, delays: list[float], start: float
) -> None:
    """What the README says of ``--ping-interval``: a client that answers every ping (its
    pong ``delays[k]`` of a sweep period after it) and sends nothing else is pinged no
    sooner than an interval after its last pong, and no later than a sweep period (a
    quarter of the interval, as ``sweep_idle`` picks it) after that."""
    period = min(p for p in (interval / 4, pong_timeout / 2) if p > 0)
    conn = Conn(last_seen=start * period)
    pongs: list[float] = []
    tick = 0
    while len(pongs) < len(delays) and tick < 1000:
        now = tick * period
        tick += 1
        if conn.upkeep_at > now:
            continue
        before = len(conn.done)
        conn.upkeep_at = visit(conn, now, 0, interval, pong_timeout)
        if len(conn.done) > before:
            assert conn.done[-1] == (now, "ping")
            heard = max(conn.last_seen, conn.heard_at)
            assert heard + interval <= now < heard + interval + period
            conn.heard_at = now + delays[len(pongs)] * period
            pongs.append(conn.heard_at)
    assert len(pongs) == len(delays)


class Counted:
    """A connection for the sweep: answers pings at once; counts the sweep's visits."""

    def __init__(self) -> None:
        self.conn = Conn()
        self.user = self.conn.user
        self.upkeep_at = 0.0
        self.visits = 0
        self.pings = 0

    def upkeep(self, now: float, interval: float, pong_timeout: float) -> float:
        self.visits += 1
        before = len(self.conn.done)
        due = visit(self.conn, now, 0, interval, pong_timeout)
        if len(self.conn.done) > before:
            self.pings += 1
            self.conn.heard_at = now  # the pong, at once
        return due


async def test_the_sweep_visits_a_quiet_connection_about_once_per_interval() -> None:
    """Pings every 0.2 s, sweeps every 0.05 s: a quiet connection answering its pings is
    visited when a ping or its pong's deadline is due (about twice per ping), not at every
    sweep (four times per interval, as before ``upkeep_at``)."""
    kept = [Counted() for _ in range(3)]
    loop = asyncio.get_running_loop()
    kept[0].conn.last_seen = kept[1].conn.last_seen = kept[2].conn.last_seen = loop.time()
    sweeper = asyncio.create_task(sweep_idle(lambda: kept, 0, ping_interval=0.2, ping_timeout=0.2))
    try:
        await wait_until(lambda: all(k.pings >= 5 for k in kept), timeout=10)
    finally:
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
    for k in kept:
        # 5 intervals of 4 sweeps: 20 visits when every sweep looks; here 2 per ping
        # (the ping, and the pong's deadline) and the first look.
        assert k.visits <= 2 * k.pings + 2, (k.visits, k.pings)
