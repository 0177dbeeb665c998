"""HubPool: the choice of hub, what is sent again, "not attached" bookkeeping (pure), and the
pool itself against several real in-process hubs."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.helpers import free_port, wait_until
from transmit_hub import (
    GatewayId,
    HubPool,
    HubServer,
    LinkDown,
    LinkEvent,
    LinkLost,
    LinkUp,
    MessageId,
    TransmitMap,
    UndeliverableReason,
)
from transmit_hub.config import HubConfig
from transmit_hub.errors import ConfigError
from transmit_hub.pool import Absences, SendLog, merge_resend, plan, rank, route_key
from transmit_hub.pool_plan import TRIM_SLACK

from .conftest import EventViews, tmap

# -- pure parts ----------------------------------------------------------------------------

HUBS = ("h1:1", "h2:2", "h3:3")


def test_rank_is_a_stable_permutation_that_spreads_keys() -> None:
    """rank() orders every hub once, the same way each time, and over many keys each of
    three hubs comes first for a fair share (20-47%)."""
    firsts: Counter[str] = Counter()
    for i in range(900):
        order = rank(f"gw-1>gw-{i}", HUBS)
        assert sorted(order) == sorted(HUBS)
        assert order == rank(f"gw-1>gw-{i}", HUBS)
        firsts[order[0]] += 1
    assert all(180 <= firsts[h] <= 420 for h in HUBS), firsts


def test_losing_a_hub_moves_only_its_own_keys() -> None:
    """Rendezvous: without one hub, every key keeps the order of the remaining hubs, so only
    the keys whose first hub was lost move."""
    for i in range(200):
        key = f"gw-1>gw-{i}"
        full = rank(key, HUBS)
        assert rank(key, HUBS[:2]) == tuple(h for h in full if h in HUBS[:2])


def test_route_key_is_the_sender_and_the_sorted_targets() -> None:
    """A map is placed by its sender and its target gateways, whatever their order."""
    one = tmap("m", {"gw-b": (1,)})
    assert route_key("gw-a", one) == "gw-a>gw-b"
    ab = tmap("m", {"gw-c": (1,), "gw-b": (2,)})
    ba = tmap("m", {"gw-b": (2,), "gw-c": (1,)})
    assert route_key("gw-a", ab) == route_key("gw-a", ba) == "gw-a>gw-b,gw-c"


def test_plan_sends_a_group_map_whole_unless_a_target_is_missing_there() -> None:
    """plan() keeps a map whole on the first hub; it splits off only the share of a target
    that the first hub lacks and a later hub has; a target missing everywhere stays."""
    group = tmap("m", {"gw-b": (1,), "gw-c": (2,), "gw-d": (3,)})
    assert plan(group, []) == []
    assert plan(group, ["h1", "h2"]) == [("h1", group)]
    assert plan(group, ["h1", "h2"], lambda h, g: False) == [("h1", group)]
    missing = {("h1", "gw-c"), ("h1", "gw-d"), ("h2", "gw-d")}
    parts = plan(group, ["h1", "h2"], lambda h, g: (h, g) in missing)
    assert [(hub, sorted(part.users)) for hub, part in parts] == [
        ("h1", ["gw-b", "gw-d"]),
        ("h2", ["gw-c"]),
    ]
    assert all(part.message is group.message for _, part in parts)


@given(
    targets=st.lists(st.sampled_from([f"gw-{i}" for i in range(6)]), min_size=1, unique=True),
    hubs=st.lists(st.sampled_from(HUBS), unique=True),
    missing=st.sets(
        st.tuples(st.sampled_from(HUBS), st.sampled_from([f"gw-{i}" for i in range(6)]))
    ),
)
def test_plan_gives_each_target_share_to_exactly_one_hub(
    targets: list[str], hubs: list[str], missing: set[tuple[str, str]]
) -> None:
    """Whatever hubs are attached and wherever targets are missing, plan() hands every
    target's share to exactly one attached hub, at most one part per hub, the message
    unchanged; a part goes to a later hub only for a target missing on the first."""
    group = tmap("m", {g: (1,) for g in targets})
    parts = plan(group, hubs, lambda h, g: (h, g) in missing)
    if not hubs:
        assert parts == []
        return
    seen = [g for _, part in parts for g in part.users]
    assert sorted(seen) == sorted(targets)
    assert len({hub for hub, _ in parts}) == len(parts)
    assert all(hub in hubs for hub, _ in parts)
    assert all(part.message is group.message for _, part in parts)
    for hub, part in parts:
        if hub != hubs[0]:
            assert all((hubs[0], g) in missing and (hub, g) not in missing for g in part.users)


def test_send_log_keeps_a_window_per_hub_and_a_bound() -> None:
    """through() returns what went through one hub within the window, oldest first; older
    records and those beyond max_entries are forgotten."""
    log = SendLog(window=5.0, max_entries=4)
    maps = [tmap(f"m{i}", {"gw-b": (1,)}) for i in range(6)]
    log.record(maps[0], "h1", 0.0)
    log.record(maps[1], "h2", 1.0)
    log.record(maps[2], "h1", 2.0)
    assert log.through("h1", 4.0) == [maps[0], maps[2]]
    assert log.through("h1", 5.5) == [maps[2]]  # m0 is older than the window
    for i in (3, 4, 5):
        log.record(maps[i], "h1", 6.0)
    assert len(log) == 4
    assert log.through("h1", 6.0) == [maps[2], maps[3], maps[4], maps[5]]
    log.record(tmap("m6", {"gw-b": (1,)}), "h2", 6.0)
    assert log.through("h1", 6.0) == [maps[3], maps[4], maps[5]]  # m2 beyond the bound


def test_send_log_drops_what_is_past_its_window_together() -> None:
    """Records past the window are dropped together once the oldest is TRIM_SLACK past
    it (not one per send); through() never returns one of them; the bound stays exact."""
    log = SendLog(window=1.0, max_entries=1000)
    maps = [tmap(f"m{i}", {"gw-b": (1,)}) for i in range(200)]
    for i, m in enumerate(maps[:100]):
        log.record(m, "h1", i * 0.001)  # 0 .. 0.099 s
    log.record(maps[100], "h1", 1.0 + TRIM_SLACK / 2)  # m0..m24 past the window
    assert len(log) == 101  # not trimmed yet
    assert log.through("h1", 1.0 + TRIM_SLACK / 2)[0] is maps[25]
    log.record(maps[101], "h1", 1.0 + TRIM_SLACK + 0.0101)  # m25 past window + slack
    assert log.through("h1", 1.0 + TRIM_SLACK + 0.0101)[0] is maps[61]
    bounded = SendLog(window=10.0, max_entries=3)
    for m in maps[:5]:
        bounded.record(m, "h1", 0.0)
        assert len(bounded) <= 3
    assert bounded.through("h1", 0.0) == maps[2:5]


def test_send_log_finds_a_share_and_the_hubs_tried() -> None:
    """share() returns one gateway's share of what went through a hub, with every hub that
    carried it so far; another hub's or an unknown message's share is None."""
    log = SendLog(window=10.0, max_entries=100)
    group = tmap("g", {"gw-b": (1,), "gw-c": (2,)})
    log.record(group, "h1", 0.0)
    found = log.share(group.message.id, GatewayId("gw-c"), "h1")
    assert found is not None
    part, tried = found
    assert dict(part.users) == {"gw-c": group.users[GatewayId("gw-c")]}
    assert tried == {"h1"}
    log.record(part, "h2", 0.1, tried | {"h2"})
    again = log.share(group.message.id, GatewayId("gw-c"), "h2")
    assert again is not None
    assert again[1] == {"h1", "h2"}
    assert log.share(group.message.id, GatewayId("gw-c"), "h3") is None
    assert log.share(group.message.id, GatewayId("gw-x"), "h1") is None


def test_merge_resend_keeps_send_order_and_each_map_once() -> None:
    """What a broken hub had is sent again in the order it was first sent, each map once."""
    a, b, c, d = (tmap(x, {"gw-b": (1,)}) for x in "abcd")
    assert merge_resend([a, b, c], [c, d]) == [a, b, c, d]
    assert merge_resend([c], [b, c, d]) == [b, c, d]  # waiting for longer than the window
    assert merge_resend([], []) == []


def test_absences_expire() -> None:
    """A hub's "not attached" steers a gateway away for ttl seconds, then not any more."""
    absences = Absences(ttl=2.0)
    assert not absences
    absences.mark("h1", GatewayId("gw-b"), 10.0)
    assert absences.absent("h1", GatewayId("gw-b"), 11.0)
    assert not absences.absent("h2", GatewayId("gw-b"), 11.0)
    assert not absences.absent("h1", GatewayId("gw-b"), 12.5)
    assert not absences


