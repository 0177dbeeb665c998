"""The hub's trust boundary for gateway ids: format, the Hello deadline, claims of held ids."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sys
import textwrap
import time
from typing import Any

import grpc  # type: ignore[import-untyped]
import pytest
from grpc import aio

from tests.helpers import wait_until
from transmit_hub import HubServer, codec
from transmit_hub.config import HubConfig
from transmit_hub.transport import CONNECT_METHOD
from transmit_hub.types import GatewayId, gateway_id_problem

from .conftest import LinkFactory, tmap
from .test_hub import gateways, stats


def test_gateway_id_rule() -> None:
    """Ids are 1 to 128 characters of A-Z a-z 0-9 . _ : - and nothing else."""
    for good in ("gw-1", "a", "A.b_c:d-9", "x" * 128):
        assert gateway_id_problem(good) is None, good
    for bad in ("", "x" * 129, "gw 1", "gw-1\n", "gw\nINFO forged", "gé", "gw/1", "gw-1\x00"):
        assert gateway_id_problem(bad) is not None, repr(bad)


async def refused(hub: HubServer, gateway_id: str) -> aio.AioRpcError:
    """Open a raw Connect stream with ``gateway_id`` and return the error that ends it."""
    async with aio.insecure_channel(hub.address) as channel:
        call = channel.stream_stream(CONNECT_METHOD)()
        try:  # the refusal may already surface on the write
            await call.write(codec.hello_bytes(GatewayId(gateway_id)))
            await call.read()
        except aio.AioRpcError as exc:
            return exc
        raise AssertionError(f"the hub accepted {gateway_id[:40]!r}")


@pytest.mark.parametrize(
    "gateway_id", ["", "x" * 129, "gw\nINFO forged line", "gw 1", "x" * (1 << 20)]
)
async def test_bad_gateway_id_is_refused_with_invalid_argument(
    hub: HubServer, gateway_id: str
) -> None:
    """A Hello with an id outside the pinned rule is refused INVALID_ARGUMENT, not attached."""
    error = await refused(hub, gateway_id)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "gateway id" in (error.details() or "")
    assert len(error.details() or "") < 200  # the refusal does not echo a huge id
    assert await gateways(hub.address) == []


async def test_twenty_huge_ids_leave_get_stats_working(hub: HubServer) -> None:
    """Twenty 1 MB ids (which once made GetStats fail for every caller) are refused, and
    GetStats answers."""
    for i in range(20):
        error = await refused(hub, f"{i}" + "x" * (1 << 20))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    reply = await stats(hub.address)
    assert list(reply.gateways) == []


async def test_stream_without_hello_is_ended_by_the_deadline() -> None:
    """A Connect stream that never sends its Hello is ended with DEADLINE_EXCEEDED after
    --hello-timeout, and leaves nothing behind."""
    async with HubServer(HubConfig(listen="127.0.0.1:0", hello_timeout=0.3, grace=0.1)) as hub:
        async with aio.insecure_channel(hub.address) as channel:
            calls = [channel.stream_stream(CONNECT_METHOD)() for _ in range(5)]
            started = time.monotonic()
            for call in calls:
                with pytest.raises(aio.AioRpcError) as info:
                    await asyncio.wait_for(call.read(), 10)
                assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert "Hello" in (info.value.details() or "")
            assert time.monotonic() - started < 5
        assert hub.registry.attachments() == []


async def test_streams_waiting_for_their_hello_are_bounded(make_link: LinkFactory) -> None:
    """Beyond --max-hello-waiting silent streams, one more ends the one that waited longest
    (RESOURCE_EXHAUSTED, naming the flag): never more than the bound wait."""
    async with HubServer(
        HubConfig(listen="127.0.0.1:0", hello_timeout=30, max_hello_waiting=3, grace=0.1)
    ) as hub:
        async with aio.insecure_channel(hub.address) as channel:
            silent = []
            for _ in range(3):
                silent.append(channel.stream_stream(CONNECT_METHOD)())
                await wait_until(
                    functools.partial(lambda n: hub.service.hello_waiting == n, len(silent)),
                    what="one more",
                )
            extra = channel.stream_stream(CONNECT_METHOD)()
            with pytest.raises(aio.AioRpcError) as info:
                await asyncio.wait_for(silent[0].read(), 10)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-hello-waiting" in (info.value.details() or "")
            await wait_until(lambda: hub.service.hello_evicted == 1, what="one eviction")
            assert hub.service.hello_waiting == 3
            for call in (*silent[1:], extra):
                call.cancel()
        await wait_until(lambda: hub.service.hello_waiting == 0, what="the silent ones gone")
        await make_link(hub.address, "gw-1")
        assert [g.gateway_id for g in hub.registry.attachments()] == ["gw-1"]


async def test_silent_streams_filling_the_hello_slots_do_not_delay_a_gateway(
    make_link: LinkFactory,
) -> None:
    """An attacker with the hub token keeps every Hello-waiting slot full of silent streams,
    opening a new one whenever one ends: a gateway still attaches within 2 s (it was 13 to
    17 s, refused RESOURCE_EXHAUSTED until a slot freed by the Hello deadline)."""
    async with (
        HubServer(
            HubConfig(listen="127.0.0.1:0", hello_timeout=30, max_hello_waiting=8, grace=0.1)
        ) as hub,
        aio.insecure_channel(hub.address) as channel,
    ):

        async def hold_one() -> None:
            while True:
                call = channel.stream_stream(CONNECT_METHOD)()
                with contextlib.suppress(aio.AioRpcError):
                    await call.read()  # ends when the hub ends it: open another

        holders = [asyncio.create_task(hold_one()) for _ in range(8)]
        try:
            await wait_until(lambda: hub.service.hello_waiting == 8, what="every slot held")
            started = time.monotonic()
            link = await make_link(hub.address, "gw-victim", connect=False)
            await link.link.wait_connected(10)
            took = time.monotonic() - started
            assert hub.registry.is_attached(GatewayId("gw-victim"))
            assert took < 2.0, took
            assert hub.service.hello_waiting <= 8
        finally:
            for task in holders:
                task.cancel()
            await asyncio.gather(*holders, return_exceptions=True)


async def test_max_gateways_refuses_more_with_resource_exhausted(
    make_link: LinkFactory,
) -> None:
    """Beyond --max-gateways attached gateways, a new id is refused RESOURCE_EXHAUSTED."""
    async with HubServer(HubConfig(listen="127.0.0.1:0", max_gateways=2, grace=0.1)) as hub:
        await make_link(hub.address, "gw-1")
        await make_link(hub.address, "gw-2")
        error = await refused(hub, "gw-3")
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-gateways" in (error.details() or "")


async def test_stats_of_departed_gateways_are_forgotten(make_link: LinkFactory) -> None:
    """The counters of a gateway that left are dropped after --forget-after, and at most
    --max-gateways departed gateways are remembered."""
    async with HubServer(HubConfig(listen="127.0.0.1:0", forget_after=0.5, grace=0.1)) as hub:
        link = await make_link(hub.address, "gw-gone")
        await link.link.close()
        await wait_until(lambda: not hub.registry.outboxes, what="gw-gone to detach")
        names = [g.gateway_id for g in (await stats(hub.address)).gateways]
        assert names == ["gw-gone"]  # still remembered for a while

        async def forgotten() -> bool:
            return [g.gateway_id for g in (await stats(hub.address)).gateways] == []

        await wait_until(forgotten, timeout=10, what="gw-gone's stats to be forgotten")
    async with HubServer(HubConfig(listen="127.0.0.1:0", max_gateways=3, grace=0.1)) as hub:
        for i in range(8):
            c = await make_link(hub.address, f"gw-{i}")
            await c.link.close()
            await wait_until(lambda: not hub.registry.outboxes, what=f"gw-{i} to detach")
        names = [g.gateway_id for g in (await stats(hub.address)).gateways]
        assert names == ["gw-5", "gw-6", "gw-7"]  # the most recent departures


# -- claims of a held id -----------------------------------------------------------------


async def attach_raw(channel: aio.Channel, gateway_id: str) -> Any:
    """A raw Connect stream that attached as ``gateway_id`` (its Welcome read)."""
    call = channel.stream_stream(CONNECT_METHOD)()
    await call.write(codec.hello_bytes(GatewayId(gateway_id)))
    assert codec.decode_response(await call.read()).welcome == "test-hub"
    return call


async def test_raw_claim_of_a_live_id_is_refused_with_already_exists(hub: HubServer) -> None:
    """When the holder answers the hub's probe, a second stream claiming its id is refused
    with ALREADY_EXISTS naming the id, and the holder stays attached."""
    async with aio.insecure_channel(hub.address) as channel:
        holder = await attach_raw(channel, "gw-dup")
        claim = channel.stream_stream(CONNECT_METHOD)()
        await claim.write(codec.hello_bytes(GatewayId("gw-dup")))
        probe = codec.decode_response(await asyncio.wait_for(holder.read(), 5)).probe
        assert probe is not None
        await holder.write(codec.probe_reply_bytes(probe))
        with pytest.raises(aio.AioRpcError) as info:
            await asyncio.wait_for(claim.read(), 5)
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "gateway id gw-dup is held by another live stream" in (info.value.details() or "")
        assert not holder.done()
        assert await gateways(hub.address) == ["gw-dup"]
        holder.cancel()


async def read_to_the_end(call: Any) -> tuple[int, aio.AioRpcError]:
    """Read a raw stream until it ends, leaving its probes unanswered: (probes, the error)."""
    probes = 0
    while True:
        try:
            frame = await asyncio.wait_for(call.read(), 5)
        except aio.AioRpcError as exc:
            return probes, exc
        assert codec.decode_response(frame).probe is not None
        probes += 1


async def test_raw_silent_holder_is_replaced_at_once(hub: HubServer) -> None:
    """A holder that does not answer the probe (a restarted gateway's dead stream, not yet
    noticed by the hub) is replaced within the claim timeout; it ends ALREADY_EXISTS."""
    async with aio.insecure_channel(hub.address) as channel:
        holder = await attach_raw(channel, "gw-dup")
        started = time.monotonic()
        await attach_raw(channel, "gw-dup")  # the default claim timeout is 2 s
        assert time.monotonic() - started < 5
        probes, error = await read_to_the_end(holder)
        assert probes >= 1  # the claim's (and keepalive probes, on a slow machine)
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "claimed by a newer stream" in (error.details() or "")


async def test_second_link_with_a_live_id_is_told_and_attaches_once_the_first_leaves(
    hub: HubServer, make_link: LinkFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A second process claiming a live id is refused (conflict named, one ERROR line), the
    first keeps routing; once the first exits, the second attaches without a restart."""
    caplog.set_level(logging.DEBUG, logger="transmit_hub")
    first = await make_link(hub.address, "gw-x")
    second = await make_link(hub.address, "gw-x", connect=False, conflict_retry=0.2)
    await wait_until(lambda: second.link.conflict is not None, what="the second to be told")
    assert second.link.conflict == "gateway id gw-x is held by another process"
    await wait_until(lambda: bool(second.downs), what="the second's LinkDown")
    assert "held by another process" in second.downs[0].reason
    # A few refused retries later: still one ERROR line, and the first is untouched.
    retried = len([r for r in caplog.records if "still held elsewhere" in r.getMessage()])
    await wait_until(
        lambda: (
            len([r for r in caplog.records if "still held elsewhere" in r.getMessage()])
            >= retried + 2
        ),
        what="two more refused retries",
    )
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "gw-x is held by another process" in errors[0].getMessage()
    assert first.link.connected
    assert not first.downs
    sender = await make_link(hub.address, "gw-s")
    assert sender.link.send(tmap("m-1", {"gw-x": (1,)}))
    await first.wait_deliveries(1)
    # The first exits: the second attaches by itself, and gets the traffic.
    await first.link.close()
    await second.link.wait_connected(30)
    assert second.link.conflict is None
    assert sender.link.send(tmap("m-2", {"gw-x": (1,)}))
    await second.wait_deliveries(1)
    assert second.message_ids() == ["m-2"]


