"""Acting once per id on what may come more than once (pure, bounded).

The server API's disconnect control goes through every hub (a silent link to one hub
would swallow it), and a hub stream's break sends its recent maps again through the
others: a gateway may get one control several times. A second copy must close nothing
more (the user may have connected again since), so the fan-out acts on the first only.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from .errors import ConfigError

ONCE_MAX: Final = 4096
"""Ids remembered (the newest); copies come within a resend window (seconds), so a few
thousand cover any rate of disconnects a server API makes."""


class Once:
    """The ids seen lately, the newest ``size`` of them."""

    def __init__(self, size: int = ONCE_MAX) -> None:
        if size < 1:
            raise ConfigError("size must be at least 1")
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def first(self, key: str) -> bool:
        """True the first time ``key`` comes (while it is among the newest remembered)."""
        seen = self._seen
        if key in seen:
            return False
        seen[key] = None
        if len(seen) > self._size:
            seen.popitem(last=False)
        return True
