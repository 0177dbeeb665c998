"""Private messages through real gateways, a real hub and a real Redis."""

from __future__ import annotations

import asyncio

from tests.end_to_end.conftest import ClientFactory, GatewayFactory

A, B = 1001, 1002


async def test_private_message_crosses_gateways_with_pinned_fields(
    start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """A on gw1 sends to B on gw2: A is acked, B gets the frame with every pinned field."""
    gw1 = await start_gateway("gw-1")
    gw2 = await start_gateway("gw-2")
    a = await open_client(gw1, A)
    b = await open_client(gw2, B)
    ack = await a.say(B, "hello bob", cid="c-1")
    assert ack["type"] == 10
    assert ack["id"] == "c-1"
    assert isinstance(ack["msgId"], str)
    assert ack["msgId"]
    assert ack["time"].isdigit()
    got = await b.wait_for(lambda f: f["type"] == 1, what="the message")
    assert list(got) == ["type", "id", "from", "to", "contentType", "time", "content", "seq"]
    assert got["id"] == ack["msgId"]
    assert got["from"] == A
    assert got["to"] == B
    assert got["contentType"] == 0
    assert got["content"] == "hello bob"
    assert got["time"] == ack["time"]
    assert isinstance(got["seq"], str)
    assert got["seq"]
    assert a.messages() == []  # the sending connection gets only the ack


async def test_same_gateway_delivery(
    start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """A and B on the same gateway: B gets the message without the hub in the path."""
    gw1 = await start_gateway("gw-1")
    a = await open_client(gw1, A)
    b = await open_client(gw1, B)
    ack = await a.say(B, "next door")
    assert ack["type"] == 10
    got = await b.wait_for(lambda f: f["type"] == 1)
    assert (got["content"], got["from"], got["id"]) == ("next door", A, ack["msgId"])


async def test_every_device_of_the_recipient_and_the_sender_gets_it(
    start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """B on gw1 and gw2 gets it on both; A's other devices (gw1, gw2) get a copy, once."""
    gw1 = await start_gateway("gw-1")
    gw2 = await start_gateway("gw-2")
    a = await open_client(gw1, A)
    a_same = await open_client(gw1, A)
    a_other = await open_client(gw2, A)
    b1 = await open_client(gw1, B)
    b2 = await open_client(gw2, B)
    ack = await a.say(B, "to all your devices")
    for client in (b1, b2, a_same, a_other):
        got = await client.wait_for(lambda f: f["type"] == 1)
        assert got["id"] == ack["msgId"]
        assert got["from"] == A
        assert got["to"] == B
    ack2 = await a.say(B, "second")
    for client in (b1, b2, a_same, a_other):
        await client.wait_contents(["to all your devices", "second"])
        assert client.contents() == ["to all your devices", "second"]
    assert ack2["msgId"] != ack["msgId"]
    assert a.messages() == []


async def test_duplicate_client_id_is_delivered_once_with_the_same_msg_id(
    start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """The same client id resent (even from another connection) is acked with the same msgId."""
    gw1 = await start_gateway("gw-1")
    gw2 = await start_gateway("gw-2")
    a = await open_client(gw1, A)
    b = await open_client(gw2, B)
    first = await a.say(B, "once", cid="dup-1")
    await a.close()
    a_again = await open_client(gw2, A)
    second = await a_again.say(B, "once", cid="dup-1")
    assert second["type"] == 10
    assert (second["msgId"], second["time"]) == (first["msgId"], first["time"])
    marker = await a_again.say(B, "marker")
    await b.wait_contents(["once", "marker"])
    assert b.contents() == ["once", "marker"]
    assert marker["msgId"] != first["msgId"]


async def test_spoofed_from_is_ignored(
    start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """A client's own 'from' is ignored: the gateway sets the authenticated user."""
    gw1 = await start_gateway("gw-1")
    a = await open_client(gw1, A)
    b = await open_client(gw1, B)
    await a.send({"type": 1, "id": "s-1", "from": 666, "to": B, "content": "it is me"})
    await a.wait_for(lambda f: f.get("id") == "s-1" and f["type"] == 10)
    got = await b.wait_for(lambda f: f["type"] == 1)
    assert got["from"] == A


async def test_message_ids_are_unique_across_gateways(
    start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """Many messages sent concurrently through two gateways get distinct ids."""
    gw1 = await start_gateway("gw-1")
    gw2 = await start_gateway("gw-2")
    a = await open_client(gw1, A)
    b = await open_client(gw2, B)
    acks = await asyncio.gather(
        *(a.say(B, f"a{i}") for i in range(50)), *(b.say(A, f"b{i}") for i in range(50))
    )
    ids = [ack["msgId"] for ack in acks]
    assert all(ack["type"] == 10 for ack in acks)
    assert len(set(ids)) == 100
