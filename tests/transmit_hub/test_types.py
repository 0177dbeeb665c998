"""The fast constructors of the hot paths build the same objects as the dataclasses'
(and a delivery row is its Delivery)."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from transmit_hub.types import (
    Delivery,
    GatewayId,
    Message,
    MessageId,
    Recipient,
    TransmitMap,
    UserId,
    delivery_row,
    new_message,
    new_recipient,
    new_transmit_map,
    row_delivery,
)

uint64 = st.integers(min_value=0, max_value=2**64 - 1)
int32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)


def test_they_set_every_field() -> None:
    """A field added to a dataclass fails here until its fast constructor sets it."""
    assert [f.name for f in dataclasses.fields(Message)] == [
        "id",
        "sender",
        "to",
        "type",
        "content_type",
        "time",
        "content",
    ]
    assert [f.name for f in dataclasses.fields(Recipient)] == ["user_id", "seq"]


@given(st.text(), uint64, uint64, int32, int32, st.integers(min_value=0), st.text())
def test_new_message_is_message(
    mid: str, sender: int, to: int, kind: int, content_type: int, time: int, content: str
) -> None:
    fields = (MessageId(mid), UserId(sender), to, kind, content_type, time, content)
    fast, plain = new_message(*fields), Message(*fields)
    assert type(fast) is Message
    assert fast == plain
    assert hash(fast) == hash(plain)
    assert repr(fast) == repr(plain)
    assert dataclasses.astuple(fast) == fields
    try:
        fast.content = "changed"  # type: ignore[misc]
    except dataclasses.FrozenInstanceError:
        pass
    else:
        raise AssertionError("a fast Message must stay frozen")


@given(uint64, st.text())
def test_new_recipient_is_recipient(user: int, seq: str) -> None:
    fast, plain = new_recipient(UserId(user), seq), Recipient(UserId(user), seq)
    assert type(fast) is Recipient
    assert fast == plain
    assert hash(fast) == hash(plain)
    assert repr(fast) == repr(plain)


def test_new_transmit_map_is_transmit_map() -> None:
    assert [f.name for f in dataclasses.fields(TransmitMap)] == ["message", "users"]
    message = Message(MessageId("m"), UserId(1), 2, 1, 0, 3, "x")
    users = {GatewayId("gw-2"): (Recipient(UserId(2), "4"),)}
    fast, plain = new_transmit_map(message, users), TransmitMap(message, users)
    assert type(fast) is TransmitMap
    assert fast == plain
    assert repr(fast) == repr(plain)


@given(
    st.text(),
    uint64,
    int32,
    st.lists(st.tuples(uint64, st.text(max_size=5)), max_size=4),
)
def test_a_delivery_row_is_its_delivery(
    mid: str, sender: int, kind: int, users: list[tuple[int, str]]
) -> None:
    """row_delivery builds what the constructors build from a row's fields, users and
    seqs, and delivery_row gives that row back."""
    fields = (MessageId(mid), UserId(sender), 7, kind, 0, 9, "x")
    ids = tuple(UserId(u) for u, _ in users)
    seqs = tuple(s for _, s in users)
    plain = Delivery(Message(*fields), tuple(map(Recipient, ids, seqs)))
    fast = row_delivery((fields, ids, seqs))
    assert type(fast) is Delivery
    assert fast == plain
    assert hash(fast) == hash(plain)
    assert repr(fast) == repr(plain)
    assert type(fast.message) is Message
    assert all(type(r) is Recipient for r in fast.recipients)
    assert delivery_row(plain) == (fields, ids, seqs)
    assert [f.name for f in dataclasses.fields(Delivery)] == ["message", "recipients"]
