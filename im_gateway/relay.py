"""The relay: the gateway's :class:`~im_gateway.pipeline.Pipeline` and
:class:`~im_gateway.fanout.Fanout`, wired together.

::

    Session --submit--> Pipeline --store.submit--> Store (Redis)
       ^                   |  \\--settled/failed--> the caller (type 10 / 99, or an API reply)
       |                   v
       +--deliver/own-- Fanout --TransmitMap--> hub link ==> other gateways
                           ^------ Delivered / NotDelivered / LinkUp --- hub link

Sessions and the server API are two kinds of callers of one pipeline; the fan-out
knows only the small :class:`~im_gateway.fanout.Connection` protocol of a socket, so
neither calls back into the other. :class:`Relay` keeps the names a session (its
``Router``) and the gateway use.
"""

from __future__ import annotations

from transmit_hub.types import GatewayId, MessageId

from . import frames
from .fanout import Fanout, Link
from .faults import Faults
from .metrics import GatewayMetrics
from .pipeline import Pipeline
from .presence import Presence
from .sessions import Session
from .store import Store

__all__ = ["Link", "Relay"]


class Relay:
    """Routes messages between local sessions, the store and the hub link."""

    def __init__(
        self,
        *,
        gateway_id: GatewayId,
        store: Store,
        link: Link,
        queue_size: int = 10_000,
        batch_size: int = 256,
        linger: float = 0.003,
        busy_window: float = 0.02,
        forget_grace: float = 10.0,
        presence: Presence | None = None,
        max_content: int = frames.DEFAULT_MAX_CONTENT,
        faults: Faults | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.gateway_id = gateway_id
        self.fanout: Fanout[Session] = Fanout(
            gateway_id=gateway_id,
            store=store,
            link=link,
            forget_grace=forget_grace,
            presence=presence,
            max_content=max_content,
            faults=faults,
            metrics=metrics,
        )
        self.pipeline = Pipeline(
            store=store,
            route=self.fanout,
            queue_size=queue_size,
            batch_size=batch_size,
            linger=linger,
            busy_window=busy_window,
            faults=faults,
            metrics=metrics,
        )
        self._closed = False

    # --- registry (the fan-out's) -------------------------------------------------------

    def add(self, session: Session) -> None:
        """Route live messages for ``session.user`` to ``session`` from now on."""
        self.fanout.add(session)

    def discard(self, session: Session) -> None:
        """Stop routing to ``session``."""
        self.fanout.discard(session)

    def sessions(self) -> list[Session]:
        """Every local session."""
        return self.fanout.sessions()

    @property
    def connections(self) -> int:
        """The number of local sessions."""
        return self.fanout.connections

    # --- the Router protocol of sessions (the pipeline's) -------------------------------

    @property
    def queued(self) -> int:
        """Frames waiting for the batch worker."""
        return self.pipeline.queued

    @property
    def batches(self) -> int:
        """Store round trips made by the worker."""
        return self.pipeline.batches

    @property
    def submitted(self) -> int:
        """Frames handed to the store."""
        return self.pipeline.submitted

    def new_id(self) -> tuple[MessageId, int]:
        """A fresh system-wide unique message id and the server time in ms."""
        return self.pipeline.new_id()

    @property
    def busy(self) -> bool:
        """True while the queue is full (:meth:`submit_nowait` would refuse)."""
        return self.pipeline.busy

    def submit_nowait(self, session: Session, frame: frames.SendMessage) -> bool:
        """Queue a message frame of ``session``'s user; False when the queue is full."""
        return self.pipeline.offer(session, self.pipeline.submission(session.user, frame))

    async def submit(self, session: Session, frame: frames.SendMessage) -> None:
        """Queue a message frame; waits while the queue is full."""
        await self.pipeline.put(session, self.pipeline.submission(session.user, frame))

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        """Start the batch worker and the link event consumer."""
        await self.pipeline.start()
        await self.fanout.start()

    async def close(self) -> None:
        """Stop both (frames still queued are answered ``internal``); idempotent."""
        if self._closed:
            return
        self._closed = True
        await self.fanout.close()
        await self.pipeline.close()
