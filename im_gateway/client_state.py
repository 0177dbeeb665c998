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

Sends are written when connected, and again, with the same client id, on every new
connection until they are answered (see :mod:`im_gateway.client_sends`).

Holds. A message whose sender is this user and whose id is not known may be one of this
client's own sends whose type 10 has not arrived yet (a replay after a reconnect brings
those back). It is held, and the stream behind it, until every send that was unanswered
when it arrived is answered; then it is either this client's own (not shown) or another
device's (shown). Positions, buffering and catch-ups per stream: see
:mod:`im_gateway.client_streams`.

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
repeats, besides positions), ``truncated_max`` seqs in :attr:`truncated` (the newest).

A ``truncated`` end marker (history lost to the inbox's trimming) is reported in
:attr:`truncated`; what was trimmed cannot be shown, and a trim notice that arrives during
a catch-up is taken as that catch-up's end.
"""

from __future__ import annotations

import json
from collections import OrderedDict, deque
from typing import Any

from .client_protocol import (
    ACCEPTED,
    ERROR,
    GROUP,
    HEARTBEAT,
    INBOX,
    PRIVATE,
    REPLAY,
    RETRIED,
    Answer,
    Message,
    format_seq,
    parse_group_starts,
    parse_message,
    parse_seq,
)
from .client_sends import Sends
from .client_streams import Arrival, Stream, groups_listed


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
        truncated_max: int = 1_000,
    ) -> None:
        """``user``: this client's user id, when known (from the token), so that only
        messages from it can be held as possibly own; None: any message may be."""
        self.user = user
        self._sends = Sends(id_prefix, own_ids_max)
        self._max_pending = max_pending
        self._max_waiting = max_waiting
        self._blocked: set[str] = set()
        """Streams whose release waits for the application to take messages."""
        self._ask_deferred = False
        self._seen_max = seen_ids_max
        self._writes: list[str] = []
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._streams: dict[str, Stream] = {}
        self._ready: deque[tuple[str, int, Message | None]] = deque()
        self._held: set[str] = set()
        """Streams whose release waits on an own-message hold."""
        self.connected_now = False
        self._connect_done = False
        self._marked = False
        """A connect replay has ended (on this connection or an earlier one)."""
        self._asking: str | None = None
        self._replay_retry = False
        self._connect_news = False
        self.truncated: list[str] = []
        """Seqs where history was lost (end markers with ``truncated``; the newest
        ``truncated_max``)."""
        self._truncated_max = truncated_max
        self.ignored = 0
        """Frames from the gateway that were malformed and dropped."""

    # --- outputs ----------------------------------------------------------------------

    def take_writes(self) -> list[str]:
        """Frames to write now, in order."""
        out, self._writes = self._writes, []
        return out

    def take_answers(self) -> list[tuple[str, Answer]]:
        """(client id, outcome) of frames answered since the last call; each once."""
        return self._sends.take_answers()

    def take_retries(self) -> list[tuple[str, int]]:
        """(client id, attempt) of frames to :meth:`retry` after a backoff."""
        return self._sends.take_retries()

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
        return len(self._sends)

    @property
    def owed(self) -> int:
        """Frames written on this connection and not answered since (see
        :class:`~im_gateway.client_watch.AnswerWatch`)."""
        return self._sends.owed

    @property
    def answered(self) -> int:
        """Answers to this client's frames so far (type 10, and any type 99 for them)."""
        return self._sends.answered

    @property
    def outcomes(self) -> tuple[int, int]:
        """(type 10 answers, ``internal`` refusals) of this client's frames so far (see
        :class:`~im_gateway.client_watch.RefusalWatch`)."""
        return self._sends.succeeded, self._sends.internal

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
        client_id, text = self._sends.submit(frame, written=self.connected_now)
        if self.connected_now:
            self._writes.append(text)
        return client_id

    def retry(self, client_id: str) -> None:
        """The backoff of ``client_id`` elapsed: send it again (when still unanswered)."""
        if self.connected_now and (text := self._sends.retry(client_id)) is not None:
            self._writes.append(text)

    # --- connection -------------------------------------------------------------------

    def connected(self) -> None:
        """A new connection is open: every unanswered frame goes out again, in order."""
        self.connected_now = True
        self._connect_done = False
        self._asking = None
        self._writes = self._sends.all_again()
        for st in self._streams.values():
            st.new_connection()

    def disconnected(self) -> None:
        """The connection is gone; what it had buffered for catch-ups is kept (those
        positions are above ``pos``, and the next connection brings them again)."""
        self.connected_now = False
        self._writes = []
        self._asking = None
        self._sends.disconnected()
        for name, st in self._streams.items():
            if st.forget_unconfirmed():
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
        if not isinstance(client_id, str) or client_id not in self._sends:
            return  # a repeat answer, or none of ours
        if not isinstance(msg_id, str) or not isinstance(time, str):
            self.ignored += 1
            return
        self._sends.accepted(client_id, msg_id, time)
        self._settle_holds()

    def _on_error(self, frame: dict[str, Any]) -> None:
        client_id = frame.get("id")
        code = frame.get("code")
        code = code if isinstance(code, str) else "internal"
        message = frame.get("message")
        message = message if isinstance(message, str) else ""
        if isinstance(client_id, str):
            if self._sends.refused(client_id, code, message):
                self._settle_holds()
            return
        # Without an id: an ack that was not stored, or a replay request refused or cut.
        for st in self._streams.values():
            st.acked = 0
        asking = self._asking
        if asking is not None and code in RETRIED:
            self._asking = None
            self._replay_retry = True
        elif asking is not None and code in ("bad_request", "not_member"):
            # A gateway that cannot replay this stream (or the user left the group): show
            # what is buffered, in order (best effort), rather than hold it forever.
            self._asking = None
            self._streams[asking].end_catchup()
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
            if len(self.truncated) > self._truncated_max:
                del self.truncated[0]
        if not self._connect_done:
            self._connect_done = self._connect_news = True
            self._stream(stream).connect_replay_ended(end)
            starts = parse_group_starts(frame.get("groups"))
            for name in groups_listed(self._streams, starts, again=self._marked):
                self._release(name)
            self._marked = True
            self._ask_next()
            return
        asking = self._asking
        if asking is None:
            return
        self._asking = None
        st = self._streams[asking]
        if stream == asking:
            st.catchup_replay_ended(end)
        self._release(asking)
        if st.catchup:
            self._replay_retry = True  # not whole yet: ask again after a backoff
        else:
            self._ask_next()

    def retry_replay(self) -> None:
        """A refused or incomplete catch-up's backoff elapsed: ask again."""
        self._ask_next()

    def _stream(self, name: str) -> Stream:
        st = self._streams.get(name)
        if st is None:
            st = self._streams[name] = Stream()
        return st

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
        message = parse_message(frame)
        if message is None:
            self.ignored += 1
            return
        parsed = parse_seq(message.seq)
        if parsed is None:
            self.ignored += 1
            return
        name, pos = parsed
        st = self._stream(name)
        first, st.first = st.first, False
        if pos <= st.pos or pos in st.arrivals:
            return  # a repeat
        if first and not st.known and name != INBOX and self._marked and not self._connect_done:
            st.hold_for_marker()  # joined while away? The marker says (groups_listed).
        elif first and st.known and pos > st.have + 1 and not st.catchup:
            st.begin_catchup(pos - 1)
            self._ask_next()
        st.known = True
        waits: frozenset[str] = frozenset()
        sends = self._sends
        if (self.user is None or message.sender == self.user) and not sends.is_own(message.id):
            waits = sends.unanswered_messages()
        full = len(st.pending) >= self._max_pending
        stored = st.buffer(Arrival(message, pos, waits), self._max_pending)
        if full:
            self._ask_next()  # what did not fit is asked for again
        if stored:
            self._release(name)

    # --- release ----------------------------------------------------------------------

    def _settle_holds(self) -> None:
        for name in list(self._held):
            self._release(name)

    def _release(self, name: str) -> None:
        """Release buffered arrivals of stream ``name`` in order, as far as allowed."""
        st = self._streams[name]
        sends = self._sends
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
                and not sends.is_own(message.id)
                and any(c in sends for c in arrival.waits)
            ):
                self._held.add(name)
                break
            del st.arrivals[pos]
            released += 1
            st.pos = pos
            st.known = True
            if sends.is_own(message.id) or message.id in self._seen:
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
        frames = (st.ack_frame(name) for name, st in self._streams.items())
        return [frame for frame in frames if frame is not None]
