"""What the client knows of one stream (the inbox, or one large group's stream): its
position, the arrivals buffered above it and its catch-up, as a pure record with the
transitions that touch only it. :class:`~im_gateway.client_state.ClientState` keeps one
per stream and decides, across streams and sends, what is shown and when.

Streams and positions. Every message carries a ``seq``: an inbox position (``"17"``) or
a position in a large group's stream (``"g7:17"``). Positions are kept per stream:
``pos`` is the highest position handled (shown, or recognised as this client's own), and
a message at or below it is a repeat. A connection delivers each stream in order, so
arrivals above ``pos`` are released in order of position, up to ``limit``.

Catch-up. The gateway's connect replay starts after the position the *user*
acknowledged, which another device may have moved past what this client has. When the
first message (or the connect replay's end marker) of a stream on a new connection lies
beyond ``pos + 1``, the stream is in catch-up: arrivals are buffered, and once the connect
replay has ended the client asks (type 14) for what came after ``pos``. The replay's end
marker ``E`` releases the buffer up to ``E``; when ``E`` reaches where the connection
began, the rest too. (A replay's entries and live pushes interleave on the wire, which is
why nothing is released before the marker.) A large group's stream has no end marker of
its own: the connect replay's marker lists where each group's replay started
(:meth:`Stream.listed`), and a gap past that also shows with the stream's next message.
So does the gap of a stream the marker did not list (its Redis Cluster node was silent at
connect; the gateway follows it once read, from the user's position, which another device
may have moved past ``pos``): its first post on the connection beyond ``pos + 1``, before
the marker or after it, puts it in catch-up from ``pos``, once per connection. A stream
this client never had is shown from where the gateway starts it (a post that comes before
the marker waits for it).

Imports only the standard library (see :mod:`im_gateway.client_protocol`).
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from typing import Final

from .client_protocol import Message, format_seq

INF: Final = 1 << 70
"""No limit (a position no stream reaches)."""


@dataclass(slots=True)
class Arrival:
    """A message buffered above its stream's position."""

    message: Message
    pos: int
    waits: frozenset[str]
    """Sends unanswered when it arrived that it may be (empty: not possibly own)."""


