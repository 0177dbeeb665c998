"""The hub end to end: a real HubServer on a free port, real HubLinks and raw gRPC calls."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import free_port, wait_until
from transmit_hub import HubServer, UndeliverableReason, codec
from transmit_hub.auth import FIRST_REQUEST_WAIT, BearerTokenInterceptor, bearer_metadata
from transmit_hub.config import HubConfig
from transmit_hub.transport import CONNECT_METHOD
from transmit_hub.types import GatewayId
from transmit_hub.v1 import transmit_pb2_grpc

from .conftest import LinkFactory, tmap


async def stats(address: str, token: str | None = None) -> Any:
    async with aio.insecure_channel(address) as channel:
        stub = transmit_pb2_grpc.TransmitHubServiceStub(channel)
        md = bearer_metadata(token) if token else None
        return await stub.GetStats(codec.GetStatsRequest(), metadata=md, timeout=30)


async def gateways(address: str) -> list[str]:
    async with aio.insecure_channel(address) as channel:
        stub = transmit_pb2_grpc.TransmitHubServiceStub(channel)
        reply = await stub.ListGateways(codec.ListGatewaysRequest(), timeout=5)
        return [g.gateway_id for g in reply.gateways]


async def hello_then_read(call: Any, gateway_id: str) -> Any:
    """Send a Hello on a raw Connect call and read the first response (the refusal may
    already surface on the write)."""
    await call.write(codec.hello_bytes(GatewayId(gateway_id)))
    return await call.read()


async def test_private_message_between_two_gateways(hub: HubServer, make_link: LinkFactory) -> None:
    """A map from gw-a naming a user on gw-b reaches gw-b only, with that user and message."""
    a = await make_link(hub.address, "gw-a")
    b = await make_link(hub.address, "gw-b")
    assert a.link.send(tmap("m-1", {"gw-b": (42,)}, sender=7))
    (delivery,) = await b.wait_deliveries(1)
    assert delivery.message.id == "m-1"
    assert delivery.message.sender == 7
    assert delivery.message.content == "body m-1"
    assert [r.user_id for r in delivery.recipients] == [42]
    assert a.deliveries == []
    assert a.notices == []
    reply = await stats(hub.address)
    assert reply.transmit_maps_received == 1
    per_gateway = {g.gateway_id: g for g in reply.gateways}
    assert per_gateway["gw-b"].deliveries_sent == 1
    assert per_gateway["gw-a"].transmit_maps_received == 1


async def test_map_to_three_gateways_gives_one_delivery_each(
    hub: HubServer, make_link: LinkFactory
) -> None:
    """One map naming 3 gateways gives exactly one delivery on each, with only its own users."""
    sender = await make_link(hub.address, "gw-s")
    targets = {"gw-1": (1, 2), "gw-2": (3,), "gw-3": (4, 5, 6)}
    links = {g: await make_link(hub.address, g) for g in targets}
    assert sender.link.send(tmap("group-1", targets))
    for g, users in targets.items():
        (delivery,) = await links[g].wait_deliveries(1)
        assert delivery.message.id == "group-1"
        assert tuple(r.user_id for r in delivery.recipients) == users
    assert sender.deliveries == []
    assert sender.notices == []
    reply = await stats(hub.address)
    assert {g.gateway_id: g.deliveries_sent for g in reply.gateways} == {
        "gw-s": 0,
        "gw-1": 1,
        "gw-2": 1,
        "gw-3": 1,
    }


async def test_map_to_self_is_delivered_to_the_sender(
    hub: HubServer, make_link: LinkFactory
) -> None:
    """A map naming its own sender as a target is delivered back to it once (no loop)."""
    a = await make_link(hub.address, "gw-a")
    assert a.link.send(tmap("m-self", {"gw-a": (5,)}))
    (delivery,) = await a.wait_deliveries(1)
    assert delivery.message.id == "m-self"
    assert [r.user_id for r in delivery.recipients] == [5]
    assert (await stats(hub.address)).transmit_maps_received == 1


async def test_unknown_gateway_gives_notice_with_message_id(
    hub: HubServer, make_link: LinkFactory
) -> None:
    """A target that is not attached becomes a NOT_ATTACHED notice naming message and users."""
    a = await make_link(hub.address, "gw-a")
    b = await make_link(hub.address, "gw-b")
    assert a.link.send(tmap("m-2", {"gw-b": (1,), "gw-gone": (8, 9)}))
    (notice,) = await a.wait_notices(1)
    assert notice.gateway_id == "gw-gone"
    assert notice.message_ids == ("m-2",)
    assert notice.user_ids == (8, 9)
    assert notice.reason is UndeliverableReason.NOT_ATTACHED
    await b.wait_deliveries(1)
    assert (await stats(hub.address)).undeliverable == 1


async def test_first_request_must_be_hello(hub: HubServer) -> None:
    """A Connect stream whose first frame is not a Hello with an id gets INVALID_ARGUMENT."""
    async with aio.insecure_channel(hub.address) as channel:
        call = channel.stream_stream(CONNECT_METHOD)()
        await call.write(codec.hello_bytes(GatewayId("")))
        with pytest.raises(aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "Hello" in info.value.details()


async def test_stuck_gateway_does_not_delay_others_and_overflow_is_reported(
    make_link: LinkFactory,
) -> None:
    """A gateway that never reads fills its small queue: its overflow comes back as QUEUE_FULL
    notices to the sender, while deliveries to a healthy gateway keep flowing."""
    async with HubServer(HubConfig(listen="127.0.0.1:0", queue_size=8, grace=0.2)) as hub:
        sender = await make_link(hub.address, "gw-s", max_pending=100_000)
        healthy = await make_link(hub.address, "gw-ok")
        async with aio.insecure_channel(hub.address) as channel:
            stuck = channel.stream_stream(CONNECT_METHOD)()
            await stuck.write(codec.hello_bytes(GatewayId("gw-stuck")))
            await stuck.read()  # the Welcome; after this it never reads again
            big = "x" * 64 * 1024
            sent = 0
            deadline = time.monotonic() + 30
            while not sender.notices:
                assert time.monotonic() < deadline, "the stuck gateway's queue never filled"
                for _ in range(20):
                    assert sender.link.send(tmap(f"big-{sent}", {"gw-stuck": (1,)}, content=big))
                    sent += 1
                await wait_until(lambda: sender.link.pending == 0, what="the sender to write")
            notice = sender.notices[0]
            assert notice.reason is UndeliverableReason.QUEUE_FULL
            assert notice.gateway_id == "gw-stuck"
            assert notice.message_ids[0].startswith("big-")
            # The stuck gateway is full, yet a healthy one gets its map at once.
            started = time.monotonic()
            assert sender.link.send(tmap("to-ok", {"gw-ok": (2,)}))
            await healthy.wait_deliveries(1, timeout=5)
            assert time.monotonic() - started < 2.0
            reply = await stats(hub.address)
            per_gateway = {g.gateway_id: g for g in reply.gateways}
            assert per_gateway["gw-stuck"].queue_full >= 1
            assert reply.queue_full == per_gateway["gw-stuck"].queue_full
            stuck.cancel()


async def test_hub_restart_links_reconnect_and_carry_on(make_link: LinkFactory) -> None:
    """Stopping the hub and starting a new one on the same port: links reconnect by themselves,
    maps sent while it was down go out after reconnect, and routing carries on."""
    port = free_port()
    hub = HubServer(HubConfig(listen=f"127.0.0.1:{port}", hub_id="hub-1", grace=0.2))
    await hub.start()
    a = await make_link(hub.address, "gw-a", backoff_max=0.5)
    b = await make_link(hub.address, "gw-b", backoff_max=0.5)
    await hub.stop()
    await wait_until(lambda: bool(a.downs) and bool(b.downs), what="both links to go down")
    assert "hub shutting down; reconnect" in a.downs[0].reason
    assert not a.link.connected
    # While the hub is down, maps wait in the link (here: to the sender itself).
    for i in range(5):
        assert a.link.send(tmap(f"while-down-{i}", {"gw-a": (1,)}))
    hub2 = HubServer(HubConfig(listen=f"127.0.0.1:{port}", hub_id="hub-2", grace=0.2))
    await hub2.start()
    try:
        await a.link.wait_connected(10)
        await b.link.wait_connected(10)
        assert a.link.hub_id == "hub-2"
        await a.wait_deliveries(5)
        assert a.message_ids() == [f"while-down-{i}" for i in range(5)]
        assert a.link.send(tmap("after", {"gw-b": (2,)}))
        (delivery,) = await b.wait_deliveries(1)
        assert delivery.message.id == "after"
        assert [u.hub_id for u in b.ups] == ["hub-1", "hub-2"]
    finally:
        await hub2.stop()


async def test_shutdown_ends_streams_with_unavailable(make_link: LinkFactory) -> None:
    """hub.stop() ends each Connect stream with UNAVAILABLE 'hub shutting down; reconnect'."""
    hub = HubServer(HubConfig(listen="127.0.0.1:0", grace=0.2))
    await hub.start()
    async with aio.insecure_channel(hub.address) as channel:
        call = channel.stream_stream(CONNECT_METHOD)()
        await call.write(codec.hello_bytes(GatewayId("gw-a")))
        await call.read()
        await hub.stop()
        with pytest.raises(aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == "hub shutting down; reconnect"
    await hub.stop()  # idempotent
    await hub.wait_closed()


async def test_auth_token_is_enforced(make_link: LinkFactory) -> None:
    """With an auth token, calls without it or with a wrong one get UNAUTHENTICATED; a link
    with the token attaches and routes."""
    async with HubServer(HubConfig(listen="127.0.0.1:0", auth_token="s3cret", grace=0.2)) as hub:
        for token in (None, "wrong"):
            with pytest.raises(aio.AioRpcError) as info:
                await stats(hub.address, token)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "authorization: Bearer" in info.value.details()
        async with aio.insecure_channel(hub.address) as channel:
            call = channel.stream_stream(CONNECT_METHOD)()
            with pytest.raises(aio.AioRpcError) as info:
                await hello_then_read(call, "gw-intruder")
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        intruder = await make_link(hub.address, "gw-bad", token="wrong", connect=False)
        a = await make_link(hub.address, "gw-a", token="s3cret")
        b = await make_link(hub.address, "gw-b", token="s3cret")
        assert a.link.send(tmap("m-auth", {"gw-b": (1,)}))
        await b.wait_deliveries(1)
        assert not intruder.link.connected
        assert (await stats(hub.address, "s3cret")).transmit_maps_received == 1
        assert sorted(hub.registry.outboxes) == ["gw-a", "gw-b"]


async def test_refused_calls_are_counted_and_logged_as_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An intruder's 40 calls without the token: the hub counts every refusal (the
    attribute and the metric) and writes one warning for the burst, naming the fix and the
    caller, not 40 lines. (Refusals were neither counted nor logged before.)"""
    config = HubConfig(listen="127.0.0.1:0", auth_token="s3cret", grace=0.2)
    with caplog.at_level(logging.WARNING, logger="transmit_hub.auth"):
        async with HubServer(config) as hub:
            for token in (None, "wrong") * 20:
                with pytest.raises(aio.AioRpcError):
                    await stats(hub.address, token)
            assert (await stats(hub.address, "s3cret")).transmit_maps_received == 0
            assert hub.auth is not None
            assert hub.auth.refused == 40
            assert b"transmit_hub_unauthenticated_total 40.0" in hub.metrics.render()
    lines = [r.getMessage() for r in caplog.records if r.name == "transmit_hub.auth"]
    assert len(lines) == 1, lines
    assert "calls refused for a missing or wrong token: 1 since" in lines[0]
    assert "127.0.0.1" in lines[0]
    assert "--hub-token" in lines[0]


