"""The server API: the application's backend talks to the gateway over HTTP (aiohttp).

``POST /api/<method>`` with a JSON object body and ``Authorization: Bearer KEY``, on its
own port (``--api-listen``), in the gateway's process and event loop. Every path answers
401 without the right key (compared in constant time), before anything else; 404 for an
unknown method; 400 with ``{"error": {"code": ..., "message": ...}}`` for a bad body;
503 ``internal`` when the store fails or stays silent past ``--redis-timeout`` (call
again; one counted log line for all of them).
The bodies are checked by :mod:`im_gateway.api_requests` (pure); this module is the
adapter that runs them:

- ``publish`` goes through the same :class:`~im_gateway.pipeline.Pipeline` as a client's
  frame (a second kind of caller): stored in every recipient's inbox before the answer,
  deduplicated by ``id`` per ``from`` in a space of its own (never meeting the user's
  own client ids: :func:`~im_gateway.api_requests.dedupe_key`), pushed live by the fan-out, the
  sender's own devices included when ``from`` is a user.
- ``groups/add|remove|members`` manage membership (the way to, under
  ``--group-join server``), with the same bounds as a client's join.
- ``presence`` and ``history`` read the store; ``history`` gives the frames a replay
  would send.
- ``disconnect`` closes the user's sockets here and, through the hub, on every gateway
  its presence names (as a control share: :data:`~im_gateway.fanout.CONTROL_DISCONNECT`).

The OpenAPI document of these methods is ``im_gateway/openapi.json`` (served at
``GET /api/openapi.json``, with the key too).

The port faces whoever can reach it, so every connection is bounded before any key is
seen: its header block in time and size and the number of connections open
(:mod:`im_gateway.api_limits`), the time between requests (aiohttp's keep-alive), the
body's time (here). ``Expect: 100-continue`` is answered only after the key is checked
(401 first), and an answer given before the body was read closes the connection (a
lingering close: the client reads the answer even while it is still sending). A client
that goes away mid-body is one counted log line.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import HttpVersion11, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from transmit_hub.lifecycle import AsyncLifecycle
from transmit_hub.types import MESSAGE_GROUP, MESSAGE_PRIVATE, Message

from . import api_requests as req
from . import frames
from .api_limits import Bounds, ConnectionLimits, GuardedSite
from .descriptors import Sockets
from .errors import ApiError, GroupLimitError
from .fanout import Fanout
from .group_policy import group_limit_reason
from .metrics import GatewayMetrics, NullMetrics
from .pipeline import Pipeline, Rejected
from .store import Accepted, Joined, Store, Submission
from .store.contract import DEFAULT_MAX_GROUP_MEMBERS, DEFAULT_MAX_GROUPS_PER_USER
from .throttle import Throttled

logger = logging.getLogger(__name__)

OPENAPI = Path(__file__).resolve().parent / "openapi.json"

_refused_key = Throttled(logger, "server API: %d calls refused for a missing or wrong key")
_call_failed = Throttled(
    logger, "server API: %d calls failed in the store (Redis down, or slower than --redis-timeout)"
)
_body_failed = Throttled(
    logger,
    "server API: %d request bodies not received (the client went away, or was slower "
    "than --api-body-timeout)",
    level=logging.INFO,
)


class _Call:
    """A publish waiting for the pipeline: the API's :class:`~im_gateway.pipeline.Caller`."""

    def __init__(self) -> None:
        self.answer: asyncio.Future[Accepted | Rejected] = (
            asyncio.get_running_loop().create_future()
        )

    def settled(self, result: Accepted | Rejected) -> None:
        if not self.answer.done():
            self.answer.set_result(result)

    def failed(self, code: str, reason: str, client_id: str) -> None:
        if not self.answer.done():
            self.answer.set_exception(ApiError(503, code, reason))


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


