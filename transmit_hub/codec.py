"""The one conversion boundary between protobuf messages and transmit_hub's types.

Nothing else in the project imports the generated ``*_pb2`` modules for data;
the server and the link import the generated ``*_pb2_grpc`` stubs only to
register and call the service.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from operator import attrgetter
from typing import NamedTuple

from . import wire
from .errors import ProtocolError
from .types import (
    Delivery,
    DeliveryRow,
    GatewayId,
    GatewayInfo,
    HubStats,
    Message,
    MessageId,
    Recipient,
    TransmitMap,
    Undeliverable,
    UndeliverableReason,
    UserId,
    delivery_row,
    row_delivery,
)
from .v1 import transmit_pb2 as pb

__all__ = [
    "ConnectRequest",
    "ConnectResponse",
    "HubFrame",
    "batch_request",
    "decode_response",
    "delivery_batch_response",
    "delivery_from_pb",
    "delivery_to_pb",
    "gateways_to_pb",
    "hello_request",
    "message_from_pb",
    "message_to_pb",
    "stats_to_pb",
    "transmit_map_from_pb",
    "transmit_map_to_pb",
    "undeliverable_from_pb",
    "undeliverable_to_pb",
    "welcome_response",
]

ConnectRequest = pb.ConnectRequest
ConnectResponse = pb.ConnectResponse
ListGatewaysRequest = pb.ListGatewaysRequest
ListGatewaysResponse = pb.ListGatewaysResponse
GetStatsRequest = pb.GetStatsRequest
GetStatsResponse = pb.GetStatsResponse


def message_to_pb(message: Message) -> pb.Message:
    out = pb.Message(
        id=message.id,
        to=message.to,
        type=message.type,
        content_type=message.content_type,
        time=message.time,
        content=message.content,
    )
    setattr(out, "from", message.sender)  # ``from`` is a Python keyword
    return out


def message_from_pb(message: pb.Message) -> Message:
    return Message(
        id=MessageId(message.id),
        sender=UserId(getattr(message, "from")),  # ``from`` is a keyword
        to=message.to,
        type=message.type,
        content_type=message.content_type,
        time=message.time,
        content=message.content,
    )


def _user_ids_to_pb(recipients: Sequence[Recipient]) -> pb.UserIds:
    out = pb.UserIds(user_ids=[r.user_id for r in recipients])
    if any(r.seq for r in recipients):
        out.seqs.extend(r.seq for r in recipients)
    return out


def _recipients_from_pb(users: pb.UserIds) -> tuple[Recipient, ...]:
    seqs = list(users.seqs)
    if len(seqs) != len(users.user_ids):
        seqs = [""] * len(users.user_ids)
    return tuple(Recipient(UserId(u), s) for u, s in zip(users.user_ids, seqs, strict=True))


def transmit_map_to_pb(tmap: TransmitMap) -> pb.TransmitMap:
    out = pb.TransmitMap(message=message_to_pb(tmap.message))
    for gateway_id, recipients in tmap.users.items():
        out.users[gateway_id].CopyFrom(_user_ids_to_pb(recipients))
    return out


def transmit_map_from_pb(tmap: pb.TransmitMap) -> TransmitMap:
    return TransmitMap(
        message=message_from_pb(tmap.message),
        users={GatewayId(g): _recipients_from_pb(u) for g, u in tmap.users.items()},
    )


def delivery_to_pb(delivery: Delivery) -> pb.Delivery:
    return pb.Delivery(
        message=message_to_pb(delivery.message), users=_user_ids_to_pb(delivery.recipients)
    )


def delivery_from_pb(delivery: pb.Delivery) -> Delivery:
    return Delivery(
        message=message_from_pb(delivery.message),
        recipients=_recipients_from_pb(delivery.users),
    )


def undeliverable_to_pb(notice: Undeliverable) -> pb.Undeliverable:
    return pb.Undeliverable(
        gateway_id=notice.gateway_id,
        message_ids=list(notice.message_ids),
        user_ids=list(notice.user_ids),
        reason=pb.UndeliverableReason.Name(int(notice.reason)),
    )


def undeliverable_from_pb(notice: pb.Undeliverable) -> Undeliverable:
    try:
        reason = UndeliverableReason(notice.reason)
    except ValueError:
        reason = UndeliverableReason.UNSPECIFIED
    return Undeliverable(
        gateway_id=GatewayId(notice.gateway_id),
        message_ids=tuple(MessageId(m) for m in notice.message_ids),
        user_ids=tuple(UserId(u) for u in notice.user_ids),
        reason=reason,
    )


def hello_request(gateway_id: GatewayId) -> pb.ConnectRequest:
    return pb.ConnectRequest(hello=pb.Hello(gateway_id=gateway_id))


def batch_request(maps: Iterable[TransmitMap]) -> pb.ConnectRequest:
    return pb.ConnectRequest(batch=pb.TransmitBatch(maps=[transmit_map_to_pb(m) for m in maps]))


def welcome_response(hub_id: str) -> pb.ConnectResponse:
    return pb.ConnectResponse(welcome=pb.Welcome(hub_id=hub_id))


def delivery_batch_response(
    deliveries: Iterable[pb.Delivery], undeliverable: Iterable[Undeliverable]
) -> pb.ConnectResponse:
    """A response frame; deliveries come pre-encoded (the hub encodes each once)."""
    return pb.ConnectResponse(
        batch=pb.DeliveryBatch(
            deliveries=list(deliveries),
            undeliverable=[undeliverable_to_pb(n) for n in undeliverable],
        )
    )


def gateways_to_pb(gateways: Iterable[GatewayInfo]) -> pb.ListGatewaysResponse:
    return pb.ListGatewaysResponse(
        gateways=[
            pb.GatewayInfo(
                gateway_id=g.gateway_id,
                peer=g.peer,
                attached_at=g.attached_at,
                queue_depth=g.queue_depth,
            )
            for g in gateways
        ]
    )


def stats_to_pb(stats: HubStats) -> pb.GetStatsResponse:
    return pb.GetStatsResponse(
        hub_id=stats.hub_id,
        started_at=stats.started_at,
        transmit_maps_received=stats.transmit_maps_received,
        deliveries_sent=stats.deliveries_sent,
        undeliverable=stats.undeliverable,
        queue_full=stats.queue_full,
        gateways=[
            pb.GatewayStats(
                gateway_id=g.gateway_id,
                deliveries_sent=g.deliveries_sent,
                transmit_maps_received=g.transmit_maps_received,
                queue_full=g.queue_full,
                attached=g.attached,
            )
            for g in stats.gateways
        ],
    )


# ---------------------------------------------------------------------------------------
# Byte-level helpers for the Connect stream (its hot path is in ``transmit_hub.wire``).


def hello_from_bytes(data: bytes) -> GatewayId | None:
    """The gateway id of a ``ConnectRequest`` Hello frame, or ``None`` when it is not one."""
    try:
        req = pb.ConnectRequest.FromString(data)
    except Exception:  # a DecodeError: not a frame at all
        return None
    if req.WhichOneof("frame") != "hello":
        return None
    return GatewayId(req.hello.gateway_id)


def probe_bytes(nonce: int) -> bytes:
    """A serialized ``ConnectResponse{probe}``: the hub asks the holder of an id to answer."""
    return pb.ConnectResponse(probe=pb.Probe(nonce=nonce)).SerializeToString()


def probe_reply_bytes(nonce: int) -> bytes:
    """A serialized ``ConnectRequest{probe_reply}``: the link's answer to a probe."""
    return pb.ConnectRequest(probe_reply=pb.ProbeReply(nonce=nonce)).SerializeToString()


