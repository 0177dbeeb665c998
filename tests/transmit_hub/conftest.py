"""Fixtures for the hub's tests: a real hub on a free port and real links to it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.helpers import free_port, wait_until
from transmit_hub import (
    Delivered,
    Delivery,
    GatewayId,
    HubLink,
    LinkDown,
    LinkEvent,
    LinkUp,
    Message,
    MessageId,
    NotDelivered,
    Recipient,
    TransmitMap,
    Undeliverable,
    UserId,
)


def tmap(
    msg_id: str, targets: dict[str, tuple[int, ...]], *, sender: int = 1, content: str = ""
) -> TransmitMap:
    """A TransmitMap of a private message to ``targets`` (gateway id -> user ids)."""
    body = content or f"body {msg_id}"
    message = Message(MessageId(msg_id), UserId(sender), 0, 1, 0, 1_700_000_000_000, body)
    return TransmitMap(
        message,
        {GatewayId(g): tuple(Recipient(UserId(u)) for u in users) for g, users in targets.items()},
    )


class EventViews:
    """Views of ``self.events`` (the events a link or a pool yielded), for the collectors."""

    events: list[LinkEvent]

    @property
    def deliveries(self) -> list[Delivery]:
        return [d for e in self.events if isinstance(e, Delivered) for d in e.deliveries]

    @property
    def notices(self) -> list[Undeliverable]:
        return [n for e in self.events if isinstance(e, NotDelivered) for n in e.notices]

    @property
    def ups(self) -> list[LinkUp]:
        return [e for e in self.events if isinstance(e, LinkUp)]

    @property
    def downs(self) -> list[LinkDown]:
        return [e for e in self.events if isinstance(e, LinkDown)]

    def message_ids(self) -> list[str]:
        return [d.message.id for d in self.deliveries]


@dataclass
class Collector(EventViews):
    """Every event a link yields, gathered by a background task."""

    link: HubLink
    events: list[LinkEvent] = field(default_factory=list)

    async def wait_deliveries(self, n: int, timeout: float = 10.0) -> list[Delivery]:  # noqa: ASYNC109
        await wait_until(
            lambda: len(self.deliveries) >= n,
            timeout=timeout,
            what=f"{n} deliveries on {self.link.gateway_id} (have {len(self.deliveries)})",
        )
        return self.deliveries

    async def wait_notices(self, n: int, timeout: float = 10.0) -> list[Undeliverable]:  # noqa: ASYNC109
        await wait_until(
            lambda: len(self.notices) >= n,
            timeout=timeout,
            what=f"{n} notices on {self.link.gateway_id} (have {len(self.notices)})",
        )
        return self.notices


LinkFactory = Callable[..., Awaitable[Collector]]


@pytest.fixture
async def make_link() -> AsyncIterator[LinkFactory]:
    """Open real HubLinks that collect their events; all are closed after the test."""
    opened: list[tuple[HubLink, asyncio.Task[None]]] = []

    async def factory(
        target: str, gateway_id: str, *, connect: bool = True, **options: object
    ) -> Collector:
        link = HubLink(target, GatewayId(gateway_id), **options)  # type: ignore[arg-type]
        await link.start()
        collector = Collector(link)

        async def pump() -> None:
            async for event in link.events():
                collector.events.append(event)

        opened.append((link, asyncio.create_task(pump())))
        if connect:
            await link.wait_connected(10)
        return collector

    try:
        yield factory
    finally:
        for link, pump in opened:
            await link.close()
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump


async def hub_process_with_link(
    make_link: LinkFactory,
    *args: str,
    env: dict[str, str] | None = None,
    **link_options: object,
) -> str:
    """``python -m transmit_hub --listen <free port> *args`` (environment ``env``, default
    this process's), a link ``gw-1`` attached to it (``link_options``: its TLS, say), then
    SIGTERM: the hub's stderr, once it has exited 0."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "transmit_hub",
        "--listen",
        f"127.0.0.1:{port}",
        *args,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        gw = await make_link(f"127.0.0.1:{port}", "gw-1", connect=False, **link_options)
        await gw.link.wait_connected(30)
    finally:
        proc.terminate()
        _, raw = await asyncio.wait_for(proc.communicate(), 30)
    err = raw.decode()
    assert proc.returncode == 0, err[-2000:]
    return err


@contextlib.asynccontextmanager
async def connect_server(
    connect: Callable[[Any, Any], Awaitable[None]],
) -> AsyncIterator[tuple[Any, str]]:
    """A grpc.aio server that answers the hub's ``Connect`` with ``connect`` (a scripted
    or hostile hub), on a free port: the server and its address; stopped at the end."""
    import grpc  # type: ignore[import-untyped]
    from grpc import aio

    from transmit_hub.transport import SERVICE_NAME

    server = aio.server()
    handler = grpc.stream_stream_rpc_method_handler(connect)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE_NAME, {"Connect": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield server, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def detach_of_a_frozen_receiver(
    hub: Any, make_link: LinkFactory, *, content: str, within: float
) -> tuple[float, Collector]:
    """gw-r, behind a proxy that freezes, is written to by gw-s until ``hub`` detaches it
    (within ``within`` seconds) and gw-s is told so (a NOT_ATTACHED notice; QUEUE_FULL ones
    may come first), and the bytes the hub held for gw-r, the frame held in a write
    included, are given back: seconds from the freeze to the detach, and gw-s. The proxy
    is thawed at the end."""
    from tests.proxy import FreezableProxy
    from transmit_hub import GatewayId, UndeliverableReason

    async with FreezableProxy("127.0.0.1", hub.port) as proxy:
        receiver = await make_link(proxy.address, "gw-r")
        sender = await make_link(hub.address, "gw-s")
        assert sender.link.send(tmap("m-0", {"gw-r": (1,)}))
        await receiver.wait_deliveries(1)
        proxy.freeze()
        frozen_at = time.monotonic()

        async def write() -> None:
            for n in itertools.count(1):
                sender.link.send(tmap(f"m-{n}", {"gw-r": (1,)}, content=content))
                await asyncio.sleep(0.005)  # pacing, not synchronisation

        writer = asyncio.create_task(write())
        try:
            await wait_until(
                lambda: not hub.registry.is_attached(GatewayId("gw-r")),
                timeout=within,
                what="the hub to detach the frozen gateway",
            )
            took = time.monotonic() - frozen_at
            await wait_until(
                lambda: any(n.reason is UndeliverableReason.NOT_ATTACHED for n in sender.notices),
                what="NOT_ATTACHED for the frozen gateway",
            )
        finally:
            writer.cancel()
        budget = hub.registry.budget
        await wait_until(
            lambda: (budget.total, budget.writing) == (0, 0), what="the held bytes given back"
        )
        proxy.thaw()
        return took, sender
