"""The TransmitHubService implementation: the Connect stream, ListGateways, GetStats.

Connect, per stream: the first request must be a Hello (within ``hello_timeout``
seconds, else DEADLINE_EXCEEDED; at most ``max_hello_waiting`` streams wait for theirs,
and one more ends the one that waited longest) naming a valid gateway id (1 to 128 characters of
``A-Z a-z 0-9 . _ : -``, else INVALID_ARGUMENT). With mutual TLS the id must also be
a DNS name in the client certificate's subjectAltName (else PERMISSION_DENIED). At
most ``max_gateways`` attach at once (else RESOURCE_EXHAUSTED). Then the hub registers
the gateway and answers a Welcome; one task reads request frames and routes every map
in them (offering each delivery to its target's :class:`~transmit_hub.outbox.Outbox`,
never waiting), and another task drains this gateway's own outbox into
``DeliveryBatch`` frames. When either task ends, the other is cancelled and the
gateway is detached.

One stream holds a gateway id at a time. A Hello for an id that is held sends the
holder a Probe: when the holder answers within ``claim_timeout`` it is alive, and the
new stream is refused with ALREADY_EXISTS (:data:`HELD_DETAILS`); when it does not,
it is dead or stuck (a process restarted before the hub noticed its old stream was
gone), so it is replaced and its stream ends with ALREADY_EXISTS too. The link keeps
retrying after either: it attaches once the other holder is gone.

Routing works on wire bytes (:mod:`transmit_hub.wire`): a map's message is forwarded
as received and each delivery is encoded once. Maps the fast path cannot vouch for
(odd field order, no message id, an empty gateway id) take the slow path through
:func:`transmit_hub.routing.split`, which also defines the semantics both follow. A
map that cannot be read at all (truncated, a gateway id that is not UTF-8) or whose
message cannot be decoded is answered INVALID, and the stream goes on. Every map costs
time in proportion to its own size, whatever it names.

Undeliverable notices (target not attached: ``NOT_ATTACHED``; target's outbox full:
``QUEUE_FULL``; malformed map or target: ``INVALID``) go to the sender's own outbox.
When that is full too, the notice is counted (``Registry.notices_dropped``) and logged
at most once a second per gateway: the message is still in every recipient's inbox.

Keepalive (:meth:`HubService.watch`): a stream the hub has read nothing from for
``gateway_keepalive`` seconds is sent a Probe (the link answers it before anything
else); one silent for twice that is ended and its gateway detached, so maps for it come
back NOT_ATTACHED and its senders route them through another hub. gRPC's own keepalive
pings are not enough here: behind a connection that went silent (a dead switch port, a
stuck VM), a hub that keeps writing deliveries can go on for as long as the buffers
last, and then block, without ever timing out a ping.

Stream endings: the id is held by a live stream, or this stream was replaced ->
ALREADY_EXISTS; hub shutting down -> UNAVAILABLE "hub shutting down; reconnect"; the
stream was silent -> UNAVAILABLE (:data:`SILENT_DETAILS`); a frame that is not valid
protobuf -> INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

import grpc  # type: ignore[import-untyped]
from grpc import aio

from . import codec, peer, routing, timeline, wire
from .errors import ConfigError, ProtocolError
from .registry import Attachment, EndReason, Registry
from .transport import SERVICE_NAME
from .types import (
    GatewayId,
    TransmitMap,
    Undeliverable,
    UndeliverableReason,
    gateway_id_problem,
)

__all__ = ["HELD_DETAILS", "SHUTDOWN_DETAILS", "HubService", "add_to_server"]

log = logging.getLogger(__name__)

SHUTDOWN_DETAILS = "hub shutting down; reconnect"
HELD_DETAILS = "gateway id {} is held by another live stream (from {}); retry later"
REPLACED_DETAILS = (
    "gateway id {} was claimed by a newer stream, and this one did not answer the probe"
)
SILENT_DETAILS = "nothing from gateway {} for {:g} s, probes unanswered; reconnect"
CLAIM_ROUNDS = 3
"""How many holders a claim probes in turn before it gives up (claims racing each other)."""

MAX_FRAME_ITEMS = 4096
"""Most deliveries and notices per response frame."""
MAX_FRAME_BYTES = 4 * 1024 * 1024
"""Byte budget per response frame (one larger delivery still goes alone)."""
NOTICES_PER_ITEM = 256
"""Notices share one outbox item up to this many (a map naming 10,000 absent gateways
takes 40 items of the sender's queue, not 10,000)."""
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
        hello_timeout: float = 10.0,
        max_hello_waiting: int = 1024,
        claim_timeout: float = 2.0,
        ids_from_certificates: bool = False,
        gateway_keepalive: float = 2.0,
    ) -> None:
        if gateway_keepalive <= 0:
            raise ConfigError("gateway_keepalive must be positive")
        self.registry = registry
        self.gateway_keepalive = gateway_keepalive
        """Seconds of silence after which a stream is probed; twice this, it is ended."""
        self.keepalive_probes = 0
        """Probes sent to quiet streams by :meth:`watch`."""
        self.silent_detached = 0
        """Streams ended by :meth:`watch` because they stayed silent."""
        self.hello_timeout = hello_timeout
        self.max_hello_waiting = max_hello_waiting
        self._waiting: dict[int, asyncio.Future[None]] = {}
        """The streams waiting for their Hello, oldest first: each one's eviction."""
        self._waiter_serial = 0
        self.hello_evicted = 0
        """Streams ended because newer ones needed their Hello-waiting slot."""
        self._last_evict_log = float("-inf")
        self.claim_timeout = claim_timeout
        self.ids_from_certificates = ids_from_certificates
        """Mutual TLS: a gateway id must be a DNS name of the client's certificate."""
        self.draining = False
        self._readers: dict[Attachment, asyncio.Task[None]] = {}
        self._last_invalid_log = 0.0
        self.invalid_maps = 0
        """Maps answered INVALID because they could not be read or decoded."""

    # -- Connect -------------------------------------------------------------------------

    async def Connect(self, request_iterator: Any, context: Any) -> None:
        if self.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTDOWN_DETAILS)
        first = await self._hello(context)
        if first is aio.EOF:
            return
        assert isinstance(first, bytes)
        gateway_id = await self._check_hello(first, context)
        att = await self._claim(gateway_id, context)
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
        if isinstance(failure, ProtocolError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad request frame: {failure}")
        if failure is not None and not isinstance(failure, aio.AioRpcError):
            log.error("stream of gateway %s failed", gateway_id, exc_info=failure)

    @property
    def hello_waiting(self) -> int:
        """Streams open now that have not sent their Hello yet."""
        return len(self._waiting)

    async def _hello(self, context: Any) -> Any:
        """The stream's first request (or EOF), read within ``hello_timeout`` seconds.

        At most ``max_hello_waiting`` streams wait for it at once. One more ends the
        stream that has waited longest (RESOURCE_EXHAUSTED), not the newcomer: a real
        gateway says Hello as soon as its stream opens, so whoever fills the slots with
        silent streams (anyone with the token can) only ever evicts their own, and a
        gateway that restarts meanwhile attaches at once.
        """
        waiting = self._waiting
        if len(waiting) >= self.max_hello_waiting:
            oldest = next(iter(waiting))
            waiting.pop(oldest).set_result(None)
            self.hello_evicted += 1
            now = time.monotonic()
            if now - self._last_evict_log >= 1.0:
                self._last_evict_log = now
                log.warning(
                    "%d streams waiting for their Hello (--max-hello-waiting): the oldest "
                    "ended to make room (%d so ended in all)",
                    self.max_hello_waiting,
                    self.hello_evicted,
                )
        self._waiter_serial += 1
        key = self._waiter_serial
        evicted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting[key] = evicted
        read = asyncio.ensure_future(context.read())
        try:
            done, _ = await asyncio.wait(
                {read, evicted}, timeout=self.hello_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiting.pop(key, None)
            if not read.done():
                read.cancel()
        if read in done:
            return read.result()
        if evicted in done:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.max_hello_waiting} newer streams are waiting to say Hello (the hub's "
                "--max-hello-waiting) and this one waited longest; say Hello at once",
            )
        await context.abort(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"no Hello within {self.hello_timeout:g} s of opening the stream",
        )

    async def _check_hello(self, first: bytes, context: Any) -> GatewayId:
        """The gateway id of a valid Hello, allowed on this stream; else the call ends."""
        gateway_id = codec.hello_from_bytes(first)
        if gateway_id is None:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the first request must be a Hello with a gateway_id",
            )
        assert gateway_id is not None
        problem = gateway_id_problem(gateway_id)
        if problem is not None:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"bad gateway id in the Hello: {problem}"
            )
        if self.ids_from_certificates and gateway_id not in peer.certificate_dns_names(context):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"gateway id {gateway_id} is not a DNS name in the subjectAltName of the "
                "client certificate",
            )
        return gateway_id

    async def _claim(self, gateway_id: GatewayId, context: Any) -> Attachment:
        """Attach ``gateway_id`` unless a live stream holds it (then the call ends)."""
        registry = self.registry
        for _ in range(CLAIM_ROUNDS):
            holder = registry.holder(gateway_id)
            if holder is None:
                break
            if await self._alive(holder):
                await context.abort(
                    grpc.StatusCode.ALREADY_EXISTS, HELD_DETAILS.format(gateway_id, holder.peer)
                )
            if registry.holder(gateway_id) is holder:
                break  # dead or stuck: replaced below
        else:
            await context.abort(
                grpc.StatusCode.ALREADY_EXISTS, HELD_DETAILS.format(gateway_id, "a racing claim")
            )
        if self.draining:  # the hub began shutting down while we waited
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTDOWN_DETAILS)
        if registry.full(gateway_id):
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the hub already holds {registry.max_gateways} gateways (its --max-gateways)",
            )
        return registry.attach(gateway_id, context.peer())

    async def _alive(self, holder: Attachment) -> bool:
        """Probe ``holder``: whether it answers within ``claim_timeout`` seconds."""
        if holder.ended.is_set():
            return False
        holder.probe(random.getrandbits(63) + 1)
        answered = asyncio.ensure_future(holder.probe_answered.wait())
        ended = asyncio.ensure_future(holder.ended.wait())
        try:
            await asyncio.wait(
                {answered, ended}, timeout=self.claim_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            answered.cancel()
            ended.cancel()
        return holder.probe_answered.is_set() and not holder.ended.is_set()

    async def watch(self) -> None:
        """Probe the streams that went quiet and end those that stay silent (runs until
        cancelled; checks four times per ``gateway_keepalive``)."""
        keepalive = self.gateway_keepalive
        registry = self.registry
        while True:
            await asyncio.sleep(keepalive / 4)
            try:
                probe, end = registry.silent(time.monotonic(), keepalive)
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
                ids = [codec.transmit_map_from_bytes(m.raw).message.id for m in maps]
                timeline.stamp("hub_in", ids, heard)

    async def _write_loop(self, att: Attachment, context: Any) -> None:
        box = att.outbox
        counters = att.counters
        registry = self.registry
        while True:
            await box.wait()
            if att.probe_due:
                att.probe_due = False
                await context.write(codec.probe_bytes(att.probe_nonce))
            entries, notices = box.take(MAX_FRAME_ITEMS, MAX_FRAME_BYTES)
            if not entries and not notices:
                if box.closed:
                    return
                continue
            response = wire.delivery_batch_response(entries, notices)
            if timeline.ON:
                delivered = codec.decode_response(response).deliveries
                timeline.stamp("hub_out", [d.message.id for d in delivered])
            await context.write(response)
            counters.deliveries_sent += len(entries)
            registry.deliveries_sent += len(entries)
            registry.frames_out += 1

    # -- routing (the hot path) ----------------------------------------------------------

    def route(self, att: Attachment, maps: list[wire.WireMap], *, checked: bool = False) -> None:
        """Offer every map's deliveries to their targets; notify the sender of the rest.

        ``checked``: the whole frame decodes, so every message in it does too; otherwise
        each message is checked before it is forwarded (a gateway must be able to decode it).
        """
        registry = self.registry
        outboxes = registry.outboxes
        registry.transmit_maps_received += len(maps)
        att.counters.transmit_maps_received += len(maps)
        notices: list[Undeliverable] | None = None
        has_id = wire.has_message_id
        message_ok = codec.message_decodes
        has_users = wire.has_users
        entry = wire.delivery_entry
        for wm in maps:
            msg = wm.message
            targets = wm.targets
            if wm.problem is not None:
                notices = self._invalid(wm.problem, notices)
                continue
            if len(targets) == 1:
                gid, users = targets[0]
                plain = bool(gid) and has_users(users) is not None
            else:
                # A gateway named twice goes the slow way (protobuf: the last entry wins), so
                # one map never writes one gateway more than one delivery.
                plain = all(g and has_users(u) is not None for g, u in targets) and len(
                    {g for g, _ in targets}
                ) == len(targets)
            if msg is None or not plain or has_id(msg) is not True:
                notices = self._route_slow(wm, notices)
                continue
            if not checked and not message_ok(msg):  # forwarded verbatim: it must decode
                notices = self._invalid("its message cannot be decoded", notices)
                continue
            notice = _Notices(wm)  # decodes the map once, only if a notice is needed
            for gateway_id, users in targets:
                if not has_users(users):
                    continue  # no users there: nothing to deliver
                box = outboxes.get(gateway_id)
                if box is None:
                    # Attached ids are valid by construction: only the others are checked.
                    reason = (
                        UndeliverableReason.NOT_ATTACHED
                        if gateway_id_problem(gateway_id) is None
                        else UndeliverableReason.INVALID
                    )
                    notices = notices or []
                    notices.append(notice(gateway_id, reason))
                elif not box.offer(entry(msg, users)):
                    registry.queue_full += 1
                    registry.counters(gateway_id).queue_full += 1
                    notices = notices or []
                    notices.append(notice(gateway_id, UndeliverableReason.QUEUE_FULL))
            if notice.problem is not None:
                self._log_invalid(notice.problem)
        if notices:
            self._notify(att, notices)

    def _invalid(self, problem: str, notices: list[Undeliverable] | None) -> list[Undeliverable]:
        """Answer INVALID for a map that cannot be read; the stream goes on."""
        self._log_invalid(problem)
        notices = notices if notices is not None else []
        notices.append(Undeliverable(GatewayId(""), (), (), UndeliverableReason.INVALID))
        return notices

    def _log_invalid(self, problem: str) -> None:
        self.invalid_maps += 1
        now = time.monotonic()
        if now - self._last_invalid_log >= 1.0:
            self._last_invalid_log = now
            log.warning(
                "a map could not be read (%s): answered INVALID (%d such maps in all)",
                problem,
                self.invalid_maps,
            )

    def _route_slow(
        self, wm: wire.WireMap, notices: list[Undeliverable] | None
    ) -> list[Undeliverable] | None:
        """Route one map through the reference :func:`routing.split` (rare cases)."""
        try:
            tmap = codec.transmit_map_from_bytes(wm.raw)
        except Exception:  # a DecodeError: invalid UTF-8 in the message, say
            return self._invalid("its message cannot be decoded", notices)
        outboxes = self.registry.outboxes
        route = routing.split(tmap, lambda g: g in outboxes)
        found = list(route.undeliverable)
        for gateway_id, delivery in route.deliveries:
            data = codec.delivery_to_pb(delivery).SerializeToString()
            if not outboxes[gateway_id].offer(wire.delivery_entry_from_body(data)):
                self.registry.queue_full += 1
                self.registry.counters(gateway_id).queue_full += 1
                found.append(
                    routing.not_delivered(gateway_id, tmap, UndeliverableReason.QUEUE_FULL)
                )
        if not found:
            return notices
        notices = notices if notices is not None else []
        notices.extend(found)  # in place: a frame of many such maps stays linear
        return notices

    def _notify(self, att: Attachment, notices: list[Undeliverable]) -> None:
        registry = self.registry
        registry.undeliverable += len(notices)
        registry.undeliverable_by_reason.update(n.reason for n in notices)
        box = att.outbox
        dropped = 0
        encode = codec.undeliverable_bytes
        for start in range(0, len(notices), NOTICES_PER_ITEM):
            group = notices[start : start + NOTICES_PER_ITEM]
            if not box.offer_notice(wire.notice_fields(map(encode, group))):
                dropped += len(group)
        if dropped:
            registry.notices_dropped += dropped
            now = time.monotonic()
            if now - att.drop_logged_at >= 1.0:
                att.drop_logged_at = now
                log.warning(
                    "gateway %s: outbox full, %d undeliverable notices for it dropped "
                    "(%d in all; the messages are in the recipients' inboxes)",
                    att.gateway_id,
                    dropped,
                    registry.notices_dropped,
                )

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
                    "shutdown: %d gateways' outboxes not empty after %ss", len(pending), grace
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


class _Notices:
    """Makes the notices of one map, decoding the map at most once (so N targets cost O(N))."""

    __slots__ = ("_tmap", "_wm", "problem")

    def __init__(self, wm: wire.WireMap) -> None:
        self._wm = wm
        self._tmap: TransmitMap | None = None
        self.problem: str | None = None

    def __call__(self, gateway_id: str, reason: UndeliverableReason) -> Undeliverable:
        tmap = self._tmap
        if tmap is None and self.problem is None:
            try:
                tmap = self._tmap = codec.transmit_map_from_bytes(self._wm.raw)
            except Exception:  # a DecodeError: the message cannot be decoded
                self.problem = "its message cannot be decoded"
        if tmap is None:
            return Undeliverable(GatewayId(gateway_id), (), (), reason)
        return routing.not_delivered(GatewayId(gateway_id), tmap, reason)


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
