"""Several hubs, with real processes (``python -m transmit_hub``, ``python -m im_gateway``,
redis-server): routing over three hubs, and live delivery going on when one hub is
SIGKILLed or SIGSTOPped, or when every hub goes and one comes back."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.end_to_end.harness import Client, GatewayProcess, http_get
from tests.end_to_end.processes import HubProcess
from tests.helpers import wait_until
from transmit_hub.pool import rank

GROUP = 7


async def open_client(gateway: GatewayProcess, user: int) -> Client:
    client = await Client.open(gateway.port, user)
    await client.wait_for(lambda f: f["type"] == 14, what="the replay end marker")
    return client


async def join(client: Client, group: int) -> None:
    cid = client.next_id()
    await client.send({"type": 12, "id": cid, "to": group})
    reply = await client.wait_for(lambda f: f.get("id") == cid)
    assert reply["type"] == 10, reply


@dataclass
class Cluster:
    """Real hub and gateway processes sharing the test Redis; every gateway on every hub."""

    hubs: list[HubProcess]
    gateways: list[GatewayProcess]
    clients: list[Client] = field(default_factory=list)

    @property
    def hub_list(self) -> str:
        return ",".join(h.address for h in self.hubs)

    async def all_attached(self, hub: HubProcess) -> bool:
        return await hub.gateways() == {g.gateway_id for g in self.gateways}

    async def wait_attached(self, timeout: float = 20.0) -> None:  # noqa: ASYNC109 - a deadline
        for hub in self.hubs:
            await wait_until(
                lambda h=hub: self.all_attached(h),  # type: ignore[misc]
                timeout=timeout,
                what=f"every gateway attached to {hub.hub_id}",
            )

    async def deliveries_sent(self) -> int:
        return sum([await h.deliveries_sent() for h in self.hubs])

    async def client(self, gateway: int, user: int) -> Client:
        client = await open_client(self.gateways[gateway], user)
        self.clients.append(client)
        return client


@contextlib.asynccontextmanager
async def cluster(
    redis_url: str, hubs: int, gateways: int, extra: Sequence[str] = ()
) -> AsyncIterator[Cluster]:
    started_hubs = [HubProcess(f"hub-{i}") for i in range(hubs)]
    c = Cluster(started_hubs, [])
    try:
        for hub in started_hubs:
            await hub.wait_serving()
        c.gateways = [
            GatewayProcess(
                gateway_id=f"gw-{i + 1}",
                hub=c.hub_list,
                redis_url=redis_url,
                extra=("--group-join", "open", *extra),
            )
            for i in range(gateways)
        ]
        for gateway in c.gateways:
            await gateway.wait_healthy()
        await c.wait_attached()
        yield c
    finally:
        for client in c.clients:
            with contextlib.suppress(Exception):
                await client.close()
        for gateway in c.gateways:
            gateway.stop()
        for hub in started_hubs:
            hub.stop()


async def test_three_hubs_route_private_and_group_messages_once_each(redis_url: str) -> None:
    """3 hubs, 3 gateways: private and group messages arrive once each; the hubs'
    deliveriesSent sum rises by exactly one per message and target gateway; every hub's
    ListGateways shows every gateway; /healthz lists the three hubs up."""
    async with cluster(redis_url, hubs=3, gateways=3) as c:
        status, body, _ = await http_get(c.gateways[0].port, "/healthz")
        assert status == 200
        assert json.loads(body)["hubs"] == {h.address: "up" for h in c.hubs}
        a = await c.client(0, 1)
        b = await c.client(1, 2)
        b2 = await c.client(1, 3)
        d = await c.client(2, 4)
        for client in (a, b, b2, d):
            await join(client, GROUP)
        before = await c.deliveries_sent()
        expected = 0
        for i in range(5):
            assert (await a.say(2, f"p{i}"))["type"] == 10  # gw-2 only
            expected += 1
            assert (await a.say(GROUP, f"g{i}", group=True))["type"] == 10  # gw-2 and gw-3
            expected += 2
        await b.wait_contents([*(f"p{i}" for i in range(5)), *(f"g{i}" for i in range(5))])
        await b2.wait_contents([f"g{i}" for i in range(5)])
        await d.wait_contents([f"g{i}" for i in range(5)])

        async def settled(extra: int = 0) -> bool:
            return await c.deliveries_sent() - before == expected + extra

        await wait_until(settled, what=f"{expected} deliveries over the hubs")
        # One more round trip: nothing late adds to the count.
        assert (await a.say(4, "last"))["type"] == 10
        await d.wait_contents(["last"])
        await wait_until(lambda: settled(1), what="one more delivery")
        for client in (b, b2, d):
            ids = [f["id"] for f in client.messages()]
            assert len(ids) == len(set(ids)), client.contents()
        assert len(b.messages()) == 10
        assert len(d.messages()) == 6
        for hub in c.hubs:
            assert await c.all_attached(hub)


@dataclass
class Traffic:
    """Steady traffic from senders on gw-1 to receivers on gw-2 and gw-3."""

    senders: list[Client]
    receivers: list[Client]
    rate: float
    sent: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Client id -> (sender index, receiver index)."""

    async def run(self, seconds: float) -> None:
        """Send at ``rate`` msgs/s in all, round robin, for ``seconds`` (paced, no acks
        awaited: the acks are collected from the frames afterwards)."""
        interval = len(self.senders) / self.rate
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < seconds:
            for s, sender in enumerate(self.senders):
                r = s % len(self.receivers)
                cid = f"s{s}-{n}"
                self.sent[cid] = (s, r)
                await sender.send(
                    {"type": 1, "id": cid, "to": self.receivers[r].user, "content": cid}
                )
            n += 1
            delay = start + n * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)  # pacing, not synchronisation

    def acked(self) -> dict[str, int]:
        """Acknowledged client id -> receiver index."""
        got: dict[str, int] = {}
        for sender in self.senders:
            for frame in sender.frames:
                if frame["type"] == 10 and frame["id"] in self.sent:
                    got[frame["id"]] = self.sent[frame["id"]][1]
        return got

    def longest_gap(self) -> float:
        """The longest time between two new live arrivals, over the receivers."""
        worst = 0.0
        for receiver in self.receivers:
            seen: set[str] = set()
            times = []
            for at, msg_id in receiver.arrivals:
                if msg_id not in seen:
                    seen.add(msg_id)
                    times.append(at)
            worst = max([worst, *(b - a for a, b in itertools.pairwise(times))])
        return worst


