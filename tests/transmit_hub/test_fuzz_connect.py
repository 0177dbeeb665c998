"""Random Connect frames at a live hub never break it, nor the real gateways' streams."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

from grpc import aio  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import wait_until
from transmit_hub import (
    Delivery,
    GatewayId,
    HubServer,
    Message,
    MessageId,
    Recipient,
    TransmitMap,
    UserId,
    codec,
    wire,
)
from transmit_hub.config import HubConfig
from transmit_hub.transport import CONNECT_METHOD

from .conftest import LinkFactory, tmap

U64 = st.integers(0, (1 << 64) - 1)
I32 = st.integers(-(1 << 31), (1 << 31) - 1)
I64 = st.integers(-(1 << 63), (1 << 63) - 1)

gateway_ids = st.one_of(
    st.sampled_from(["gw-1", "gw-2", "", "fz-1", "x" * 129, "gw\n1"]),
    st.text(max_size=40),
    st.from_regex(r"[A-Za-z0-9._:-]{1,20}", fullmatch=True),
)
messages = st.builds(
    Message,
    id=st.text(max_size=20).map(MessageId),
    sender=U64.map(UserId),
    to=U64,
    type=I32,
    content_type=I32,
    time=I64,
    content=st.text(max_size=200),
)
recipients = st.lists(
    st.builds(Recipient, user_id=U64.map(UserId), seq=st.text(max_size=10)), max_size=5
).map(tuple)
maps = st.builds(
    TransmitMap,
    message=messages,
    users=st.dictionaries(gateway_ids.map(GatewayId), recipients, max_size=6),
)
# What a hostile stream sends after its Hello: encoded maps, raw map bytes, or raw frames.
frames = st.one_of(
    st.lists(maps, min_size=1, max_size=4).map(
        lambda ms: wire.encode_batch_request([wire.encode_transmit_map(m) for m in ms])
    ),
    st.lists(st.binary(max_size=64), min_size=1, max_size=4).map(wire.encode_batch_request),
    st.binary(max_size=256),
)


async def test_random_connect_frames_never_break_the_hub_or_real_gateways(
    make_link: LinkFactory,
) -> None:
    """After each random Hello and frames on a hostile stream, both real gateway links are
    still attached (never down), and a valid map between them is routed correctly."""
    async with HubServer(HubConfig(listen="127.0.0.1:0", claim_timeout=5.0, grace=0.1)) as hub:
        gw1 = await make_link(hub.address, "gw-1")
        gw2 = await make_link(hub.address, "gw-2")
        loop = asyncio.get_running_loop()
        probes = itertools.count()
        channel = aio.insecure_channel(hub.address)

        async def attack(hello: str, sent: list[bytes]) -> None:
            call = channel.stream_stream(CONNECT_METHOD)()
            # The hub may end the stream first: grpc then raises on the attacker's write.
            with contextlib.suppress(aio.AioRpcError, asyncio.InvalidStateError):
                await call.write(codec.hello_bytes(GatewayId(hello)))
                for frame in sent:
                    await call.write(frame)
            call.cancel()
            n = next(probes)
            assert gw1.link.send(tmap(f"probe-{n}", {"gw-2": (7, 8)}, content=f"probe {n}"))

            def mine() -> list[Delivery]:
                return [d for d in gw2.deliveries if d.message.id == f"probe-{n}"]

            await wait_until(lambda: bool(mine()), what=f"probe {n} on gw-2")
            assert len(mine()) == 1
            (delivery,) = mine()
            assert [r.user_id for r in delivery.recipients] == [7, 8]
            assert delivery.message.content == f"probe {n}"
            assert gw1.downs == []
            assert gw2.downs == []
            assert gw1.link.connected
            assert gw2.link.connected

        @settings(
            max_examples=80,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            database=None,
        )
        @given(gateway_ids, st.lists(frames, max_size=3))
        def check(hello: str, sent: list[bytes]) -> None:
            asyncio.run_coroutine_threadsafe(attack(hello, sent), loop).result(timeout=30)

        try:
            await asyncio.to_thread(check)
        finally:
            await channel.close()

        # The fuzz streams were cancelled by the client; the hub detaches them as it
        # notices (a flaky failure when asserted at once).
        def attached() -> list[str]:
            return sorted(g.gateway_id for g in hub.registry.gateways())

        await wait_until(lambda: attached() == ["gw-1", "gw-2"], what="only the real gateways")
        assert gw1.link.connected
        assert gw2.link.connected