class ApiServer(AsyncLifecycle):
    """The server API on ``listen`` (``HOST:PORT``); an async context manager."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        key: str,
        store: Store,
        pipeline: Pipeline,
        fanout: Fanout[Any],
        max_content: int,
        max_users: int = 10_000,
        max_body: int = 1024 * 1024,
        timeout: float = 10.0,
        header_timeout: float = 10.0,
        body_timeout: float = 30.0,
        idle_timeout: float = 60.0,
        max_header_bytes: int = 16 * 1024,
        max_connections: int = 256,
        sockets: Sockets | None = None,
        max_groups: int = DEFAULT_MAX_GROUPS_PER_USER,
        max_members: int = DEFAULT_MAX_GROUP_MEMBERS,
        reuse_port: bool = False,
        backlog: int = 128,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        """``max_groups``, ``max_members``: the store's bounds, named in refusals;
        ``reuse_port``: bind with SO_REUSEPORT (several gateway processes on one port);
        ``backlog``: the kernel's queue of connections not yet accepted; ``metrics``:
        where each answer is counted, by method and status; ``timeout``: how long a
        publish waits for room in the pipeline's queue and for the store
        (``--api-publish-timeout``)."""
        self._metrics = metrics or NullMetrics()
        self._reuse_port = reuse_port
        self._backlog = backlog
        self._max_groups = max_groups
        self._max_members = max_members
        self._host = host
        self._port = port
        self._key = f"Bearer {key}".encode()
        self._store = store
        self._pipeline = pipeline
        self._fanout = fanout
        self._max_content = max_content
        self._max_users = max_users
        self._max_body = max_body
        self._timeout = timeout
        self._body_timeout = body_timeout
        self._idle_timeout = idle_timeout
        self._max_header_bytes = max_header_bytes
        self._limits = ConnectionLimits(
            Bounds(
                header_timeout=header_timeout,
                max_header_bytes=max_header_bytes,
                max_connections=max_connections,
                linger_bytes=max_body + max_header_bytes,
            ),
            sockets or Sockets(limit=None, baseline=0, reserve=0, max_handshakes=1),
        )
        self._runner: web.AppRunner | None = None
        self._site: web.BaseSite | None = None
        self._closed = False
        self.port = 0
        """The bound port (``0`` in ``listen`` picks a free one)."""

    async def start(self) -> None:
        app = web.Application(client_max_size=self._max_body, middlewares=[self._guard])
        app.router.add_route("*", "/{tail:.*}", self._dispatch, expect_handler=self._expect)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=self._idle_timeout,
            # One line may use the whole header budget; the block's total is bounded
            # by api_limits as the bytes arrive.
            max_line_size=self._max_header_bytes,
            max_field_size=self._max_header_bytes,
            # A connection ended after an answer (the body unread, say) lingers at the
            # transport (api_limits), after its FIN, not in aiohttp before it.
            lingering_time=0,
        )
        await self._runner.setup()
        self._site = GuardedSite(
            self._runner,
            self._host,
            self._port,
            self._limits,
            reuse_port=self._reuse_port,
            backlog=self._backlog,
        )
        await self._site.start()
        addresses = self._runner.addresses  # (host, port, ...) of each bound socket
        self.port = int(addresses[0][1]) if addresses else self._port
        logger.info("server API listening on %s:%d", self._host, self.port)

    async def close(self) -> None:
        """Stop serving; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._limits.closing = True
        if self._runner is not None:
            await self._runner.cleanup()
        self._limits.close()

    # --- HTTP -------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "").encode("utf-8", "replace")
        return hmac.compare_digest(given, self._key)

    @staticmethod
    def _unauthorized() -> web.Response:
        """401, and the connection closes: no second try on it without the key."""
        _refused_key.hit()
        response = _error(401, "unauthorized", "send Authorization: Bearer <the --api-key>")
        response.force_close()
        return response

    async def _expect(self, request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue``: the key is checked before anything is sent."""
        self._limits.started(request.transport)
        if not self._authorized(request):
            return self._counted(request, self._unauthorized())
        expect = request.headers.get(hdrs.EXPECT, "")
        if request.version != HttpVersion11:
            return None
        if expect.lower() != "100-continue":
            response = _error(417, "bad_request", "only Expect: 100-continue is understood")
            response.force_close()
            return self._counted(request, response)
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the 100 is not part of the answer's size
        return None

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Mark the connection busy (its headers are in), answer, and close the
        connection when the body was not read (it would be taken for the next headers)."""
        self._limits.started(request.transport)
        try:
            response = self._counted(request, await self._answer(request, handler))
        except web.HTTPException as exc:  # aiohttp's own answers
            self._metrics.api_answered(req.method_of(request.path), exc.status)
            raise
        if not request.content.is_eof():
            response.force_close()
        self._limits.finished(request.transport, keep_alive=response.keep_alive is not False)
        return response

    def _counted(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        self._metrics.api_answered(req.method_of(request.path), response.status)
        return response

    async def _answer(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """The key first, on every path; then expected failures as error objects."""
        if not self._authorized(request):
            return self._unauthorized()
        try:
            return await handler(request)
        except ApiError as exc:
            return _error(exc.status, exc.code, exc.message)
        except web.HTTPRequestEntityTooLarge:
            return _error(
                400, "too_large", f"the body is over {self._max_body} bytes (--api-max-body)"
            )
        except web.HTTPException:
            raise
        except Exception as exc:
            # The store failed or went silent past --redis-timeout: one counted line, not
            # aiohttp's traceback per call, and an answer that says to call again.
            _call_failed.hit(exc=exc)
            return _error(503, "internal", "storage unavailable; call again")

    async def _dispatch(self, request: web.Request) -> web.Response:
        path = request.path
        if request.method == "GET" and path == req.OPENAPI_PATH:
            return web.Response(body=OPENAPI.read_bytes(), content_type="application/json")
        if request.method != "POST" or not path.startswith("/api/"):
            return _error(404, "not_found", "the API is POST /api/<method>")
        body = await self._read_body(request)
        call = req.parse(
            path[len("/api/") :], body, max_content=self._max_content, max_users=self._max_users
        )
        return web.json_response(await self._run(call))

    async def _read_body(self, request: web.Request) -> bytes:
        """The whole body within ``--api-body-timeout`` (408 otherwise); a client gone
        mid-body is counted, not a traceback (its answer is never read)."""
        try:
            async with asyncio.timeout(self._body_timeout):
                return await request.read()
        except TimeoutError as exc:
            _body_failed.hit(exc=exc)
            raise ApiError(
                408,
                "timeout",
                f"the body did not arrive within {self._body_timeout:g} s (--api-body-timeout)",
            ) from exc
        except (ConnectionError, HttpProcessingError) as exc:
            _body_failed.hit(exc=exc)
            raise ApiError(400, "bad_request", "the body was cut short") from exc

    async def _run(self, call: req.Request) -> dict[str, object]:
        if isinstance(call, req.Publish):
            return await self._publish(call)
        if isinstance(call, req.GroupChange):
            return await self._group_change(call)
        if isinstance(call, req.Members):
            members = await self._store.members(call.group)
            return {"users": [str(u) for u in members]}
        if isinstance(call, req.PresenceQuery):
            found = await self._store.lookup(call.users)
            return {"presence": {str(u): list(found.get(u, ())) for u in call.users}}
        if isinstance(call, req.Disconnect):
            found = await self._store.lookup([call.user])
            control_id, now_ms = self._pipeline.new_id()
            self._fanout.disconnect(call.user, found.get(call.user, ()), control_id, now_ms)
            return {}
        if call.group is not None:
            page = await self._store.read_group(call.group, call.after, call.limit)
        else:
            assert call.user is not None
            page = await self._store.read_inbox(call.user, call.after, call.limit)
        return {
            "messages": [json.loads(frames.encode_message(e.message, e.seq)) for e in page.entries]
        }

    async def _publish(self, call: req.Publish) -> dict[str, object]:
        msg_id, now_ms = self._pipeline.new_id()
        group = call.group is not None
        target = call.group if call.group is not None else call.to
        assert target is not None
        message = Message(
            msg_id,
            call.sender,
            target,
            MESSAGE_GROUP if group else MESSAGE_PRIVATE,
            call.content_type,
            now_ms,
            call.content,
        )
        caller = _Call()
        submission = Submission(req.dedupe_key(call.id), message, check_member=False)
        try:
            async with asyncio.timeout(self._timeout):  # room in the queue, then the store
                await self._pipeline.put(caller, submission)
                result = await caller.answer
        except TimeoutError as exc:
            raise ApiError(503, "internal", "not stored in time; send again (same id)") from exc
        if isinstance(result, Rejected):
            raise ApiError(400, result.code, result.reason)
        return {"msgId": result.message.id, "time": str(result.message.time)}

    async def _group_change(self, call: req.GroupChange) -> dict[str, object]:
        refused: list[dict[str, str]] = []
        was_large = await self._store.is_large(call.group)
        users = call.users
        done: list[bool]
        if call.add:
            joined = await self._store.add_members(call.group, users)
            done = [j is Joined.ADDED for j in joined]
            for user, j in zip(users, joined, strict=True):
                if j in (Joined.USER_FULL, Joined.GROUP_FULL):
                    limit = self._max_groups if j is Joined.USER_FULL else self._max_members
                    error = GroupLimitError(call.group, limit, user_full=j is Joined.USER_FULL)
                    refused.append({"user": str(user), "reason": group_limit_reason(error)})
        else:
            done = await self._store.remove_members(call.group, users)
        changed = sum(done)
        control_id, now_ms = self._pipeline.new_id()
        await self._fanout.membership_changed(
            call.group,
            # Every user named, changed or not: a call made again after its answer was
            # lost (503) finds the change made, and their connections have yet to follow.
            call.users,
            was_large=was_large,
            now_ms=now_ms,
            control_id=control_id,
            left=not call.add,
        )
        answer: dict[str, object] = {"added" if call.add else "removed": changed}
        if refused:
            answer["refused"] = refused
        return answer