def test_pool_refuses_an_empty_or_repeated_hub_list() -> None:
    """A pool needs at least one hub, each listed once (ConfigError otherwise)."""
    with pytest.raises(ConfigError, match="at least one"):
        HubPool([], GatewayId("gw-a"))
    with pytest.raises(ConfigError, match="twice"):
        HubPool(["127.0.0.1:1", "127.0.0.1:1"], GatewayId("gw-a"))


# -- against real hubs ---------------------------------------------------------------------


@dataclass
class PoolCollector(EventViews):
    """Every event a pool yields, gathered by a background task."""

    pool: HubPool
    events: list[LinkEvent] = field(default_factory=list)

    def ids(self) -> list[str]:
        return self.message_ids()

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.events if isinstance(e, LinkUp | LinkDown)]


PoolFactory = Callable[..., Awaitable[PoolCollector]]


@pytest.fixture
async def hubs() -> AsyncIterator[list[HubServer]]:
    """Three real hubs on free ports (ids hub-0..hub-2), stopped after the test."""
    servers = [
        HubServer(HubConfig(listen="127.0.0.1:0", hub_id=f"hub-{i}", grace=0.2)) for i in range(3)
    ]
    for server in servers:
        await server.start()
    try:
        yield servers
    finally:
        for server in servers:
            await server.stop(0.2)


