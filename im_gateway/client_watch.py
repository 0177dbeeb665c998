"""The client's clocks for one connection, as pure records fed the adapter's loop time
(plain floats, seconds): when to send a heartbeat, when a gateway that sends nothing is
given up, when one that owes answers and gives none is, and when one that refuses every
frame ``internal`` is. :mod:`im_gateway.client` reads the socket until
:meth:`Liveness.deadline` and asks :meth:`Liveness.timed_out` when nothing came by then,
and :meth:`RefusalWatch.given_up` after each frame read.

Silence. After ``interval`` seconds with no frame read, a heartbeat (type 0) goes out;
no frame within ``timeout`` after it, and the connection is given up.

Answers. A gateway can look alive (it answers heartbeats, it delivers hub pushes, which
need neither its store nor its pipeline) while the frames it was sent are never answered:
its store or its pipeline is stuck, or it is broken or hostile. A connection that owes
answers (frames written on it, not answered since: :attr:`Sends.owed
<im_gateway.client_sends.Sends.owed>`) and has given none for ``answer_timeout`` seconds
is given up; the frames go out again, with the same client ids, on the next connection
(the gateway stores a resend once). The clock runs from the last answer (type 10, or a
type 99 for one of the frames, retried or not), or from when the connection came to owe
something after owing nothing. So a batch answered slowly, answer after answer, never
trips it, and neither does a busy socket: the adapter reads until the socket has nothing
more before it asks, so an answer already received is never missed. Deliveries are no
progress: they do not show that the send path works.

The bound (:data:`im_gateway.client.ANSWER_TIMEOUT`, 30 s; the JavaScript client's
``answerTimeout``) is generous: a healthy gateway answers within its store timeout (5 s,
tried once more, then ``internal``, an answer), and an answer queues behind at most its
per-connection send queue (1,024 frames; a client that lets it fill is cut off). Leaving
too early costs a reconnect, never a repeat or a loss: resends keep their client ids.

Refusals. A gateway cut off from its Redis (while other gateways, with their own path to
it, are fine) answers every send type 99 ``internal`` ("storage unavailable; send
again"): answers, so the bound above never fires, and the client retries them, same ids,
after a backoff, on the same connection, forever. A connection whose frames were refused
``internal`` ``streak`` times in a row (no type 10 between, on this connection) over at
least ``span`` seconds (from the first of them to the last) is given up: they go out
again on the next connection, as above. A type 10 ends the streak; ``rate_limited`` and
the other refusals neither count nor end it (``rate_limited`` is the gateway telling this
user to slow down: another gateway would say the same). The bounds
(:data:`im_gateway.client.INTERNAL_STREAK`, 3, and :data:`~im_gateway.client.INTERNAL_TIMEOUT`,
10 s; the JavaScript client's ``internalStreak`` and ``internalTimeout``) let a blip of
the store pass (a success within 10 s keeps the connection), and leave a gateway whose
store is unreachable within about 10 s (the retries' backoff is at most 2 s), one whose
store is stuck (each refusal after the gateway's store timeout, 5 s, tried once more)
within about 30 s. With a single URL the client reconnects to it.

Imports only the standard library (see :mod:`im_gateway.client_protocol`).
"""

from __future__ import annotations

from typing import Final, Literal

Verdict = Literal["ask", "silent", "unanswered"]
"""``ask``: write a heartbeat; ``silent``: no frame after it; ``unanswered``: answers
owed for too long. The last two give the connection up."""

GIVEN_UP: Final = {
    "silent": "no frame after a heartbeat",
    "unanswered": "it answered none of the frames it owes for too long",
    "internal": "it refused the frames 'internal' (its store failing), none stored, for too long",
}


class AnswerWatch:
    """Since when a connection owes answers without giving any (see the module docstring).

    Call :meth:`update` after every input with the frames owed, the answers counted so
    far and the time; :attr:`since` is None while nothing is owed.
    """

    __slots__ = ("_answered", "since", "timeouts")

    def __init__(self) -> None:
        self.since: float | None = None
        self._answered = 0
        self.timeouts = 0
        """Connections given up for owing answers too long (counted by :class:`Liveness`)."""

    def update(self, owed: int, answered: int, now: float) -> None:
        progressed = answered != self._answered
        self._answered = answered
        if owed <= 0:
            self.since = None
        elif self.since is None or progressed:
            self.since = now

    def due(self, bound: float) -> float | None:
        """When the connection is overdue (None: it owes nothing)."""
        return None if self.since is None else self.since + bound

    def overdue(self, now: float, bound: float) -> bool:
        return self.since is not None and now >= self.since + bound


class Liveness:
    """One connection's read deadline: heartbeats, silence and owed answers."""

    __slots__ = ("_answer_timeout", "_interval", "_quiet_until", "_timeout", "answers", "asked")

    def __init__(
        self,
        now: float,
        answers: AnswerWatch,
        interval: float,
        timeout: float,
        answer_timeout: float,
    ) -> None:
        self.answers = answers
        self._interval, self._timeout, self._answer_timeout = interval, timeout, answer_timeout
        self._quiet_until = now + interval
        self.asked = False
        """A heartbeat went out after a quiet read: a frame is owed."""

    def heard(self, now: float) -> None:
        """A frame was read."""
        self.asked = False
        self._quiet_until = now + self._interval

    def deadline(self) -> float:
        """Read until then; then call :meth:`timed_out`."""
        due = self.answers.due(self._answer_timeout)
        return self._quiet_until if due is None else min(self._quiet_until, due)

    def timed_out(self, now: float) -> Verdict | None:
        """Nothing was read by :meth:`deadline`: what to do (None: read on, the
        deadline moved)."""
        if self.answers.overdue(now, self._answer_timeout):
            self.answers.timeouts += 1
            return "unanswered"
        if now < self._quiet_until:
            return None
        if self.asked:
            return "silent"
        self.asked = True
        self._quiet_until = now + self._timeout
        return "ask"


class RefusalWatch:
    """A connection's streak of ``internal`` refusals with no success between (see the
    module docstring).

    Call :meth:`update` after every input with the counts of type 10 answers and of
    ``internal`` refusals so far and the time, :meth:`restart` on a new connection, and
    :meth:`given_up` after each frame read.
    """

    __slots__ = ("_seen", "first", "last", "streak", "timeouts")

    def __init__(self) -> None:
        self._seen = (0, 0)
        self.streak = 0
        """``internal`` refusals since the last success (or the connection's start)."""
        self.first = self.last = 0.0
        """When the streak's first and last refusals came."""
        self.timeouts = 0
        """Connections given up for refusing ``internal`` too long."""

    def update(self, succeeded: int, internal: int, now: float) -> None:
        if succeeded != self._seen[0]:
            self.streak = 0
        if internal != self._seen[1]:
            if self.streak == 0:
                self.first = now
            self.streak += internal - self._seen[1]
            self.last = now
        self._seen = (succeeded, internal)

    def restart(self) -> None:
        """A new connection: the streak starts again."""
        self.streak = 0

    def given_up(self, streak: int, span: float) -> bool:
        """At least ``streak`` refusals in a row spanning at least ``span`` seconds: give
        the connection up (counted; the streak starts again)."""
        if self.streak < max(streak, 1) or self.last - self.first < span:
            return False
        self.timeouts += 1
        self.streak = 0
        return True
