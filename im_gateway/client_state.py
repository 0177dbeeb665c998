"""The client's half of the protocol, as a pure state machine: what to resend, what to
show and what to acknowledge. No sockets, no timers, no clock (the adapter,
:mod:`im_gateway.client`, owns those), in the manner of :mod:`im_gateway.cursor`, and
tested the same way: by a hypothesis state machine (tests/im_gateway/test_client_state.py).

Imports only the standard library: :mod:`im_gateway.client` must stay usable without the
server's dependencies.

Inputs: :meth:`ClientState.submit` (a frame that wants a type 10), :meth:`connected`,
:meth:`disconnected`, :meth:`received` (one text frame from the gateway), :meth:`retry`
(a backoff elapsed), :meth:`take_message` (the application took the next message).
Outputs, read after each input: :meth:`take_writes` (frames to write, in order),
:meth:`take_answers` (each submitted frame's outcome, once), :meth:`take_retries`
(frames to resend after a backoff), :meth:`ack_frames` (type 11 frames due),
:attr:`truncated`.

Sends. Every frame gets a client id unique to this instance (a random prefix, so a
restarted client never reuses an id the gateway would deduplicate). It is written when
connected, and again, with the same id, on every new connection until it is answered.
Type 99 ``internal`` and ``rate_limited`` are not answers: the frame is resent after a
backoff. Any other type 99 answers it as refused.

Streams and positions. Every message carries a ``seq``: an inbox position (``"17"``) or
a position in a large group's stream (``"g7:17"``). Positions are kept per stream:
``pos`` is the highest position handled (shown, or recognised as this client's own), and
a message at or below it is a repeat. A connection delivers each stream in order, so
arrivals above ``pos`` are released in order of position, with two exceptions:

- *Own messages.* A message whose sender is this user and whose id is not known may be
  one of this client's own sends whose type 10 has not arrived yet (a replay after a
  reconnect brings those back). It is held, and the stream behind it, until every send
  that was unanswered when it arrived is answered; then it is either this client's own
  (not shown) or another device's (shown).
- *Catch-up.* The gateway's connect replay starts after the position the *user*
  acknowledged, which another device may have moved past what this client has. When the
  first message (or the connect replay's end marker) of a stream on a new connection lies
  beyond ``pos + 1``, the stream is in catch-up: arrivals are buffered, and once the
  connect replay has ended the client asks (type 14) for what came after ``pos``. The
  replay's end marker ``E`` releases the buffer up to ``E``; when ``E`` reaches where the
  connection began, the rest too. (A replay's entries and live pushes interleave on the
  wire, which is why nothing is released before the marker.) A large group's stream has
  no end marker of its own, so its gap shows with its next message.

Acknowledgements. :meth:`take_message` marks a message's position as acknowledgeable;
positions of own messages become acknowledgeable once every message before them in the
stream was taken. :meth:`ack_frames` answers one type 11 per stream whose acknowledgeable
position moved, so an acknowledgement never passes a message the application has not
taken.

Bounds: at most ``max_waiting`` messages released and not yet taken (beyond it, arrivals
stay buffered), at most ``max_pending`` buffered messages per stream (beyond it, the
highest are dropped and asked for again by another replay, once the application has made
room), so a client that never takes its messages still gets its answers; ``own_ids_max`` remembered ids of this
client's sends, ``seen_ids_max`` remembered ids of shown messages (a second guard against
repeats, besides positions).

A ``truncated`` end marker (history lost to the inbox's trimming) is reported in
:attr:`truncated`; what was trimmed cannot be shown, and a trim notice that arrives during
a catch-up is taken as that catch-up's end.
"""

from __future__ import annotations

import bisect
import json
import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Final

HEARTBEAT: Final = 0
PRIVATE: Final = 1
GROUP: Final = 2
ACCEPTED: Final = 10
ACK: Final = 11
JOIN: Final = 12
LEAVE: Final = 13
REPLAY: Final = 14
ERROR: Final = 99

RETRIED: Final = frozenset({"internal", "rate_limited"})
"""Type 99 codes the client handles itself by sending again after a backoff."""

INBOX: Final = ""
"""The stream key of the user's inbox (large groups' streams are ``"g<group>"``)."""

_INF: Final = 1 << 70


class ClientError(Exception):
    """The root of the client's exceptions::

    ClientError
    └── Refused    the gateway refused a frame (type 99), or the token (``unauthorized``)
    """