@pytest.fixture
async def make_pool() -> AsyncIterator[PoolFactory]:
    """Open real HubPools that collect their events; all are closed after the test."""
    opened: list[tuple[HubPool, asyncio.Task[None]]] = []

    async def factory(
        targets: list[str], gateway_id: str, *, attached: int | None = None, **options: object
    ) -> PoolCollector:
        options.setdefault("backoff_max", 0.2)
        pool = HubPool(targets, GatewayId(gateway_id), **options)  # type: ignore[arg-type]
        await pool.start()
        collector = PoolCollector(pool)

        async def pump() -> None:
            async for event in pool.events():
                collector.events.append(event)

        opened.append((pool, asyncio.create_task(pump())))
        want = len(targets) if attached is None else attached
        await wait_until(
            lambda: sum(s == "up" for s in pool.hubs.values()) >= want,
            what=f"{gateway_id} attached to {want} hubs",
        )
        return collector

    try:
        yield factory
    finally:
        for pool, pump in opened:
            await pool.close()
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump


def _sent(servers: list[HubServer]) -> int:
    return sum(s.registry.deliveries_sent for s in servers)


def _received(servers: list[HubServer]) -> int:
    return sum(s.registry.transmit_maps_received for s in servers)


async def test_every_map_delivered_once_in_order_through_one_hub(
    hubs: list[HubServer], make_pool: PoolFactory
) -> None:
    """With three hubs up, maps from gw-a to gw-b arrive once each, in order, all through
    the one hub rank() puts first; the hubs' deliveriesSent sum rises by one per map."""
    addresses = [h.address for h in hubs]
    a = await make_pool(addresses, "gw-a")
    b = await make_pool(addresses, "gw-b")
    ids = [f"m{i}" for i in range(50)]
    for msg_id in ids:
        assert a.pool.send(tmap(msg_id, {"gw-b": (7,)}))
    await wait_until(lambda: len(b.ids()) >= 50, what="50 deliveries")
    assert b.ids() == ids
    assert _sent(hubs) == 50
    first = rank("gw-a>gw-b", addresses)[0]
    assert [h.registry.transmit_maps_received for h in hubs] == [
        50 if h.address == first else 0 for h in hubs
    ]
    assert a.notices == []


