"""``frames.parse`` decodes with msgspec (a frame's fields straight into a struct, else
into a dict) and falls back to ``json``: it answers every text exactly as the stdlib alone
would, each check in turn (same frame, or same error code, text and id)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from im_gateway import frames
from im_gateway.errors import FrameError
from tests.im_gateway.strategies import frames as random_frames

TRICKY = [
    '{"type":1,"id":"a","to":18446744073709551616,"content":"x"}',  # beyond uint64
    '{"type":18446744073709551617,"id":"a"}',
    '{"type":1,"id":"a","to":-1,"content":"x"}',
    '{"type":1,"id":"a","to":2,"content":"\\ud800"}',  # a lone surrogate escape
    '{"type":1,"id":"\\udfff","to":2,"content":"x"}',
    '{"type":1,"id":"a","to":2,"contentType":1e400,"content":"x"}',
    '{"type":1,"id":"a","to":2,"contentType":NaN,"content":"x"}',
    '{"type":1.0,"id":"a"}',
    '{"type":1,"type":11,"seq":"3"}',  # duplicate keys: the last one wins
    "[" * 5000 + "]" * 5000,
    '{"type":0} ',
    '{"type":0}x',
    "",
    '{"type":1,"id":"é","to":"2","content":"\\u0000é"}',
    # What the struct decoder takes first must pass every check, or be parsed again:
    '{"type":1,"id":"a","to":18446744073709551615,"content":"x"}',
    '{"type":2,"id":"a","to":-0,"contentType":-2147483648,"content":""}',
    '{"type":1,"id":"a","to":2,"contentType":2147483648,"content":"x"}',
    '{"type":1,"id":"a","to":2,"contentType":-2147483649,"content":"x"}',
    '{"type":1,"id":"","to":2,"content":"x"}',
    '{"type":1,"id":"' + "i" * 128 + '","to":2,"content":"x"}',
    '{"type":1,"id":"' + "i" * 129 + '","to":2,"content":"x"}',
    '{"type":1,"id":"' + "é" * 128 + '","to":2,"content":"x"}',
    '{"type":1,"id":"a","to":2,"content":null}',
    '{"type":1,"id":"a","to":2}',
    '{"type":1,"id":"a","content":"x"}',
    '{"type":1,"to":2,"content":"x"}',
    '{"type":1,"id":7,"to":2,"content":"x"}',
    '{"type":1,"id":"a","to":2,"content":"x","seq":7}',
    '{"type":1,"id":"a","to":2,"content":"x","contentType":true}',
    '{"type":1,"id":"a","to":true,"content":"x"}',
    '{"type":true,"id":"a","to":2,"content":"x"}',
    '{"type":1,"id":"a","to":2,"content":"x","id":""}',
    '{"type":1,"id":"a","to":2,"content":5,"content":"x"}',
    '{"type":1,"id":"a","to":2,"content":"x","content":5}',
    '{"type":11,"type":1,"id":"a","to":2,"content":"x"}',
    '{"type":1,"id":"a","to":2,"content":"' + "x" * 16384 + '"}',
    '{"type":1,"id":"a","to":2,"content":"' + "x" * 16385 + '"}',
    '{"type":1,"id":"a","to":2,"content":"' + "é" * 8192 + '"}',
    '{"type":1,"id":"a","to":2,"content":"' + "é" * 8193 + '"}',
    '{"type":1,"id":"a","to":2,"content":"' + "\\u00e9" * 8193 + '"}',
    '{"type":0,"id":"a","to":"x","content":[]}',
    '{"type":0,"seq":5}',
    '{"type":11,"seq":""}',
    '{"type":11,"seq":null}',
    '{"type":11}',
    '{"type":11,"seq":"g7:"}',
    '{"type":11,"seq":"g7:3"}',
    '{"type":11,"seq":"18446744073709551615"}',
    '{"type":11,"seq":"18446744073709551616"}',
    '{"type":11,"seq":"+3"}',
    '{"type":11,"seq":"3","to":"x"}',
    '{"type":14,"seq":"3"}',
    '{"type":12,"id":"a","to":2}',
    "[]",
    "null",
]


def _answer(parse: Callable[[str | bytes], frames.ClientFrame], text: str | bytes) -> object:
    try:
        return parse(text)
    except FrameError as exc:
        return ("error", exc.code, str(exc), exc.frame_id)


def _stdlib(monkeypatch: pytest.MonkeyPatch, text: str | bytes) -> object:
    """The answer of ``parse_any`` (each check in turn) on ``json.loads`` alone."""
    with monkeypatch.context() as m:
        m.setattr(frames, "_FAST_LOADS", json.loads)
        return _answer(frames.parse_any, text)


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_texts_answer_as_the_stdlib_does(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    assert _answer(frames.parse, text) == _stdlib(monkeypatch, text)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
frame_like = st.fixed_dictionaries(
    {"type": st.sampled_from([0, 1, 2, 11, 12, 13, 14, 99])},
    optional={
        "id": st.text(max_size=4),
        "to": json_values,
        "content": json_values,
        "contentType": json_values,
        "seq": json_values,
    },
)


@given(frame_like)
def test_frames_answer_as_the_stdlib_does(obj: dict[str, object]) -> None:
    text = json.dumps(obj, ensure_ascii=False)
    with pytest.MonkeyPatch.context() as m:
        assert _answer(frames.parse, text) == _stdlib(m, text)


@given(
    st.sampled_from([1, 2]),
    st.text(min_size=1, max_size=8),
    st.integers(min_value=0, max_value=2**64 - 1),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    st.text(max_size=8),
)
def test_a_parsed_message_is_the_dataclass(
    kind: int, frame_id: str, to: int, content_type: int, content: str
) -> None:
    """The SendMessage ``parse`` fills directly is the one the constructor builds."""
    text = json.dumps(
        {"type": kind, "id": frame_id, "to": to, "contentType": content_type, "content": content}
    )
    fields = [f.name for f in dataclasses.fields(frames.SendMessage)]
    assert fields == ["type", "id", "to", "content_type", "content"]
    try:
        parsed = frames.parse(text)
    except FrameError:
        return  # an id or content with lone surrogates: refused, as before
    plain = frames.SendMessage(kind, frame_id, to, content_type, content)
    assert type(parsed) is frames.SendMessage
    assert parsed == plain
    assert hash(parsed) == hash(plain)
    assert repr(parsed) == repr(plain)


near_limits = st.one_of(
    st.integers(min_value=-(2**65), max_value=2**65),
    st.sampled_from([-1, 0, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**64 - 1, 2**64]),
    st.booleans(),
    st.none(),
    st.text(max_size=4),
    st.floats(allow_nan=False),
)
near_messages = st.fixed_dictionaries(
    {
        "type": st.sampled_from([0, 1, 2, 11]) | near_limits,
        "id": st.text(min_size=0, max_size=130) | near_limits,
        "to": near_limits,
        "content": st.text(max_size=12) | near_limits,
    },
    optional={"contentType": near_limits, "seq": st.text(max_size=6) | near_limits},
)


@given(near_messages, st.integers(min_value=0, max_value=24), st.booleans())
def test_messages_near_every_limit_answer_as_the_stdlib_does(
    obj: dict[str, object], max_content: int, as_bytes: bool
) -> None:
    """Messages (the struct decoder's frames) one value off a limit, against the
    stdlib's answer, as text and as bytes."""
    text = json.dumps(obj, ensure_ascii=False)
    data: str | bytes = text.encode("utf-8", "surrogatepass") if as_bytes else text
    with pytest.MonkeyPatch.context() as m:
        m.setattr(frames, "_FAST_LOADS", json.loads)
        expected = _answer(lambda d: frames.parse_any(d, max_content=max_content), data)
    assert _answer(lambda d: frames.parse(d, max_content=max_content), data) == expected


@given(random_frames)
def test_hostile_frames_answer_as_the_stdlib_does(data: str | bytes) -> None:
    with pytest.MonkeyPatch.context() as m:
        assert _answer(frames.parse, data) == _stdlib(m, data)
