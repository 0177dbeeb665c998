"""The client's connection clocks (im_gateway.client_watch), pure: when a connection that
owes answers is given up, and that answers, not deliveries or time alone, hold it; when
one that refuses every frame ``internal`` is, and that a success, not ``rate_limited``,
holds it."""

from __future__ import annotations

import json
from typing import Literal

from hypothesis import given
from hypothesis import strategies as st

from im_gateway.client_state import ClientState
from im_gateway.client_watch import AnswerWatch, Liveness, RefusalWatch

BOUND = 30.0


def test_the_bound_runs_from_when_something_came_to_be_owed() -> None:
    """Owing nothing: no deadline. A send written at t=5: due at 35; a second one written
    at t=10 does not move it (the oldest counts while nothing is answered)."""
    w = AnswerWatch()
    w.update(0, 0, 1.0)
    assert w.due(BOUND) is None
    w.update(1, 0, 5.0)
    w.update(2, 0, 10.0)
    assert w.due(BOUND) == 35.0
    assert not w.overdue(34.9, BOUND)
    assert w.overdue(35.0, BOUND)


def test_an_answer_restarts_the_clock_and_the_last_answer_stops_it() -> None:
    """An answer while more is owed is progress (the clock restarts); once nothing is
    owed there is no deadline, and the next send starts a new one."""
    w = AnswerWatch()
    w.update(3, 0, 0.0)
    w.update(2, 1, 20.0)  # one answered at t=20
    assert w.due(BOUND) == 50.0
    w.update(2, 2, 25.0)  # a retried refusal: answered, still owed (resent later)
    assert w.due(BOUND) == 55.0
    w.update(0, 4, 26.0)
    assert w.due(BOUND) is None
    w.update(1, 4, 100.0)
    assert w.due(BOUND) == 130.0


def test_liveness_asks_then_gives_up_a_silent_gateway_and_an_unanswering_one() -> None:
    """Quiet for ``interval``: a heartbeat; nothing after it for ``timeout``: silent. A
    gateway that answers heartbeats but owes answers past the bound: unanswered, counted."""
    answers = AnswerWatch()
    live = Liveness(0.0, answers, 30.0, 20.0, BOUND)
    assert live.deadline() == 30.0
    assert live.timed_out(30.0) == "ask"
    assert live.deadline() == 50.0
    assert live.timed_out(50.0) == "silent"

    live = Liveness(0.0, answers, 30.0, 20.0, BOUND)
    answers.update(1, 0, 1.0)  # a send written at t=1
    for t in (10.0, 20.0):
        live.heard(t)  # heartbeats' answers (or deliveries): no progress on what is owed
    assert live.deadline() == 31.0
    assert live.timed_out(31.0) == "unanswered"
    assert answers.timeouts == 1


def test_liveness_reads_on_when_the_deadline_moved() -> None:
    """Woken by the answer deadline, but an answer came meanwhile (the deadline moved):
    no verdict, read on until the new deadline."""
    answers = AnswerWatch()
    live = Liveness(0.0, answers, 30.0, 20.0, 10.0)
    answers.update(1, 0, 0.0)
    assert live.deadline() == 10.0
    answers.update(1, 1, 9.0)
    assert live.timed_out(10.0) is None
    assert live.deadline() == 19.0


Step = tuple[int, bool, float]
"""(frames owed after the input, whether it was an answer, seconds since the last)."""


@given(st.lists(st.tuples(st.integers(0, 5), st.booleans(), st.floats(0, 40)), max_size=60))
def test_the_watch_fires_exactly_when_owed_frames_went_unanswered_for_the_bound(
    steps: list[Step],
) -> None:
    """For any run of inputs: overdue at time t iff something is owed at t and no answer
    came in the last BOUND seconds, nor did the connection come to owe anything (from
    owing nothing) in them; checked against that definition, recomputed from the log."""
    w = AnswerWatch()
    answered, now = 0, 0.0
    log: list[tuple[float, int, bool]] = []
    for owed, answer, gap in steps:
        now += gap
        answered += answer
        w.update(owed, answered, now)
        log.append((now, owed, answer))
        # The model: the last moment of progress since the connection came to owe.
        since = None
        previous = 0
        for t, o, a in log:
            if o == 0:
                since = None
            elif since is None or previous == 0 or a:
                since = t
            previous = o
        for probe in (now, now + BOUND - 0.001, now + BOUND):
            expected = since is not None and probe >= since + BOUND
            assert w.overdue(probe, BOUND) == expected


