"""Client frame parsing and server frame encoding: pure functions, no event loop."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from im_gateway import frames
from im_gateway.errors import FrameError
from im_gateway.ids import MessageIds
from tests.im_gateway.strategies import frames as random_frames
from transmit_hub.types import Message, MessageId, UserId


def refused(data: str | bytes, **kw: int) -> FrameError:
    with pytest.raises(FrameError) as info:
        frames.parse(data, **kw)
    return info.value


def test_parses_every_client_frame_type() -> None:
    """Each pinned client frame parses into its dataclass with the right fields."""
    assert frames.parse('{"type":0}') == frames.Heartbeat()
    assert frames.parse(
        '{"type":1,"id":"c-1","to":42,"contentType":3,"content":"hi","from":9}'
    ) == frames.SendMessage(type=1, id="c-1", to=42, content_type=3, content="hi")
    assert frames.parse('{"type":2,"id":"c-2","to":"7","content":"all"}') == frames.SendMessage(
        type=2, id="c-2", to=7, content_type=0, content="all"
    )
    assert frames.parse('{"type":11,"seq":"17"}') == frames.Ack(17)
    assert frames.parse('{"type":12,"id":"c-3","to":7}') == frames.GroupChange(12, "c-3", 7)
    assert frames.parse('{"type":13,"id":"c-4","to":7}') == frames.GroupChange(13, "c-4", 7)
    assert frames.parse('{"type":14,"seq":"0"}') == frames.Replay(0)
    assert frames.parse('{"type":14,"seq":"42"}') == frames.Replay(42)
    assert frames.parse('{"type":14}') == frames.Replay(None)
    assert frames.parse(b'{"type":0}') == frames.Heartbeat()


@pytest.mark.parametrize(
    ("data", "frame_id"),
    [
        ("nope", None),
        ("", None),
        ("[]", None),
        ('"type"', None),
        ("[" * 100_000, None),
        ('{"type":"1"}', None),
        ('{"type":true}', None),
        ('{"type":1.0}', None),
        ('{"type":5,"id":"k"}', "k"),
        ('{"type":1,"id":"k","to":1}', "k"),
        ('{"type":1,"id":"k","to":-1,"content":""}', "k"),
        ('{"type":1,"id":"k","to":18446744073709551616,"content":""}', "k"),
        ('{"type":1,"id":"k","to":true,"content":""}', "k"),
        ('{"type":1,"id":"k","to":"1e3","content":""}', "k"),
        ('{"type":1,"id":"k","to":1,"content":"x","contentType":2147483648}', "k"),
        ('{"type":1,"id":"k","to":1,"content":"\\ud800"}', "k"),
        ('{"type":1,"id":"","to":1,"content":"x"}', None),
        ('{"type":1,"id":"' + "i" * 129 + '","to":1,"content":"x"}', None),
        ('{"type":1,"to":1,"content":"x"}', None),
        ('{"type":11}', None),
        ('{"type":11,"seq":"-1"}', None),
        ('{"type":11,"seq":"1-2-3"}', None),
        ('{"type":11,"seq":"1700000000000-3"}', None),
        ('{"type":14,"seq":5}', None),
        ('{"type":14,"seq":"1-0"}', None),
        ('{"type":12,"id":"k"}', "k"),
        (b"\xff\xfe", None),
    ],
)
def test_bad_frames_are_bad_request(data: str | bytes, frame_id: str | None) -> None:
    """Malformed JSON, unknown types and wrong or missing fields: bad_request (with the id)."""
    error = refused(data)
    assert error.code == frames.BAD_REQUEST
    assert error.frame_id == frame_id
    assert error.message


def test_content_over_the_limit_is_too_large() -> None:
    """Content is measured in UTF-8 bytes against max_content."""
    ok = frames.parse('{"type":1,"id":"k","to":1,"content":"' + "é" * 5 + '"}', max_content=10)
    assert isinstance(ok, frames.SendMessage)
    error = refused('{"type":1,"id":"k","to":1,"content":"' + "é" * 6 + '"}', max_content=10)
    assert (error.code, error.frame_id) == (frames.TOO_LARGE, "k")


@pytest.mark.parametrize("kind", [frames.ACK, frames.REPLAY])
@pytest.mark.parametrize(
    "seq",
    ["1-2", "18446744073709551616", "", "abc", "-1", "1700000000000-3", " 1", "1.5", "\uff11"],
)
def test_a_seq_that_is_no_inbox_position_is_bad_request(kind: int, seq: str) -> None:
    """Acks and replays take only a decimal position below 2**64; anything else is
    bad_request (the old "<ms>-<n>" form included)."""
    error = refused(json.dumps({"type": kind, "seq": seq, "id": "k"}))
    assert (error.code, error.frame_id) == (frames.BAD_REQUEST, "k")
    assert "seq" in error.message


@pytest.mark.parametrize(
    ("seq", "value"), [("0", 0), ("17", 17), ("18446744073709551615", 2**64 - 1)]
)
def test_decimal_positions_up_to_uint64_max_are_accepted(seq: str, value: int) -> None:
    """Seqs "0", "17" and "18446744073709551615" parse to their integer in acks and replays."""
    assert frames.parse(json.dumps({"type": 11, "seq": seq})) == frames.Ack(value)
    assert frames.parse(json.dumps({"type": 14, "seq": seq})) == frames.Replay(value)


@settings(max_examples=500, deadline=None)
@given(random_frames)
def test_parse_never_raises_anything_but_frame_error(data: str | bytes) -> None:
    """Whatever a client sends, parse returns a frame (positions within uint64) or raises
    FrameError."""
    try:
        frame = frames.parse(data)
    except FrameError as exc:
        code = exc.code
        assert code in (frames.BAD_REQUEST, frames.TOO_LARGE)
        return
    if isinstance(frame, frames.SendMessage):
        frame.content.encode("utf-8")  # always encodable
        frame.id.encode("utf-8")
    elif isinstance(frame, frames.Ack):
        assert 0 <= frame.upto <= frames.UINT64_MAX
    elif isinstance(frame, frames.Replay):
        assert frame.after is None or 0 <= frame.after <= frames.UINT64_MAX


MESSAGE = Message(
    id=MessageId("m-1"),
    sender=UserId(1),
    to=42,
    type=1,
    content_type=0,
    time=1700000000123,
    content='hi "there" \u2603\n',
)


def test_message_frame_has_the_pinned_keys_in_order() -> None:
    """A message frame: type, id, from, to, contentType, time (string), content, seq."""
    text = frames.encode_message(MESSAGE, "17")
    assert json.loads(text) == {
        "type": 1,
        "id": "m-1",
        "from": 1,
        "to": 42,
        "contentType": 0,
        "time": "1700000000123",
        "content": 'hi "there" \u2603\n',
        "seq": "17",
    }
    assert list(json.loads(text)) == [
        "type", "id", "from", "to", "contentType", "time", "content", "seq"
    ]  # fmt: skip
    prefix = frames.message_prefix(MESSAGE)
    assert frames.with_seq(prefix, "5") == frames.encode_message(MESSAGE, "5")


@given(
    st.text(),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(0, 2**63 - 1),
    st.text(),
)
def test_fields_prefix_is_message_prefix(
    mid: str, sender: int, to: int, kind: int, content_type: int, time: int, content: str
) -> None:
    """The fan-out's prefix of a delivery row's fields is the message's (the two copies of
    the format agree, for any text: quotes, controls, surrogates)."""
    fields = (MessageId(mid), UserId(sender), to, kind, content_type, time, content)
    assert frames.fields_prefix(fields) == frames.message_prefix(Message(*fields))


def test_server_control_frames() -> None:
    """Ack, error, replay end and heartbeat frames carry exactly the pinned keys."""
    assert json.loads(frames.encode_accepted("c-1", "m-1", 12)) == {
        "type": 10,
        "id": "c-1",
        "msgId": "m-1",
        "time": "12",
    }
    assert json.loads(frames.encode_error("not_member", "no", "c-2")) == {
        "type": 99,
        "id": "c-2",
        "code": "not_member",
        "message": "no",
    }
    assert json.loads(frames.encode_error("bad_request", 'say "what"')) == {
        "type": 99,
        "code": "bad_request",
        "message": 'say "what"',
    }
    assert frames.encode_replay_end(9) == '{"type":14,"seq":"9"}'
    assert json.loads(frames.encode_replay_end(0)) == {"type": 14, "seq": "0"}
    assert json.loads(frames.HEARTBEAT_REPLY) == {"type": 0}


def test_replay_end_says_truncated_only_when_asked() -> None:
    """{"type":14,"seq":"<upto>"} gains "truncated":true only when history was trimmed."""
    assert json.loads(frames.encode_replay_end(42, truncated=True)) == {
        "type": 14,
        "seq": "42",
        "truncated": True,
    }
    assert json.loads(frames.encode_replay_end(42, truncated=False)) == {"type": 14, "seq": "42"}
    assert json.loads(frames.encode_replay_end(2**64 - 1, truncated=True))["seq"] == str(2**64 - 1)


@pytest.mark.parametrize("kind", [11, 14])
def test_acks_and_replays_take_a_large_groups_seq(kind: int) -> None:
    """Type 11 and 14 take ``g<group>:<n>`` as well as an inbox seq."""
    frame = frames.parse(json.dumps({"type": kind, "seq": "g7:12"}))
    if kind == 11:
        assert frame == frames.Ack(12, 7)
    else:
        assert frame == frames.Replay(12, 7)
    for bad in ("g7", "g7:x", "g:1", "g7:1:1", "g-1:1", "7:1"):
        with pytest.raises(FrameError) as caught:
            frames.parse(json.dumps({"type": kind, "seq": bad}))
        assert caught.value.code == "bad_request"


def test_a_group_replay_end_marker_names_the_group() -> None:
    assert json.loads(frames.encode_replay_end(5, group=7)) == {"type": 14, "seq": "g7:5"}
    marker = json.loads(frames.encode_replay_end(5, truncated=True, group=7))
    assert marker == {"type": 14, "seq": "g7:5", "truncated": True}


def test_the_connect_replay_end_marker_lists_the_groups_starts() -> None:
    marker = json.loads(frames.encode_replay_end(41, starts=[(7, 12), (9, 0)]))
    assert marker == {"type": 14, "seq": "41", "groups": ["g7:12", "g9:0"]}
    marker = json.loads(frames.encode_replay_end(41, truncated=True, starts=[(2**63, 2**64 - 1)]))
    assert marker == {
        "type": 14,
        "seq": "41",
        "truncated": True,
        "groups": [f"g{2**63}:{2**64 - 1}"],
    }
    # A user in no large group gets the pinned marker, byte for byte.
    assert frames.encode_replay_end(41, starts=()) == '{"type":14,"seq":"41"}'


def test_the_end_marker_lists_at_most_marker_groups_max_groups() -> None:
    many = [(2**64 - 1 - g, 2**64 - 1) for g in range(frames.MARKER_GROUPS_MAX + 5)]
    text = frames.encode_replay_end(2**64 - 1, truncated=True, starts=many)
    assert len(json.loads(text)["groups"]) == frames.MARKER_GROUPS_MAX
    assert len(text) < 1 << 19  # the Python client closes on frames over 1 MiB


def test_messages_of_one_millisecond_keep_their_order_of_making() -> None:
    """The connect replay merges its streams by ``order_of``: time, then id. Ids made by one
    process in one millisecond sort by their counter, so a private and a group message sent
    one after the other in one millisecond replay in that order (the inbox's stream came
    first, whatever the order they were sent in, before)."""
    ids = MessageIds()
    first, ms = ids.next(1_700_000_000_000)
    second, _ = ids.next(ms)
    late = Message(second, UserId(1), UserId(2), 1, 0, ms, 'a "quoted" "id":"x" content')
    early = Message(first, UserId(1), 7, 2, 0, ms, "g")
    assert frames.order_of(frames.encode_message(early, "g7:1")) < frames.order_of(
        frames.encode_message(late, "5")
    )
    assert frames.order_of(frames.encode_message(late, "5")) == (ms, second)
    assert frames.order_of('{"type":0}') == (0, "")
