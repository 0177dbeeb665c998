"""The TransmitHubService implementation: the Connect stream, ListGateways, GetStats.

Connect, per stream: the gateway says Hello and claims its id
(:mod:`transmit_hub.attach`: the Hello's rules, one stream per id); then the hub answers
a Welcome, one task reads request frames and routes every map in them
(:mod:`transmit_hub.forwarding`: on wire bytes, offering each delivery to its target's
:class:`~transmit_hub.outbox.Outbox`, never waiting; undeliverable shares are answered
with notices), and another task drains this gateway's own outbox into ``DeliveryBatch``
frames. A frame's bytes stay held by the outbox (its ``--queue-bytes`` and the shared
``--queue-bytes-total``) until its write completes, or until the gateway is detached
(whatever ends the stream), which gives back everything its outbox holds. When either
task ends, the other is cancelled and the gateway is detached.

Keepalive (:meth:`HubService.watch`): a stream the hub has read nothing from for
``gateway_keepalive`` seconds is sent a Probe (the link answers it before anything
else); one silent for twice that is ended and its gateway detached, so maps for it come
back NOT_ATTACHED and its senders route them through another hub. gRPC's own keepalive
pings are not enough here: behind a connection that went silent (a dead switch port, a
stuck VM), a hub that keeps writing deliveries can go on for as long as the buffers
last, and then block, without ever timing out a ping.

Write deadline (the same watch): a gateway that keeps sending but reads nothing is never
silent, yet HTTP/2 flow control holds the hub's write to it for as long as it does not
read, its outbox fills, and every map for it would be refused QUEUE_FULL for as long as
it stays. A stream with one write out for ``gateway_write_timeout`` seconds is ended and
its gateway detached the same way, so maps for it come back NOT_ATTACHED. The writer
stamps the start of each frame's write (never per delivery); the watch compares.

Stream endings: the id is held by a live stream, or this stream was replaced ->
ALREADY_EXISTS; hub shutting down -> UNAVAILABLE "hub shutting down; reconnect"; the
stream was silent -> UNAVAILABLE (:data:`SILENT_DETAILS`); a write to it stalled ->
UNAVAILABLE (:data:`STALLED_DETAILS`); a frame that is not valid
protobuf -> INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc  # type: ignore[import-untyped]
from grpc import aio

from . import codec, timeline, wire
from .attach import HELD_DETAILS, SHUTDOWN_DETAILS, Attacher
from .errors import ConfigError, ProtocolError
from .forwarding import Forwarder
from .registry import Attachment, EndReason, Registry
from .transport import SERVICE_NAME

__all__ = [
    "HELD_DETAILS",
    "SHUTDOWN_DETAILS",
    "SILENT_DETAILS",
    "STALLED_DETAILS",
    "HubService",
    "add_to_server",
]

log = logging.getLogger(__name__)

REPLACED_DETAILS = (
    "gateway id {} was claimed by a newer stream, and this one did not answer the probe"
)
SILENT_DETAILS = "nothing from gateway {} for {:g} s, probes unanswered; reconnect"
STALLED_DETAILS = "gateway {} took nothing written to it for {:g} s; reconnect"

MAX_FRAME_ITEMS = 4096
"""Most deliveries and notices per response frame."""
MAX_FRAME_BYTES = 4 * 1024 * 1024
"""Byte budget per response frame (one larger delivery still goes alone)."""
WRITER_FINISH_TIMEOUT = 1.0
"""At shutdown, how long a stream's writer may take to finish the frame it is writing."""


