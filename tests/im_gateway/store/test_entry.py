"""``store/entry.py``: the inbox entry's text is the plain JSON array of the message's
fields, whatever the text holds, and reads back as the same message."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from im_gateway.store import entry
from transmit_hub.types import Message, MessageId, UserId

_UNICODE = st.text(st.characters(exclude_categories=["Cs"]), max_size=60)
_UINT64 = st.integers(min_value=0, max_value=2**64 - 1)

messages = st.builds(
    Message,
    id=_UNICODE.filter(bool).map(MessageId),
    sender=_UINT64.map(UserId),
    to=_UINT64,
    type=st.integers(min_value=0, max_value=5000),
    content_type=st.integers(min_value=-(2**31), max_value=2**31 - 1),
    time=st.integers(min_value=0, max_value=2**63 - 1),
    content=_UNICODE,
)


@given(messages)
def test_the_entry_is_the_json_array_of_the_fields(m: Message) -> None:
    """The text is what ``json.dumps`` gives the field array (non-ASCII kept, no spaces),
    its UTF-8 is what the batch script is sent, and it reads back as the message."""
    fields = [m.id, m.sender, m.to, m.type, m.content_type, m.time, m.content]
    text = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
    assert entry.encode(m) == text
    assert entry.encode_bytes(m) == text.encode()
    assert entry.decode(entry.encode_bytes(m)) == m


def test_text_that_is_not_unicode_is_refused() -> None:
    """A lone surrogate cannot be stored: encoding raises (stores check it first)."""
    m = Message(MessageId("m"), UserId(1), 2, 1, 0, 3, "\ud800")
    with pytest.raises(UnicodeEncodeError):
        entry.encode_bytes(m)
