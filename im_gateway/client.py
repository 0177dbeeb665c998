"""The Python client library: every acknowledged message on screen exactly once.

::

    from im_gateway.client import Client, Refused

    async with Client(["ws://gw-1:8080/ws", "ws://gw-2:8080/ws"], token=TOKEN) as client:
        sent = await client.send(to=42, content="hi")        # Sent: .client_id .msg_id .time
        await client.join(7); await client.leave(7)
        async for m in client.messages():                    # Message: .id .sender .to ...
            ...

Imports only the standard library and ``websockets`` (a test checks it), so bots,
backends and load tools can use it without the server's dependencies.

The decisions (what to resend, show and acknowledge) are made by the pure
:class:`~im_gateway.client_state.ClientState`; this module is its asyncio adapter: one
task keeps a connection (connect, read, reconnect), one writes per connection, and timers
run the acknowledgements (at most every :data:`ACK_INTERVAL` s), the resend backoffs and
heartbeats.

Reconnecting. When a connection is lost the client connects to the next URL, after a
jittered exponential backoff (:data:`BACKOFF_INITIAL` to :data:`BACKOFF_MAX` seconds),
at once after a 1012 close (draining; :data:`RESTART_AT_ONCE` times in a row at most).
A connection that got as far as its connect replay resets the backoff. Bounded waits:
the handshake (:data:`CONNECT_TIMEOUT`), and a gateway that sends nothing (stuck, or a
dead link): :data:`HEARTBEAT_TIMEOUT` after a heartbeat sent for a read-quiet
:data:`HEARTBEAT_INTERVAL`, the next URL. A gateway that keeps talking but answers
none of the frames it owes (type 10 or 99) for :data:`ANSWER_TIMEOUT` is left too (its
store or pipeline is stuck): they go out again, same client ids, on the next connection
(see :mod:`im_gateway.client_watch`). So is one that refuses them ``internal`` (its store
cut off) :data:`INTERNAL_STREAK` times in a row, none stored between, over
:data:`INTERNAL_TIMEOUT`; ``rate_limited`` never makes the client leave. An HTTP 401 at
the handshake stops the client: every waiting call raises ``Refused("unauthorized")``.

Memory. At most :data:`MAX_WAITING` messages wait for the application, and a bounded
buffer per stream beyond them; what does not fit is dropped and asked for again once the
application takes messages (nothing is lost: what was not taken was not acknowledged).
The socket is always read, so sends are answered even when no one takes messages. At
most :data:`MAX_UNANSWERED` frames (sends, joins, leaves) wait for their answers; one
more raises ``Refused("backlog")`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from .client_protocol import (
    HEARTBEAT_REPLY,
    JOIN,
    LEAVE,
    ClientError,
    Message,
    Refused,
    Sent,
    backoff,
    close_echo,
    group_id,
    message_frame,
    token_subject,
    with_groups,
)
from .client_state import ClientState
from .client_watch import GIVEN_UP, AnswerWatch, Liveness, RefusalWatch
from .close_codes import CLOSE_SERVICE_RESTART

__all__ = ["Client", "ClientError", "Message", "Refused", "Sent"]

logger = logging.getLogger(__name__)

ACK_INTERVAL: Final = 0.1
"""Seconds between acknowledgements at most."""
BACKOFF_INITIAL: Final = 0.1
BACKOFF_MAX: Final = 5.0
RESTART_AT_ONCE: Final = 10
"""1012 closes in a row answered at once; then the backoff, until a connection lasts 5 s."""
RETRY_INITIAL: Final = 0.05
"""The first backoff of a frame refused ``internal`` or ``rate_limited``."""
RETRY_MAX: Final = 2.0
HEARTBEAT_INTERVAL: Final = 30.0
"""A heartbeat (type 0) after this many quiet seconds, written or read."""
HEARTBEAT_TIMEOUT: Final = 20.0
"""Seconds for any frame after a read-quiet heartbeat; then the next URL."""
CONNECT_TIMEOUT: Final = 10.0
ANSWER_TIMEOUT: Final = 30.0
"""Seconds a connection may owe answers without giving any; then the next URL (generous:
see :mod:`im_gateway.client_watch`)."""
INTERNAL_STREAK: Final = 3
INTERNAL_TIMEOUT: Final = 10.0
"""Seconds from the first to the last of INTERNAL_STREAK ``internal`` refusals in a row."""
MAX_UNANSWERED: Final = 10_000
"""Frames waiting for their answers at most; beyond it a call raises ``Refused("backlog")``."""
CLOSE_WAIT: Final = 2.0
"""Seconds :meth:`Client.close` waits for the gateway to take its last acknowledgements."""
MAX_WAITING: Final = 10_000
MAX_FRAME: Final = 1 << 20
"""Frames larger than this close the connection (the gateway's content limit is 64 KiB)."""


class Client:
    """A connection to the gateways for one user (see the module docstring)."""

    def __init__(self, urls: str | Sequence[str], *, token: str) -> None:
        self._urls = [urls] if isinstance(urls, str) else list(urls)
        if not self._urls or not all(isinstance(u, str) and u for u in self._urls):
            raise ValueError("urls: give one WebSocket URL or a non-empty list of them")
        self._token = token
        self._state = ClientState(token_subject(token), max_waiting=MAX_WAITING)
        self._waiters: dict[str, asyncio.Future[Sent]] = {}
        self._answers = AnswerWatch()
        self._refusals = RefusalWatch()
        self._runner: asyncio.Task[None] | None = None
        self._ws: ClientConnection | None = None
        self._wake = asyncio.Event()
        self._arrived = asyncio.Event()
        self._ack_timer: asyncio.TimerHandle | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._outgoing: list[str] = []
        self._closed = False
        self._closing = False
        self._echo: asyncio.Future[None] | None = None
        self._probing = False
        self._failure: Refused | None = None
        self.connections = 0
        """Connections opened so far (for tests and monitoring)."""
        self.url: str | None = None
        """The URL of the current connection, None while disconnected."""

    @property
    def truncated(self) -> list[str]:
        """Seqs where history was lost (trimmed before this user got it); the newest 1,000."""
        return self._state.truncated

    # --- lifecycle --------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        self._start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _start(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closed:
            raise Refused("closed", "the client is closed")
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Acknowledge what was taken, close the connection, stop; idempotent. Calls
        still waiting raise ``Refused("closed")``."""
        if self._closed or self._closing:
            return
        self._closing = True
        ws = self._ws
        if ws is not None:
            # The last acknowledgements, then a replay of what is newer than what this
            # client has (usually nothing): its end marker comes back once the gateway has
            # read the store, after it wrote the acknowledgements, so a client started
            # right after this one does not show them again. A heartbeat's answer is the
            # weaker fallback when a replay is running.
            echo = self._echo = asyncio.get_running_loop().create_future()
            probe = self._state.closing_probe()
            self._probing = probe is not None
            self._write([*self._state.ack_frames(), *([probe] if probe else []), '{"type":0}'])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(echo), CLOSE_WAIT)
        self._closed = True
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        self._cancel_timers()
        if ws is not None:
            with contextlib.suppress(ConnectionClosed, OSError, TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT):
                    await ws.close()
        self._finish(Refused("closed", "the client was closed before an answer"))

    def _finish(self, error: Refused) -> None:
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(error)
        self._waiters.clear()
        self._arrived.set()

    def _cancel_timers(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    # --- the application's calls ------------------------------------------------------

    async def send(
        self,
        *,
        to: int | None = None,
        group: int | None = None,
        content: str,
        content_type: int = 0,
    ) -> Sent:
        """Send to user ``to`` or group ``group``; returns once stored for every recipient
        (however many reconnects it takes). Raises :class:`Refused` on a type 99 other
        than ``internal`` and ``rate_limited`` (which it retries itself)."""
        return await self._submit(message_frame(to, group, content, content_type))

    async def join(self, group: int) -> None:
        """Join ``group`` (allowed by the gateway's ``--group-join``); raises :class:`Refused`."""
        await self._submit({"type": JOIN, "to": group_id(group)})

    async def leave(self, group: int) -> None:
        """Leave ``group``; raises :class:`Refused`."""
        await self._submit({"type": LEAVE, "to": group_id(group)})

    async def _submit(self, frame: dict[str, Any]) -> Sent:
        self._start()
        if self._state.unanswered >= MAX_UNANSWERED:
            raise Refused("backlog", f"{MAX_UNANSWERED} frames already wait for their answers")
        client_id = self._state.submit(frame)
        future: asyncio.Future[Sent] = asyncio.get_running_loop().create_future()
        self._waiters[client_id] = future
        self._after_input()
        return await future

    async def messages(self) -> AsyncIterator[Message]:
        """Every message for this user, once each, each stream in order (see the module
        docstring); ends once :meth:`close` begins (its last acknowledgements go then: one
        given later would be shown, never acknowledged, and shown again by the next client);
        raises :class:`Refused` when the client is stopped by a refused token."""
        self._start()
        state = self._state
        while not self._closing:
            message = state.take_message()
            if message is not None:
                self._after_input()  # taking may release more, or ask for a replay
                self._schedule_ack()
                yield message
                continue
            if self._failure is not None:
                raise self._failure
            self._arrived.clear()
            await self._arrived.wait()

    # --- acknowledgements and timers --------------------------------------------------

    def _schedule_ack(self) -> None:
        if self._ack_timer is None and not self._closed:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_INTERVAL, self._ack_now)

    def _ack_now(self) -> None:
        self._ack_timer = None
        ws = self._ws
        if ws is None:
            return
        frames = self._state.ack_frames()
        if frames:
            self._write(frames)

    def _after_input(self) -> None:
        """Carry out what the state machine wants after an input."""
        state = self._state
        for client_id, answer in state.take_answers():
            future = self._waiters.pop(client_id, None)
            if future is None or future.done():
                continue
            if isinstance(answer, Sent):
                future.set_result(answer)
            else:
                future.set_exception(answer)
        loop = asyncio.get_running_loop()
        for client_id, attempt in state.take_retries():
            delay = backoff(attempt - 1, RETRY_INITIAL, RETRY_MAX)
            self._later(loop, delay, lambda c=client_id: state.retry(c))
        if state.take_replay_retry():
            self._later(loop, backoff(0, 0.5, 1.0), state.retry_replay)
        writes = state.take_writes()
        if writes:
            self._write(writes)
        if state.ack_due:
            self._schedule_ack()
        if state.waiting:
            self._arrived.set()
        self._answers.update(state.owed, state.answered, loop.time())
        self._refusals.update(*state.outcomes, loop.time())

    def _later(self, loop: asyncio.AbstractEventLoop, delay: float, action: Any) -> None:
        def fire() -> None:
            self._timers.discard(handle)
            action()
            self._after_input()

        handle = loop.call_later(delay, fire)
        self._timers.add(handle)

    def _write(self, frames: list[str]) -> None:
        self._outgoing.extend(frames)
        self._wake.set()

    # --- the connection ---------------------------------------------------------------

    async def _run(self) -> None:
        """Connect, read, reconnect, until closed or refused; a bug stops the client
        (every waiting call raises) instead of leaving it hanging."""
        try:
            await self._connect_loop()
        except asyncio.CancelledError:
            raise
        except InvalidURI as exc:
            self._stop(Refused("bad_url", str(exc)))
        except Exception as exc:
            logger.exception("the client's connection loop failed")
            self._stop(Refused("internal", f"the client failed: {exc!r}"))

    async def _connect_loop(self) -> None:
        attempt = 0
        at_once = 0
        index = 0
        loop = asyncio.get_running_loop()
        while not self._closed:
            url = self._urls[index % len(self._urls)]
            index += 1
            try:
                ws = await connect(
                    with_groups(url),
                    additional_headers={"Authorization": f"Bearer {self._token}"},
                    open_timeout=CONNECT_TIMEOUT,
                    max_size=MAX_FRAME,
                    compression=None,
                )
            except InvalidStatus as exc:
                if exc.response.status_code == 401:
                    self._stop(Refused("unauthorized", f"the gateway at {url} refused the token"))
                    return
                logger.info("connecting to %s refused: HTTP %s", url, exc.response.status_code)
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                logger.info("connecting to %s failed: %s", url, exc)
            else:
                opened = loop.time()
                healthy = await self._serve(ws, url)
                if self._closed:
                    return
                if healthy:
                    attempt = 0
                if loop.time() - opened >= BACKOFF_MAX:
                    at_once = 0
                if ws.close_code == CLOSE_SERVICE_RESTART and at_once < RESTART_AT_ONCE:
                    at_once += 1
                    continue  # draining: the next gateway, at once
            await asyncio.sleep(backoff(attempt, BACKOFF_INITIAL, BACKOFF_MAX))
            attempt += 1

    def _stop(self, error: Refused) -> None:
        logger.warning("client stopped: %s", error)
        self._failure = error
        self._closed = True
        self._cancel_timers()
        self._finish(error)

    async def _serve(self, ws: ClientConnection, url: str) -> bool:
        """One connection: read here, write in a task; True when it got as far as the
        end of its connect replay."""
        state = self._state
        self.connections += 1
        self._ws, self.url = ws, url
        self._outgoing = []
        state.connected()
        self._refusals.restart()
        self._after_input()
        self._ack_now()
        loop = asyncio.get_running_loop()
        writer = loop.create_task(self._write_loop(ws))
        healthy = False
        timeouts = (HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT, ANSWER_TIMEOUT)
        watch = Liveness(loop.time(), self._answers, *timeouts)
        try:
            while True:
                try:
                    async with asyncio.timeout_at(watch.deadline()):
                        data = await ws.recv()
                except TimeoutError:
                    verdict = watch.timed_out(loop.time())
                    if verdict == "ask":
                        self._write(['{"type":0}'])
                    elif verdict is not None:
                        level = logging.WARNING if verdict == "unanswered" else logging.INFO
                        logger.log(level, "%s: %s; the next URL", url, GIVEN_UP[verdict])
                        break
                    continue
                watch.heard(loop.time())
                if self._echo is not None and not self._echo.done():
                    over, self._probing = close_echo(data, self._probing)
                    if over:
                        self._echo.set_result(None)
                if data == HEARTBEAT_REPLY:
                    continue
                state.received(data)
                self._after_input()
                healthy = healthy or state.take_connect_done()
                if self._refusals.given_up(INTERNAL_STREAK, INTERNAL_TIMEOUT):
                    logger.warning("%s: %s; the next URL", url, GIVEN_UP["internal"])
                    break
        except ConnectionClosed:
            pass
        finally:
            self._ws, self.url = None, None
            state.disconnected()
            self._after_input()
            self._outgoing = []
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            if not self._closed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(ws.close(), 1.0)
                ws.transport.abort()  # a dead link answers no close: let go of the socket
        logger.info("connection to %s closed (%s)", url, ws.close_code)
        return healthy

    async def _write_loop(self, ws: ClientConnection) -> None:
        """Write what the state machine queued; a heartbeat after a quiet while."""
        wake = self._wake
        try:
            while True:
                try:
                    async with asyncio.timeout(HEARTBEAT_INTERVAL):
                        await wake.wait()
                except TimeoutError:
                    await ws.send('{"type":0}')
                    continue
                wake.clear()
                self._outgoing.extend(self._state.take_writes())
                while self._outgoing:
                    batch, self._outgoing = self._outgoing, []
                    for frame in batch:
                        await ws.send(frame)
        except ConnectionClosed:
            pass