def probe_reply_nonce(data: bytes) -> int | None:
    """The nonce of a ``ConnectRequest{probe_reply}`` frame, or ``None`` for any other."""
    try:
        req = pb.ConnectRequest.FromString(data)
    except Exception:  # a DecodeError: not a frame at all
        return None
    if req.WhichOneof("frame") != "probe_reply":
        return None
    return int(req.probe_reply.nonce)


_parse_message = pb.Message.FromString
_parse_request = pb.ConnectRequest.FromString


def request_decodes(frame: bytes) -> bool:
    """Whether a whole ``ConnectRequest`` frame decodes (field types, UTF-8 of strings)."""
    try:
        _parse_request(frame)
    except Exception:  # a DecodeError
        return False
    return True


def message_decodes(data: bytes) -> bool:
    """Whether ``data`` is a ``Message`` a gateway can decode (the hub forwards it as is).

    One C-level parse (about 0.7 us for a chat message): field types, UTF-8 of the strings.
    """
    try:
        _parse_message(data)
    except Exception:  # a DecodeError
        return False
    return True


def welcome_bytes(hub_id: str) -> bytes:
    """A serialized ``ConnectResponse{welcome}``."""
    return welcome_response(hub_id).SerializeToString()


def hello_bytes(gateway_id: GatewayId) -> bytes:
    """A serialized ``ConnectRequest{hello}``."""
    return hello_request(gateway_id).SerializeToString()


def undeliverable_bytes(notice: Undeliverable) -> bytes:
    """The ``Undeliverable`` message bytes of ``notice``."""
    return undeliverable_to_pb(notice).SerializeToString()


def transmit_map_from_bytes(data: bytes) -> TransmitMap:
    """Decode ``TransmitMap`` message bytes (the hub's slow path: notices, odd encodings)."""
    return transmit_map_from_pb(pb.TransmitMap.FromString(data))


class HubFrame(NamedTuple):
    """What one response frame from the hub carries, decoded for the link (a named tuple:
    a frozen dataclass's __init__ cost 1.3 µs per frame, as much as decoding a delivery).

    ``dropped`` counts the deliveries and notices of the frame that could not be decoded
    (invalid UTF-8, bad field types): they are left out, the others are kept.
    """

    welcome: str | None = None
    probe: int | None = None
    deliveries: tuple[Delivery, ...] = ()
    notices: tuple[Undeliverable, ...] = ()
    dropped: int = 0
    rows: tuple[DeliveryRow, ...] = ()
    """The deliveries as rows, when asked for (:func:`decode_response`)."""


