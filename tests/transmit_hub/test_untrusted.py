"""Neither end trusts the other: bad deliveries from a hub, bad maps from a gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from grpc import aio  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import wait_until
from transmit_hub import HubServer, UndeliverableReason, codec, wire
from transmit_hub.transport import CONNECT_METHOD
from transmit_hub.types import GatewayId, row_delivery

from .conftest import LinkFactory, connect_server, tmap


def _field(tag: int, data: bytes) -> bytes:
    assert len(data) < 128
    return bytes((tag, len(data))) + data


def message_bytes(msg_id: str, content: bytes) -> bytes:
    """``Message`` bytes whose content may be invalid UTF-8 (protobuf would refuse to)."""
    return _field(0x0A, msg_id.encode()) + b"\x10\x01" + b"\x20\x01" + _field(0x3A, content)


USERS = _field(0x0A, b"\x05")  # UserIds{user_ids: [5]}


class HostileHub:
    """A gRPC server speaking the Connect protocol that sends whatever frames it is given."""

    def __init__(self) -> None:
        self.frames: asyncio.Queue[bytes] = asyncio.Queue()
        self.server: Any = None
        self.address = ""
        self.streams = 0

    async def connect(self, request_iterator: Any, context: Any) -> None:
        self.streams += 1
        await context.read()  # the Hello
        await context.write(codec.welcome_bytes("hostile"))
        while True:
            await context.write(await self.frames.get())


@pytest.fixture
async def hostile_hub() -> AsyncIterator[HostileHub]:
    """A hostile hub on a free port."""
    hub = HostileHub()
    async with connect_server(hub.connect) as (hub.server, hub.address):
        yield hub


async def test_link_drops_an_undecodable_delivery_and_keeps_the_rest_and_the_stream(
    hostile_hub: HostileHub, make_link: LinkFactory
) -> None:
    """A delivery with invalid UTF-8 content is dropped and counted; the good deliveries of
    the same frame arrive, and the stream stays up for the next frame (it once went down)."""
    link = await make_link(hostile_hub.address, "gw-1")
    entries = [
        wire.delivery_entry(message_bytes("good-1", b"hello"), USERS),
        wire.delivery_entry(message_bytes("bad", b"\xff\xfe not utf-8"), USERS),
        wire.delivery_entry(message_bytes("good-2", "héllo".encode()), USERS),
        b"\x0a\x03\x0a\x05\x00",  # a delivery whose message is truncated
    ]
    await hostile_hub.frames.put(wire.delivery_batch_response(entries))
    await link.wait_deliveries(2)
    assert link.message_ids() == ["good-1", "good-2"]
    assert link.deliveries[1].message.content == "héllo"
    await wait_until(lambda: link.link.dropped == 2, what="two deliveries to be counted dropped")
    await hostile_hub.frames.put(
        wire.delivery_batch_response([wire.delivery_entry(message_bytes("next", b"x"), USERS)])
    )
    await link.wait_deliveries(3)
    assert link.downs == []
    assert link.link.connected
    assert hostile_hub.streams == 1


async def test_link_survives_a_frame_that_is_not_protobuf(
    hostile_hub: HostileHub, make_link: LinkFactory
) -> None:
    """A response frame that is not protobuf at all is dropped; the stream stays up."""
    link = await make_link(hostile_hub.address, "gw-1")
    await hostile_hub.frames.put(b"\x12\x7f\x0a")
    await hostile_hub.frames.put(
        wire.delivery_batch_response([wire.delivery_entry(message_bytes("after", b"x"), USERS)])
    )
    await link.wait_deliveries(1)
    assert link.link.dropped == 1
    assert link.downs == []


async def test_hub_answers_invalid_for_unreadable_maps_and_routes_the_good_ones(
    hub: HubServer, make_link: LinkFactory
) -> None:
    """A batch holding a map whose gateway id is not UTF-8, a truncated map, and a map to an
    id outside the rule: each is answered INVALID, the good map in the same frame is
    routed, and the sender's stream stays up (a bad key once ended it)."""
    receiver = await make_link(hub.address, "gw-b")
    good = wire.encode_transmit_map(tmap("good", {"gw-b": (5,)}))
    bad_key = _field(0x0A, _field(0x0A, b"\xff\xfe") + _field(0x12, USERS)) + _field(
        0x12, message_bytes("bad-key", b"x")
    )
    truncated = b"\x0a\x7f\x0a"
    bad_id = wire.encode_transmit_map(tmap("bad-id", {"gw b\n": (5,)}))
    async with aio.insecure_channel(hub.address) as channel:
        call = channel.stream_stream(CONNECT_METHOD)()
        await call.write(codec.hello_bytes(GatewayId("gw-a")))
        assert codec.decode_response(await call.read()).welcome == "test-hub"
        await call.write(wire.encode_batch_request([bad_key, truncated, bad_id, good]))
        notices: list[Any] = []
        while len(notices) < 3:
            frame = codec.decode_response(await asyncio.wait_for(call.read(), 10))
            notices += frame.notices
        assert {n.reason for n in notices} == {UndeliverableReason.INVALID}
        assert [n.message_ids for n in notices if n.gateway_id] == [("bad-id",)]
        (delivery,) = await receiver.wait_deliveries(1)
        assert delivery.message.id == "good"
        await call.write(wire.encode_batch_request([good]))
        await receiver.wait_deliveries(2)
        assert not call.done()
        call.cancel()