async def test_deliveries_of_every_hub_go_straight_to_the_handler(
    hubs: list[HubServer], make_pool: PoolFactory
) -> None:
    """HubPool.deliver_to hands every hub's deliveries to the handler, in order, with no
    Delivered event; deliver_to(None) brings the events back."""
    addresses = [h.address for h in hubs]
    a = await make_pool(addresses, "gw-a")
    b = await make_pool(addresses, "gw-b")
    got: list[str] = []
    b.pool.deliver_to(lambda deliveries: got.extend(d.message.id for d in deliveries))
    ids = [f"m{i}" for i in range(20)]
    for msg_id in ids:
        assert a.pool.send(tmap(msg_id, {"gw-b": (7,)}))
    await wait_until(lambda: len(got) >= 20, what="20 deliveries handled")
    assert got == ids
    assert b.ids() == []
    b.pool.deliver_to(None)
    assert a.pool.send(tmap("later", {"gw-b": (7,)}))
    await wait_until(lambda: b.ids() == ["later"], what="a Delivered event again")
    assert len(got) == 20


async def test_rows_of_every_hub_go_straight_to_the_handler(
    hubs: list[HubServer], make_pool: PoolFactory
) -> None:
    """HubPool.deliver_rows_to hands every hub's deliveries as rows, in order, with no
    Delivered event; deliver_rows_to(None) brings the events back."""
    addresses = [h.address for h in hubs]
    a = await make_pool(addresses, "gw-a")
    b = await make_pool(addresses, "gw-b")
    got: list[str] = []
    b.pool.deliver_rows_to(lambda rows: got.extend(fields[0] for fields, _, _ in rows))
    ids = [f"m{i}" for i in range(20)]
    for msg_id in ids:
        assert a.pool.send(tmap(msg_id, {"gw-b": (7,)}))
    await wait_until(lambda: len(got) >= 20, what="20 rows handled")
    assert got == ids
    assert b.ids() == []
    b.pool.deliver_rows_to(None)
    assert a.pool.send(tmap("later", {"gw-b": (7,)}))
    await wait_until(lambda: b.ids() == ["later"], what="a Delivered event again")
    assert len(got) == 20


async def test_group_map_is_one_frame_in_and_one_delivery_per_target_out(
    hubs: list[HubServer], make_pool: PoolFactory
) -> None:
    """A map to three gateways enters one hub once and leaves as one delivery per target."""
    addresses = [h.address for h in hubs]
    a = await make_pool(addresses, "gw-a")
    targets = [await make_pool(addresses, f"gw-{x}") for x in "bcd"]
    for i in range(10):
        assert a.pool.send(tmap(f"g{i}", {"gw-b": (1, 2), "gw-c": (3,), "gw-d": (4,)}))
    await wait_until(lambda: all(len(t.ids()) >= 10 for t in targets), what="group deliveries")
    assert _received(hubs) == 10
    assert _sent(hubs) == 30
    assert [len(t.ids()) for t in targets] == [10, 10, 10]