SPAN = 10.0


def test_internal_refusals_in_a_row_over_the_span_give_the_connection_up() -> None:
    """Refusals at t=0, 4, 9: three, but over 9 s; a fourth at t=10 spans the bound: given
    up once (counted), and the streak starts again."""
    w = RefusalWatch()
    for internal, t in ((1, 0.0), (2, 4.0), (3, 9.0)):
        w.update(0, internal, t)
        assert not w.given_up(3, SPAN)
    w.update(0, 4, 10.0)
    assert w.given_up(3, SPAN)
    assert w.timeouts == 1
    assert not w.given_up(3, SPAN)
    w.update(0, 5, 11.0)
    assert not w.given_up(3, SPAN)


def test_a_success_or_a_new_connection_ends_the_streak() -> None:
    """Two refusals, a type 10, two more spanning 20 s: two in a row only, kept. Then a
    long streak on the old connection, and a new connection: it starts from nothing."""
    w = RefusalWatch()
    w.update(0, 1, 0.0)
    w.update(0, 2, 5.0)
    w.update(1, 2, 6.0)
    w.update(1, 3, 10.0)
    w.update(1, 4, 30.0)
    assert not w.given_up(3, SPAN)
    w.update(1, 5, 31.0)
    assert w.given_up(3, SPAN), "three in a row since the success, over 21 s"
    w.update(1, 8, 40.0)
    w.update(1, 9, 55.0)
    w.restart()
    w.update(1, 10, 56.0)
    assert not w.given_up(3, SPAN)


def test_the_state_counts_successes_and_internal_refusals_but_not_rate_limited() -> None:
    """ClientState.outcomes moves on a type 10 and on an ``internal`` refusal of one of its
    frames, not on ``rate_limited``, another code, nor a refusal of no frame of its own."""
    s = ClientState(1, id_prefix="t")
    s.connected()
    cids = [s.submit({"type": 1, "to": 2, "contentType": 0, "content": "x"}) for _ in range(3)]

    def refuse(cid: str | None, code: str) -> None:
        s.received(json.dumps({"type": 99, "id": cid, "code": code, "message": ""}))

    refuse(cids[0], "rate_limited")
    refuse(None, "internal")
    refuse("t-99", "internal")
    assert s.outcomes == (0, 0)
    refuse(cids[0], "internal")
    assert s.outcomes == (0, 1)
    refuse(cids[1], "not_member")
    assert s.outcomes == (0, 1)
    s.received(json.dumps({"type": 10, "id": cids[2], "msgId": "m", "time": "1"}))
    assert s.outcomes == (1, 1)


Event = tuple[Literal["ok", "internal", "new"], float]


@given(
    st.lists(
        st.tuples(st.sampled_from(["ok", "internal", "internal", "new"]), st.floats(0, 8)),
        max_size=60,
    ),
    st.integers(1, 4),
)
def test_the_refusal_watch_gives_up_exactly_on_a_long_enough_streak(
    events: list[Event], streak: int
) -> None:
    """For any run of successes, ``internal`` refusals and new connections (checked after
    each): given up iff, since the last success, new connection or giving up, at least
    ``streak`` refusals came, the first and the last SPAN apart or more."""
    w = RefusalWatch()
    succeeded = internal = 0
    now = 0.0
    model: list[float] = []  # the times of the refusals in the current streak
    for kind, gap in events:
        now += gap
        if kind == "new":
            w.restart()
            model = []
        elif kind == "ok":
            succeeded += 1
            model = []
        else:
            internal += 1
            model.append(now)
        w.update(succeeded, internal, now)
        expected = len(model) >= streak and model[-1] - model[0] >= SPAN
        assert w.given_up(streak, SPAN) == expected
        if expected:
            model = []
