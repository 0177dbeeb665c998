"""The wire-level hot path agrees with the generated protobuf classes and routing.split."""

from __future__ import annotations

import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transmit_hub import codec, routing, wire
from transmit_hub.errors import ProtocolError
from transmit_hub.registry import EndReason, Registry
from transmit_hub.service import HubService
from transmit_hub.types import (
    Delivery,
    GatewayId,
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
from transmit_hub.v1 import transmit_pb2 as pb

U64 = st.integers(0, 2**64 - 1)
I32 = st.integers(-(2**31), 2**31 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
GATEWAYS = st.sampled_from(["", "a", "b", "c", "gw-ü", "x" * 200])

messages = st.builds(
    Message,
    id=TEXT.map(MessageId),
    sender=U64.map(UserId),
    to=U64,
    type=I32,
    content_type=I32,
    time=I64,
    content=st.one_of(TEXT, st.text(max_size=300, alphabet="abc")),
)


@st.composite
def recipient_lists(draw: st.DrawFn) -> tuple[Recipient, ...]:
    ids = draw(st.lists(U64, max_size=5))
    if draw(st.booleans()):
        return tuple(Recipient(UserId(u), draw(TEXT)) for u in ids)
    return tuple(Recipient(UserId(u)) for u in ids)


transmit_maps = st.builds(
    TransmitMap,
    message=messages,
    users=st.dictionaries(GATEWAYS.map(GatewayId), recipient_lists(), max_size=4),
)


@given(transmit_maps)
def test_encode_transmit_map_matches_protobuf(tmap: TransmitMap) -> None:
    """wire.encode_transmit_map parses (with the generated class) to what codec builds."""
    parsed = pb.TransmitMap.FromString(wire.encode_transmit_map(tmap))
    assert parsed == codec.transmit_map_to_pb(tmap)


@given(st.lists(transmit_maps, max_size=5))
def test_batch_request_round_trips(maps: list[TransmitMap]) -> None:
    """A batch frame parses as ConnectRequest{batch}; the hub's walk finds each map's parts."""
    frame = wire.encode_batch_request([wire.encode_transmit_map(m) for m in maps])
    request = pb.ConnectRequest.FromString(frame)
    assert request.WhichOneof("frame") == "batch"
    assert [codec.transmit_map_from_pb(m) for m in request.batch.maps] == [
        codec.transmit_map_from_pb(codec.transmit_map_to_pb(m)) for m in maps
    ]
    walked = wire.split_batch_request(frame)
    assert walked is not None
    assert len(walked) == len(maps)
    for wm, m in zip(walked, maps, strict=True):
        assert wm.message is not None
        assert pb.Message.FromString(wm.message) == codec.message_to_pb(m.message)
        assert [g for g, _ in wm.targets] == list(m.users)


def test_split_batch_request_refuses_garbage_and_ignores_hello() -> None:
    """Truncated or malformed frames raise ProtocolError; a Hello frame has no batch."""
    assert wire.split_batch_request(codec.hello_bytes(GatewayId("g"))) is None
    good = wire.encode_batch_request([wire.encode_transmit_map(_map("m", {"a": (1,)}))])
    for bad in (good[:-1], good[:3], b"\x12\xff", b"\x12\x05\x0a\x09abc", b"\x0f"):
        with pytest.raises(ProtocolError):
            wire.split_batch_request(bad)


_BOUNDARIES = [2 ** (7 * k) + d for k in range(10) for d in (-1, 0, 1)]


@given(st.one_of(st.sampled_from(_BOUNDARIES), st.integers(min_value=0, max_value=2**64 - 1)))
def test_varint_is_protobuf_s_at_every_length(n: int) -> None:
    """``wire._varint`` gives the bytes protobuf gives a uint64 field, at each length's
    boundary (1 to 10 bytes) and anywhere between."""
    n = min(max(n, 1), 2**64 - 1)  # protobuf leaves a zero out
    message = pb.Message()
    setattr(message, "from", n)  # a Python keyword
    assert b"\x10" + wire._varint(n) == message.SerializeToString()


def test_varint_refuses_integers_beyond_64_bits() -> None:
    """A map whose user id does not fit uint64 cannot be encoded (ValueError, not garbage)."""
    with pytest.raises(ValueError, match="64 bits"):
        wire.encode_transmit_map(_map("m", {"a": (2**64,)}))


def test_remembered_varints_encode_as_protobuf_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """User ids beyond one byte encode the same the first time, from the remembered
    varints, and after those were forgotten (the bound reached); a failed one is not kept."""
    monkeypatch.setattr(wire, "_INTS_MAX", 3)
    monkeypatch.setattr(wire, "_ints", {})
    for sender, to, user in [(300, 2**63, 2**64 - 1)] * 2 + [(128, 16384, 2**21), (300, 5, 129)]:
        tmap = TransmitMap(
            Message(MessageId("m"), UserId(sender), to, 1, 0, 5, "hi"),
            {GatewayId("a"): (Recipient(UserId(user), "7"),)},
        )
        parsed = pb.TransmitMap.FromString(wire.encode_transmit_map(tmap))
        assert parsed == codec.transmit_map_to_pb(tmap)
        assert len(wire._ints) <= 3
    with pytest.raises(ValueError, match="64 bits"):
        wire.encode_transmit_map(_map("m", {"a": (2**64,)}))
    assert 2**64 not in wire._ints


def _map(msg_id: str, targets: dict[str, tuple[int, ...]]) -> TransmitMap:
    message = Message(MessageId(msg_id), UserId(1), 2, 1, 0, 5, "hi")
    return TransmitMap(
        message,
        {GatewayId(g): tuple(Recipient(UserId(u)) for u in us) for g, us in targets.items()},
    )


def _route_with_hub(
    maps: list[TransmitMap], attached: set[str], queue_size: int = 1000
) -> tuple[dict[str, list[Delivery]], list[Undeliverable], Registry]:
    """Run the hub's routing (wire fast path + slow path) on ``maps`` from gateway "s"."""
    registry = Registry("hub", queue_size)
    service = HubService(registry)
    sender = registry.attach(GatewayId("s"), "peer-s")
    for g in attached:
        registry.attach(GatewayId(g), f"peer-{g}")
    frame = wire.encode_batch_request([wire.encode_transmit_map(m) for m in maps])
    walked = wire.split_batch_request(frame)
    assert walked is not None
    service.route(sender, walked)
    out: dict[str, list[Delivery]] = {}
    notices: list[Undeliverable] = []
    for g, box in registry.outboxes.items():
        entries, raw_notices = box.take(10_000, 1 << 30)
        response = codec.parse_response(wire.delivery_batch_response(entries, raw_notices))
        deliveries, decoded = codec.decode_delivery_batch(response)
        if deliveries:
            out[g] = list(deliveries)
        if g == "s":
            notices = list(decoded)
        else:
            assert decoded == ()
    return out, notices, registry


@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(transmit_maps, max_size=4), st.sets(st.sampled_from(["a", "b", "gw-ü"])))
def test_hub_routing_matches_routing_split(maps: list[TransmitMap], attached: set[str]) -> None:
    """The hub's wire-level routing gives exactly the deliveries and notices routing.split does."""
    got, notices, _ = _route_with_hub(maps, attached)
    expected: dict[str, list[Delivery]] = {}
    expected_notices: list[Undeliverable] = []
    targets = attached | {"s"}
    for m in maps:
        canonical = codec.transmit_map_from_pb(codec.transmit_map_to_pb(m))
        route = routing.split(canonical, lambda g: g in targets)
        for g, d in route.deliveries:
            expected.setdefault(g, []).append(d)
        expected_notices.extend(route.undeliverable)
    assert got == expected
    # Within one map, targets come in no particular order: compare notices as a multiset.
    assert sorted(notices, key=repr) == sorted(expected_notices, key=repr)


def test_full_outbox_gives_queue_full_notice() -> None:
    """When a target's outbox is full, the sender gets one QUEUE_FULL notice per refused share
    and the counters say so."""
    maps = [_map(f"m{i}", {"a": (i,)}) for i in range(5)]
    got, notices, registry = _route_with_hub(maps, {"a"}, queue_size=3)
    assert [d.message.id for d in got["a"]] == ["m0", "m1", "m2"]
    assert [(n.message_ids, n.user_ids, n.reason) for n in notices] == [
        (("m3",), (3,), UndeliverableReason.QUEUE_FULL),
        (("m4",), (4,), UndeliverableReason.QUEUE_FULL),
    ]
    assert registry.queue_full == 2
    assert registry.undeliverable == 2
    assert registry.stats().gateways[0].queue_full == 2  # "a" sorts first


def test_a_gateway_being_detached_gives_not_attached_not_queue_full() -> None:
    """A stream the hub has ended (silent, replaced, shutting down) keeps its closed outbox
    registered until its handler returns. Maps for it meanwhile, by the fast path and
    the slow one (a gateway named twice), come back NOT_ATTACHED, so a pool tries another
    hub; they are not counted as a full queue. (They came back QUEUE_FULL before.)"""
    registry = Registry("hub", 1000)
    service = HubService(registry)
    sender = registry.attach(GatewayId("s"), "peer-s")
    registry.attach(GatewayId("a"), "peer-a").end(EndReason.SILENT)
    plain = wire.encode_transmit_map(_map("m1", {"a": (1,)}))
    # One map's encoding twice over parses as that map with "a" named twice: the slow path.
    twice = wire.encode_transmit_map(_map("m2", {"a": (2,)})) * 2
    frame = wire.encode_batch_request([plain, twice])
    walked = wire.split_batch_request(frame)
    assert walked is not None
    service.route(sender, walked)
    entries, raw_notices = registry.outboxes["s"].take(100, 1 << 20)
    response = codec.parse_response(wire.delivery_batch_response(entries, raw_notices))
    _, notices = codec.decode_delivery_batch(response)
    assert [(n.gateway_id, n.message_ids, n.reason) for n in notices] == [
        ("a", ("m1",), UndeliverableReason.NOT_ATTACHED),
        ("a", ("m2",), UndeliverableReason.NOT_ATTACHED),
    ]
    assert registry.queue_full == 0
    assert registry.counters(GatewayId("a")).queue_full == 0


def test_notices_for_a_sender_being_detached_are_not_logged_as_a_full_outbox(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sender whose own stream the hub has ended still has maps in flight (its reader
    drains the frame it holds). Their notices go nowhere; that is not a full outbox, so
    neither ``notices_dropped`` nor the "outbox full" warning may say so (both did)."""
    registry = Registry("hub", 1000)
    service = HubService(registry)
    sender = registry.attach(GatewayId("s"), "peer-s")
    sender.end(EndReason.SILENT)
    frame = wire.encode_batch_request([wire.encode_transmit_map(_map("m1", {"gone": (1,)}))])
    walked = wire.split_batch_request(frame)
    assert walked is not None
    with caplog.at_level(logging.DEBUG, logger="transmit_hub.forwarding"):
        service.route(sender, walked)
    assert registry.undeliverable == 1
    assert registry.notices_dropped == 0
    assert [r.getMessage() for r in caplog.records] == []


deliveries = st.builds(Delivery, message=messages, recipients=recipient_lists())
notices = st.builds(
    Undeliverable,
    gateway_id=GATEWAYS.map(GatewayId),
    message_ids=st.lists(TEXT.map(MessageId), max_size=3).map(tuple),
    user_ids=st.lists(U64.map(UserId), max_size=3).map(tuple),
    reason=st.sampled_from(UndeliverableReason),
)


@given(st.lists(deliveries, max_size=4), st.lists(notices, max_size=2))
def test_decode_delivery_batch_matches_the_plain_conversion(
    sent: list[Delivery], sent_notices: list[Undeliverable]
) -> None:
    """The link's fast decoder (slots filled directly) gives exactly what the dataclasses'
    own constructors give through delivery_from_pb: equal, same types, same hash and repr."""
    frame = codec.delivery_batch_response(
        [codec.delivery_to_pb(d) for d in sent], sent_notices
    ).SerializeToString()
    got, got_notices = codec.decode_delivery_batch(codec.parse_response(frame))
    parsed = pb.ConnectResponse.FromString(frame).batch
    expected = tuple(codec.delivery_from_pb(d) for d in parsed.deliveries)
    assert got == expected
    assert got == tuple(codec.delivery_from_pb(codec.delivery_to_pb(d)) for d in sent)
    assert hash(got) == hash(expected)
    assert repr(got) == repr(expected)
    for d in got:
        assert type(d) is Delivery
        assert type(d.message) is Message
        assert all(type(r) is Recipient for r in d.recipients)
    assert got_notices == tuple(sent_notices)
    # decode_response gives the same frame (it decodes the batch without asking its kind twice).
    hub_frame = codec.decode_response(frame)
    built = codec.HubFrame(deliveries=expected, notices=tuple(sent_notices))
    assert type(hub_frame) is codec.HubFrame
    assert hub_frame == built
    assert repr(hub_frame) == repr(built)
    assert hash(hub_frame) == hash(built)
    # As rows (the fan-out's): the same deliveries once built, and the same fields.
    as_rows = codec.decode_response(frame, rows=True)
    assert as_rows.deliveries == ()
    assert as_rows.notices == tuple(sent_notices)
    assert tuple(map(row_delivery, as_rows.rows)) == expected
    assert [(fields, list(users), list(seqs)) for fields, users, seqs in as_rows.rows] == [
        (fields, list(users), list(seqs)) for fields, users, seqs in map(delivery_row, expected)
    ]


def test_decode_delivery_batch_ignores_seqs_that_do_not_match_the_user_ids() -> None:
    """Seqs not parallel to the user ids are dropped (as delivery_from_pb does); other frames
    decode to nothing."""
    message = codec.message_to_pb(Message(MessageId("m"), UserId(1), 2, 1, 0, 5, "hi"))
    delivery = pb.Delivery(message=message, users=pb.UserIds(user_ids=[7, 8], seqs=["1-0"]))
    response = pb.ConnectResponse(batch=pb.DeliveryBatch(deliveries=[delivery]))
    (got,), () = codec.decode_delivery_batch(response)
    assert got.recipients == (Recipient(UserId(7)), Recipient(UserId(8)))
    assert got == codec.delivery_from_pb(delivery)
    for ids, seqs in (([7], ["1", "2"]), ([7], []), ([], ["1"]), ([7, 8], ["1", "2"])):
        delivery = pb.Delivery(message=message, users=pb.UserIds(user_ids=ids, seqs=seqs))
        response = pb.ConnectResponse(batch=pb.DeliveryBatch(deliveries=[delivery]))
        (got,), () = codec.decode_delivery_batch(response)
        assert got == codec.delivery_from_pb(delivery)
    assert codec.decode_delivery_batch(codec.welcome_response("hub")) == ((), ())


def test_rows_give_a_seq_per_user_even_when_the_hub_does_not() -> None:
    """A row's seqs are one per user: the hub's when it gave one per user, else "" each
    (what the Recipients of decode_delivery_batch carry)."""
    message = codec.message_to_pb(Message(MessageId("m"), UserId(1), 2, 1, 0, 5, "hi"))
    for ids, seqs, want in (
        ([7, 8], ["1-0"], ["", ""]),
        ([7], ["1", "2"], [""]),
        ([7], [], [""]),
        ([], ["1"], []),
        ([7, 8], ["1", "2"], ["1", "2"]),
    ):
        delivery = pb.Delivery(message=message, users=pb.UserIds(user_ids=ids, seqs=seqs))
        frame = pb.ConnectResponse(batch=pb.DeliveryBatch(deliveries=[delivery]))
        [(fields, users, got)] = codec.decode_response(frame.SerializeToString(), rows=True).rows
        assert (list(users), list(got)) == (ids, want)
        assert fields == (MessageId("m"), UserId(1), 2, 1, 0, 5, "hi")
        assert row_delivery((fields, users, got)) == codec.delivery_from_pb(delivery)
