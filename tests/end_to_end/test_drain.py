"""Graceful drain of a gateway (SIGTERM): stop accepting, answer what was taken, close 1012."""

from __future__ import annotations

import asyncio
import functools
import signal
import time

from tests.end_to_end.conftest import ClientFactory, GatewayFactory
from tests.end_to_end.harness import Client, Frame, GatewayProcess, http_get
from tests.helpers import wait_until
from transmit_hub.server import HubServer

USERS = 100
DRAIN_TIMEOUT = 5.0


def has_id(frame_id: object, f: Frame) -> bool:
    """The frame answers (or is) the one with this id."""
    return f.get("id") == frame_id


async def test_drain_in_process_reports_503_and_closes_1012(
    start_gateway: GatewayFactory, open_client: ClientFactory
) -> None:
    """At once /healthz is unhealthy (draining) and the port refuses; sockets close 1012."""
    gw = await start_gateway("gw-drain")
    a = await open_client(gw, 1)
    draining = asyncio.create_task(gw.drain(3.0))
    await asyncio.sleep(0)  # the drain's first step runs without awaiting
    ok, report = await gw.health()
    assert not ok
    assert "draining" in str(report["reason"])
    try:
        await http_get(gw.port, "/healthz")
    except ConnectionRefusedError:
        pass
    else:
        raise AssertionError("the listening port still accepts during a drain")
    await draining
    await asyncio.wait_for(a.closed, 5)
    assert a.ws.close_code == 1012


async def test_sigterm_drains_100_sending_users_to_the_other_gateway(
    hub: HubServer, redis_url: str
) -> None:
    """SIGTERM on a gateway with 100 users sending: every socket closes with 1012; what it
    stored is exactly what it acknowledged (every frame taken was answered); it exits 0
    within --drain-timeout; on the other gateway every user has every acknowledged message,
    and the frames left unanswered, sent again with the same ids, are all accepted."""
    extra = ("--drain-timeout", str(DRAIN_TIMEOUT), "--rate-limit", "0")
    leaving = GatewayProcess(
        gateway_id="gw-leaving", hub=hub.address, redis_url=redis_url, extra=extra
    )
    staying = GatewayProcess(
        gateway_id="gw-staying", hub=hub.address, redis_url=redis_url, extra=extra
    )
    clients: list[Client] = []
    try:
        await leaving.wait_healthy()
        await staying.wait_healthy()
        users = list(range(1, USERS + 1))
        clients = await asyncio.gather(*(Client.open(leaving.port, u) for u in users))
        await asyncio.gather(*(c.wait_for(lambda f: f["type"] == 14) for c in clients))
        sent: dict[int, list[dict[str, object]]] = {u: [] for u in users}
        acked: dict[str, str] = {}  # client id -> message id
        enough = asyncio.Event()

        async def chatter(client: Client) -> None:
            """Send to the next user, each frame once its previous one is answered."""
            to = client.user % USERS + 1
            while not client.closed.done():
                cid = client.next_id()
                frame = {"type": 1, "id": cid, "to": to, "contentType": 0, "content": cid}
                sent[client.user].append(frame)
                try:
                    await client.send(frame)

                    def answers(f: Frame, cid: str = cid) -> bool:
                        return f.get("id") == cid and f["type"] in (10, 99)

                    answer = await client.wait_for(answers, timeout=30)
                except Exception:
                    return  # closed with the frame unanswered
                assert answer["type"] == 10, answer
                acked[cid] = str(answer["msgId"])
                if len(acked) >= 3 * USERS:
                    enough.set()

        senders = [asyncio.create_task(chatter(c)) for c in clients]
        await asyncio.wait_for(enough.wait(), 60)
        started = time.monotonic()
        leaving.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(leaving.proc.wait, DRAIN_TIMEOUT + 10)
        elapsed = time.monotonic() - started
        assert code == 0, leaving.output()
        assert elapsed < DRAIN_TIMEOUT, f"exited after {elapsed:.1f} s"
        await asyncio.wait_for(asyncio.gather(*senders), 10)
        assert {c.ws.close_code for c in clients} == {1012}
        answered_on_leaving = dict(acked)
        unanswered = [f for u in users for f in sent[u] if f["id"] not in acked]

        # Every user reconnects to the other gateway; the connect replay brings the inbox.
        moved = await asyncio.gather(*(Client.open(staying.port, u) for u in users))
        clients.extend(moved)
        await asyncio.gather(*(c.wait_for(lambda f: f["type"] == 14) for c in moved))
        stored = {str(m["id"]) for c in moved for m in c.messages()}
        assert stored == set(answered_on_leaving.values()), (
            f"{len(stored - set(answered_on_leaving.values()))} stored but never answered, "
            f"{len(set(answered_on_leaving.values()) - stored)} answered but not stored"
        )
        # The frames left unanswered go again, with the same ids, and are accepted.
        by_user = {c.user: c for c in moved}
        for frame in unanswered:
            sender = by_user[int(str(frame["id"])[1:].split("-")[0])]
            await sender.send(frame)
        for frame in unanswered:
            sender = by_user[int(str(frame["id"])[1:].split("-")[0])]
            answer = await sender.wait_for(functools.partial(has_id, frame["id"]))
            assert answer["type"] == 10, answer
            acked[str(frame["id"])] = str(answer["msgId"])
        everything = set(acked.values())

        async def all_delivered() -> bool:
            got = {str(m["id"]) for c in moved for m in c.messages()}
            return got == everything

        await wait_until(all_delivered, timeout=20, what="every acknowledged message")
    finally:
        for c in clients:
            await c.close()
        leaving.stop()
        staying.stop()
