"""The Python client's core (:class:`~im_gateway.client_state.ClientState`) against the
gateway's session (in process, on a fake socket) when a large group's node is silent at
connect: the marker does not list the group, and the gateway follows it once read, from
the user's position. A client that showed part of it on an earlier connection, while
another device of its user acknowledged further, is shown the rest once each, in order;
a client new at that connect starts where the user is."""

from __future__ import annotations

import asyncio

from im_gateway.client_state import ClientState
from im_gateway.session_limits import SessionLimits
from im_gateway.sessions import Session
from im_gateway.tasks import cancel_and_wait
from tests.helpers import wait_until
from tests.im_gateway.fakes import FakeWebSocket
from tests.im_gateway.test_client_state import taken
from tests.im_gateway.test_unread_groups import (
    GROUP,
    B,
    SilentNodeStore,
    posts,
    store,  # noqa: F401 - the fixture
    wired,  # noqa: F401 - the fixture
)
from tests.im_gateway.wiring import Wired

G = f"g{GROUP}"


class Connection:
    """One connection of ``state`` to a session (``?groups=1``) that reads what the
    client writes: frames go each way, in order, whenever :meth:`pump` is called."""

    def __init__(self, gateway: Wired, silent: SilentNodeStore, state: ClientState) -> None:
        self.ws = FakeWebSocket()
        self.state = state
        self.read = 0
        self.written: list[str] = []
        """What the client wrote on this connection."""
        self.session = Session(
            self.ws,
            B,
            store=silent,
            pipeline=gateway.pipeline,
            groups=gateway.fanout,
            limits=SessionLimits(),
            lists_groups=True,
        )
        gateway.fanout.add(self.session)
        state.connected()
        self.session.start()
        self.reader = asyncio.create_task(self.session.run())

    def pump(self) -> None:
        sent = self.ws.sent
        for text in sent[self.read :]:
            self.state.received(text)
        self.read = len(sent)
        for text in self.state.take_writes():
            self.written.append(text)
            self.ws.client_sends(text)

    async def marker(self) -> dict[str, object]:
        """Pump until the connect replay's end marker reached the client; that marker."""

        def arrived() -> bool:
            self.pump()
            return any(f["type"] == 14 for f in self.ws.frames())

        await wait_until(arrived, timeout=5, what="the connect replay's end marker")
        return next(f for f in self.ws.frames() if f["type"] == 14)

    async def close(self) -> None:
        self.reader.cancel()
        await self.session.close()
        await cancel_and_wait(self.reader)
        self.state.disconnected()


async def shown_until(c: Connection, n: int, into: list[str]) -> None:
    """Pump until the client has shown ``n`` messages in all (into ``into``)."""

    def done() -> bool:
        c.pump()
        into.extend(m.seq for m in taken(c.state))
        return len(into) >= n

    await wait_until(done, timeout=5, what=f"{n} messages shown")


async def test_a_reconnecting_client_is_shown_what_another_device_acknowledged_once(
    wired: Wired,  # noqa: F811
    store: SilentNodeStore,  # noqa: F811
) -> None:
    """The client showed posts 1-3; another device acknowledged up to 5; the client
    reconnects while the group's node is silent, and 6 is posted: once the group is read,
    the gateway pushes 6 (from the user's position) and the client asks for the rest from
    its own position 3: it shows 4, 5, 6, once each, in order."""
    state = ClientState(int(B), id_prefix="t")
    await posts(store, "1", "2", "3")
    first = Connection(wired, store, state)
    seen: list[str] = []
    await shown_until(first, 3, seen)
    assert seen == [f"{G}:1", f"{G}:2", f"{G}:3"]
    await first.close()

    await posts(store, "4", "5")
    await store.ack_group(B, GROUP, 5)  # another device of B's
    store.silent.add(GROUP)
    again = Connection(wired, store, state)
    assert "groups" not in await again.marker()  # not listed: the group's node is silent
    await posts(store, "6")
    store.silent.clear()
    seen = []
    await shown_until(again, 3, seen)
    assert seen == [f"{G}:4", f"{G}:5", f"{G}:6"]
    assert f'{{"type":14,"seq":"{G}:3"}}' in again.written
    await again.close()


async def test_a_client_new_at_the_connect_starts_where_the_user_is(
    wired: Wired,  # noqa: F811
    store: SilentNodeStore,  # noqa: F811
) -> None:
    """A client that never had the group (another device acknowledged up to 5) connects
    while its node is silent: once read, it is shown 6 only, and asks for nothing."""
    await posts(store, "1", "2", "3", "4", "5")
    await store.ack_group(B, GROUP, 5)
    store.silent.add(GROUP)
    state = ClientState(int(B), id_prefix="t")
    c = Connection(wired, store, state)
    assert "groups" not in await c.marker()
    await posts(store, "6")
    store.silent.clear()
    seen: list[str] = []
    await shown_until(c, 1, seen)
    await wait_until(lambda: c.session.follows_groups and not c.session.replaying, timeout=5)
    c.pump()
    seen.extend(m.seq for m in taken(state))
    assert seen == [f"{G}:6"]
    assert not [w for w in c.written if '"type":14' in w]
    await c.close()