class HubService:
    """The TransmitHubService servicer; register it with :func:`add_to_server`.

    Not a subclass of the generated servicer: Connect exchanges raw frames.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        attacher: Attacher | None = None,
        gateway_keepalive: float = 2.0,
        gateway_write_timeout: float = 10.0,
    ) -> None:
        """``attacher``: the start of each stream, with its limits (default: the defaults)."""
        if gateway_keepalive <= 0:
            raise ConfigError("gateway_keepalive must be positive")
        if not gateway_write_timeout >= 0:
            raise ConfigError("gateway_write_timeout must not be negative")
        self.registry = registry
        self.gateway_keepalive = gateway_keepalive
        """Seconds of silence after which a stream is probed; twice this, it is ended."""
        self.gateway_write_timeout = gateway_write_timeout
        """Seconds one write to a stream may stay out before the stream is ended (0: never)."""
        self.keepalive_probes = 0
        """Probes sent to quiet streams by :meth:`watch`."""
        self.silent_detached = 0
        """Streams ended by :meth:`watch` because they stayed silent."""
        self.stalled_detached = 0
        """Streams ended by :meth:`watch` because a write to them made no progress."""
        self.attacher = attacher if attacher is not None else Attacher(registry)
        self.forwarder = Forwarder(registry)
        self.draining = False
        self._readers: dict[Attachment, asyncio.Task[None]] = {}

    # -- Connect -------------------------------------------------------------------------

    async def Connect(self, request_iterator: Any, context: Any) -> None:
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTDOWN_DETAILS)
        att = await self.attacher.attach(context, lambda: self.draining)
        if att is None:
            return  # the stream ended before its Hello
        gateway_id = att.gateway_id
        reader: asyncio.Task[None] | None = None
        writer: asyncio.Task[None] | None = None
        failure: BaseException | None = None
        try:
            await context.write(codec.welcome_bytes(self.registry.hub_id))
            reader = asyncio.create_task(self._read_loop(att, context))
            writer = asyncio.create_task(self._write_loop(att, context))
            self._readers[att] = reader
            ended = asyncio.create_task(att.ended.wait())
            waiting: set[asyncio.Future[Any]] = {reader, writer, ended}
            try:
                while True:
                    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                    if done == {reader} and self.draining and reader.cancelled():
                        # Draining: stop reading but let the writer empty the outbox.
                        waiting.discard(reader)
                        continue
                    break
            finally:
                ended.cancel()
            if att.end_reason is EndReason.SHUTDOWN and not writer.done():
                # The outbox is closed: the writer returns once its last frame is out.
                await asyncio.wait([writer], timeout=WRITER_FINISH_TIMEOUT)
            for loop_task in (reader, writer):
                if loop_task.done() and not loop_task.cancelled():
                    failure = failure or loop_task.exception()
        finally:
            # Detach first, with no await before it: a handler cancelled (again) while it
            # waits for its tasks, or a writer stuck in a write to a cancelled call, must
            # not leave the id held by a dead stream.
            self._readers.pop(att, None)
            self.registry.detach(att)
            for task in (reader, writer):
                if task is not None and not task.done():
                    task.cancel()
            tasks = [t for t in (reader, writer) if t is not None]
            for task in tasks:
                # A writer held in a write to a gateway that reads nothing may end only
                # when the call is torn down, with the write's error: nothing to report.
                task.add_done_callback(_settled)
            if tasks:
                await asyncio.wait(tasks, timeout=WRITER_FINISH_TIMEOUT)
        if att.end_reason is EndReason.REPLACED:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, REPLACED_DETAILS.format(gateway_id))
        if att.end_reason is EndReason.SHUTDOWN:
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTDOWN_DETAILS)
        if att.end_reason is EndReason.SILENT:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                SILENT_DETAILS.format(gateway_id, 2 * self.gateway_keepalive),
            )
        if att.end_reason is EndReason.STALLED:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                STALLED_DETAILS.format(gateway_id, self.gateway_write_timeout),
            )
        if isinstance(failure, ProtocolError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad request frame: {failure}")
        if failure is not None and not isinstance(failure, aio.AioRpcError):
            log.error("stream of gateway %s failed", gateway_id, exc_info=failure)

    @property
    def hello_waiting(self) -> int:
        """Streams open now that have not sent their Hello yet."""
        return self.attacher.hello_waiting

    @property
    def hello_evicted(self) -> int:
        """Streams ended because newer ones needed their Hello-waiting slot."""
        return self.attacher.hello_evicted

    @property
    def invalid_maps(self) -> int:
        """Maps answered INVALID because they could not be read or decoded."""
        return self.forwarder.invalid_maps

    def route(self, att: Attachment, maps: list[wire.WireMap], *, checked: bool = False) -> None:
        """Route one frame's maps (:meth:`Forwarder.route <transmit_hub.forwarding.Forwarder.route>`)."""
        self.forwarder.route(att, maps, checked=checked)

    async def watch(self) -> None:
        """Probe the streams that went quiet, end those that stay silent, and those with a
        write out for ``gateway_write_timeout`` (runs until cancelled; checks four times
        per ``gateway_keepalive``)."""
        keepalive = self.gateway_keepalive
        write_timeout = self.gateway_write_timeout
        registry = self.registry
        while True:
            await asyncio.sleep(keepalive / 4)
            try:
                now = time.monotonic()
                probe, end = registry.silent(now, keepalive)
                for att in probe:
                    att.keepalive()
                self.keepalive_probes += len(probe)
                self.silent_detached += len(end)
                for att in end:
                    log.warning(
                        "gateway %s (%s): nothing read for %g s, probes unanswered; detaching it",
                        att.gateway_id,
                        att.peer,
                        2 * keepalive,
                    )
                    att.end(EndReason.SILENT)
                if write_timeout:
                    stalled = registry.stalled(now, write_timeout)
                    self.stalled_detached += len(stalled)
                    for att in stalled:
                        log.warning(
                            "gateway %s (%s): a write to it made no progress for %g s "
                            "(--gateway-write-timeout): it takes nothing; detaching it",
                            att.gateway_id,
                            att.peer,
                            write_timeout,
                        )
                        att.end(EndReason.STALLED)
            except Exception:  # a bug must not stop the watch
                log.exception("the keepalive watch failed; going on")

    async def _read_loop(self, att: Attachment, context: Any) -> None:
        clock = time.monotonic
        while True:
            frame = await context.read()
            if frame is aio.EOF:
                return
            assert isinstance(frame, bytes)
            heard = time.monotonic_ns() if timeline.ON else 0
            att.heard_at = clock()
            self.registry.frames_in += 1
            maps = wire.split_batch_request(frame)  # ProtocolError ends the stream
            if maps is None:
                nonce = codec.probe_reply_nonce(frame)
                if nonce is None:
                    raise ProtocolError("only the first request may be a Hello")
                att.answered(nonce)
                continue
            try:
                # One C-level parse vouches for every message in the frame (about 0.2 us a
                # map in a busy frame); only a frame that fails is checked map by map.
                self.route(att, maps, checked=codec.request_decodes(frame))
            except Exception:  # a bug must not take the stream down
                log.exception("routing a batch from gateway %s failed", att.gateway_id)
            if timeline.ON:
                routed = time.monotonic_ns()
                ids = [codec.transmit_map_from_bytes(m.raw).message.id for m in maps]
                timeline.stamp("hub_in", ids, heard)
                timeline.stamp("hub_routed", ids, routed)

    async def _write_loop(self, att: Attachment, context: Any) -> None:
        box = att.outbox
        counters = att.counters
        registry = self.registry
        clock = time.monotonic
        while True:
            await box.wait()
            woke = time.monotonic_ns() if timeline.ON else 0
            if att.probe_due:
                att.probe_due = False
                att.writing_since = clock()
                await context.write(codec.probe_bytes(att.probe_nonce))
                att.writing_since = 0.0
            entries, notices = box.take(MAX_FRAME_ITEMS, MAX_FRAME_BYTES)
            if not entries and not notices:
                if box.closed:
                    return
                continue
            response = wire.delivery_batch_response(entries, notices)
            if timeline.ON:
                ids = [d.message.id for d in codec.decode_response(response).deliveries]
                timeline.stamp("hub_woke", ids, woke)
                timeline.stamp("hub_out", ids)
            att.writing_since = clock()  # the watch ends a stream whose write stays out
            await context.write(response)
            att.writing_since = 0.0
            box.written()  # the frame's bytes stayed held (and budgeted) until now
            if timeline.ON:
                timeline.stamp("hub_wrote", ids)
            counters.deliveries_sent += len(entries)
            registry.deliveries_sent += len(entries)
            registry.frames_out += 1

    # -- shutdown ------------------------------------------------------------------------

    async def drain(self, grace: float) -> None:
        """Stop reading maps, let outboxes empty for up to ``grace`` s, then end streams."""
        self.draining = True
        for reader in list(self._readers.values()):
            reader.cancel()
        attachments = self.registry.attachments()
        if attachments and grace > 0:
            waits = [asyncio.ensure_future(a.outbox.wait_empty()) for a in attachments]
            _, pending = await asyncio.wait(waits, timeout=grace)
            for w in pending:
                w.cancel()
            if pending:
                log.warning(
                    "shutdown: %d gateways' outboxes not drained (queued or being written) after %ss",
                    len(pending),
                    grace,
                )
        for a in self.registry.attachments():
            a.end(EndReason.SHUTDOWN)

    # -- unary RPCs ----------------------------------------------------------------------

    async def ListGateways(
        self, request: codec.ListGatewaysRequest, context: Any
    ) -> codec.ListGatewaysResponse:
        return codec.gateways_to_pb(self.registry.gateways())

    async def GetStats(
        self, request: codec.GetStatsRequest, context: Any
    ) -> codec.GetStatsResponse:
        return codec.stats_to_pb(self.registry.stats())


def _settled(task: asyncio.Task[None]) -> None:
    """Mark a stream task's outcome as seen: a failure that matters was taken from it
    before its handler let go of it."""
    if not task.cancelled():
        task.exception()


def add_to_server(service: HubService, server: aio.Server) -> None:
    """Register ``service``; Connect exchanges raw frames (see :mod:`transmit_hub.wire`)."""
    handlers = {
        "Connect": grpc.stream_stream_rpc_method_handler(service.Connect),
        "ListGateways": grpc.unary_unary_rpc_method_handler(
            service.ListGateways,
            request_deserializer=codec.ListGatewaysRequest.FromString,
            response_serializer=codec.ListGatewaysResponse.SerializeToString,
        ),
        "GetStats": grpc.unary_unary_rpc_method_handler(
            service.GetStats,
            request_deserializer=codec.GetStatsRequest.FromString,
            response_serializer=codec.GetStatsResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
