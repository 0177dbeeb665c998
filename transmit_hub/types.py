"""The hub's own types: ids, messages, maps, deliveries and notices.

Plain frozen dataclasses over plain values, free of protobuf and of I/O.
``transmit_hub.codec`` is the one module that converts them to and from protobuf.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NewType

UserId = NewType("UserId", int)
"""A user, a uint64."""

GatewayId = NewType("GatewayId", str)
"""An IM gateway's stable, operator-chosen id (never a socket address)."""

MessageId = NewType("MessageId", str)
"""A message id, unique across the whole system."""

GATEWAY_ID_MAX = 128
"""The longest gateway id, in characters."""
_GATEWAY_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def gateway_id_problem(gateway_id: object) -> str | None:
    """Say why ``gateway_id`` is not a valid gateway id, or ``None`` when it is.

    A gateway id is 1 to 128 characters from ``A-Z a-z 0-9 . _ : -`` (DESIGN.md): short
    enough for every log line and counter, and nothing that could forge a log line.
    """
    if not isinstance(gateway_id, str) or not gateway_id:
        return "a gateway id must not be empty"
    if len(gateway_id) > GATEWAY_ID_MAX:
        return f"a gateway id has at most {GATEWAY_ID_MAX} characters, not {len(gateway_id)}"
    if _GATEWAY_ID.fullmatch(gateway_id) is None:
        return "a gateway id may only hold the characters A-Z a-z 0-9 . _ : -"
    return None


MESSAGE_PRIVATE = 1
MESSAGE_GROUP = 2


@dataclass(frozen=True, slots=True)
class Message:
    """A chat message, with the reference system's fields."""

    id: MessageId
    sender: UserId
    """The authenticated sender (``from`` on the wire)."""
    to: int
    """The recipient user (type 1) or group (type 2)."""
    type: int
    content_type: int
    time: int
    """Server time, milliseconds since the Unix epoch."""
    content: str


@dataclass(frozen=True, slots=True)
class Recipient:
    """A user a message is for, and the message's position in that user's inbox."""

    user_id: UserId
    seq: str = ""
    """The inbox position (a Redis stream id), or ``""`` when unknown."""


@dataclass(frozen=True, slots=True)
class TransmitMap:
    """One message and, per target gateway, the users it is for there."""

    message: Message
    users: Mapping[GatewayId, tuple[Recipient, ...]] = field(default_factory=dict)


# The hot paths build a Message and its Recipients per message: these fill the frozen
# dataclasses' slots directly. The generated __init__ sets each field through
# object.__setattr__, about twice the CPU; the objects are the same (equal, hashable,
# repr), as tests/transmit_hub/test_types.py checks against the constructors.
_new = object.__new__
_set_message_id = Message.__dict__["id"].__set__
_set_sender = Message.__dict__["sender"].__set__
_set_to = Message.__dict__["to"].__set__
_set_type = Message.__dict__["type"].__set__
_set_content_type = Message.__dict__["content_type"].__set__
_set_time = Message.__dict__["time"].__set__
_set_content = Message.__dict__["content"].__set__
_set_user_id = Recipient.__dict__["user_id"].__set__
_set_seq = Recipient.__dict__["seq"].__set__


def new_message(
    id: MessageId,
    sender: UserId,
    to: int,
    type: int,
    content_type: int,
    time: int,
    content: str,
) -> Message:
    """``Message(...)``, for about half the CPU (see above)."""
    m: Message = _new(Message)
    _set_message_id(m, id)
    _set_sender(m, sender)
    _set_to(m, to)
    _set_type(m, type)
    _set_content_type(m, content_type)
    _set_time(m, time)
    _set_content(m, content)
    return m


def new_recipient(user_id: UserId, seq: str) -> Recipient:
    """``Recipient(user_id, seq)``, for about half the CPU (see above)."""
    r: Recipient = _new(Recipient)
    _set_user_id(r, user_id)
    _set_seq(r, seq)
    return r


_set_tmap_message = TransmitMap.__dict__["message"].__set__
_set_tmap_users = TransmitMap.__dict__["users"].__set__


def new_transmit_map(
    message: Message, users: Mapping[GatewayId, tuple[Recipient, ...]]
) -> TransmitMap:
    """``TransmitMap(message, users)``, for about half the CPU (see above)."""
    t: TransmitMap = _new(TransmitMap)
    _set_tmap_message(t, message)
    _set_tmap_users(t, users)
    return t


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message for some users of the gateway that receives it."""

    message: Message
    recipients: tuple[Recipient, ...]


MessageFields = tuple[MessageId, UserId, int, int, int, int, str]
"""A :class:`Message`'s fields in its order: id, sender, to, type, content_type, time,
content."""

DeliveryRow = tuple[MessageFields, Sequence[UserId], Sequence[str]]
"""A :class:`Delivery` as the hub link reads it, with no object built (the gateway's fan-out
takes each apart at once: building a Message, its Recipients and the Delivery cost about
1.3 µs more than reading the fields): the message's fields, the user ids, and their seqs
(one per user: ``""`` each when the hub gave none, or not one per user)."""

_set_delivery_message = Delivery.__dict__["message"].__set__
_set_recipients = Delivery.__dict__["recipients"].__set__


def row_delivery(row: DeliveryRow) -> Delivery:
    """The :class:`Delivery` of ``row`` (the same object its constructors give)."""
    fields, users, seqs = row
    d: Delivery = _new(Delivery)
    _set_delivery_message(d, new_message(*fields))
    _set_recipients(d, tuple(map(new_recipient, users, seqs)))
    return d


def delivery_row(delivery: Delivery) -> DeliveryRow:
    """The row of ``delivery`` (:func:`row_delivery` gives it back)."""
    m, rs = delivery.message, delivery.recipients
    fields = (m.id, m.sender, m.to, m.type, m.content_type, m.time, m.content)
    return fields, tuple(r.user_id for r in rs), tuple(r.seq for r in rs)


class UndeliverableReason(enum.IntEnum):
    """Why the hub did not pass a share of a map on (values match the proto enum)."""

    UNSPECIFIED = 0
    NOT_ATTACHED = 1
    """No gateway with that id is attached."""
    QUEUE_FULL = 2
    """The gateway is attached but its outbound queue is full."""
    INVALID = 3
    """The map was malformed."""


@dataclass(frozen=True, slots=True)
class Undeliverable:
    """A share of a map that did not reach its gateway, told back to the sender."""

    gateway_id: GatewayId
    message_ids: tuple[MessageId, ...]
    user_ids: tuple[UserId, ...]
    reason: UndeliverableReason


@dataclass(frozen=True, slots=True)
class GatewayInfo:
    """An attached gateway, as ListGateways reports it."""

    gateway_id: GatewayId
    peer: str
    attached_at: int
    queue_depth: int


@dataclass(frozen=True, slots=True)
class GatewayStats:
    """Counters for one gateway id since the hub started."""

    gateway_id: GatewayId
    deliveries_sent: int
    transmit_maps_received: int
    queue_full: int
    attached: bool


@dataclass(frozen=True, slots=True)
class HubStats:
    """Counters since the hub started, as GetStats reports them."""

    hub_id: str
    started_at: int
    transmit_maps_received: int
    deliveries_sent: int
    undeliverable: int
    queue_full: int
    gateways: tuple[GatewayStats, ...]