async def test_a_hub_without_a_token_reports_no_refusals(hub: HubServer) -> None:
    assert hub.auth is None
    assert b"transmit_hub_unauthenticated_total 0.0" in hub.metrics.render()


async def test_a_refused_hello_is_always_heard_as_unauthenticated() -> None:
    """A gateway with a wrong token writes its Hello while the hub refuses the call. Each
    of 200 tries (each on a new channel, as a link's attach) hears UNAUTHENTICATED, on
    the write or the read. Refused before its Hello was in, about 1 call in 20 failed on
    the write first, and grpc.aio reported INTERNAL "Internal error from Core" instead:
    the link could not tell it was refused."""
    async with HubServer(HubConfig(listen="127.0.0.1:0", auth_token="s3cret", grace=0.2)) as hub:
        codes = []
        for i in range(200):
            async with aio.insecure_channel(hub.address) as channel:
                call = channel.stream_stream(CONNECT_METHOD)(metadata=bearer_metadata("wrong"))
                with pytest.raises(aio.AioRpcError) as info:
                    await hello_then_read(call, f"gw-{i}")
                codes.append((info.value.code(), await call.code()))
    assert set(codes) == {(grpc.StatusCode.UNAUTHENTICATED,) * 2}


async def test_a_refused_stream_that_sends_nothing_is_ended_after_the_wait() -> None:
    """A client that opens Connect without a token and sends nothing is not held: it is
    refused once the hub has waited FIRST_REQUEST_WAIT for its first message."""
    config = HubConfig(listen="127.0.0.1:0", auth_token="s3cret", grace=0.2)
    async with HubServer(config) as hub, aio.insecure_channel(hub.address) as channel:
        call = channel.stream_stream(CONNECT_METHOD)()
        started = time.monotonic()
        with pytest.raises(aio.AioRpcError) as info:
            await asyncio.wait_for(call.read(), FIRST_REQUEST_WAIT + 5)
        took = time.monotonic() - started
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert FIRST_REQUEST_WAIT * 0.9 <= took < FIRST_REQUEST_WAIT + 3, took


