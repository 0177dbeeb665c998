"""One callback per loop iteration flushes every connection that queued frames."""

from __future__ import annotations

import asyncio

from im_gateway.flushes import Flushes
from tests.helpers import wait_until


async def test_one_callback_flushes_every_connection_even_when_one_fails() -> None:
    """The connections that queued frames in one loop iteration are flushed by one
    callback, in order; one whose flush raises is reported and the others still write."""
    loop = asyncio.get_running_loop()
    flushed: list[str] = []
    reported: list[BaseException] = []

    class Fake:
        def __init__(self, name: str) -> None:
            self.name, self.loop = name, loop

        def _flush(self) -> None:
            if self.name == "bad":
                raise OSError("gone")
            flushed.append(self.name)

    handle = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context["exception"]))
    try:
        flushes = Flushes()
        for name in ("a", "bad", "b"):
            flushes.add(Fake(name))
        assert flushed == []  # nothing before the next loop iteration
        await wait_until(lambda: flushed == ["a", "b"])
        assert [str(exc) for exc in reported] == ["gone"]
        flushes.add(Fake("c"))  # a later iteration: a new callback
        await wait_until(lambda: flushed == ["a", "b", "c"])
        # A loop that stopped before its callback ran leaves its connections behind: the
        # next loop's connections are still flushed (and the stale ones are not touched).
        stopped = asyncio.new_event_loop()
        try:
            stale = Fake("stale")
            stale.loop = stopped
            flushes.add(stale)
            flushes.add(Fake("d"))
            await wait_until(lambda: flushed == ["a", "b", "c", "d"])
        finally:
            stopped.close()
    finally:
        loop.set_exception_handler(handle)
