"""HubLink: a gateway's end of the Connect stream to the transmit hub.

::

    async with HubLink("127.0.0.1:50051", GatewayId("gw-1"), token=token) as link:
        link.send(tmap)                       # non-blocking; False when the buffer is full
        async for event in link.events():     # LinkUp, LinkDown, Delivered, NotDelivered
            ...

The link attaches with its gateway id, keeps reconnecting with jittered exponential
backoff (``backoff_initial`` doubling up to ``backoff_max``; a stream that ended less than
``backoff_max`` seconds after the hub's Welcome counts as a failed attempt, so a hub that
accepts and drops the gateway over and over is not reconnected to in a tight loop, and
such streams are logged in one counted line at most every ``DROP_LOG_INTERVAL``
seconds), and reads and writes in
separate tasks. :meth:`HubLink.send` only appends to a bounded buffer and wakes the
writer, which sends everything pending (up to ``max_batch`` maps) as one frame per
write: under load, maps pile up while a write is in flight and go out together; an
idle link writes each map at once, so batching adds no latency.

Each frame costs the same CPU (gRPC's Python layers, both ends) whether it carries one
map or a hundred, so a link that is busy in a loaded process also *lingers*: when the
writer wakes up for a map that already waited ``LINGER_LAG`` (1 ms) for it (the process
is short of CPU) and the previous frame left less than ``LINGER_BUSY`` (5 ms) earlier,
it waits ``linger`` seconds more (default 1 ms; 0 turns this off) for more maps to join
the frame. At a few thousand maps a second that puts several maps in each frame, saving
CPU in the link and in the hub (an unconditional 1 ms linger halved the hub's CPU per
message at 2,000 msgs/s), which is what a CPU-starved machine is short of, for at most
``linger`` more latency. Lingering only then keeps the latency of a link with CPU to
spare as it was (that unconditional linger doubled its p99). A link idle for longer than
``LINGER_BUSY``, or in a process with CPU to spare, still writes each map at once, and
maps already waiting when a write ends (a saturated link) never wait.

Delivery guarantees (the gateway's Redis inbox is the truth; the hub is the fast path):

- Maps sent while the hub is unreachable wait in the buffer and are written after the
  next attach, in order. ``send`` returns ``False`` when ``max_pending`` maps wait: the
  caller keeps the map, nothing is dropped silently. :meth:`HubLink.close` returns the
  maps that were never written.
- A frame whose write failed is put back at the head of the buffer and sent again after
  reconnect. A map written to a stream that then broke may or may not have been routed:
  the hub does not acknowledge maps (its Undeliverable notices say what it could not
  pass on). Recipients find every message in their inbox either way.
- One stream holds a gateway id at a time. When the hub says that another live stream
  holds ours (status ALREADY_EXISTS: another process runs with the same id, or ours
  was taken over while it could not answer the hub's probe), the link logs one ERROR
  line, reports it in :attr:`HubLink.conflict` (the gateway's ``/healthz`` says 503
  with it) and tries again every ``conflict_retry`` seconds, without taking the id
  from the live holder: it attaches once the other process is gone. The link answers
  the hub's probes, which is how the hub tells a live holder from a dead one, so a
  restarted gateway attaches again at once even before the hub noticed that its old
  stream is dead.
- A hub that refuses the gateway itself (PERMISSION_DENIED: with mutual TLS, its
  certificate does not name its id; UNAUTHENTICATED: a wrong token) is reported once at
  ERROR with the hub's reason, kept in :attr:`HubLink.refused` for ``/healthz``, and
  tried again with backoff.
- A gateway never trusts its hub more than its clients: a delivery or notice that
  cannot be decoded (invalid UTF-8, bad field types) is dropped, counted
  (:attr:`HubLink.dropped`) and logged at most every ``DROP_LOG_INTERVAL`` seconds;
  the rest of the frame is delivered and the stream stays up.
- TLS: ``tls`` (:class:`~transmit_hub.tls.ClientTls`) verifies the hub with a CA and
  presents a client certificate, for a hub with ``--tls-client-ca``.

Events are read by one consumer through :meth:`HubLink.events`; the event queue is
bounded (``event_queue``) and a slow consumer backpressures the stream (and so, in the
end, the hub's queue for this gateway): events are never dropped. A consumer that handles
deliveries without waiting (the gateway's fan-out) may take them straight from the
reader instead (:meth:`HubLink.deliver_to`): no queue and no task switch per frame, and
the reader reads on only once the handler has returned (the same backpressure).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Callable
from time import monotonic
from typing import Any, Final

from grpc import aio  # type: ignore[import-untyped]

from . import codec, timeline, wire
from .auth import bearer_metadata
from .errors import ConfigError, LinkClosed, LinkError, ProtocolError
from .lifecycle import AsyncLifecycle
from .link_events import (
    Delivered,
    LinkDown,
    LinkEvent,
    LinkLost,
    LinkUp,
    NotDelivered,
    close_events,
    read_events,
)
from .throttle import Every
from .tls import ClientTls
from .transport import CHANNEL_OPTIONS, CONNECT_METHOD, MAX_MESSAGE_BYTES
from .types import (
    Delivery,
    DeliveryRow,
    GatewayId,
    MessageId,
    TransmitMap,
    Undeliverable,
    UndeliverableReason,
    gateway_id_problem,
)

__all__ = [
    "Delivered",
    "HubLink",
    "LinkDown",
    "LinkEvent",
    "LinkLost",
    "LinkUp",
    "NotDelivered",
]

log = logging.getLogger(__name__)

WELCOME_TIMEOUT: Final = 10.0
"""Seconds to wait for the hub's Welcome after the Hello."""
LINGER_BUSY: Final = 0.005
"""A link that wrote a frame less than this many seconds ago is busy (it may linger)."""
LINGER_LAG: Final = 0.001
"""A map that waited this many seconds for the writer to run says the process is loaded."""
MAX_FRAME_BYTES: Final = 4 * 1024 * 1024
"""Byte budget of one request frame (a single larger map still goes alone)."""
MAX_MAP_BYTES: Final = MAX_MESSAGE_BYTES - 1024
"""A map bigger than this could never be sent: it is refused (NotDelivered, INVALID)."""
REFUSALS: Final = frozenset({"PERMISSION_DENIED", "UNAUTHENTICATED"})
"""Statuses that say the hub refuses this gateway itself (reported, not just retried)."""
REASON_MAX: Final = 300
"""Characters kept of why the link is down, for ``/healthz`` (a hub's own words may run
to gRPC's metadata limit)."""
DROP_LOG_INTERVAL: Final = 10.0
"""Undecodable deliveries are logged in one line at most this often, with a count."""