async def test_refused_streams_beyond_max_hello_waiting_are_refused_at_once() -> None:
    """A client without the token opening streams by the dozen and sending nothing: at
    most --max-hello-waiting of them are held for FIRST_REQUEST_WAIT, the rest are refused
    at once (all were held before, so such a client held as many as it opened)."""
    config = HubConfig(listen="127.0.0.1:0", auth_token="s3cret", max_hello_waiting=3, grace=0.2)
    async with HubServer(config) as hub, aio.insecure_channel(hub.address) as channel:
        started = time.monotonic()
        calls = [channel.stream_stream(CONNECT_METHOD)() for _ in range(20)]

        async def refused_after(call: Any) -> float:
            with pytest.raises(aio.AioRpcError) as info:
                await asyncio.wait_for(call.read(), FIRST_REQUEST_WAIT + 5)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            return time.monotonic() - started

        took = sorted(await asyncio.gather(*map(refused_after, calls)))
    assert max(took[:17]) < FIRST_REQUEST_WAIT * 0.9, took
    assert min(took[17:]) >= FIRST_REQUEST_WAIT * 0.9, took


async def test_refused_streams_waiting_do_not_hold_up_a_stopping_hub() -> None:
    """Streams without the token wait for their first message before the refusal; a hub
    told to stop refuses them at once instead of letting them hold its stop for that wait
    (it took FIRST_REQUEST_WAIT before)."""
    config = HubConfig(listen="127.0.0.1:0", auth_token="s3cret", grace=0.2)
    async with HubServer(config) as hub, aio.insecure_channel(hub.address) as channel:
        calls = [channel.stream_stream(CONNECT_METHOD)() for _ in range(5)]
        reads = [asyncio.ensure_future(call.read()) for call in calls]
        auth = hub.auth
        assert auth is not None
        await wait_until(lambda: auth.waiting == 5, what="five refused streams waiting")
        started = time.monotonic()
        await hub.stop()
        took = time.monotonic() - started
        results = await asyncio.gather(*reads, return_exceptions=True)
    assert took < FIRST_REQUEST_WAIT / 2, took
    assert auth.waiting == 0
    for result in results:
        assert isinstance(result, aio.AioRpcError)
        assert result.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_stopping_passes_over_a_refused_stream_whose_wait_just_ran_out() -> None:
    """A wait that has run out but whose call has not yet been refused (its timeout fired
    in the same loop turn as the stop) must not make the stop raise ("Cannot change state
    of expiring Timeout")."""
    auth = BearerTokenInterceptor("s3cret")
    wait = asyncio.timeout(0)
    with contextlib.suppress(TimeoutError):
        async with wait:
            auth._waits.add(wait)
            await asyncio.sleep(1)
    assert wait.expired()
    auth.stop_waiting()
    assert auth.waiting == 1  # its call's own cleanup drops it


