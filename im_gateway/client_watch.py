"""The client's clocks for one connection, as pure records fed the adapter's loop time
(plain floats, seconds): when to send a heartbeat, when a gateway that sends nothing is
given up, and when one that owes answers and gives none is. :mod:`im_gateway.client`
reads the socket until :meth:`Liveness.deadline` and asks :meth:`Liveness.timed_out`
when nothing came by then.

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
