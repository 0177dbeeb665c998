"""``frames.parse`` decodes with msgspec and falls back to ``json``: it answers every
text exactly as the stdlib alone would (same frame, or same error code, text and id)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from im_gateway import frames
from im_gateway.errors import FrameError

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
]


def _answer(parse: Callable[[str], frames.ClientFrame], text: str) -> object:
    try:
        return parse(text)
    except FrameError as exc:
        return ("error", exc.code, str(exc), exc.frame_id)


def _stdlib(monkeypatch: pytest.MonkeyPatch, text: str) -> object:
    with monkeypatch.context() as m:
        m.setattr(frames, "_FAST_LOADS", json.loads)
        return _answer(frames.parse, text)


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
        m.setattr(frames, "_FAST_LOADS", json.loads)
        expected = _answer(frames.parse, text)
    assert _answer(frames.parse, text) == expected


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
