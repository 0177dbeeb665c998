"""Fakes at the gateway's boundaries: a WebSocket, a pipeline and fan-out, and a hub link."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Collection
from typing import Any

from websockets.exceptions import ConnectionClosedOK

from im_gateway import frames
from im_gateway.ids import MessageIds
from im_gateway.pipeline import Caller
from im_gateway.positions import position
from im_gateway.sessions import Session
from im_gateway.store import Accepted, MemoryStore, Submission
from transmit_hub.link import LinkEvent
from transmit_hub.types import Message, MessageId, TransmitMap, UserId

_CLOSED = object()


class FakeWebSocket:
    """Frames the client 'sends' go in ``incoming``; what the session sends lands in ``sent``."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[object] = asyncio.Queue()
        self.sent: list[str] = []
        self.closed: tuple[int, str] | None = None
        self.gate: asyncio.Event | None = None
        """When set to an unset Event, ``send`` blocks (a client that does not read)."""
        self.sent_event = asyncio.Event()
        self.pings = 0
        self.answers_pings = True
        self.heard_at = 0.0

    async def wait_frame(self) -> None:
        return None  # recv() waits

    async def recv(self) -> str | bytes:
        item = await self.incoming.get()
        if item is _CLOSED:
            raise ConnectionClosedOK(None, None)
        assert isinstance(item, str | bytes)
        return item

    async def send(self, message: str) -> None:
        if self.gate is not None:
            await self.gate.wait()
        self.sent.append(message)
        self.sent_event.set()

    def send_now(self, message: str) -> bool:
        if self.gate is not None or self.closed is not None:
            return False
        self.sent.append(message)
        self.sent_event.set()
        return True

    def ping_now(self) -> bool:
        if self.closed is not None:
            return False
        self.pings += 1
        if self.answers_pings:  # the pong comes at once
            self.heard_at = asyncio.get_running_loop().time()
        return True

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed is None:
            self.closed = (code, reason)
        self.incoming.put_nowait(_CLOSED)

    def client_sends(self, frame: dict[str, Any] | str) -> None:
        self.incoming.put_nowait(frame if isinstance(frame, str) else json.dumps(frame))

    def frames(self) -> list[dict[str, Any]]:
        return [json.loads(s) for s in self.sent]


class FakeRouter:
    """A session's pipeline and fan-out in one: records submissions and followed groups."""

    def __init__(self) -> None:
        self.submitted: list[tuple[Caller, Submission]] = []
        self._ids = MessageIds()
        self.followed: set[int] = set()

    busy = False

    @property
    def following(self) -> FakeRouter:
        return self

    def new_id(self) -> tuple[MessageId, int]:
        return self._ids.next()

    def submission(self, sender: UserId, frame: frames.SendMessage) -> Submission:
        msg_id, now_ms = self._ids.next()
        message = Message(msg_id, sender, frame.to, frame.type, frame.content_type, now_ms, "")
        return Submission(client_id=frame.id, message=message)

    def offer(self, caller: Caller, submission: Submission) -> bool:
        self.submitted.append((caller, submission))
        return True

    async def put(self, caller: Caller, submission: Submission) -> None:
        self.submitted.append((caller, submission))

    async def follow(self, session: Session, groups: Collection[int]) -> None:
        self.followed = self.followed | set(groups)

    def unfollow(self, session: Session, groups: Collection[int]) -> None:
        self.followed = self.followed - set(groups)

    async def membership_changed(
        self,
        group: int,
        changed: Collection[UserId],
        *,
        was_large: bool,
        now_ms: int,
        control_id: MessageId,
        left: bool = False,
    ) -> None:
        """Nothing to tell: the tests' sessions read their groups themselves."""


class FakeLink:
    """A hub link that records maps and plays back the events a test feeds it."""

    def __init__(self, *, accept: bool = True) -> None:
        self.sent: list[TransmitMap] = []
        self.everywhere: list[TransmitMap] = []
        """Maps sent through every hub (:meth:`send_everywhere`)."""
        self.connected = True
        self.accept = accept
        self._events: asyncio.Queue[LinkEvent | None] = asyncio.Queue()

    def send(self, tmap: TransmitMap) -> bool:
        if not self.accept:
            return False
        self.sent.append(tmap)
        return True

    def send_everywhere(self, tmap: TransmitMap) -> bool:
        if not self.accept:
            return False
        self.everywhere.append(tmap)
        return True

    def feed(self, event: LinkEvent) -> None:
        self._events.put_nowait(event)

    async def events(self) -> AsyncIterator[LinkEvent]:
        while True:
            event = await self._events.get()
            if event is None:
                return
            yield event


_ids = MessageIds()


async def store_message(store: MemoryStore, sender: int, to: int, content: str) -> list[int]:
    """Put a private message in both inboxes; returns [recipient's position, sender's]."""
    msg_id, now = _ids.next()
    message = Message(MessageId(msg_id), UserId(sender), to, 1, 0, now, content)
    (result,) = await store.submit([Submission(client_id=f"c-{msg_id}", message=message)])
    assert isinstance(result, Accepted), result
    return [position(r.seq) for r in result.recipients]