async def test_a_stopped_hub_loses_nothing_the_pool_sent_through_it(
    hubs: list[HubServer], make_pool: PoolFactory
) -> None:
    """The hub gw-a sends through swallows maps (reads them, routes none: a hub dying with
    them in its buffers), then stops: every map reaches gw-b through another hub, and no
    consumer sees LinkDown since other hubs stay attached; each sees LinkLost naming the
    hub (what it wrote into the dead stream must be read from the inboxes)."""
    addresses = [h.address for h in hubs]
    a = await make_pool(addresses, "gw-a")
    b = await make_pool(addresses, "gw-b")
    first = rank("gw-a>gw-b", addresses)[0]
    victim = next(h for h in hubs if h.address == first)
    swallowed: list[int] = []
    victim.service.route = lambda att, maps, **_: swallowed.append(len(maps))  # type: ignore[method-assign]
    ids = [f"m{i}" for i in range(40)]
    for msg_id in ids:
        assert a.pool.send(tmap(msg_id, {"gw-b": (7,)}))
    await wait_until(lambda: sum(swallowed) == 40, what="the hub swallowed 40 maps")
    assert b.ids() == []
    await victim.stop(0)
    await wait_until(lambda: len(b.ids()) >= 40, what="every map at gw-b")
    assert b.ids() == ids  # sent again in their order
    assert a.pool.resent == 40
    assert "LinkDown" not in b.kinds()
    assert "LinkDown" not in a.kinds()
    for collector in (a, b):
        await wait_until(
            lambda c=collector: any(isinstance(e, LinkLost) for e in c.events),  # type: ignore[misc]
            what="LinkLost",
        )
        lost = [e for e in collector.events if isinstance(e, LinkLost)]
        assert [e.hub for e in lost] == [first]
    assert a.pool.connected
    assert a.pool.hubs[first] == "down"
    assert a.pool.send(tmap("next", {"gw-b": (7,)}))
    await wait_until(lambda: b.ids()[-1:] == ["next"], what="traffic goes on")


async def test_resending_more_than_a_buffer_holds_waits_for_room(
    hubs: list[HubServer], make_pool: PoolFactory
) -> None:
    """With link buffers of 10 maps, 60 maps swallowed by a dying hub still all reach gw-b:
    sending them again waits for the other link's writer instead of dropping the rest."""
    addresses = [h.address for h in hubs[:2]]
    a = await make_pool(addresses, "gw-a", max_pending=10)
    b = await make_pool(addresses, "gw-b")
    victim = next(h for h in hubs if h.address == rank("gw-a>gw-b", addresses)[0])
    swallowed: list[int] = []
    victim.service.route = lambda att, maps, **_: swallowed.append(len(maps))  # type: ignore[method-assign]
    for chunk in range(12):
        for i in range(5):
            assert a.pool.send(tmap(f"m{chunk * 5 + i}", {"gw-b": (7,)}))

        def swallowed_all(n: int = chunk) -> bool:
            return sum(swallowed) == 5 * (n + 1)

        await wait_until(swallowed_all, what="swallowed")
    await victim.stop(0)
    await wait_until(lambda: len(set(b.ids())) >= 60, what="all 60 maps at gw-b")
    assert a.pool.resent == 60


async def test_not_attached_on_one_hub_is_tried_on_the_next(
    hubs: list[HubServer], make_pool: PoolFactory
) -> None:
    """gw-b is attached only to the hub gw-a ranks second: every map still reaches gw-b,
    gw-a's consumer hears of no undeliverable share, and after the first notice the pool
    sends gw-b's shares straight to the hub that has it."""
    addresses = [h.address for h in hubs[:2]]
    order = rank("gw-a>gw-b", addresses)
    a = await make_pool(addresses, "gw-a")
    b = await make_pool([order[1]], "gw-b")
    for i in range(20):
        assert a.pool.send(tmap(f"m{i}", {"gw-b": (7,)}))

        def arrived(n: int = i) -> bool:
            return len(b.ids()) > n

        await wait_until(arrived, what=f"map {i} at gw-b")
    assert sorted(b.ids()) == sorted(f"m{i}" for i in range(20))
    assert a.notices == []
    assert a.pool.rerouted >= 1
    by_address = {h.address: h for h in hubs}
    assert by_address[order[0]].registry.undeliverable == a.pool.rerouted < 5


