"""The client's pure protocol core (im_gateway.client_state), against a model gateway that
keeps the pinned contract, driven by hypothesis through any order of frames, answers,
reconnects, repeats, refusals, replays and another device's acknowledgements."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from im_gateway.client_protocol import INBOX, Message, Refused, Sent, format_seq, parse_seq
from im_gateway.client_state import ClientState

ME, OTHER, GROUP = 1, 2, 7
GROUP_STREAM = f"g{GROUP}"
STREAMS = (INBOX, GROUP_STREAM)


def frame(**fields: Any) -> str:
    return json.dumps(fields)


def message_frame(msg_id: str, pos: int, *, sender: int = OTHER, stream: str = INBOX) -> str:
    kind = 1 if stream == INBOX else 2
    return frame(
        type=kind,
        id=msg_id,
        **{"from": sender},
        to=ME if kind == 1 else GROUP,
        contentType=0,
        time="1",
        content=msg_id,
        seq=format_seq(stream, pos),
    )


def taken(state: ClientState) -> list[Message]:
    out = []
    while (m := state.take_message()) is not None:
        out.append(m)
    return out


# --- examples -----------------------------------------------------------------------


def test_seqs_parse_per_stream() -> None:
    """Inbox seqs and large-group seqs parse to (stream, position); others do not."""
    assert parse_seq("17") == (INBOX, 17)
    assert parse_seq("g7:17") == ("g7", 17)
    for bad in ("", "-1", "g:1", "g7", "g7:", "x1", "1.0", "g7:1:2", 17, None, "\uff11"):
        assert parse_seq(bad) is None
    assert format_seq("g7", 3) == "g7:3"


def test_unanswered_frames_go_out_again_with_the_same_id_until_answered() -> None:
    """A send written before a disconnect is written again, same text, on each connection;
    its answer is reported once, a repeated answer not at all."""
    s = ClientState(ME, id_prefix="t")
    cid = s.submit({"type": 1, "to": OTHER, "contentType": 0, "content": "hi"})
    assert s.take_writes() == []  # not connected: it waits
    s.connected()
    first = s.take_writes()
    assert [json.loads(f)["id"] for f in first] == [cid]
    s.disconnected()
    s.connected()
    assert s.take_writes() == first
    s.received(frame(type=99, id=cid, code="internal", message="not replicated"))
    assert s.take_answers() == []
    assert s.take_retries() == [(cid, 1)]
    s.retry(cid)
    assert s.take_writes() == first
    s.received(frame(type=10, id=cid, msgId="m1", time="5"))
    s.received(frame(type=10, id=cid, msgId="m1", time="5"))
    assert s.take_answers() == [(cid, Sent(cid, "m1", "5"))]
    s.disconnected()
    s.connected()
    assert s.take_writes() == []


def test_a_refusal_answers_the_frame() -> None:
    """A type 99 other than internal and rate_limited answers the frame as refused."""
    s = ClientState(ME, id_prefix="t")
    s.connected()
    cid = s.submit({"type": 2, "to": GROUP, "contentType": 0, "content": "x"})
    s.received(frame(type=99, id=cid, code="not_member", message="join first"))
    [(answered, refusal)] = s.take_answers()
    assert answered == cid
    assert isinstance(refusal, Refused)
    assert (refusal.code, refusal.message) == ("not_member", "join first")


def test_own_message_replayed_before_its_answer_is_held_then_dropped() -> None:
    """A replayed message from this user arriving before the type 10 of a pending send
    holds the stream; once the answer shows it was this client's, it is not shown, and
    what came after it is."""
    s = ClientState(ME, id_prefix="t")
    s.connected()
    cid = s.submit({"type": 1, "to": OTHER, "contentType": 0, "content": "mine"})
    s.received(message_frame("m1", 1, sender=ME))
    s.received(message_frame("m2", 2))
    assert taken(s) == []
    s.received(frame(type=10, id=cid, msgId="m1", time="1"))
    assert [m.id for m in taken(s)] == ["m2"]
    assert s.ack_frames() == [frame(type=11, seq="2").replace(" ", "")]


def test_another_devices_message_is_shown_once_the_sends_are_answered() -> None:
    """A message from this user that is not one of this client's sends is shown."""
    s = ClientState(ME, id_prefix="t")
    s.connected()
    cid = s.submit({"type": 1, "to": OTHER, "contentType": 0, "content": "mine"})
    s.received(message_frame("other-device", 1, sender=ME))
    assert taken(s) == []
    s.received(frame(type=10, id=cid, msgId="m9", time="1"))
    assert [m.id for m in taken(s)] == ["other-device"]