async def test_hub_answers_invalid_for_a_message_that_does_not_decode(
    hub: HubServer, make_link: LinkFactory
) -> None:
    """A map whose message content is not UTF-8 is not forwarded: its sender hears INVALID,
    the receiver gets nothing of it, and both streams stay up."""
    sender = await make_link(hub.address, "gw-a")
    receiver = await make_link(hub.address, "gw-b")
    bad = _field(0x0A, _field(0x0A, b"gw-b") + _field(0x12, USERS)) + _field(
        0x12, message_bytes("bad-utf8", b"\xff\xfe")
    )
    async with aio.insecure_channel(hub.address) as channel:
        call = channel.stream_stream(CONNECT_METHOD)()
        await call.write(codec.hello_bytes(GatewayId("gw-raw")))
        assert codec.decode_response(await call.read()).welcome == "test-hub"
        good = wire.encode_transmit_map(tmap("after", {"gw-b": (5,)}))
        await call.write(wire.encode_batch_request([bad, good]))
        frame = codec.decode_response(await asyncio.wait_for(call.read(), 10))
        assert [n.reason for n in frame.notices] == [UndeliverableReason.INVALID]
        call.cancel()
    await receiver.wait_deliveries(1)
    assert receiver.message_ids() == ["after"]
    assert receiver.link.dropped == 0
    assert sender.downs == []
    assert receiver.downs == []


async def test_a_gateway_named_twice_in_one_map_gets_one_delivery(
    hub: HubServer, make_link: LinkFactory
) -> None:
    """A map naming gw-b in many entries is one delivery to gw-b (the last entry, as protobuf
    reads a map), not one per entry: a sender cannot amplify a map inside the hub."""
    receiver = await make_link(hub.address, "gw-b")
    other = await make_link(hub.address, "gw-c")
    message = _field(0x12, message_bytes("dup", b"x"))
    entry = _field(0x0A, _field(0x0A, b"gw-b") + _field(0x12, USERS))
    last = _field(0x0A, _field(0x0A, b"gw-b") + _field(0x12, _field(0x0A, b"\x06")))
    to_c = _field(0x0A, _field(0x0A, b"gw-c") + _field(0x12, USERS))
    async with aio.insecure_channel(hub.address) as channel:
        call = channel.stream_stream(CONNECT_METHOD)()
        await call.write(codec.hello_bytes(GatewayId("gw-a")))
        assert codec.decode_response(await call.read()).welcome == "test-hub"
        await call.write(wire.encode_batch_request([entry * 50 + to_c + last + message]))
        sentinel = _field(0x12, message_bytes("sentinel", b"x"))
        await call.write(wire.encode_batch_request([entry + sentinel]))
        await receiver.wait_deliveries(2)  # one stream: in order, the sentinel last
        await other.wait_deliveries(1)
        call.cancel()
    assert receiver.message_ids() == ["dup", "sentinel"]
    assert [r.user_id for r in receiver.deliveries[0].recipients] == [6]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.text(max_size=30), min_size=1, max_size=6),
    st.lists(st.integers(0, 5), max_size=3),
)
def test_decode_response_keeps_every_good_delivery_of_a_frame(
    contents: list[str], bad_at: list[int]
) -> None:
    """Whatever bad deliveries a frame holds, decode_response gives exactly its good ones, in
    order, and counts the bad ones (pure: no I/O)."""
    entries = [
        wire.delivery_entry(message_bytes(f"m{i}", c.encode()), USERS)
        for i, c in enumerate(contents)
    ]
    expected = [f"m{i}" for i in range(len(contents))]
    for k, at in enumerate(sorted(set(bad_at), reverse=True)):
        at = min(at, len(entries))
        entries.insert(at, wire.delivery_entry(message_bytes(f"bad{k}", b"\xc3\x28"), USERS))
    frame = codec.decode_response(wire.delivery_batch_response(entries))
    assert [d.message.id for d in frame.deliveries] == expected
    assert [d.message.content for d in frame.deliveries] == contents
    assert frame.dropped == len(set(bad_at))
    as_rows = codec.decode_response(wire.delivery_batch_response(entries), rows=True)
    assert tuple(map(row_delivery, as_rows.rows)) == frame.deliveries
    assert as_rows.deliveries == ()
    assert as_rows.dropped == frame.dropped