async def test_undeliverable_only_when_no_attached_hub_has_the_target(
    hubs: list[HubServer], make_pool: PoolFactory
) -> None:
    """A map to a gateway attached nowhere is tried on each hub, then reported once to the
    consumer as NOT_ATTACHED."""
    addresses = [h.address for h in hubs]
    a = await make_pool(addresses, "gw-a")
    assert a.pool.send(tmap("lost", {"gw-x": (9,)}))
    await wait_until(lambda: len(a.notices) >= 1, what="the notice")
    await wait_until(lambda: sum(h.registry.undeliverable for h in hubs) == 3, what="3 tries")
    (notice,) = a.notices
    assert notice.reason is UndeliverableReason.NOT_ATTACHED
    assert (notice.gateway_id, notice.message_ids) == ("gw-x", ("lost",))


async def test_send_everywhere_goes_through_every_attached_hub(
    hubs: list[HubServer], make_pool: PoolFactory
) -> None:
    """A control sent everywhere reaches gw-b once through each hub (a silent link to one
    hub cannot swallow it); with gw-b on one hub only, the others' NOT_ATTACHED goes on
    to the next hub, never to the consumer."""
    addresses = [h.address for h in hubs]
    a = await make_pool(addresses, "gw-a")
    b = await make_pool(addresses, "gw-b")
    assert a.pool.send_everywhere(tmap("c1", {"gw-b": (7,)}))
    await wait_until(lambda: len(b.ids()) >= 3, what="three copies")
    assert b.ids() == ["c1"] * 3
    assert [h.registry.transmit_maps_received for h in hubs] == [1, 1, 1]
    c = await make_pool([addresses[1]], "gw-c")
    assert a.pool.send_everywhere(tmap("c2", {"gw-c": (8,)}))
    await wait_until(lambda: len(c.ids()) >= 3, what="a copy per hub tried")
    assert set(c.ids()) == {"c2"}
    assert a.notices == []


async def test_link_down_only_when_the_last_hub_goes_and_up_on_each_attach() -> None:
    """The consumer sees LinkUp for every hub that (re)attaches and LinkDown only once no
    hub is attached; maps sent with no hub attached go out once one is back."""
    ports = [free_port(), free_port()]
    servers = [
        HubServer(HubConfig(listen=f"127.0.0.1:{p}", hub_id=f"hub-{p}", grace=0.1)) for p in ports
    ]
    for server in servers:
        await server.start()
    addresses = [s.address for s in servers]
    pool_a = HubPool(addresses, GatewayId("gw-a"), backoff_max=0.2)
    pool_b = HubPool(addresses, GatewayId("gw-b"), backoff_max=0.2)
    a, b = PoolCollector(pool_a), PoolCollector(pool_b)

    async def pump(c: PoolCollector) -> None:
        async for event in c.pool.events():
            c.events.append(event)

    pumps = [asyncio.create_task(pump(c)) for c in (a, b)]
    try:
        async with pool_a, pool_b:
            await wait_until(lambda: a.kinds() == ["LinkUp", "LinkUp"], what="two LinkUps")
            await servers[0].stop(0)
            await wait_until(lambda: pool_a.hubs[addresses[0]] == "down", what="hub 0 down")
            assert pool_a.connected
            assert "LinkDown" not in a.kinds()
            await servers[1].stop(0)
            await wait_until(lambda: a.kinds()[-1:] == ["LinkDown"], what="LinkDown")
            assert not pool_a.connected
            assert a.kinds().count("LinkDown") == 1
            for i in range(5):
                assert pool_a.send(tmap(f"late-{i}", {"gw-b": (7,)}))
            assert pool_a.pending == 5
            back = HubServer(HubConfig(listen=addresses[1], hub_id="hub-back", grace=0.1))
            async with back:
                late = {f"late-{i}" for i in range(5)}

                def accounted() -> set[str]:
                    told = {m for n in a.notices for m in n.message_ids}
                    return (set(b.ids()) | told) & late

                # Delivered, or (when gw-a attached before gw-b) reported to gw-a, whose
                # relay leaves it to gw-b's catch-up on attach: never silently dropped.
                await wait_until(lambda: accounted() == late, what="every late map accounted")
                assert pool_a.pending == 0
                assert a.kinds()[-1] == "LinkUp"
                await wait_until(lambda: pool_b.connected, what="gw-b back")
                assert pool_a.send(tmap("after", {"gw-b": (7,)}))
                await wait_until(lambda: "after" in b.ids(), what="a map after both are back")
    finally:
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        for server in servers:
            await server.stop(0)