async def _failover(redis_url: str, how: signal.Signals, max_gap: float) -> dict[str, Any]:
    async with cluster(redis_url, hubs=3, gateways=3) as c:
        senders = [await c.client(0, 100 + i) for i in range(4)]
        receivers = [await c.client(1 + i % 2, 200 + i) for i in range(4)]
        traffic = Traffic(senders, receivers, rate=400)
        victim_address = rank("gw-1>gw-2", [h.address for h in c.hubs])[0]
        victim = next(h for h in c.hubs if h.address == victim_address)

        async def victim_down_for_gw1() -> bool:
            _, body, _ = await http_get(c.gateways[0].port, "/healthz")
            return bool(json.loads(body)["hubs"].get(victim_address) == "down")

        async def break_hub() -> None:
            # Traffic flows first: every receiver has had some live arrivals.
            await wait_until(
                lambda: all(len(r.arrivals) >= 50 for r in receivers),
                timeout=30,
                what="traffic flowing before the fault",
            )
            if how is signal.SIGKILL:
                victim.kill()
            elif how is signal.SIGTERM:
                victim.proc.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(victim.proc.wait, 10) == 0, victim.output()
            else:
                victim.proc.send_signal(signal.SIGSTOP)
            # Down until gw-1 has noticed (at once for a kill; by keepalive for a stop).
            await wait_until(victim_down_for_gw1, timeout=30, what="gw-1 sees the hub down")
            if how in (signal.SIGKILL, signal.SIGTERM):
                victim.restart()
            else:
                victim.proc.send_signal(signal.SIGCONT)

        breaker = asyncio.create_task(break_hub())
        await traffic.run(8.0 if how is signal.SIGKILL else 10.0)
        await breaker
        await wait_until(
            lambda: len(traffic.acked()) == len(traffic.sent), what="every message acked"
        )
        acked = traffic.acked()

        def arrived() -> bool:
            return all(cid in receivers[r].contents() for cid, r in acked.items())

        await wait_until(arrived, timeout=20, what="every acked message, live")
        for receiver in receivers:
            assert not receiver.closed.done()  # never reconnected
            contents = receiver.contents()
            assert len(contents) == len(set(contents)), "a message arrived twice"
        gap = traffic.longest_gap()
        assert gap < max_gap, f"live delivery paused {gap:.2f}s"
        await c.wait_attached(timeout=30)  # the hub that came back has every gateway again
        result = {"sent": len(traffic.sent), "acked": len(acked), "gap": round(gap, 3)}
        print(f"failover by {how.name}: {result}")  # shown with pytest -s
        return result