class Refused(ClientError):
    """The gateway refused: ``code`` is the type 99 code, or ``"unauthorized"`` for a
    refused handshake (HTTP 401); ``message`` says why."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Sent:
    """A message stored for every recipient (type 10)."""

    client_id: str
    msg_id: str
    time: str
    """Server time in milliseconds since the Unix epoch, as a decimal string."""


@dataclass(frozen=True, slots=True)
class Message:
    """A message for this user, as on the wire (``from`` is :attr:`sender`)."""

    id: str
    sender: int
    to: int
    """The user (type 1) or the group (type 2)."""
    type: int
    content_type: int
    time: str
    content: str
    seq: str


Answer = Sent | Refused


def parse_seq(seq: object) -> tuple[str, int] | None:
    """``"17"`` -> ``("", 17)``; ``"g7:17"`` -> ``("g7", 17)``; anything else: None."""
    if not isinstance(seq, str) or not seq or len(seq) > 48 or not seq.isascii():
        return None
    stream, number = INBOX, seq
    if seq[0] == "g":
        group, sep, number = seq[1:].partition(":")
        if not sep or not group.isdigit():
            return None
        stream = "g" + group
    if not number.isdigit():
        return None
    return stream, int(number)


def format_seq(stream: str, pos: int) -> str:
    """The wire form of position ``pos`` in ``stream`` (the inverse of :func:`parse_seq`)."""
    return f"{stream}:{pos}" if stream else str(pos)


@dataclass(slots=True)
class _Pending:
    """A frame waiting for its answer."""

    text: str
    message: bool
    """True for types 1 and 2 (they produce a message; 12 and 13 do not)."""
    retry: bool = False
    """Waiting for a backoff after ``internal`` or ``rate_limited``."""
    attempts: int = 0


@dataclass(slots=True)
class _Arrival:
    message: Message
    pos: int
    waits: frozenset[str]
    """Sends unanswered when it arrived that it may be (empty: not possibly own)."""


@dataclass(slots=True)
class _Stream:
    """What the client knows of one stream, across connections."""

    pos: int = 0
    """Every position up to here is handled (released to the application, or own)."""
    known: bool = False
    """This client has had something of this stream (so a gap on a new connection means
    a catch-up is needed)."""
    pending: list[int] = field(default_factory=list)
    """Sorted positions of buffered arrivals above ``pos``."""
    arrivals: dict[int, _Arrival] = field(default_factory=dict)
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
    limit: int = _INF
    """Arrivals up to here may be released (below it the run is known to be whole)."""
    dropped: int = _INF
    """The lowest buffered position dropped for lack of room (to be asked for again)."""


class ClientState:
    """One client's protocol state (see the module docstring)."""

    def __init__(
        self,
        user: int | None = None,
        *,
        id_prefix: str | None = None,
        max_pending: int = 10_000,
        max_waiting: int = 10_000,
        own_ids_max: int = 100_000,
        seen_ids_max: int = 100_000,
    ) -> None:
        """``user``: this client's user id, when known (from the token), so that only
        messages from it can be held as possibly own; None: any message may be."""
        self.user = user
        self._prefix = id_prefix if id_prefix is not None else secrets.token_hex(6)
        self._counter = 0
        self._max_pending = max_pending
        self._max_waiting = max_waiting
        self._blocked: set[str] = set()
        """Streams whose release waits for the application to take messages."""
        self._ask_deferred = False
        self._own_max = own_ids_max
        self._seen_max = seen_ids_max
        self._outbox: dict[str, _Pending] = {}
        self._writes: list[str] = []
        self._answers: list[tuple[str, Answer]] = []
        self._retries: list[tuple[str, int]] = []
        self._own: OrderedDict[str, None] = OrderedDict()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._streams: dict[str, _Stream] = {}
        self._ready: deque[tuple[str, int, Message | None]] = deque()
        self._held: set[str] = set()
        """Streams whose release waits on an own-message hold."""
        self.connected_now = False
        self._connect_done = False
        self._asking: str | None = None
        self._replay_retry = False
        self._connect_news = False
        self.truncated: list[str] = []
        """Seqs where history was lost (end markers with ``truncated``)."""
        self.ignored = 0
        """Frames from the gateway that were malformed and dropped."""

    # --- outputs ----------------------------------------------------------------------

    def take_writes(self) -> list[str]:
        """Frames to write now, in order."""
        out, self._writes = self._writes, []
        return out

    def take_answers(self) -> list[tuple[str, Answer]]:
        """(client id, outcome) of frames answered since the last call; each once."""
        out, self._answers = self._answers, []
        return out

    def take_retries(self) -> list[tuple[str, int]]:
        """(client id, attempt) of frames to :meth:`retry` after a backoff."""
        out, self._retries = self._retries, []
        return out

    def take_replay_retry(self) -> bool:
        """True once when a refused catch-up request should be asked again after a
        backoff (then call :meth:`retry_replay`)."""
        out, self._replay_retry = self._replay_retry, False
        return out

    def take_connect_done(self) -> bool:
        """True once per connection, when its connect replay has ended."""
        out, self._connect_news = self._connect_news, False
        return out

    @property
    def unanswered(self) -> int:
        """Frames waiting for an answer."""
        return len(self._outbox)

    @property
    def waiting(self) -> int:
        """Messages released and not yet taken by the application."""
        return len(self._ready)

    def position(self, stream: str = INBOX) -> int:
        """The highest handled position of ``stream``."""
        st = self._streams.get(stream)
        return st.pos if st is not None else 0

    # --- sends ------------------------------------------------------------------------

    def submit(self, frame: dict[str, Any]) -> str:
        """Queue a frame that wants a type 10 (types 1, 2, 12, 13); returns its client id.
        ``frame`` has every field but ``id``."""
        self._counter += 1
        client_id = f"{self._prefix}-{self._counter}"
        text = json.dumps({"type": frame["type"], "id": client_id, **frame}, ensure_ascii=False)
        self._outbox[client_id] = _Pending(text, frame["type"] in (PRIVATE, GROUP))
        if self.connected_now:
            self._writes.append(text)
        return client_id

    def retry(self, client_id: str) -> None:
        """The backoff of ``client_id`` elapsed: send it again (when still unanswered)."""
        pending = self._outbox.get(client_id)
        if pending is not None and pending.retry and self.connected_now:
            pending.retry = False
            self._writes.append(pending.text)

    # --- connection -------------------------------------------------------------------

    def connected(self) -> None:
        """A new connection is open: every unanswered frame goes out again, in order."""
        self.connected_now = True
        self._connect_done = False
        self._asking = None
        self._writes = []
        for pending in self._outbox.values():
            pending.retry = False
            self._writes.append(pending.text)
        for st in self._streams.values():
            st.first, st.catchup, st.base, st.limit, st.dropped = True, False, 0, _INF, _INF
            st.acked = 0  # the last connection's ack may be lost: say it again

    def disconnected(self) -> None:
        """The connection is gone; what it had buffered for catch-ups is kept (those
        positions are above ``pos``, and the next connection brings them again)."""
        self.connected_now = False
        self._writes = []
        self._asking = None
        for name, st in self._streams.items():
            if st.catchup:
                # Not yet known whole: drop the buffer; the next connection resends it.
                for p in st.pending:
                    del st.arrivals[p]
                st.pending.clear()
                self._held.discard(name)

    # --- frames from the gateway ------------------------------------------------------

    def received(self, text: str | bytes) -> None:
        """One frame from the gateway; anything malformed is counted and dropped."""
        try:
            frame = json.loads(text)
        except (ValueError, RecursionError):
            self.ignored += 1
            return
        if not isinstance(frame, dict):
            self.ignored += 1
            return
        kind = frame.get("type")
        if kind in (PRIVATE, GROUP):
            self._on_message(frame)
        elif kind == ACCEPTED:
            self._on_accepted(frame)
        elif kind == ERROR:
            self._on_error(frame)
        elif kind == REPLAY:
            self._on_marker(frame)
        elif kind != HEARTBEAT:
            self.ignored += 1

    def _on_accepted(self, frame: dict[str, Any]) -> None:
        client_id, msg_id, time = frame.get("id"), frame.get("msgId"), frame.get("time")
        if not isinstance(client_id, str) or client_id not in self._outbox:
            return  # a repeat answer, or none of ours
        if not isinstance(msg_id, str) or not isinstance(time, str):
            self.ignored += 1
            return
        pending = self._outbox.pop(client_id)
        if pending.message:
            self._own[msg_id] = None
            if len(self._own) > self._own_max:
                self._own.popitem(last=False)
        self._answers.append((client_id, Sent(client_id, msg_id, time)))
        self._settle_holds()

    def _on_error(self, frame: dict[str, Any]) -> None:
        client_id = frame.get("id")
        code = frame.get("code")
        code = code if isinstance(code, str) else "internal"
        message = frame.get("message")
        message = message if isinstance(message, str) else ""
        if isinstance(client_id, str):
            pending = self._outbox.get(client_id)
            if pending is None:
                return
            if code in RETRIED:
                pending.retry = True
                pending.attempts += 1
                self._retries.append((client_id, pending.attempts))
                return
            del self._outbox[client_id]
            self._answers.append((client_id, Refused(code, message)))
            self._settle_holds()
            return
        # Without an id: an ack that was not stored, or a replay request refused or cut.
        for st in self._streams.values():
            st.acked = 0
        asking = self._asking
        if asking is not None and code in RETRIED:
            self._asking = None
            self._replay_retry = True
        elif asking is not None and code == "bad_request":
            # A gateway that cannot replay this stream: show what is buffered, in order
            # (best effort), rather than hold the stream forever.
            self._asking = None
            st = self._streams[asking]
            st.catchup, st.limit, st.dropped = False, _INF, _INF
            self._release(asking)
            self._ask_next()

    def _on_marker(self, frame: dict[str, Any]) -> None:
        parsed = parse_seq(frame.get("seq"))
        if parsed is None:
            self.ignored += 1
            return
        stream, end = parsed
        if frame.get("truncated") is True:
            self.truncated.append(format_seq(stream, end))
        if not self._connect_done:
            self._connect_done = self._connect_news = True
            st = self._streams.get(stream)
            if st is None:
                st = self._streams[stream] = _Stream()
            if not st.known:
                # A new client starts where the user's acknowledged position is.
                st.known = True
                if st.first and not st.pending and end > st.pos:
                    st.pos = st.taken = end
            elif st.first and end > st.have:
                # The user's acknowledged position is beyond this client's: catch up.
                self._begin_catchup(st, end)
            self._ask_next()
            return
        asking = self._asking
        if asking is None:
            return
        self._asking = None
        st = self._streams[asking]
        if stream == asking:
            st.limit = min(max(st.limit if st.limit < _INF else st.pos, end), st.dropped - 1)
            if end >= st.base and st.dropped == _INF:
                st.catchup, st.limit = False, _INF
            elif st.dropped < _INF:
                st.base = max(st.base, st.dropped)
                st.dropped = _INF
        self._release(asking)
        if st.catchup:
            self._replay_retry = True  # not whole yet: ask again after a backoff
        else:
            self._ask_next()

    def retry_replay(self) -> None:
        """A refused or incomplete catch-up's backoff elapsed: ask again."""
        self._ask_next()

    def _begin_catchup(self, st: _Stream, base: int) -> None:
        st.limit = st.have  # what is buffered so far is a whole run from ``pos``
        st.catchup = True
        st.base = max(st.base, base)

    def _ask_next(self) -> None:
        if not self.connected_now or not self._connect_done or self._asking is not None:
            return
        if len(self._ready) >= self._max_waiting // 2:
            self._ask_deferred = True  # a replay now would only be dropped again
            return
        self._ask_deferred = False
        for name, st in self._streams.items():
            if st.catchup:
                self._asking = name
                seq = json.dumps(format_seq(name, st.pos))
                self._writes.append(f'{{"type":14,"seq":{seq}}}')
                return

    def _on_message(self, frame: dict[str, Any]) -> None:
        message = _message(frame)
        if message is None:
            self.ignored += 1
            return
        parsed = parse_seq(message.seq)
        if parsed is None:
            self.ignored += 1
            return
        name, pos = parsed
        st = self._streams.get(name)
        if st is None:
            st = self._streams[name] = _Stream()
        first, st.first = st.first, False
        if pos <= st.pos or pos in st.arrivals:
            return  # a repeat
        if first and st.known and pos > st.have + 1 and not st.catchup:
            self._begin_catchup(st, pos - 1)
            self._ask_next()
        st.known = True
        waits: frozenset[str] = frozenset()
        if (self.user is None or message.sender == self.user) and message.id not in self._own:
            waits = frozenset(c for c, p in self._outbox.items() if p.message)
        if len(st.pending) >= self._max_pending:
            # Full: keep the lowest positions; what is dropped is asked for again.
            highest = st.pending[-1]
            if not st.catchup:
                # What is buffered is whole (this connection's run); what does not fit
                # is asked for again.
                st.catchup, st.base, st.limit = True, st.pos, highest
            self._ask_next()
            if pos > highest:
                st.dropped = min(st.dropped, pos)
                return
            st.pending.pop()
            del st.arrivals[highest]
            st.dropped = min(st.dropped, highest)
            st.limit = min(st.limit, highest - 1)
        bisect.insort(st.pending, pos)
        st.arrivals[pos] = _Arrival(message, pos, waits)
        self._release(name)

    # --- release ----------------------------------------------------------------------

    def _settle_holds(self) -> None:
        for name in list(self._held):
            self._release(name)

    def _release(self, name: str) -> None:
        """Release buffered arrivals of stream ``name`` in order, as far as allowed."""
        st = self._streams[name]
        self._held.discard(name)
        pending = st.pending
        released = 0
        while released < len(pending):
            pos = pending[released]
            if pos > st.limit:
                break
            if len(self._ready) >= self._max_waiting:
                self._blocked.add(name)  # the application is behind: wait for room
                break
            arrival = st.arrivals[pos]
            message = arrival.message
            if (
                arrival.waits
                and message.id not in self._own
                and any(c in self._outbox for c in arrival.waits)
            ):
                self._held.add(name)
                break
            del st.arrivals[pos]
            released += 1
            st.pos = pos
            st.known = True
            if message.id in self._own or message.id in self._seen:
                if st.queued:
                    self._ready.append((name, pos, None))
                    st.queued += 1
                else:
                    st.taken = pos
            else:
                self._seen[message.id] = None
                if len(self._seen) > self._seen_max:
                    self._seen.popitem(last=False)
                self._ready.append((name, pos, message))
                st.queued += 1
        if released:
            del pending[:released]

    # --- the application's side -------------------------------------------------------

    def take_message(self) -> Message | None:
        """The next message to show, or None; its position becomes acknowledgeable."""
        ready = self._ready
        while True:
            if (self._blocked or self._ask_deferred) and len(ready) < self._max_waiting // 2:
                self._make_room()
            if not ready:
                return None
            name, pos, message = ready.popleft()
            st = self._streams[name]
            st.queued -= 1
            st.taken = max(st.taken, pos)
            if message is not None:
                return message

    def _make_room(self) -> None:
        """The application took messages: release what waited, ask what was deferred."""
        for name in list(self._blocked):
            self._blocked.discard(name)
            self._release(name)
        if self._ask_deferred:
            self._ask_next()

    def closing_probe(self) -> str | None:
        """A type 14 after the highest inbox position this client has, for
        :meth:`Client.close`: its end marker comes back only after the gateway has read
        the store, which it does after the acknowledgements sent before it were written.
        None while a replay is running (the gateway would refuse a second one)."""
        st = self._streams.get(INBOX)
        if not self.connected_now or not self._connect_done or self._asking or st is None:
            return None
        return f'{{"type":14,"seq":"{st.have}"}}'

    @property
    def ack_due(self) -> bool:
        """True when :meth:`ack_frames` has something to say (when connected)."""
        return self.connected_now and any(st.taken > st.acked for st in self._streams.values())

    def ack_frames(self) -> list[str]:
        """Type 11 frames for streams whose acknowledgeable position moved (when
        connected); each is taken as sent."""
        if not self.connected_now:
            return []
        out = []
        for name, st in self._streams.items():
            if st.taken > st.acked:
                st.acked = st.taken
                out.append(f'{{"type":11,"seq":{json.dumps(format_seq(name, st.taken))}}}')
        return out


def _message(frame: dict[str, Any]) -> Message | None:
    """A message frame's fields, checked; None when any is missing or of the wrong type."""
    msg_id, sender, to, content_type = (
        frame.get("id"),
        frame.get("from"),
        frame.get("to"),
        frame.get("contentType", 0),
    )
    time, content, seq = frame.get("time"), frame.get("content"), frame.get("seq")
    if (
        not isinstance(msg_id, str)
        or type(sender) is not int
        or type(to) is not int
        or type(content_type) is not int
        or not isinstance(time, str)
        or not isinstance(content, str)
        or not isinstance(seq, str)
    ):
        return None
    return Message(msg_id, sender, to, frame["type"], content_type, time, content, seq)