def test_a_reconnect_past_the_clients_position_asks_for_what_it_missed() -> None:
    """Another device acknowledged past this client's position: the new connection's
    replay starts later, so the client buffers, asks (type 14) after its own position once
    the connect replay ends, and shows the missed ones first, in order."""
    s = ClientState(ME, id_prefix="t")
    s.connected()
    s.received(message_frame("a1", 1))
    assert [m.id for m in taken(s)] == ["a1"]
    s.disconnected()
    s.connected()
    s.take_writes()
    s.received(message_frame("a4", 4))  # the connect replay starts after 3
    s.received(frame(type=14, seq="4"))
    assert s.take_writes() == ['{"type":14,"seq":"1"}']
    s.received(message_frame("a5", 5))  # a live push, interleaved with the replay
    for pos in (2, 3, 4, 5):
        s.received(message_frame(f"a{pos}", pos))
    assert taken(s) == []
    s.received(frame(type=14, seq="5"))
    assert [m.id for m in taken(s)] == ["a2", "a3", "a4", "a5"]


def test_malformed_frames_are_counted_and_dropped() -> None:
    """Nothing a gateway sends crashes the core: bad JSON, wrong types, bad seqs."""
    s = ClientState(ME, id_prefix="t")
    s.connected()
    for bad in ("{", "[]", "7", '{"type":1}', '{"type":1,"id":"x","from":"1"}', '{"type":77}'):
        s.received(bad)
    s.received(message_frame("m", 1).replace('"seq": "1"', '"seq": "g:1"'))
    s.received(frame(type=14, seq="nope"))
    assert s.ignored == 8
    assert taken(s) == []


# --- the state machine ---------------------------------------------------------------


@dataclass
class Entry:
    pos: int
    msg_id: str
    sender: int
    mine: bool
    """Sent by the client under test."""


@dataclass
class Connection:
    queue: list[str] = field(default_factory=list)
    """Frames on the wire toward the client, in order."""
    answers: list[str] = field(default_factory=list)
    """Answers the gateway has not written yet (released in any order)."""
    last: dict[str, int] = field(default_factory=dict)
    replaying: tuple[str, int] | None = None
    acked_at_connect: dict[str, int] = field(default_factory=dict)
    marked: bool = False
    """Its connect replay's end marker reached the client."""
    unread: bool = False
    """The group's node was silent at connect: not replayed, not listed in the marker,
    and not followed until :meth:`ClientAgainstModelGateway.group_read`."""
    late: int | None = None
    """Where the gateway started the group once read (the user's position then)."""