DeliveryHandler = Callable[[tuple[Delivery, ...]], None]
"""Takes one frame's deliveries without waiting (:meth:`HubLink.deliver_to`)."""
RowHandler = Callable[[tuple[DeliveryRow, ...]], None]
"""Takes one frame's deliveries as rows without waiting (:meth:`HubLink.deliver_rows_to`)."""


class _Conflict(Exception):
    """ALREADY_EXISTS: another live stream holds our gateway id."""


class _Rejected(Exception):
    """The hub refused what we wrote (INVALID_ARGUMENT): resending it would fail again."""


class _Refused(Exception):
    """The hub refuses this gateway (PERMISSION_DENIED: its certificate does not name our
    id; UNAUTHENTICATED: a wrong token): retrying changes nothing until someone fixes it."""


class HubLink(AsyncLifecycle):
    """A gateway's link to the hub; an async context manager (``start``/``close``)."""

    def __init__(
        self,
        target: str,
        gateway_id: GatewayId,
        *,
        token: str | None = None,
        max_pending: int = 10_000,
        max_batch: int = 256,
        event_queue: int = 1024,
        backoff_initial: float = 0.05,
        backoff_max: float = 5.0,
        linger: float = 0.001,
        tls: ClientTls | None = None,
        conflict_retry: float = 5.0,
        channel_options: tuple[tuple[str, Any], ...] = CHANNEL_OPTIONS,
    ) -> None:
        problem = gateway_id_problem(gateway_id)
        if problem is not None:
            raise ConfigError(f"gateway_id {gateway_id[:40]!r}: {problem}")
        if conflict_retry <= 0:
            raise ConfigError("conflict_retry must be positive")
        if max_pending < 1 or max_batch < 1 or event_queue < 1:
            raise ConfigError("max_pending, max_batch and event_queue must be at least 1")
        if backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ConfigError("need 0 < backoff_initial <= backoff_max")
        if not 0 <= linger <= 1:
            raise ConfigError("linger must be between 0 and 1 second")
        self.target = target
        self.gateway_id = gateway_id
        self._metadata = bearer_metadata(token) if token else ()
        self._max_pending = max_pending
        self._max_batch = max_batch
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._linger = linger
        self._tls = tls
        self._conflict_retry = conflict_retry
        self._conflict: str | None = None
        self._refused: str | None = None
        self._down_reason: str | None = None
        self._probe: int | None = None
        self.dropped = 0
        """Deliveries and notices from the hub dropped because they could not be decoded."""
        self._dropped_logged = 0
        self._drop_log = Every(DROP_LOG_INTERVAL)
        self._channel_options = channel_options
        self._attached_at = 0.0
        self.short_streams = 0
        """Streams that ended less than ``backoff_max`` s after the hub's Welcome."""
        self._last_short = False
        self._short_log = Every(DROP_LOG_INTERVAL)
        self._pending: deque[TransmitMap] = deque()
        self._inflight: list[TransmitMap] = []
        self._wakeup = asyncio.Event()
        self._woken_at = 0.0
        self._events: asyncio.Queue[object] = asyncio.Queue(maxsize=event_queue)
        self._on_delivered: DeliveryHandler | None = None
        self._on_rows: RowHandler | None = None
        self._handler_failed_at = float("-inf")
        self._up = asyncio.Event()
        self._connected = False
        self._hub_id: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    # -- public API ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the hub's Welcome was received on the current stream."""
        return self._connected

    @property
    def conflict(self) -> str | None:
        """Why the hub refuses our gateway id (another process holds it), or ``None``.

        Set from the hub's ALREADY_EXISTS answer until the link attaches again.
        """
        return self._conflict

    @property
    def refused(self) -> str | None:
        """Why the hub refuses this gateway (its certificate or token), or ``None``.

        Set from the hub's PERMISSION_DENIED or UNAUTHENTICATED answer, with the hub's own
        words, until the link attaches.
        """
        return self._refused

    @property
    def down_reason(self) -> str | None:
        """Why the link is down: how its last attempt or stream ended (at most
        :data:`REASON_MAX` characters), or ``None`` while attached and before the first
        attempt ends. For ``/healthz``, so an operator need not read the logs."""
        return None if self._connected else self._down_reason

    @property
    def hub_id(self) -> str | None:
        """The id of the hub that accepted the current (or last) stream."""
        return self._hub_id

    @property
    def pending(self) -> int:
        """Maps waiting to be written."""
        return len(self._pending)

    def take_pending(self) -> list[TransmitMap]:
        """Remove and return the maps waiting to be written, oldest first.

        For a pool of links (:mod:`transmit_hub.pool`): while this link is down, what it
        holds can go through another hub instead of waiting for this one.
        """
        taken = list(self._pending)
        self._pending.clear()
        return taken

    async def start(self) -> None:
        """Start connecting in the background (and reconnecting, until closed)."""
        if self._closed:
            raise LinkClosed("the link is closed")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"hub-link-{self.gateway_id}")

    async def wait_connected(self, timeout: float) -> None:  # noqa: ASYNC109 - pinned API
        """Wait until attached; raises :class:`TimeoutError` after ``timeout`` seconds."""
        await asyncio.wait_for(self._up.wait(), timeout)

    def send(self, tmap: TransmitMap) -> bool:
        """Queue ``tmap`` for the hub; ``False`` (not queued) when ``max_pending`` wait."""
        pending = self._pending
        if len(pending) >= self._max_pending:
            if self._closed:
                raise LinkClosed("the link is closed")
            return False
        if self._closed:
            raise LinkClosed("the link is closed")
        pending.append(tmap)
        wakeup = self._wakeup
        if not wakeup.is_set():
            self._woken_at = monotonic()
            wakeup.set()
        return True

    def send_everywhere(self, tmap: TransmitMap) -> bool:
        """As :meth:`send` (one hub: :meth:`HubPool.send_everywhere` is the pool's)."""
        return self.send(tmap)

    def events(self) -> AsyncIterator[LinkEvent]:
        """The link's events, for one consumer; ends after :meth:`close`."""
        return read_events(self._events, lambda: self._closed)

    def deliver_to(self, handler: DeliveryHandler | None) -> None:
        """Hand each frame's deliveries to ``handler`` in the reader, in order, instead of
        as :class:`Delivered` events (``None``: events again). The handler must not block:
        the stream is not read while it runs. An exception it raises is logged and the
        stream goes on."""
        self._on_delivered = handler
        self._on_rows = None

    def deliver_rows_to(self, handler: RowHandler | None) -> None:
        """:meth:`deliver_to`, with each frame's deliveries as rows
        (:data:`~transmit_hub.types.DeliveryRow`: no object built for a consumer that
        takes them apart at once)."""
        self._on_rows = handler
        self._on_delivered = None

    async def close(self) -> list[TransmitMap]:
        """Stop the link; return the maps never written (each returned once)."""
        if not self._closed:
            self._closed = True
            task = self._task
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
            self._connected = False
            self._up.clear()
            close_events(self._events)
            log.info("link %s to %s closed", self.gateway_id, self.target)
        unsent = [*self._inflight, *self._pending]
        self._inflight = []
        self._pending.clear()
        return unsent

    # -- connection loop -----------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while True:
            conflict = False
            try:
                await self._session()
                reason = "the hub ended the stream"
            except asyncio.CancelledError:
                raise
            except _Conflict as exc:
                conflict = True
                reason = str(exc)
            except aio.AioRpcError as exc:
                reason = _describe(exc)
                if exc.code().name == "ALREADY_EXISTS":  # raised by a read, not a status
                    conflict = True
                    reason = exc.details()
                elif exc.code().name in REFUSALS:
                    self._set_refused(reason)
            except _Refused as exc:
                reason = str(exc)
                self._set_refused(reason)
            except _Rejected as exc:
                reason = str(exc)
                log.error("link %s: the hub refused a frame: %s", self.gateway_id, exc)
                rejected, self._inflight = self._inflight, []
                if rejected:
                    await self._emit(NotDelivered(tuple(map(_invalid, rejected))))
            except Exception as exc:
                reason = _describe(exc)
            self._down_reason = reason[:REASON_MAX]
            attached = self._connected
            short = attached and monotonic() - self._attached_at < self._backoff_max
            self._set_down()
            if conflict:
                await self._in_conflict(reason, attached)
                attempt = 0
                delay = self._conflict_retry
                await asyncio.sleep(random.uniform(delay * 0.8, delay))
                continue
            if short:
                # Up for less than the longest backoff: a hub that accepts and drops us
                # over and over is backed off from like one that refuses us.
                self._short_stream(reason)
                await self._emit(LinkDown(reason))
            elif attached:
                log.info("link %s to %s down: %s", self.gateway_id, self.target, reason)
                await self._emit(LinkDown(reason))
                attempt = 0
                self._last_short = False
            elif self._refused is not None:  # said once, at ERROR, by _set_refused
                log.debug("link %s: still refused by %s", self.gateway_id, self.target)
            elif attempt == 0:
                log.warning(
                    "link %s: cannot attach to %s (%s); retrying with backoff",
                    self.gateway_id,
                    self.target,
                    reason,
                )
            else:
                log.debug("link %s: attach to %s failed: %s", self.gateway_id, self.target, reason)
            delay = min(self._backoff_max, self._backoff_initial * (2**attempt))
            attempt = min(attempt + 1, 30)
            await asyncio.sleep(random.uniform(delay / 2, delay))

    def _short_stream(self, reason: str) -> None:
        """A stream ended less than ``backoff_max`` s after its Welcome: count it; one
        line at most every ``DROP_LOG_INTERVAL`` seconds."""
        self.short_streams += 1
        self._last_short = True
        now = monotonic()
        if self._short_log.due(now):
            log.warning(
                "link %s to %s down %.2f s after attaching: %s (%d such short streams in "
                "all); reconnecting with backoff",
                self.gateway_id,
                self.target,
                now - self._attached_at,
                reason,
                self.short_streams,
            )
        else:
            log.debug("link %s to %s down again: %s", self.gateway_id, self.target, reason)

    def _set_refused(self, reason: str) -> None:
        """The hub refuses us: say why once (ERROR), and keep it for ``/healthz``."""
        refused = f"the hub at {self.target} refuses gateway {self.gateway_id}: {reason}"
        if refused != self._refused:
            log.error("link %s: %s; retrying with backoff", self.gateway_id, refused)
        self._refused = refused

    async def _in_conflict(self, details: str, attached: bool) -> None:
        """Another live stream holds our id: say so once, then keep retrying quietly."""
        first = self._conflict is None
        self._conflict = f"gateway id {self.gateway_id} is held by another process"
        if first:
            log.error(
                "link %s: %s (the hub at %s says: %s); retrying every %g s until it is gone",
                self.gateway_id,
                self._conflict,
                self.target,
                details,
                self._conflict_retry,
            )
        else:
            log.debug("link %s: still held elsewhere: %s", self.gateway_id, details)
        if attached or first:
            await self._emit(LinkDown(self._conflict))

    def _set_down(self) -> None:
        self._connected = False
        self._up.clear()
        if self._inflight:
            # Written or not, we cannot know: send again (the inbox makes repeats harmless).
            self._pending.extendleft(reversed(self._inflight))
            self._inflight = []

    async def _session(self) -> None:
        """One stream: attach, then read and write until it ends (raises on error status)."""
        if self._tls is None:
            channel = aio.insecure_channel(self.target, options=self._channel_options)
        else:
            channel = aio.secure_channel(
                self.target, self._tls.credentials(), options=self._channel_options
            )
        call: Any = None
        try:
            # Raw bytes in: the link decodes each delivery itself (codec.decode_response).
            connect = channel.stream_stream(
                CONNECT_METHOD, request_serializer=None, response_deserializer=None
            )
            call = connect(metadata=self._metadata)
            try:
                await call.write(codec.hello_bytes(self.gateway_id))
            except aio.AioRpcError:
                await self._raise_status(call)
                raise
            first = await asyncio.wait_for(call.read(), WELCOME_TIMEOUT)
            if first is aio.EOF:
                await self._raise_status(call)
                raise ProtocolError("the hub ended the stream before its Welcome")
            hub_id = codec.decode_response(first).welcome
            if hub_id is None:
                raise ProtocolError("the hub's first response was not a Welcome")
            self._hub_id = hub_id
            self._refused = None
            self._connected = True
            self._attached_at = monotonic()
            self._up.set()
            self._probe = None
            if self._conflict is not None:
                log.info(
                    "link %s: attached to hub %s at %s; the other holder of the id is gone",
                    self.gateway_id,
                    hub_id,
                    self.target,
                )
                self._conflict = None
            elif self._last_short:  # said in the counted line of the short streams
                log.debug("link %s attached to hub %s again", self.gateway_id, hub_id)
            else:
                log.info("link %s attached to hub %s at %s", self.gateway_id, hub_id, self.target)
            await self._emit(LinkUp(hub_id))
            reader = asyncio.create_task(self._read_loop(call))
            writer = asyncio.create_task(self._write_loop(call))
            try:
                await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (reader, writer):
                    task.cancel()
                await asyncio.wait({reader, writer})
            if call.done():
                await self._raise_status(call)
            for task in (reader, writer):
                if not task.cancelled() and (failure := task.exception()) is not None:
                    raise failure
        finally:
            if call is not None:
                call.cancel()
            await channel.close(None)

    async def _raise_status(self, call: Any) -> None:
        """Raise the stream's final status as an exception when it is an error."""
        code = await call.code()
        if code is not None and code.name != "OK":
            raise _status_error(code.name, await call.details())

    async def _read_loop(self, call: Any) -> None:
        emit = self._emit
        decode = codec.decode_response
        while True:
            response = await call.read()
            if response is aio.EOF:
                return
            on_rows = self._on_rows
            frame = decode(response, rows=on_rows is not None)
            if timeline.ON:
                ids = [d.message.id for d in frame.deliveries] + [r[0][0] for r in frame.rows]
                timeline.stamp("from_hub", ids)
            if frame.rows and on_rows is not None:
                try:
                    on_rows(frame.rows)
                except Exception as exc:  # a bug in the consumer must not end the stream
                    self._handler_failed(exc)
            if frame.deliveries:
                handler = self._on_delivered
                if handler is None:
                    await emit(Delivered(frame.deliveries))
                else:
                    try:
                        handler(frame.deliveries)
                    except Exception as exc:  # a bug in the consumer must not end the stream
                        self._handler_failed(exc)
            if frame.notices:
                await emit(NotDelivered(frame.notices))
            if frame.probe is not None:
                self._probe = frame.probe  # the writer answers it before anything else
                self._wakeup.set()
            if frame.dropped:
                self._count_dropped(frame.dropped)

    def _handler_failed(self, exc: Exception) -> None:
        """Log a failed delivery handler with its traceback, at most every
        ``DROP_LOG_INTERVAL`` seconds (DEBUG otherwise)."""
        now = monotonic()
        if now - self._handler_failed_at >= DROP_LOG_INTERVAL:
            self._handler_failed_at = now
            log.error(
                "link %s: handling deliveries from the hub failed", self.gateway_id, exc_info=exc
            )
        else:
            log.debug("link %s: handling deliveries failed: %r", self.gateway_id, exc)

    def _count_dropped(self, n: int) -> None:
        self.dropped += n
        if self._drop_log.due():
            log.warning(
                "link %s: dropped %d deliveries from the hub at %s that could not be decoded "
                "(%d in all; the messages are in the recipients' inboxes)",
                self.gateway_id,
                self.dropped - self._dropped_logged,
                self.target,
                self.dropped,
            )
            self._dropped_logged = self.dropped

    async def _write_loop(self, call: Any) -> None:
        pending = self._pending
        wakeup = self._wakeup
        encode = wire.encode_transmit_map
        max_batch = self._max_batch
        linger = self._linger
        lag = LINGER_LAG
        last_write = float("-inf")
        while True:
            probe = self._probe
            if probe is not None:
                self._probe = None
                await call.write(codec.probe_reply_bytes(probe))
            if not pending:
                wakeup.clear()
                if self._probe is not None:
                    continue  # a probe came while the reply above was being written
                await wakeup.wait()
                if timeline.ON:
                    timeline.stamp("link_woke", [tmap.message.id for tmap in pending])
                # A busy link in a loaded process: let a few more maps join this frame.
                if linger and len(pending) < max_batch:
                    now = monotonic()
                    if now - last_write < LINGER_BUSY and now - self._woken_at >= lag:
                        await asyncio.sleep(linger)
                continue
            batch: list[TransmitMap] = []
            encoded: list[bytes] = []
            refused: list[TransmitMap] = []
            size = 0
            while pending and len(batch) < max_batch:
                tmap = pending[0]
                try:
                    data = encode(tmap)
                except (ValueError, TypeError, AttributeError):
                    log.exception("link %s: cannot encode a map; refusing it", self.gateway_id)
                    refused.append(pending.popleft())
                    continue
                if len(data) > MAX_MAP_BYTES:
                    log.error("link %s: a map of %d bytes is too big", self.gateway_id, len(data))
                    refused.append(pending.popleft())
                    continue
                if batch and size + len(data) > MAX_FRAME_BYTES:
                    break
                size += len(data)
                batch.append(pending.popleft())
                encoded.append(data)
            if refused:
                await self._emit(NotDelivered(tuple(map(_invalid, refused))))
            if not batch:
                continue
            self._inflight = batch
            if timeline.ON:
                timeline.stamp("to_hub", [tmap.message.id for tmap in batch])
            await call.write(wire.encode_batch_request(encoded))
            if timeline.ON:
                timeline.stamp("link_wrote", [tmap.message.id for tmap in batch])
            self._inflight = []
            last_write = monotonic()

    async def _emit(self, event: LinkEvent) -> None:
        await self._events.put(event)


def _invalid(tmap: TransmitMap) -> Undeliverable:
    """The notice for a map the link cannot send at all (it is never retried)."""
    try:
        users = tuple(r.user_id for rs in tmap.users.values() for r in rs)
        message_ids: tuple[MessageId, ...] = (tmap.message.id,)
    except Exception:  # not even shaped like a TransmitMap
        users, message_ids = (), ()
    return Undeliverable(GatewayId(""), message_ids, users, UndeliverableReason.INVALID)


def _status_error(code: str, details: str) -> Exception:
    """The exception for a stream that ended with status ``code`` (not OK)."""
    if code == "ALREADY_EXISTS":
        return _Conflict(details)
    if code == "INVALID_ARGUMENT":
        return _Rejected(f"{code}: {details}")
    if code in REFUSALS:
        return _Refused(f"{code}: {details}")
    return LinkError(f"{code}: {details}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc, TimeoutError):
        return "no Welcome from the hub in time"
    return str(exc) or type(exc).__name__
