"""Both client libraries through a real drain: a gateway process SIGTERMed while messages
flow closes its sockets with 1012, and each client is back on the next gateway within 1 s
(measured from the 1012 close to the next open), every send returns with its message id,
and every message is shown once.

The Python client is driven here; the JavaScript one by ``tests/js/drain.e2e.mjs`` (the
module as a gateway serves it), which asks this side to drain over a control connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator

import pytest

from im_gateway import client as client_module
from im_gateway.client import Client, Message, Sent
from tests.end_to_end.harness import GatewayProcess, token
from tests.helpers import wait_until
from tests.node import control_server, node_e2e
from transmit_hub.server import HubServer

ALICE, BOB = 4201, 4202
TOTAL = 300
IN_FLIGHT = 50
DRAIN_AFTER = 100
"""Sends answered before gw-1 gets its SIGTERM (the rest flow through the drain)."""
DRAIN_TIMEOUT = 5.0
BACK_WITHIN = 1.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@contextlib.asynccontextmanager
async def two_gateways(hub: HubServer, redis_url: str) -> AsyncIterator[list[GatewayProcess]]:
    """gw-1 and gw-2 as real processes on one hub and one Redis, stopped afterwards."""
    extra = ("--drain-timeout", str(DRAIN_TIMEOUT), "--rate-limit", "0")
    gateways = [
        GatewayProcess(gateway_id=f"gw-{n}", hub=hub.address, redis_url=redis_url, extra=extra)
        for n in (1, 2)
    ]
    try:
        for gateway in gateways:
            await gateway.wait_healthy()
        yield gateways
    finally:
        for gateway in gateways:
            gateway.stop()


async def drain(gateway: GatewayProcess) -> None:
    """SIGTERM, and the process exits 0 within --drain-timeout."""
    gateway.proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(gateway.proc.wait, DRAIN_TIMEOUT + 10)
    assert code == 0, gateway.output()


class UrlWatch:
    """When a client's current URL changes (polled every millisecond): its connections."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.changes: list[tuple[float, str | None]] = []
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        last: object = object()
        while True:
            if self.client.url != last:
                last = self.client.url
                self.changes.append((time.monotonic(), self.client.url))
            await asyncio.sleep(0.001)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def back_after_drain(self, drained: str, other: str) -> float:
        """Seconds from losing ``drained`` to being connected to ``other``."""
        urls = [url for _, url in self.changes]
        lost = urls.index(None, urls.index(drained))
        back = urls.index(other, lost)
        assert set(urls[lost:back]) == {None}, f"went elsewhere first: {self.changes}"
        return self.changes[back][0] - self.changes[lost][0]


async def test_python_client_is_back_on_the_other_gateway_within_1s_of_a_drain(
    hub: HubServer,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """alice and bob on [gw-1, gw-2], alice sending to bob with 50 in flight, gw-1 SIGTERMed:
    both see 1012 and are on gw-2 within 1 s; all 300 sends return with distinct message
    ids; bob is shown each once, in order."""
    caplog.set_level(logging.INFO, logger="im_gateway.client")
    # A reconnect that waited for a backoff (1.25 s to 2.5 s here) would miss the bound.
    monkeypatch.setattr(client_module, "BACKOFF_INITIAL", 2.5)
    async with two_gateways(hub, redis_url) as (gw1, gw2):
        urls = [f"ws://127.0.0.1:{gw.port}/ws" for gw in (gw1, gw2)]
        async with (
            Client(urls, token=token(ALICE)) as alice,
            Client(urls, token=token(BOB)) as bob,
        ):
            watches = {"alice": UrlWatch(alice), "bob": UrlWatch(bob)}
            shown: list[Message] = []

            async def read() -> None:
                async for message in bob.messages():
                    shown.append(message)

            reader = asyncio.create_task(read())
            results: list[Sent | None] = [None] * TOTAL
            answered = 0
            next_index = 0
            enough = asyncio.Event()

            async def worker() -> None:
                nonlocal answered, next_index
                while next_index < TOTAL:
                    i = next_index
                    next_index += 1
                    results[i] = await asyncio.wait_for(alice.send(to=BOB, content=f"m{i}"), 30)
                    answered += 1
                    if answered >= DRAIN_AFTER:
                        enough.set()

            workers = [asyncio.create_task(worker()) for _ in range(IN_FLIGHT)]
            await asyncio.wait_for(enough.wait(), 60)
            assert gw1.proc.poll() is None
            await drain(gw1)
            await asyncio.wait_for(asyncio.gather(*workers), 60)

            async def all_shown() -> bool:
                return len(shown) >= TOTAL

            await wait_until(all_shown, timeout=30, what="bob shown every message")
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            for watch in watches.values():
                await watch.stop()

    closes = [r.getMessage() for r in caplog.records if "closed (" in r.getMessage()]
    drained = [c for c in closes if urls[0] in c]
    assert len(drained) == 2, closes  # alice's and bob's connections to gw-1
    assert all(c.endswith("(1012)") for c in drained), drained
    for name, watch in watches.items():
        seconds = watch.back_after_drain(urls[0], urls[1])
        print(f"{name} back on gw-2 {seconds * 1000:.1f} ms after the 1012 close")
        assert seconds < BACK_WITHIN, f"{name} back on gw-2 after {seconds:.3f} s"
    sent = [r for r in results if r is not None]
    assert len(sent) == TOTAL
    assert len({r.msg_id for r in sent}) == TOTAL
    ids = [m.id for m in shown]
    assert len(ids) == len(set(ids)), "bob was shown a message twice"
    assert set(ids) == {r.msg_id for r in sent}
    seqs = [int(m.seq) for m in shown]
    assert seqs == sorted(seqs), "bob's messages out of order"


async def test_js_client_is_back_on_the_other_gateway_within_1s_of_a_drain(
    hub: HubServer, redis_url: str
) -> None:
    """The same through the module a gateway serves, in Node: the Node side records each
    socket's open and close (code, time) and asserts; this side drains gw-1 when asked."""
    async with two_gateways(hub, redis_url) as (gw1, gw2):
        drained: list[str] = []

        async def control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while line := (await reader.readline()).decode().strip():
                assert line == "drain gw-1", line
                await drain(gw1)
                drained.append(line)
                writer.write(f"ok {line}\n".encode())
                await writer.drain()

        async with control_server(control) as control_port:
            config = {
                "http": f"http://127.0.0.1:{gw2.port}",
                "urls": [f"ws://127.0.0.1:{gw.port}/ws" for gw in (gw1, gw2)],
                "tokens": {"alice": token(ALICE), "bob": token(BOB)},
                "users": {"alice": ALICE, "bob": BOB},
                "total": TOTAL,
                "inFlight": IN_FLIGHT,
                "drainAfter": DRAIN_AFTER,
                "backWithinMs": BACK_WITHIN * 1000,
                "controlPort": control_port,
            }
            report = await node_e2e("drain.e2e.mjs", config, within=200)
        assert drained == ["drain gw-1"], report
