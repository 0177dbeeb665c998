"""Test-only fault hooks, off unless ``IM_GATEWAY_FAULTS`` names them.

The fault tests (tests/end_to_end/test_faults.py) need a crash or a lost push at an exact
step, which no outside signal can hit reliably. ``IM_GATEWAY_FAULTS`` is a comma list:

- ``crash-after-store:N``: SIGKILL this process right after the N-th batch is stored,
  before any of its answers (type 10) or pushes go out.
- ``drop-push:N``: the N-th TransmitMap toward the hub is dropped instead of sent.

Nothing here runs when the variable is unset (the pipeline and the fan-out check one
attribute).
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass

from .errors import ConfigError

logger = logging.getLogger(__name__)

ENV = "IM_GATEWAY_FAULTS"


@dataclass(slots=True)
class Faults:
    """Counters toward the configured faults."""

    crash_after_store: int = 0
    drop_push: int = 0
    _stored: int = 0
    _pushes: int = 0

    def stored(self) -> None:
        """A batch was stored: crash now if this is the configured one."""
        self._stored += 1
        if self._stored == self.crash_after_store:
            logger.error("fault hook: SIGKILL after stored batch %d", self._stored)
            os.kill(os.getpid(), signal.SIGKILL)

    def drop(self) -> bool:
        """A push toward the hub: True when this is the one to drop."""
        self._pushes += 1
        if self._pushes == self.drop_push:
            logger.error("fault hook: dropping push %d", self._pushes)
            return True
        return False


def from_env(value: str | None = None) -> Faults | None:
    """The faults that ``IM_GATEWAY_FAULTS`` (or ``value``) names; None when none."""
    text = os.environ.get(ENV, "") if value is None else value
    if not text.strip():
        return None
    faults = Faults()
    for item in text.split(","):
        name, _, count = item.strip().partition(":")
        if name not in ("crash-after-store", "drop-push") or not count.isdigit():
            raise ConfigError(f"{ENV}: unknown fault {item!r}; see im_gateway/faults.py")
        setattr(faults, name.replace("-", "_"), int(count))
    logger.warning("fault hooks are on (%s): for tests only", text)
    return faults