HOLDER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from transmit_hub import GatewayId, HubLink
    from transmit_hub.link import LinkDown, LinkUp

    async def main():
        link = HubLink(sys.argv[1], GatewayId("gw-frozen"), conflict_retry=0.3)
        await link.start()
        async for event in link.events():  # print each change of state as it happens
            if isinstance(event, LinkUp):
                print("attached", flush=True)
            elif isinstance(event, LinkDown):
                print("conflict" if link.conflict else "down", flush=True)

    asyncio.run(main())
    """
)


async def test_frozen_holder_is_replaced_and_comes_back_when_the_other_exits(
    hub: HubServer, make_link: LinkFactory
) -> None:
    """A gateway process frozen with SIGSTOP (the hub has not noticed) loses its id at once to
    a new claimant; thawed, it is told the id is held; when the claimant exits, the first
    process attaches again within 30 s, without a restart (it once stopped for good)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER_SCRIPT, hub.address, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None

    async def state() -> str:
        assert proc.stdout is not None
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()
            if line != "down":
                return line

    try:
        assert await state() == "attached"
        proc.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        claimant = await make_link(hub.address, "gw-frozen")
        assert time.monotonic() - started < 5  # the probe timed out (2 s), not keepalive
        proc.send_signal(signal.SIGCONT)
        assert await state() == "conflict"
        assert claimant.link.connected
        await claimant.link.close()
        assert await state() == "attached"
        assert time.monotonic() - started < 35
        assert [g.gateway_id for g in hub.registry.gateways()] == ["gw-frozen"]
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            await proc.wait()