@dataclass(slots=True)
class Stream:
    """What the client knows of one stream, across connections."""

    pos: int = 0
    """Every position up to here is handled (released to the application, or own)."""
    known: bool = False
    """This client has had something of this stream (so a gap on a new connection means
    a catch-up is needed)."""
    pending: list[int] = field(default_factory=list)
    """Sorted positions of buffered arrivals above ``pos``."""
    arrivals: dict[int, Arrival] = field(default_factory=dict)
    taken: int = 0
    """The highest position the application took (or own, with nothing before it untaken)."""
    acked: int = 0
    """The highest position sent in a type 11 on this connection."""
    queued: int = 0
    """Items of this stream in the ready queue (messages and own markers)."""

    @property
    def have(self) -> int:
        """The end of the whole run this client holds: ``pos``, or beyond it the buffered
        arrivals (whole while not in catch-up: one connection's run)."""
        return self.pending[-1] if self.pending and not self.catchup else self.pos

    # per connection:
    first: bool = True
    """No message of this stream arrived yet on this connection."""
    catchup: bool = False
    base: int = 0
    """In catch-up: the connection's own run of this stream begins after here."""
    limit: int = INF
    """Arrivals up to here may be released (below it the run is known to be whole)."""
    dropped: int = INF
    """The lowest buffered position dropped for lack of room (to be asked for again)."""
    unsure: bool = False
    """A large group's stream this client had shown nothing of, arrived on a connection
    after the first before its connect replay ended: held until the end marker says
    where that replay started (:meth:`listed`)."""

    def new_connection(self) -> None:
        """A new connection: its per-connection state starts afresh."""
        self.first, self.catchup, self.base, self.limit, self.dropped = True, False, 0, INF, INF
        self.unsure = False
        self.acked = 0  # the last connection's ack may be lost: say it again

    def forget_unconfirmed(self) -> bool:
        """The connection is gone: in catch-up, what is buffered is not yet known whole, so
        it is dropped (the next connection resends it). True when it was."""
        if not self.catchup:
            return False
        for p in self.pending:
            del self.arrivals[p]
        self.pending.clear()
        return True

    def begin_catchup(self, base: int) -> None:
        self.limit = self.have  # what is buffered so far is a whole run from ``pos``
        self.catchup = True
        self.base = max(self.base, base)

    def end_catchup(self) -> None:
        """Give up the catch-up: release what is buffered, in order (best effort)."""
        self.catchup, self.limit, self.dropped = False, INF, INF

    def connect_replay_ended(self, end: int) -> None:
        """The connect replay's end marker: ``end`` is the user's acknowledged position."""
        if not self.known:
            # A new client starts where the user's acknowledged position is.
            self.known = True
            if self.first and not self.pending and end > self.pos:
                self.pos = self.taken = end
        elif self.first and end > self.have:
            # The user's acknowledged position is beyond this client's: catch up.
            self.begin_catchup(end)

    def hold_for_marker(self) -> None:
        """Hold this connection's arrivals (see :attr:`unsure`) until :meth:`listed`, or
        :meth:`end_catchup` when the marker does not list the stream."""
        self.catchup, self.limit, self.unsure = True, self.pos, True

    def listed(self, start: int, *, again: bool) -> None:
        """The connect replay's end marker lists this large group's stream as replayed
        after ``start`` (the user's position there). ``again``: a connect replay of this
        client ended before, on an earlier connection.

        A stream shown nothing of on a connection after the first was joined while this
        client was away (or by another device meanwhile): what another device
        acknowledged since is asked for from position 0 (the gateway starts at the
        user's join). On the first connection it starts at ``start``, as the inbox does
        at the user's acknowledged position."""
        if self.unsure or (again and not self.known):
            self.known = True
            self.settle(start)
            return
        fresh = not self.known
        self.connect_replay_ended(start)
        if fresh and self.taken == start:
            self.acked = start  # the user's own position: nothing to acknowledge

    def settle(self, start: int) -> None:
        """Arrivals held for the connect replay's marker: ask for what came after ``pos``
        when that replay started after it (or some did not fit), else release them."""
        self.unsure = False
        if start > self.pos or self.dropped < INF:
            self.begin_catchup(start)
        else:
            self.end_catchup()

    def catchup_replay_ended(self, end: int) -> None:
        """The end marker of a catch-up's replay (type 14) of this stream, at ``end``."""
        self.limit = min(max(self.limit if self.limit < INF else self.pos, end), self.dropped - 1)
        if end >= self.base and self.dropped == INF:
            self.catchup, self.limit = False, INF
        elif self.dropped < INF:
            self.base = max(self.base, self.dropped)
            self.dropped = INF

    def buffer(self, arrival: Arrival, room: int) -> bool:
        """Buffer ``arrival`` (above ``pos``, not a repeat), keeping at most ``room``; when
        full, the lowest positions are kept and what does not fit is to be asked for again
        (the stream turns to catch-up). False when ``arrival`` itself did not fit."""
        pos = arrival.pos
        if len(self.pending) >= room:
            highest = self.pending[-1]
            if not self.catchup:
                # What is buffered is whole (this connection's run); what does not fit
                # is asked for again.
                self.catchup, self.base, self.limit = True, self.pos, highest
            if pos > highest:
                self.dropped = min(self.dropped, pos)
                return False
            self.pending.pop()
            del self.arrivals[highest]
            self.dropped = min(self.dropped, highest)
            self.limit = min(self.limit, highest - 1)
        bisect.insort(self.pending, pos)
        self.arrivals[pos] = arrival
        return True

    def ack_frame(self, name: str) -> str | None:
        """A type 11 for stream ``name`` when its acknowledgeable position moved (taken
        as sent), else None."""
        if self.taken <= self.acked:
            return None
        self.acked = self.taken
        return f'{{"type":11,"seq":{json.dumps(format_seq(name, self.taken))}}}'


def groups_listed(
    streams: dict[str, Stream], starts: list[tuple[str, int]], *, again: bool
) -> list[str]:
    """The connect replay's end marker lists these large groups' streams with their
    starts (:meth:`Stream.listed`; ``again``: not this client's first connect replay).
    Returns the streams that were held for this marker, to release as far as they may
    now be (one it does not list is released whole)."""
    held = [name for name, st in streams.items() if st.unsure]
    for name, start in starts:
        st = streams.get(name)
        if st is None:
            st = streams[name] = Stream()
        st.listed(start, again=again)
    for name in held:
        if streams[name].unsure:
            streams[name].settle(0)
    return held
