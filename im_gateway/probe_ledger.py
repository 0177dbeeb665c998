"""The probe's pure core: the messages in flight (:class:`Ledger`) and the summary line
(:func:`summary_line`). No I/O and no clock of its own: every call says what time it is.
:mod:`im_gateway.probe` does the sockets, the timers and the metrics around it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

Pair = tuple[int, int]
"""(sender, receiver): indexes of the probe's users."""


@dataclass(slots=True)
class _Pending:
    pair: Pair
    sent_at: float
    receiver_epoch: int


@dataclass(frozen=True, slots=True)
class Seen:
    """A probe message seen by its receiver."""

    pair: Pair
    latency: float
    late: bool
    """It had already been counted lost or unverified."""


@dataclass(frozen=True, slots=True)
class Expired:
    """A probe message past the deadline: acknowledged but not seen, or not acknowledged."""

    pair: Pair
    lost: bool
    """True: the receiver stayed connected (a loss); False: it reconnected (unverified),
    or the send was never acknowledged."""
    unanswered: bool = False
    """The sender's gateway never acknowledged the send (silent, or its socket broke)."""


@dataclass(slots=True)
class Ledger:
    """Messages in flight, by client id until acknowledged, then by message id.

    No I/O and no clock of its own: every call says what time it is.
    """

    deadline: float
    _sent: dict[str, _Pending] = field(default_factory=dict)
    _acked: dict[str, _Pending] = field(default_factory=dict)
    _expired: dict[str, tuple[Pair, float]] = field(default_factory=dict)
    """Expired message id -> (pair, sent_at), to recognise a late arrival (bounded)."""
    max_expired: int = 10_000

    def sent(self, client_id: str, pair: Pair, now: float, receiver_epoch: int) -> None:
        self._sent[client_id] = _Pending(pair, now, receiver_epoch)

    def acked(self, client_id: str, msg_id: str) -> None:
        pending = self._sent.pop(client_id, None)
        if pending is not None:
            self._acked[msg_id] = pending

    def refused(self, client_id: str) -> Pair | None:
        """The send was answered type 99 (or its socket closed unanswered)."""
        pending = self._sent.pop(client_id, None)
        return pending.pair if pending is not None else None

    def seen(self, msg_id: str, now: float) -> Seen | None:
        """The receiver got ``msg_id``; None when it is not one of ours (or a repeat)."""
        pending = self._acked.pop(msg_id, None)
        if pending is not None:
            return Seen(pending.pair, now - pending.sent_at, late=False)
        gone = self._expired.pop(msg_id, None)
        if gone is not None:
            return Seen(gone[0], now - gone[1], late=True)
        return None

    def expire(self, now: float, epochs: Sequence[int]) -> list[Expired]:
        """Messages past the deadline: acknowledged ones not seen, and sends never
        acknowledged (``unanswered``: their sender's gateway is silent or its socket broke)."""
        out: list[Expired] = []
        for msg_id, p in list(self._acked.items()):
            if now - p.sent_at >= self.deadline:
                del self._acked[msg_id]
                lost = epochs[p.pair[1]] == p.receiver_epoch
                out.append(Expired(p.pair, lost))
                self._expired[msg_id] = (p.pair, p.sent_at)
        for client_id, p in list(self._sent.items()):
            if now - p.sent_at >= self.deadline:
                del self._sent[client_id]
                out.append(Expired(p.pair, lost=False, unanswered=True))
        while len(self._expired) > self.max_expired:
            del self._expired[next(iter(self._expired))]
        return out

    @property
    def in_flight(self) -> int:
        return len(self._sent) + len(self._acked)


# --- metrics -----------------------------------------------------------------------------


def summary_line(
    latencies: Mapping[Pair, list[float]],
    lost: Mapping[Pair, int],
    labels: Callable[[Pair], tuple[str, str]],
    down: Sequence[str],
    unanswered: Mapping[Pair, int] | None = None,
) -> str:
    """One line: per pair, messages seen, p50/p99/max latency (ms), losses and sends never
    acknowledged (since the last summary); then the gateways not connected."""
    unanswered = unanswered or {}
    parts = []
    for pair in sorted(set(latencies) | set(lost) | set(unanswered)):
        times = sorted(latencies.get(pair, []))
        source, target = labels(pair)
        if times:
            p50 = statistics.median(times) * 1000
            p99 = times[min(len(times) - 1, int(len(times) * 0.99))] * 1000
            stats = f"n={len(times)} p50={p50:.1f}ms p99={p99:.1f}ms max={times[-1] * 1000:.1f}ms"
        else:
            stats = "n=0"
        part = f"{source}->{target} {stats} lost={lost.get(pair, 0)}"
        if unanswered.get(pair):
            part += f" unanswered={unanswered[pair]}"
        parts.append(part)
    line = "probe summary: " + ("; ".join(parts) if parts else "no deliveries")
    if down:
        line += f"; not connected: {', '.join(sorted(set(down)))}"
    return line