async def test_sigkill_of_the_hub_gw1_sends_through_pauses_live_delivery_under_1s(
    redis_url: str,
) -> None:
    """400 msgs/s from gw-1 to gw-2 and gw-3; SIGKILL of gw-1's hub for gw-2: every acked
    message arrives live to clients that never reconnect, none twice, with no pause of 1 s;
    the restarted hub has every gateway again."""
    await _failover(redis_url, signal.SIGKILL, max_gap=1.0)


async def test_sigterm_of_the_hub_gw1_sends_through_moves_gateways_at_once(
    redis_url: str,
) -> None:
    """The same with the hub stopped gracefully (SIGTERM, as a deploy does): it exits 0,
    the gateways move to the other hubs at once, every acked message arrives live, none
    twice, with no pause of 1 s."""
    await _failover(redis_url, signal.SIGTERM, max_gap=1.0)


async def test_sigstop_of_the_hub_gw1_sends_through_pauses_live_delivery_under_6s(
    redis_url: str,
) -> None:
    """The same with the hub SIGSTOPped for 5 s (noticed by keepalive): every acked message
    arrives live, none twice, the longest pause under 6 s; once continued, the hub has every
    gateway again."""
    await _failover(redis_url, signal.SIGSTOP, max_gap=6.0)


async def test_all_hubs_down_then_one_back_loses_nothing(redis_url: str) -> None:
    """Both hubs killed while A on gw-1 keeps writing to B on gw-2; one hub back: B, still
    connected, gets every acked message live (catch-up), once each; /healthz says 503 while
    no hub is linked and 200 once one is."""
    async with cluster(redis_url, hubs=2, gateways=2) as c:
        a = await c.client(0, 1)
        b = await c.client(1, 2)
        for i in range(5):
            assert (await a.say(2, f"before-{i}"))["type"] == 10
        await b.wait_contents([f"before-{i}" for i in range(5)])
        for hub in c.hubs:
            hub.kill()

        async def unhealthy() -> bool:
            return (await http_get(c.gateways[1].port, "/healthz"))[0] == 503

        await wait_until(unhealthy, what="503 with no hub")
        during = [f"during-{i}" for i in range(20)]
        for content in during:
            assert (await a.say(2, content))["type"] == 10  # stored in the inbox
        c.hubs[1].restart()
        await c.hubs[1].wait_serving()
        await b.wait_contents(during, timeout=20)
        for i in range(5):
            assert (await a.say(2, f"after-{i}"))["type"] == 10
        await b.wait_contents([f"after-{i}" for i in range(5)])
        assert not b.closed.done()
        contents = b.contents()
        assert len(contents) == len(set(contents))
        status, body, _ = await http_get(c.gateways[1].port, "/healthz")
        assert status == 200
        assert json.loads(body)["hubs"] == {c.hubs[0].address: "down", c.hubs[1].address: "up"}