async def test_close_returns_the_maps_never_written() -> None:
    """With no hub reachable, the pool keeps maps up to max_pending, then refuses; close()
    returns each once and later sends raise."""
    from transmit_hub import LinkClosed

    pool = HubPool([f"127.0.0.1:{free_port()}"], GatewayId("gw-a"), max_pending=2)
    await pool.start()
    maps = [tmap(f"m{i}", {"gw-b": (1,)}) for i in range(3)]
    assert [pool.send(m) for m in maps] == [True, True, False]
    assert await pool.close() == maps[:2]
    assert await pool.close() == []
    with pytest.raises(LinkClosed):
        pool.send(maps[2])


def test_send_log_forgets_a_share_once_its_record_leaves() -> None:
    """share() finds only what is still recorded: a record gone past the bound or the window
    is no longer found, and a message sent twice is found through the newer record."""
    log = SendLog(window=10.0, max_entries=2)
    first = tmap("m", {"gw-b": (1,)})
    log.record(first, "h1", 0.0)
    log.record(first, "h2", 0.0)
    assert log.share(first.message.id, GatewayId("gw-b"), "h1") is not None
    log.record(tmap("n", {"gw-b": (1,)}), "h1", 0.0)  # the h1 record of m leaves
    assert log.share(first.message.id, GatewayId("gw-b"), "h1") is None
    assert log.share(first.message.id, GatewayId("gw-b"), "h2") is not None
    log.trim(20.0)
    assert len(log) == 0
    assert log.share(first.message.id, GatewayId("gw-b"), "h2") is None


_steps = st.lists(
    st.one_of(
        st.tuples(
            st.just("record"),
            st.integers(0, 7),  # message id m<n>: repeats are resends
            st.sampled_from(["h1", "h2"]),
            st.sampled_from([("gw-a",), ("gw-b",), ("gw-a", "gw-b")]),
            st.floats(0, 0.5),  # time passing before it
        ),
        st.tuples(
            st.just("share"),
            st.integers(0, 9),  # 8, 9: never sent
            st.sampled_from(["h1", "h2"]),
            st.sampled_from([("gw-a",), ("gw-b",)]),
            st.just(0.0),
        ),
    ),
    max_size=120,
)


@given(_steps, st.integers(1, 12))
def test_send_log_share_finds_what_a_scan_of_the_kept_records_finds(
    steps: list[tuple[str, int, str, tuple[str, ...], float]], max_entries: int
) -> None:
    """The look-up by message id (an index brought up to date lazily, forgotten records
    skipped, the index made anew as it fills with forgotten ids) answers as a scan of the
    records kept would, newest first, through any mix of sends, resends and look-ups."""
    log = SendLog(window=2.0, max_entries=max_entries)
    kept: list[tuple[TransmitMap, str, float]] = []  # the model: (map, hub, when)
    now = 0.0
    for kind, n, hub, gateways, gap in steps:
        now += gap
        if kind == "record":
            m = tmap(f"m{n}", {g: (1,) for g in gateways})
            log.record(m, hub, now)
            kept.append((m, hub, now))
            continue
        log.trim(now)
        kept = [k for k in kept if k[2] >= now - 2.0][-max_entries:]
        found = log.share(MessageId(f"m{n}"), GatewayId(gateways[0]), hub)
        expected = next(
            (
                m
                for m, via, _ in reversed(kept)
                if via == hub and m.message.id == f"m{n}" and gateways[0] in m.users
            ),
            None,
        )
        if expected is None:
            assert found is None
        else:
            assert found is not None
            assert found[0].message is expected.message
            assert list(found[0].users) == [gateways[0]]
