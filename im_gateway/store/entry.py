"""The inbox entry: how one message is laid out in a Redis inbox, written and read here only.

An inbox is a Redis stream. Each entry's id is ``<position>-<ms>`` (the consecutive inbox
position, then the Redis clock at the append), and its one field, ``m``, holds the
message as a JSON array ``[id, from, to, type, content_type, time, content]``. The Lua
scripts store :func:`encode`'s text as they get it (``lua/inbox.lua``) and parse only the
id; the Redis Cluster store keeps the same text in its dedupe records.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from transmit_hub.types import Message, MessageId, UserId

FIELD: Final = "m"
"""The stream field that holds the entry (as ``lua/inbox.lua`` writes it)."""

_FIELD_BYTES: Final = FIELD.encode()
_encode_array = msgspec.json.Encoder().encode
"""A tuple as a JSON array, in C: the same text as ``json.dumps(..., ensure_ascii=False,
separators=(",", ":"))`` for ints and valid Unicode (tests/im_gateway/store/test_entry.py),
as UTF-8 bytes, about five times faster than formatting it in Python (every message)."""


def encode_bytes(m: Message) -> bytes:
    """:func:`encode`'s text as UTF-8 (what the batch script is sent): the hot path.
    Raises ``UnicodeEncodeError`` for text that is not valid Unicode (lone surrogates)."""
    return _encode_array((m.id, m.sender, m.to, m.type, m.content_type, m.time, m.content))


def encode(m: Message) -> str:
    """The entry of ``m``: a JSON array ``[id, from, to, type, content_type, time,
    content]``, non-ASCII kept as is."""
    return encode_bytes(m).decode()


def decode(entry: str | bytes) -> Message:
    """The message of an entry that :func:`encode` wrote."""
    mid, sender, to, kind, content_type, time, content = json.loads(entry)
    return Message(MessageId(mid), UserId(sender), to, kind, content_type, time, content)


def from_fields(fields: Mapping[Any, Any]) -> Message:
    """The message of a stream entry's fields, as a client returns them (bytes or text keys)."""
    blob = fields.get(_FIELD_BYTES)
    if blob is None:
        blob = fields[FIELD]
    return decode(blob)


def position(entry_id: bytes | str) -> int:
    """The inbox position in a stream entry id ``<position>-<ms>``."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.partition("-")[0])