class ClientAgainstModelGateway(RuleBasedStateMachine):
    """A model gateway with an inbox and a large group's stream, which user ME joins (from
    another device) at any time: before the client first connects, while it is connected,
    or while it is away. At a connect the group's node may be silent: the marker does not
    list it, and the gateway follows it later from the user's position then."""

    def __init__(self) -> None:
        super().__init__()
        self.state = ClientState(ME, id_prefix="c", max_pending=6, max_waiting=4)
        self.streams: dict[str, list[Entry]] = {s: [] for s in STREAMS}
        self.server_acked = dict.fromkeys(STREAMS, 0)
        self.start: dict[str, int] = {}
        """Per stream, where what the client must show begins: on the client's first
        connection, the server's acked position when it began (a new client starts
        there); for a group the client first hears of later, where the user joined (or,
        followed late, where the gateway started it)."""
        self.joined: int | None = None
        """The group stream's position when the user joined (None: not a member)."""
        self.marked = False
        """A connect replay's end marker reached the client."""
        self.conn: Connection | None = None
        self.dedupe: dict[str, str] = {}
        self.counter = 0
        self.submitted: list[str] = []
        self.answered: dict[str, Sent | Refused] = {}
        self.shown: list[Message] = []
        self.client_acked = dict.fromkeys(STREAMS, 0)
        self.fail_next = False
        self.retries: list[str] = []
        self.backoff: set[str] = set()
        """Sends refused with a retried code on this connection, waiting for their backoff."""
        self.replay_retry = False

    # --- the model gateway ---

    def store(self, stream: str, sender: int, *, mine: bool = False) -> Entry:
        self.counter += 1
        entries = self.streams[stream]
        entry = Entry(len(entries) + 1, f"m{self.counter}", sender, mine)
        entries.append(entry)
        return entry

    def group_start(self) -> int:
        """Where the group's replays start for the user: never before the join."""
        assert self.joined is not None
        return max(self.server_acked[GROUP_STREAM], self.joined)

    def push(self, stream: str, entry: Entry, *, own: bool = False) -> None:
        conn = self.conn
        if conn is None or conn.last.get(stream) is None:
            return
        if entry.pos == conn.last[stream] + 1:
            conn.last[stream] = entry.pos
            if not own:
                conn.queue.append(
                    message_frame(entry.msg_id, entry.pos, sender=entry.sender, stream=stream)
                )

    def to_server(self) -> None:
        """The client's writes reach the gateway in order."""
        for text in self.state.take_writes():
            assert self.conn is not None, "wrote while disconnected"
            self.handle(json.loads(text))
        self.collect()

    def handle(self, f: dict[str, Any]) -> None:
        conn = self.conn
        assert conn is not None
        kind = f["type"]
        if kind == 1:
            cid = f["id"]
            if self.fail_next:
                self.fail_next = False
                conn.answers.append(frame(type=99, id=cid, code="internal", message="x"))
                return
            if cid not in self.dedupe:
                entry = self.store(INBOX, ME, mine=True)
                self.dedupe[cid] = entry.msg_id
                self.push(INBOX, entry, own=True)
            conn.answers.append(frame(type=10, id=cid, msgId=self.dedupe[cid], time="1"))
        elif kind == 11:
            stream, pos = parse_seq(f["seq"]) or ("?", 0)
            assert pos <= len(self.streams[stream]), "acked past the end"
            self.client_acked[stream] = max(self.client_acked[stream], pos)
            self.server_acked[stream] = max(self.server_acked[stream], pos)
        elif kind == 14:
            if conn.replaying is not None:
                conn.queue.append(frame(type=99, code="rate_limited", message="running"))
                return
            parsed = parse_seq(f["seq"])
            assert parsed is not None
            if parsed[0] == GROUP_STREAM:
                assert self.joined is not None, "asked for a group the user is not in"
                if conn.unread:  # its node is silent: the read fails
                    conn.queue.append(frame(type=99, code="internal", message="unread"))
                    return
                parsed = (GROUP_STREAM, max(parsed[1], self.joined))  # never before the join
            conn.replaying = parsed
        else:
            raise AssertionError(f"unexpected frame {f}")

    def collect(self) -> None:
        for cid, answer in self.state.take_answers():
            assert cid not in self.answered, "an answer reported twice"
            self.answered[cid] = answer
        retried = [c for c, _ in self.state.take_retries()]
        self.retries += retried
        self.backoff.update(retried)
        self.replay_retry = self.state.take_replay_retry() or self.replay_retry

    def take(self, n: int) -> None:
        for _ in range(n):
            m = self.state.take_message()
            if m is None:
                break
            self.shown.append(m)
        if self.conn is not None:
            self.to_server()  # taking may ask for a replay
        else:
            self.state.take_writes()

    # --- rules ---

    @precondition(lambda self: self.conn is None)
    @rule(unread=st.booleans())
    def connect(self, unread: bool = False) -> None:
        """``unread``: the group's node is silent (when the user is in the group)."""
        conn = self.conn = Connection(acked_at_connect=dict(self.server_acked))
        self.backoff.clear()  # a new connection resends every unanswered frame
        self.state.connected()
        self.to_server()  # resends first: the gateway stores them before its replay read
        groups = []
        for stream in STREAMS:
            if stream == GROUP_STREAM:
                if self.joined is None:
                    continue
                if unread:
                    conn.unread = True
                    continue
                after = self.group_start()
                groups.append(format_seq(stream, after))
            else:
                after = self.server_acked[stream]
            for entry in self.streams[stream][after:]:
                conn.queue.append(
                    message_frame(entry.msg_id, entry.pos, sender=entry.sender, stream=stream)
                )
            conn.last[stream] = len(self.streams[stream])
        marker: dict[str, Any] = {"groups": groups} if groups else {}
        conn.queue.append(frame(type=14, seq=str(conn.last[INBOX]), **marker))

    @precondition(lambda self: self.conn is not None and self.conn.unread)
    @rule(early=st.booleans())
    def group_read(self, early: bool) -> None:
        """The silent node answers: the gateway follows the group from the user's position
        (the posts after it come as pushes; ``early``: before the connect replay's end
        marker, when that is still on the wire)."""
        conn = self.conn
        assert conn is not None
        after = conn.late = self.group_start()
        conn.unread = False
        entries = self.streams[GROUP_STREAM]
        conn.last[GROUP_STREAM] = len(entries)
        frames = [
            message_frame(e.msg_id, e.pos, sender=e.sender, stream=GROUP_STREAM)
            for e in entries[after:]
        ]
        at = len(conn.queue)
        if early and not conn.marked:
            at = next(i for i, f in enumerate(conn.queue) if json.loads(f)["type"] == 14)
        conn.queue[at:at] = frames

    @precondition(lambda self: self.conn is not None)
    @rule()
    def disconnect(self) -> None:
        self.conn = None
        self.state.disconnected()

    @rule(stream=st.sampled_from(STREAMS), from_me=st.booleans())
    def someone_posts(self, stream: str, from_me: bool) -> None:
        """Another user, or this user on another device, posts."""
        entry = self.store(stream, ME if from_me else OTHER)
        self.push(stream, entry)

    @precondition(lambda self: self.joined is None)
    @rule()
    def user_joins(self) -> None:
        """The user joins the group from another device: a connection open now follows
        its stream from here (the gateway's regroup)."""
        self.joined = len(self.streams[GROUP_STREAM])
        if self.conn is not None:
            self.conn.last[GROUP_STREAM] = self.joined

    @rule(stream=st.sampled_from(STREAMS), data=st.data())
    def another_device_acks(self, stream: str, data: st.DataObject) -> None:
        end = len(self.streams[stream])
        first = 1
        if stream == GROUP_STREAM:
            if self.joined is None:
                return
            first = self.joined + 1  # it was shown only what came after the join
        if end >= first:
            pos = data.draw(st.integers(first, end))
            self.server_acked[stream] = max(self.server_acked[stream], pos)

    @rule()
    def send(self) -> None:
        cid = self.state.submit({"type": 1, "to": OTHER, "contentType": 0, "content": "x"})
        self.submitted.append(cid)
        if self.conn is not None:
            self.to_server()

    @rule()
    def next_send_fails(self) -> None:
        self.fail_next = True

    @precondition(lambda self: self.conn is not None and self.conn.queue)
    @rule(repeat=st.booleans())
    def deliver(self, repeat: bool) -> None:
        """The next frame on the wire reaches the client (a repeat: a message or an
        answer comes twice)."""
        assert self.conn is not None
        text = self.conn.queue.pop(0)
        f = json.loads(text)
        parsed = parse_seq(f.get("seq"))
        if f["type"] in (1, 2, 14) and parsed is not None:
            self.learn(parsed[0])
        if f["type"] == 14 and not self.conn.marked:
            for seq in f.get("groups", ()):
                self.learn(parse_seq(seq)[0])  # type: ignore[index]
            self.conn.marked = self.marked = True
        self.state.received(text)
        if repeat and f["type"] in (1, 2, 10):
            # Messages come again in replays, answers again for resent frames; a
            # WebSocket never doubles a frame, so an end marker does not come twice.
            self.state.received(text)
        self.to_server()

    def learn(self, stream: str) -> None:
        """The client hears of ``stream``: what it must show of it starts here."""
        assert self.conn is not None
        if stream in self.start:
            return
        start = self.conn.acked_at_connect[stream]
        if stream == GROUP_STREAM:
            assert self.joined is not None
            # A client hears of a group after its first connect replay only when the
            # user joined later (or nothing was posted since): it shows all since the join;
            # or when the gateway followed it late (its node was silent at connect): from
            # the user's position then.
            if self.conn.late is not None:
                start = self.conn.late
            else:
                start = self.joined if self.marked else max(start, self.joined)
        self.start[stream] = start

    @precondition(lambda self: self.conn is not None and self.conn.answers)
    @rule(data=st.data())
    def answer(self, data: st.DataObject) -> None:
        """The gateway writes one of its pending answers (in any order)."""
        assert self.conn is not None
        i = data.draw(st.integers(0, len(self.conn.answers) - 1))
        self.conn.queue.append(self.conn.answers.pop(i))

    @precondition(lambda self: self.conn is not None and self.conn.replaying is not None)
    @rule()
    def replay_step(self) -> None:
        """The requested replay sends its next entry, or its end marker."""
        conn = self.conn
        assert conn is not None
        assert conn.replaying is not None
        stream, after = conn.replaying
        entries = self.streams[stream]
        if after < len(entries):
            entry = entries[after]
            conn.queue.append(
                message_frame(entry.msg_id, entry.pos, sender=entry.sender, stream=stream)
            )
            conn.replaying = (stream, entry.pos)
            conn.last[stream] = max(conn.last[stream], entry.pos)
        else:
            conn.queue.append(frame(type=14, seq=format_seq(stream, after)))
            conn.replaying = None

    @precondition(lambda self: self.retries or self.replay_retry)
    @rule()
    def backoffs_elapse(self) -> None:
        for cid in self.retries:
            self.state.retry(cid)
        self.retries = []
        self.backoff.clear()
        if self.replay_retry:
            self.replay_retry = False
            self.state.retry_replay()
        if self.conn is not None:
            self.to_server()
        else:
            self.state.take_writes()

    @rule(n=st.integers(1, 8))
    def app_takes(self, n: int) -> None:
        """The application takes up to ``n`` messages (it may fall behind)."""
        self.take(n)

    @precondition(lambda self: self.conn is not None)
    @rule()
    def ack_tick(self) -> None:
        for text in self.state.ack_frames():
            self.handle(json.loads(text))

    # --- invariants ---

    def mine(self) -> set[str]:
        return {e.msg_id for s in STREAMS for e in self.streams[s] if e.mine}

    @invariant()
    def shown_once_in_order_never_own(self) -> None:
        ids = [m.id for m in self.shown]
        assert len(ids) == len(set(ids)), "a message shown twice"
        assert not set(ids) & self.mine(), "the client's own message shown"
        for stream in STREAMS:
            positions = [parse_seq(m.seq)[1] for m in self.shown if parse_seq(m.seq)[0] == stream]  # type: ignore[index]
            assert positions == sorted(positions), f"{stream!r} out of order"

    @invariant()
    def acks_never_pass_an_unshown_message(self) -> None:
        shown = {m.id for m in self.shown}
        for stream in STREAMS:
            for entry in self.streams[stream][: self.client_acked[stream]]:
                if not entry.mine and self.expected(stream, entry):
                    assert entry.msg_id in shown, f"acked past unshown {entry}"

    @invariant()
    def owed_is_what_this_connection_wrote_and_did_not_answer(self) -> None:
        """The frames owed an answer (what the answer bound watches) are this
        connection's unanswered writes, less those waiting for a retry's backoff; none
        while disconnected; and every answer is counted."""
        if self.conn is None:
            assert self.state.owed == 0
        else:
            unanswered = set(self.submitted) - set(self.answered)
            assert self.state.owed == len(unanswered - self.backoff)
        assert self.state.answered >= len(self.answered) + len(self.backoff)

    def expected(self, stream: str, entry: Entry) -> bool:
        return stream in self.start and entry.pos > self.start[stream]

    def teardown(self) -> None:
        """Let the wire run quiet on a steady connection: everything arrives (a large
        group's gap shows at the connect replay's end marker, which lists the group, or,
        for a group followed late, at its next post)."""
        if self.conn is None:
            self.connect()
        elif self.conn.late is not None:
            # Followed late: a client learns of what another device acknowledged there
            # (its marker did not say) from the stream's next post.
            self.someone_posts(GROUP_STREAM, from_me=False)
        for _ in range(10_000):
            conn = self.conn
            assert conn is not None
            if conn.answers:
                conn.queue += conn.answers
                conn.answers = []
            elif conn.queue:
                self.deliver(repeat=False)
            elif conn.replaying is not None:
                self.replay_step()
            elif conn.unread:
                self.group_read(early=False)
                self.someone_posts(GROUP_STREAM, from_me=False)
            elif self.retries or self.replay_retry:
                self.backoffs_elapse()
            elif self.state.waiting:
                self.take(100)
            else:
                break
        self.collect()
        self.take(1000)
        assert set(self.answered) == set(self.submitted), "a send never answered"
        assert all(isinstance(a, Sent) for a in self.answered.values())
        assert {a.msg_id for a in self.answered.values() if isinstance(a, Sent)} == self.mine()
        shown = [m.id for m in self.shown]
        for stream in STREAMS:
            for entry in self.streams[stream]:
                if not entry.mine and self.expected(stream, entry):
                    assert entry.msg_id in shown, f"never shown: {entry}"


