"""Stopping background tasks reliably."""

from __future__ import annotations

import asyncio


async def cancel_and_wait(*tasks: asyncio.Task[object] | asyncio.Task[None] | None) -> None:
    """Cancel ``tasks`` and wait until every one has finished.

    Cancels again until each is done: a library that swallows one ``CancelledError``
    (redis-py can, while it tears down a connection mid-command) would otherwise
    leave the task running and the caller waiting forever.
    """
    pending = {t for t in tasks if t is not None and not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
