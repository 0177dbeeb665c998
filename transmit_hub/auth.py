"""The hub's bearer-token check: a grpc.aio server interceptor.

With ``--auth-token TOKEN`` set, every RPC (Connect, ListGateways, GetStats, and also
reflection and health) must carry the metadata ``authorization: Bearer TOKEN``;
anything else is answered UNAUTHENTICATED with a message naming the fix. The token
is compared in constant time. A client-streaming call (Connect, reflection) is refused
once its first message is in, or after :data:`FIRST_REQUEST_WAIT` without one, so that
a gateway writing its Hello hears the refusal, not a failed write. At most
``max_waiting`` refused calls wait so at once (the hub's ``--max-hello-waiting``); beyond
that, a client without the token opening streams by the thousand is refused at once, and
so is every waiting call when the hub stops (:meth:`BearerTokenInterceptor.stop_waiting`).
Refusals are counted (``refused``; the metric ``transmit_hub_unauthenticated_total``) and
logged as one line at most every :data:`LOG_EVERY` seconds, with the count and the last
caller's address.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import grpc  # type: ignore[import-untyped]
from grpc import aio

from .errors import ConfigError
from .throttle import Every

__all__ = ["BearerTokenInterceptor", "bearer_metadata"]

log = logging.getLogger(__name__)

UNAUTHENTICATED_DETAILS = (
    "missing or wrong token: send metadata 'authorization: Bearer <token>' "
    "with the hub's --auth-token"
)


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``token``."""
    return (("authorization", f"Bearer {token}"),)


FIRST_REQUEST_WAIT: Final = 1.0
"""How long a refused streaming call may take to send its first message (seconds)."""
LOG_EVERY: Final = 10.0
"""Refusals are logged as one line with a count at most this often (seconds)."""


class BearerTokenInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    """Refuse every call whose ``authorization`` metadata is not ``Bearer <token>``."""

    def __init__(self, token: str, *, max_waiting: int = 1024) -> None:
        if not token:
            raise ConfigError("token must not be empty")
        if max_waiting < 0:
            raise ConfigError(f"max_waiting must be 0 or more, got {max_waiting}")
        self._expected = f"Bearer {token}".encode()
        self._max_waiting = max_waiting
        self._waits: set[asyncio.Timeout] = set()
        self._stopping = False
        self.refused = 0
        """Calls refused since the hub started."""
        self._unlogged = 0
        self._log = Every(LOG_EVERY)

    async def _deny(self, request: Any, context: Any) -> None:
        self.refused += 1
        self._unlogged += 1
        if self._log.due():
            log.warning(
                "calls refused for a missing or wrong token: %d since the last such line "
                "(the last from %s); a gateway's --hub-token must be this hub's --auth-token",
                self._unlogged,
                context.peer(),
            )
            self._unlogged = 0
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_DETAILS)

    async def _deny_stream(self, requests: Any, context: Any) -> None:
        """Refuse a client-streaming call once its first message is in (within
        :data:`FIRST_REQUEST_WAIT`). Refused at once, a client still writing that message
        (a gateway's Hello) may see the write fail first, and grpc.aio then reports the
        call as INTERNAL "Internal error from Core" instead of the refusal (about 1 call
        in 20 over loopback): the gateway would not know it was refused. When
        ``max_waiting`` calls already wait, or the hub is stopping, it is refused at once."""
        if len(self._waits) < self._max_waiting and not self._stopping:
            wait = asyncio.timeout(FIRST_REQUEST_WAIT)
            self._waits.add(wait)
            try:
                with contextlib.suppress(Exception):  # not CancelledError: the server stops
                    async with wait:
                        async for _ in requests:
                            break
            finally:
                self._waits.discard(wait)
        await self._deny(requests, context)

    @property
    def waiting(self) -> int:
        """Refused streaming calls waiting for their first message."""
        return len(self._waits)

    def stop_waiting(self) -> None:
        """The hub is stopping: refuse the waiting calls now, and new ones at once."""
        self._stopping = True
        if self._waits:
            now = asyncio.get_running_loop().time()
            for wait in self._waits:
                if not wait.expired():  # one expiring now is on its way out
                    wait.reschedule(now)

    def _denying(self, handler: Any) -> Any:
        """A handler of the same kind as ``handler`` that refuses the call."""
        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(self._deny_stream)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(self._deny_stream)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(self._deny)
        return grpc.unary_unary_rpc_method_handler(self._deny)

    def authorized(self, metadata: Any) -> bool:
        for key, value in metadata or ():
            if key == "authorization":
                got = value.encode() if isinstance(value, str) else bytes(value)
                return hmac.compare_digest(got, self._expected)
        return False

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or self.authorized(handler_call_details.invocation_metadata):
            return handler
        return self._denying(handler)