async def test_ten_thousand_maps_arrive_complete_and_in_order(make_link: LinkFactory) -> None:
    """10,000 maps from two senders all arrive, each sender's in the order it sent them."""
    per_sender = 5_000
    async with HubServer(HubConfig(listen="127.0.0.1:0", queue_size=50_000, grace=0.2)) as hub:
        senders = [await make_link(hub.address, f"gw-s{i}") for i in range(2)]
        receiver = await make_link(hub.address, "gw-r")
        for n in range(per_sender):
            for i, s in enumerate(senders):
                assert s.link.send(tmap(f"s{i}-{n}", {"gw-r": (n % 50 + 1,)}))
        await receiver.wait_deliveries(2 * per_sender, timeout=60)
        ids = receiver.message_ids()
        assert len(ids) == len(set(ids)) == 2 * per_sender
        for i in range(2):
            assert [m for m in ids if m.startswith(f"s{i}-")] == [
                f"s{i}-{n}" for n in range(per_sender)
            ]
        assert all(s.notices == [] for s in senders)
        reply = await stats(hub.address)
        assert reply.transmit_maps_received == reply.deliveries_sent == 2 * per_sender


async def test_health_serving_then_not_serving_while_draining(hub: HubServer) -> None:
    """grpc.health.v1 answers SERVING once listening; a watcher sees NOT_SERVING on stop."""
    async with aio.insecure_channel(hub.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "transmit.v1.TransmitHubService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        stopping = asyncio.create_task(hub.stop(0.5))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        await stopping


async def test_list_gateways_shows_attached_ids_and_detaches_on_close(
    hub: HubServer, make_link: LinkFactory
) -> None:
    """ListGateways lists attached gateway ids; a closed link is removed; stats keep its id."""
    a = await make_link(hub.address, "gw-a")
    await make_link(hub.address, "gw-b")
    assert await gateways(hub.address) == ["gw-a", "gw-b"]
    await a.link.close()
    await wait_until(lambda: sorted(hub.registry.outboxes) == ["gw-b"], what="gw-a to detach")
    assert await gateways(hub.address) == ["gw-b"]
    attached = {g.gateway_id: g.attached for g in (await stats(hub.address)).gateways}
    assert attached == {"gw-a": False, "gw-b": True}


async def test_shutdown_drains_what_the_hub_accepted(make_link: LinkFactory) -> None:
    """Every map the hub accepted before stop() still reaches its gateway before the streams
    close: the outboxes drain within the grace period."""
    hub = HubServer(HubConfig(listen="127.0.0.1:0", queue_size=100_000, grace=5))
    await hub.start()
    try:
        a = await make_link(hub.address, "gw-a")
        b = await make_link(hub.address, "gw-b")
        for i in range(5_000):
            assert a.link.send(tmap(f"m{i}", {"gw-b": (1,)}))
        await wait_until(lambda: hub.registry.transmit_maps_received >= 1_000, what="traffic")
    finally:
        await hub.stop()
    accepted = hub.registry.transmit_maps_received
    await wait_until(lambda: bool(b.downs), what="gw-b's stream to end")
    assert len(b.deliveries) == accepted == hub.registry.deliveries_sent
    assert "hub shutting down; reconnect" in b.downs[0].reason


async def test_garbage_frame_ends_the_stream_with_invalid_argument(hub: HubServer) -> None:
    """A request frame that is not valid protobuf ends that stream with INVALID_ARGUMENT and
    detaches the gateway; the hub keeps serving."""
    async with aio.insecure_channel(hub.address) as channel:
        call = channel.stream_stream(CONNECT_METHOD)()
        await hello_then_read(call, "gw-bad")
        await call.write(b"\x12\x7f\x0a")  # a batch claiming 127 bytes, holding 1
        with pytest.raises(aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "bad request frame" in info.value.details()
    await wait_until(lambda: not hub.registry.outboxes, what="gw-bad to detach")
    assert await gateways(hub.address) == []
