"""Who attaches, as which gateway: the start of a Connect stream, before the hub routes
anything for it (:class:`~transmit_hub.service.HubService` does the rest).

The first request must be a Hello (within ``hello_timeout`` seconds, else
DEADLINE_EXCEEDED; at most ``max_hello_waiting`` streams wait for theirs, and one more
ends the one that waited longest) naming a valid gateway id (1 to 128 characters of
``A-Z a-z 0-9 . _ : -``, else INVALID_ARGUMENT). With mutual TLS the id must also be a
DNS name in the client certificate's subjectAltName (else PERMISSION_DENIED). At most
``max_gateways`` attach at once (else RESOURCE_EXHAUSTED).

One stream holds a gateway id at a time. A Hello for an id that is held sends the
holder a Probe: when the holder answers within ``claim_timeout`` it is alive, and the
new stream is refused with ALREADY_EXISTS (:data:`HELD_DETAILS`); when it does not,
it is dead or stuck (a process restarted before the hub noticed its old stream was
gone), so it is replaced and its stream ends with ALREADY_EXISTS too. The link keeps
retrying after either: it attaches once the other holder is gone.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import grpc  # type: ignore[import-untyped]
from grpc import aio

from . import codec, peer
from .registry import Attachment, Registry
from .types import GatewayId, gateway_id_problem

__all__ = ["HELD_DETAILS", "SHUTDOWN_DETAILS", "Attacher"]

log = logging.getLogger(__name__)

SHUTDOWN_DETAILS = "hub shutting down; reconnect"
HELD_DETAILS = "gateway id {} is held by another live stream (from {}); retry later"
CLAIM_ROUNDS = 3
"""How many holders a claim probes in turn before it gives up (claims racing each other)."""


class Attacher:
    """The Hello waiting room, the Hello's checks and the claim of the id (see the module
    docstring)."""

    def __init__(
        self,
        registry: Registry,
        *,
        hello_timeout: float = 10.0,
        max_hello_waiting: int = 1024,
        claim_timeout: float = 2.0,
        ids_from_certificates: bool = False,
    ) -> None:
        self.registry = registry
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

    @property
    def hello_waiting(self) -> int:
        """Streams open now that have not sent their Hello yet."""
        return len(self._waiting)

    async def attach(self, context: Any, draining: Callable[[], bool]) -> Attachment | None:
        """The stream's attachment, once its Hello is read, checked and its id claimed
        (else the call ends with the status the module docstring says); None when the
        stream ended before its Hello. ``draining``: whether the hub is shutting down."""
        first = await self._hello(context)
        if first is aio.EOF:
            return None
        assert isinstance(first, bytes)
        gateway_id = await self._check_hello(first, context)
        return await self._claim(gateway_id, context, draining)

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

    async def _claim(
        self, gateway_id: GatewayId, context: Any, draining: Callable[[], bool]
    ) -> Attachment:
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
        if draining():  # the hub began shutting down while we waited
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