_make_frame = HubFrame._make


def decode_response(data: bytes, *, rows: bool = False) -> HubFrame:
    """Decode a ``ConnectResponse`` frame from a hub, which the link does not trust;
    ``rows``: its deliveries as :attr:`HubFrame.rows` instead (no object built).

    A frame that parses is decoded at full speed; one that does not is taken apart field
    by field, so that one bad delivery costs only itself (:func:`_decode_leniently`).
    """
    try:
        response = pb.ConnectResponse.FromString(data)
    except Exception:  # a DecodeError: some part of the frame is bad
        frame = _decode_leniently(data)
        if rows and frame.deliveries:
            return frame._replace(deliveries=(), rows=tuple(map(delivery_row, frame.deliveries)))
        return frame
    kind = response.WhichOneof("frame")
    if kind == "batch":
        if rows:
            read, notices = _delivery_rows(response.batch)
            return _make_frame((None, None, (), notices, 0, read))
        deliveries, notices = _delivery_batch(response.batch)
        return _make_frame((None, None, deliveries, notices, 0, ()))
    if kind == "welcome":
        return HubFrame(welcome=response.welcome.hub_id)
    if kind == "probe":
        return HubFrame(probe=int(response.probe.nonce))
    return HubFrame()


_BATCH_FIELD = 2
_DELIVERY_FIELD = 1
_NOTICE_FIELD = 2


def _decode_leniently(data: bytes) -> HubFrame:
    """Decode each delivery and notice of a batch frame alone; count those that fail."""
    try:
        batches = [v for f, v in wire.length_delimited_fields(data) if f == _BATCH_FIELD]
    except ProtocolError:
        return HubFrame(dropped=1)  # not even a frame: drop it whole
    if not batches:
        return HubFrame(dropped=1)
    deliveries: list[Delivery] = []
    notices: list[Undeliverable] = []
    dropped = 0
    for batch in batches:
        try:
            items = wire.length_delimited_fields(batch)
        except ProtocolError:
            dropped += 1
            continue
        for number, value in items:
            try:
                if number == _DELIVERY_FIELD:
                    deliveries.append(delivery_from_pb(pb.Delivery.FromString(value)))
                elif number == _NOTICE_FIELD:
                    notices.append(undeliverable_from_pb(pb.Undeliverable.FromString(value)))
            except Exception:  # a DecodeError: this item alone is bad
                dropped += 1
    return HubFrame(deliveries=tuple(deliveries), notices=tuple(notices), dropped=dropped)


def parse_response(data: bytes) -> pb.ConnectResponse:
    """Parse a ``ConnectResponse`` frame (the link's response deserializer)."""
    return pb.ConnectResponse.FromString(data)


# The link's receive path decodes every delivery: its fields are read with attrgetters
# (one call per message), repeated fields by index; a consumer that takes the deliveries
# apart at once (the gateway's fan-out) takes them as rows, with no object built
# (types.DeliveryRow). tests/transmit_hub/test_wire.py checks both against the plain
# constructors (delivery_from_pb).
_message_fields = attrgetter("id", "from", "to", "type", "content_type", "time", "content")
_delivery_fields = attrgetter("message", "users")
_user_fields = attrgetter("user_ids", "seqs")


def decode_delivery_batch(
    response: pb.ConnectResponse,
) -> tuple[tuple[Delivery, ...], tuple[Undeliverable, ...]]:
    """The deliveries and notices of a batch response (empty for any other frame).

    Gives what :func:`delivery_from_pb` and :func:`undeliverable_from_pb` give, for about
    half the CPU per delivery.
    """
    if response.WhichOneof("frame") != "batch":
        return (), ()
    return _delivery_batch(response.batch)


def _delivery_batch(
    batch: pb.DeliveryBatch,
) -> tuple[tuple[Delivery, ...], tuple[Undeliverable, ...]]:
    rows, notices = _delivery_rows(batch)
    return tuple(map(row_delivery, rows)), notices


def _delivery_rows(
    batch: pb.DeliveryBatch,
) -> tuple[tuple[DeliveryRow, ...], tuple[Undeliverable, ...]]:
    message_fields = _message_fields
    delivery_fields = _delivery_fields
    user_fields = _user_fields
    rows: list[DeliveryRow] = []
    append = rows.append
    for d in batch.deliveries:
        m, users = delivery_fields(d)
        ids, seqs = user_fields(users)
        if len(seqs) != len(ids):  # seqs are per user when given: else unknown ("")
            seqs = ("",) * len(ids)
        append((message_fields(m), ids, seqs))
    if batch.undeliverable:
        return tuple(rows), tuple(map(undeliverable_from_pb, batch.undeliverable))
    return tuple(rows), ()