ClientAgainstModelGateway.TestCase.settings = settings(
    max_examples=120, stateful_step_count=50, deadline=None
)
test_client_against_a_model_gateway = ClientAgainstModelGateway.TestCase


@pytest.mark.parametrize("user", [ME, None])
def test_an_unknown_user_holds_every_message_while_sends_are_unanswered(user: int | None) -> None:
    """Without a user id (an opaque token) any message may be the client's own: held
    while sends are unanswered; with one, only this user's messages are."""
    s = ClientState(user, id_prefix="t")
    s.connected()
    cid = s.submit({"type": 1, "to": OTHER, "contentType": 0, "content": "x"})
    s.received(message_frame("from-other", 1))
    assert len(taken(s)) == (1 if user == ME else 0)
    s.received(frame(type=10, id=cid, msgId="mx", time="1"))
    assert len(taken(s)) == (0 if user == ME else 1)


def test_frames_owed_an_answer_are_this_connections_unanswered_writes() -> None:
    """What the answer bound watches: a send written on this connection is owed until
    answered; a retried refusal is an answer (owed again once resent); a send made while
    disconnected is owed from the connection that writes it; a lost connection owes
    nothing."""
    s = ClientState(ME, id_prefix="t")
    early = s.submit({"type": 1, "to": OTHER, "contentType": 0, "content": "a"})
    assert (s.owed, s.answered) == (0, 0)
    s.connected()
    late = s.submit({"type": 12, "to": GROUP})
    assert s.owed == 2
    s.received(frame(type=99, id=early, code="internal", message="again"))
    assert (s.owed, s.answered) == (1, 1)
    s.retry(early)
    assert s.owed == 2
    s.received(frame(type=10, id=late, msgId="", time="1"))
    assert (s.owed, s.answered) == (1, 2)
    s.disconnected()
    assert s.owed == 0
    s.connected()
    assert s.owed == 1
    s.received(frame(type=99, id=early, code="not_member", message="no"))
    assert (s.owed, s.answered, s.unanswered) == (0, 3, 0)
