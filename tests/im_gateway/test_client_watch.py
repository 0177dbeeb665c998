"""The client's connection clocks (im_gateway.client_watch), pure: when a connection that
owes answers is given up, and that answers, not deliveries or time alone, hold it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from im_gateway.client_watch import AnswerWatch, Liveness

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
