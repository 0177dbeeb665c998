"""Calls asked for at about the same time, made together: :class:`Gathered`.

The store gathers its connections' opening reads and its acks' writes this way.

A connection's opening read (its acknowledged position, its inbox's end, whether it is in
any group: :meth:`~im_gateway.store.Store.opening`) is one small round trip. Connections
come in bursts (a gateway starting, clients reconnecting after a network blip), and each
round trip costs the gateway far more CPU (a pipeline's set-up, the write, the wake-up,
the reply's parsing) than the reads in it. So the reads asked for while the event loop
runs one turn share one call: the first asks for a batch and every later one in the same
turn joins it. A lone read costs what it did (no wait is added: the batch goes as soon
as the loop turns). A read may answer one key with an exception (one Redis Cluster node
silent): only that key's caller gets it; the batch's own failure goes to every caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from ..errors import StoreError

K = TypeVar("K")
V = TypeVar("V")


class Gathered(Generic[K, V]):
    """``read(keys)`` (one answer per key, in order; an exception answers that key alone)
    for the keys asked for in one loop turn; each caller gets its own answer, or the
    batch's error."""

    __slots__ = ("_read", "_tasks", "_waiting")

    def __init__(self, read: Callable[[list[K]], Awaitable[Sequence[V | Exception]]]) -> None:
        self._read = read
        self._waiting: list[tuple[K, asyncio.Future[V]]] | None = None
        """The batch being gathered (None: none; its read is scheduled)."""
        self._tasks: set[asyncio.Task[None]] = set()
        """The reads under way (held here: the loop keeps only weak references)."""

    async def get(self, key: K) -> V:
        """The answer for ``key``, read with the others asked for in this loop turn."""
        loop = asyncio.get_running_loop()
        waiting = self._waiting
        if waiting is None:
            waiting = self._waiting = []
            task = loop.create_task(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        future: asyncio.Future[V] = loop.create_future()
        waiting.append((key, future))
        return await future  # a cancelled caller cancels its own future only

    async def drain(self) -> None:
        """Wait for the calls under way (their callers may have been cancelled)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _flush(self) -> None:
        waiting, self._waiting = self._waiting or [], None
        try:
            answers = await self._read([key for key, _ in waiting])
            if len(answers) != len(waiting):
                raise StoreError(f"{len(answers)} answers to {len(waiting)} reads")
        except asyncio.CancelledError:
            for _, future in waiting:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in waiting:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), answer in zip(waiting, answers, strict=True):
            if future.done():
                continue
            if isinstance(answer, Exception):
                future.set_exception(answer)
            else:
                future.set_result(answer)
