"""The gateway's pipeline and fan-out wired as :class:`im_gateway.gateway.Gateway` wires
them, for tests that drive them with sessions on fake sockets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from im_gateway import frames
from im_gateway.fanout import Fanout
from im_gateway.pipeline import Pipeline
from im_gateway.ports import Link
from im_gateway.session_limits import SessionLimits
from im_gateway.sessions import Session
from im_gateway.store import Store
from tests.helpers import wait_until
from tests.im_gateway.fakes import FakeWebSocket
from transmit_hub.types import GatewayId, UserId

_PIPELINE_OPTIONS = {"queue_size", "batch_size", "linger", "busy_window"}


@dataclass
class Wired:
    """A pipeline whose stored messages go to a fan-out."""

    pipeline: Pipeline
    fanout: Fanout[Session]

    async def start(self) -> None:
        await self.pipeline.start()
        await self.fanout.start()

    async def close(self) -> None:
        await self.fanout.close()
        await self.pipeline.close()


def wire(gateway_id: GatewayId, store: Store, link: Link, **options: Any) -> Wired:
    """``options`` go to the pipeline (queue and batch ones) or to the fan-out (the rest);
    ``faults`` to both, as the gateway does."""
    faults = options.pop("faults", None)
    ours = {k: options.pop(k) for k in list(options) if k in _PIPELINE_OPTIONS}
    fanout = Fanout[Session](
        gateway_id=gateway_id, store=store, link=link, faults=faults, **options
    )
    pipeline = Pipeline(store=store, route=fanout, faults=faults, **ours)
    return Wired(pipeline, fanout)


async def submit(wired: Wired, session: Session, frame: frames.SendMessage) -> None:
    """Queue a message frame of ``session``'s user (waits while the queue is full)."""
    await wired.pipeline.put(session, wired.pipeline.submission(session.user, frame))


def submit_nowait(wired: Wired, session: Session, frame: frames.SendMessage) -> bool:
    """Queue a message frame; False when the queue is full."""
    return wired.pipeline.offer(session, wired.pipeline.submission(session.user, frame))


async def connect(wired: Wired, store: Store, user: UserId) -> tuple[Session, FakeWebSocket]:
    """A registered session whose connect replay is done."""
    ws = FakeWebSocket()
    session = Session(
        ws, user, store=store, pipeline=wired.pipeline, groups=wired.fanout, limits=SessionLimits()
    )
    wired.fanout.add(session)
    session.start()
    await wait_until(lambda: not session.replaying)
    ws.sent.clear()
    return session, ws
