"""The Python client library (``im_gateway.client``) against real processes: redis-server,
``python -m transmit_hub`` and ``python -m im_gateway``, killed and restarted under it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from im_gateway.client import Client, Message, Refused, Sent
from tests.end_to_end.harness import GatewayProcess, token
from tests.end_to_end.processes import HubProcess
from tests.helpers import wait_until

ALICE, BOB = 1, 2


class Gateway(GatewayProcess):
    """``python -m im_gateway`` as a child process that can be SIGKILLed and restarted on
    the same port."""

    def __init__(self, gateway_id: str, hubs: str, redis_url: str) -> None:
        super().__init__(gateway_id=gateway_id, hub=hubs, redis_url=redis_url)
        self.url = f"ws://127.0.0.1:{self.port}/ws"

    async def wait_healthy(self, timeout: float = 30.0) -> None:  # noqa: ASYNC109 - a deadline
        await super().wait_healthy(timeout)


@dataclass
class System:
    hubs: list[HubProcess]
    gateways: list[Gateway]

    @property
    def urls(self) -> list[str]:
        return [g.url for g in self.gateways]


@contextlib.asynccontextmanager
async def system(redis_url: str, *, hubs: int = 2, gateways: int = 2) -> AsyncIterator[System]:
    started = System([HubProcess(f"hub-{i}") for i in range(hubs)], [])
    try:
        for hub in started.hubs:
            await hub.wait_serving()
        hub_list = ",".join(h.address for h in started.hubs)
        started.gateways = [Gateway(f"gw-{i + 1}", hub_list, redis_url) for i in range(gateways)]
        for gateway in started.gateways:
            await gateway.wait_healthy()
        yield started
    finally:
        for gateway in started.gateways:
            gateway.stop()
        for hub in started.hubs:
            hub.stop()


async def collect(client: Client, into: list[Message], *, until: int) -> None:
    """Take messages into ``into`` until it holds ``until`` of them."""
    async for message in client.messages():
        into.append(message)
        if len(into) >= until:
            return


async def test_two_gateways_a_hub_and_the_other_gateway_killed_under_1000_messages(
    redis_url: str,
) -> None:
    """Alice on gw-1 sends 1,200 messages to bob on gw-2, 50 in flight, while alice's
    gateway, one of two hubs and bob's gateway are SIGKILLed in turn (and restarted), each
    while it holds that client: every send returns with a
    message id, bob sees every message exactly once, each sender's lane in order, and the
    seqs he sees rise; alice sees none of her own."""
    total, lanes = 1200, 50
    async with system(redis_url) as s:
        gw1, gw2 = s.gateways
        alice = Client([gw1.url, gw2.url], token=token(ALICE))
        bob = Client([gw2.url, gw1.url], token=token(BOB))
        async with alice, bob:
            got: list[Message] = []
            receiver = asyncio.create_task(collect(bob, got, until=total))
            sent: dict[str, Sent] = {}

            async def lane(k: int) -> None:
                for i in range(k, total, lanes):
                    sent[f"m{i}"] = await alice.send(to=BOB, content=f"m{i}")

            senders = asyncio.gather(*(lane(k) for k in range(lanes)))

            async def progress(n: int) -> None:
                await wait_until(lambda: len(sent) >= n, timeout=60, what=f"{n} sends")

            def gateway_of(client: Client) -> Gateway:
                return next(g for g in s.gateways if g.url == client.url)

            await progress(150)
            await wait_until(lambda: alice.url is not None, what="alice connected")
            first = gateway_of(alice)  # alice's gateway
            first.kill()
            await progress(400)
            first.restart()
            s.hubs[0].kill()  # one of two hubs
            await progress(650)
            s.hubs[0].restart()
            await first.wait_healthy()
            await wait_until(lambda: bob.url is not None, what="bob connected")
            second = gateway_of(bob)  # bob's gateway
            bob_connections = bob.connections
            second.kill()
            await progress(900)
            second.restart()
            async with asyncio.timeout(120):
                await senders
                await receiver
            assert alice.connections >= 2
            # Bob may have had every message before his gateway died: his reconnect can
            # then come after the last one, so it is waited for, not sampled.
            await wait_until(lambda: bob.connections > bob_connections, what="bob reconnected")
        assert len(sent) == total
        assert all(s.msg_id for s in sent.values())
        assert len({s.msg_id for s in sent.values()}) == total  # none stored twice
        ids = [m.id for m in got]
        assert len(ids) == len(set(ids)) == total, "bob saw a message twice or missed one"
        assert {m.id for m in got} == {s.msg_id for s in sent.values()}
        assert all(m.sender == ALICE and m.to == BOB for m in got)
        seqs = [int(m.seq) for m in got]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) == total
        for k in range(lanes):
            lane_order = [int(m.content[1:]) for m in got if int(m.content[1:]) % lanes == k]
            assert lane_order == sorted(lane_order), f"lane {k} out of order"


async def test_a_restarted_client_shows_nothing_already_shown(redis_url: str) -> None:
    """Bob takes 5 of 10 messages and closes; a new client for bob (another gateway)
    shows exactly the other 5: what was taken was acknowledged to the server."""
    async with system(redis_url, hubs=1) as s:
        async with Client(s.urls[0], token=token(ALICE)) as alice:
            for i in range(10):
                await alice.send(to=BOB, content=f"n{i}")
        first: list[Message] = []
        async with Client(s.urls[1], token=token(BOB)) as bob:
            await collect(bob, first, until=5)
        assert [m.content for m in first] == [f"n{i}" for i in range(5)]
        second: list[Message] = []
        async with Client(s.urls[0], token=token(BOB)) as bob:
            await asyncio.wait_for(collect(bob, second, until=5), 20)
            async with Client(s.urls[0], token=token(ALICE)) as alice:
                marker = await alice.send(to=BOB, content="last")
            await asyncio.wait_for(collect(bob, second, until=6), 20)
        assert [m.content for m in second] == [*(f"n{i}" for i in range(5, 10)), "last"]
        assert second[-1].id == marker.msg_id


async def test_own_messages_from_another_device_are_shown_not_the_clients_own(
    redis_url: str,
) -> None:
    """Alice on two devices: what device 1 sends reaches device 2 (and bob), never
    device 1 itself, even after device 1 reconnects and its inbox is replayed."""
    async with system(redis_url, hubs=1) as s:
        gw1, gw2 = s.gateways
        phone = Client([gw1.url, gw2.url], token=token(ALICE))
        laptop = Client(gw2.url, token=token(ALICE))
        async with phone, laptop:
            on_laptop: list[Message] = []
            laptop_reader = asyncio.create_task(collect(laptop, on_laptop, until=6))
            on_phone: list[Message] = []
            phone_reader = asyncio.create_task(collect(phone, on_phone, until=1))
            for i in range(3):
                await phone.send(to=BOB, content=f"p{i}")
            gw1.kill()  # the phone reconnects to gw-2; its inbox is replayed there
            for i in range(3, 6):
                await phone.send(to=BOB, content=f"p{i}")
            async with asyncio.timeout(30):
                await laptop_reader
            assert [m.content for m in on_laptop] == [f"p{i}" for i in range(6)]
            async with Client(gw2.url, token=token(BOB)) as bob:
                await bob.send(to=ALICE, content="from bob")
            async with asyncio.timeout(30):
                await phone_reader
            assert [m.content for m in on_phone] == ["from bob"]


async def test_a_refused_token_raises_unauthorized_and_stops(redis_url: str) -> None:
    """A token signed with another secret: the handshake's 401 raises
    Refused("unauthorized") from the waiting send, and from messages(); the client stops."""
    async with system(redis_url, hubs=1, gateways=1) as s:
        bad = token(ALICE, secret="another-secret-of-at-least-32-bytes!!")
        client = Client(s.urls, token=bad)
        async with client:
            with pytest.raises(Refused) as refused:
                await asyncio.wait_for(client.send(to=BOB, content="hi"), 10)
            assert refused.value.code == "unauthorized"
            with pytest.raises(Refused) as again:
                async for _ in client.messages():
                    pass
            assert again.value.code == "unauthorized"
            assert client.connections == 0
            started = time.monotonic()
            with pytest.raises(Refused):
                await client.send(to=BOB, content="again")
            assert time.monotonic() - started < 1


async def test_a_device_that_was_away_catches_up_past_another_devices_acks(
    redis_url: str,
) -> None:
    """Bob's laptop is away (its gateway killed) while his phone takes and acknowledges 20
    messages; the laptop comes back to a connect replay that starts after the phone's
    position, asks for what it missed (type 14) and shows all 20, once, in order."""
    async with system(redis_url, hubs=1) as s:
        gw1, gw2 = s.gateways
        async with Client(gw1.url, token=token(ALICE)) as alice:
            laptop = Client(gw2.url, token=token(BOB))
            async with laptop:
                on_laptop: list[Message] = []
                await alice.send(to=BOB, content="before")
                await asyncio.wait_for(collect(laptop, on_laptop, until=1), 20)
                gw2.kill()
                on_phone: list[Message] = []
                async with Client(gw1.url, token=token(BOB)) as phone:
                    for i in range(20):
                        await alice.send(to=BOB, content=f"away {i}")

                    async def phone_reads() -> None:
                        async for m in phone.messages():
                            on_phone.append(m)
                            if m.content == "away 19":
                                return

                    await asyncio.wait_for(phone_reads(), 20)
                # (The phone may also show "before", if the laptop had not acknowledged it.)
                assert [m.content for m in on_phone][-20:] == [f"away {i}" for i in range(20)]
                gw2.restart()
                await asyncio.wait_for(collect(laptop, on_laptop, until=21), 30)
                assert laptop.connections >= 2
        assert [m.content for m in on_laptop] == ["before", *(f"away {i}" for i in range(20))]


async def test_messages_are_not_given_once_close_has_begun(redis_url: str) -> None:
    """Bob's reader is still taking messages while close() waits for the gateway to take
    its last acknowledgements: it gets no more (they could no longer be acknowledged), so
    the next client for bob shows each of them, and nothing the first one showed (the
    chaos soak, bench/chaos.py, found them shown twice across a restart)."""
    async with system(redis_url, hubs=1) as s:
        async with Client(s.urls[0], token=token(ALICE)) as alice:
            for i in range(10):
                await alice.send(to=BOB, content=f"n{i}")
        bob = Client(s.urls[1], token=token(BOB))
        first: list[Message] = []
        go_on = asyncio.Event()

        async def slow_reader() -> None:
            async for m in bob.messages():
                first.append(m)
                await go_on.wait()  # the application is busy with the first one

        reader = asyncio.create_task(slow_reader())
        await wait_until(lambda: bool(first) and bob._state.waiting >= 9, what="all 10 arrived")
        closing = asyncio.create_task(bob.close())
        await wait_until(lambda: bob._closing, what="close() begun")
        go_on.set()  # the reader asks for more while close() waits for the gateway
        await asyncio.wait_for(closing, 10)
        await asyncio.wait_for(reader, 10)
        second: list[Message] = []
        async with Client(s.urls[0], token=token(BOB)) as bob_again:
            async with Client(s.urls[0], token=token(ALICE)) as alice:
                await alice.send(to=BOB, content="last")

            async def until_last() -> None:
                async for m in bob_again.messages():
                    second.append(m)
                    if m.content == "last":
                        return

            await asyncio.wait_for(until_last(), 20)
        twice = sorted(m.content for m in first if m.id in {n.id for n in second})
        assert not twice, f"shown by both clients: {twice}"
        assert [m.content for m in first] == ["n0"]
        assert [m.content for m in second] == [*(f"n{i}" for i in range(1, 10)), "last"]
