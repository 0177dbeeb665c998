"""The shared lifecycle of long-running parts: ``async with`` starts, then closes.

The hub server, the gateway link and the IM gateway all follow it: ``start()``
brings the part up, ``close()`` (idempotent) takes it down, and ``async with``
pairs the two so a failure inside the block still closes the part. Parts that are
ready once constructed (the gateway's stores) use :class:`AsyncClosing`: ``async with``
only closes them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import Self


class AsyncClosing(ABC):
    """Mixin: ``async with part`` awaits ``part.close()`` at the end of the block."""

    @abstractmethod
    async def close(self) -> object:
        """Take the part down; calling it again does nothing."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class AsyncLifecycle(AsyncClosing):
    """Mixin: ``async with part`` awaits ``part.start()`` and then ``part.close()``."""

    @abstractmethod
    async def start(self) -> None:
        """Bring the part up."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self
