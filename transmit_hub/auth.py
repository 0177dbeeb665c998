"""The hub's bearer-token check: a grpc.aio server interceptor.

With ``--auth-token TOKEN`` set, every RPC (Connect, ListGateways, GetStats, and also
reflection and health) must carry the metadata ``authorization: Bearer TOKEN``;
anything else is answered UNAUTHENTICATED with a message naming the fix. The token
is compared in constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import grpc  # type: ignore[import-untyped]
from grpc import aio

from .errors import ConfigError

__all__ = ["BearerTokenInterceptor", "bearer_metadata"]

UNAUTHENTICATED_DETAILS = (
    "missing or wrong token: send metadata 'authorization: Bearer <token>' "
    "with the hub's --auth-token"
)


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that carries ``token``."""
    return (("authorization", f"Bearer {token}"),)


async def _deny(request: Any, context: Any) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_DETAILS)


def _denying(handler: Any) -> Any:
    """A handler of the same kind as ``handler`` that refuses the call."""
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(_deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(_deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_deny)
    return grpc.unary_unary_rpc_method_handler(_deny)


class BearerTokenInterceptor(aio.ServerInterceptor):  # type: ignore[misc]
    """Refuse every call whose ``authorization`` metadata is not ``Bearer <token>``."""

    def __init__(self, token: str) -> None:
        if not token:
            raise ConfigError("token must not be empty")
        self._expected = f"Bearer {token}".encode()

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
        return _denying(handler)
