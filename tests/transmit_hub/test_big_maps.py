"""A map naming very many gateways costs time in proportion to its size, not its square."""

from __future__ import annotations

import asyncio
import itertools
import time

from transmit_hub import HubServer, UndeliverableReason

from .conftest import LinkFactory, tmap


async def test_map_naming_ten_thousand_absent_gateways_is_answered_while_traffic_flows(
    hub: HubServer, make_link: LinkFactory
) -> None:
    """One map naming 10,000 unattached gateway ids is answered (10,000 NOT_ATTACHED notices)
    in well under the seconds it once took per thousand, and traffic between two other
    gateways keeps flowing meanwhile (it once stalled every caller for minutes)."""
    sender = await make_link(hub.address, "gw-a")
    talker = await make_link(hub.address, "gw-b")
    listener = await make_link(hub.address, "gw-c")
    arrivals: list[float] = []
    stop = asyncio.Event()

    async def chatter() -> None:
        """Traffic between two other gateways, one map at a time: each waits for the one
        before it to arrive, so a stalled hub shows as a gap between arrivals."""
        i = 0
        while not stop.is_set():
            assert talker.link.send(tmap(f"c-{i}", {"gw-c": (5,)}))
            i += 1
            await listener.wait_deliveries(i, timeout=30)
            arrivals.append(time.monotonic())

    tasks = [asyncio.create_task(chatter())]
    await listener.wait_deliveries(5)
    n = 10_000
    targets: dict[str, tuple[int, ...]] = {f"absent-{i}": (i + 1,) for i in range(n)}
    started = time.monotonic()
    assert sender.link.send(tmap("wide", targets))
    notices = await sender.wait_notices(n, timeout=60)
    elapsed = time.monotonic() - started
    await listener.wait_deliveries(len(listener.deliveries) + 5)
    stop.set()
    await asyncio.gather(*tasks)
    assert len(notices) == n
    assert {x.reason for x in notices} == {UndeliverableReason.NOT_ATTACHED}
    assert {x.gateway_id for x in notices} == set(targets)
    assert all(x.message_ids == ("wide",) for x in notices)
    assert sorted(x.user_ids[0] for x in notices) == list(range(1, n + 1))
    print(f"10,000-target map answered in {elapsed:.3f} s")
    # Generous bounds for a loaded 2-core machine; the quadratic code took minutes here.
    assert elapsed < 5.0
    window = [t for t in arrivals if started <= t]
    gaps = [b - a for a, b in itertools.pairwise(window)]
    assert max(gaps, default=0.0) < 2.0, "other traffic stalled while the map was routed"
