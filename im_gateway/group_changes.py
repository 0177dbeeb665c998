"""A client's group change (type 12 join, type 13 leave): the connection's rights, the
store, the connections that follow the group's stream, then the answer (type 10)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from typing import Protocol

from transmit_hub.types import MessageId, UserId

from . import frames
from .errors import FrameError, GroupLimitError
from .group_policy import FORBIDDEN, GroupRights, group_limit_reason
from .store import Store
from .throttle import Throttled

logger = logging.getLogger(__name__)

_group_failed = Throttled(logger, "group changes failed %d times")


class NewIds(Protocol):
    """Message ids (the pipeline's)."""

    def new_id(self) -> tuple[MessageId, int]:
        """A fresh message id and the server time in ms."""
        ...


class Members(Protocol):
    """Who hears of a join or leave (the gateway's :class:`~im_gateway.fanout.Fanout`)."""

    async def membership_changed(
        self,
        group: int,
        changed: Collection[UserId],
        *,
        was_large: bool,
        now_ms: int,
        control_id: MessageId,
        left: bool = False,
    ) -> None:
        """``changed`` joined (or, ``left``, left) ``group``: connections follow its
        stream, or stop."""
        ...


async def change_group(
    frame: frames.GroupChange,
    user: UserId,
    *,
    rights: GroupRights,
    store: Store,
    slots: asyncio.Semaphore,
    ids: NewIds,
    groups: Members,
    push: Callable[[str], bool],
) -> None:
    """Join or leave for ``user`` (type 12/13), tell the connections that follow the
    group's stream, then answer it (type 10; a refusal, or a store failure at either step,
    is raised as a :class:`FrameError`)."""
    refusal = rights.refusal(frame.type, frame.to)
    if refusal is not None:
        raise FrameError(FORBIDDEN, refusal, frame.id)
    try:
        async with slots:
            was_large = await store.is_large(frame.to)
            if frame.type == frames.JOIN:
                await store.join(frame.to, user)
            else:
                await store.leave(frame.to, user)
    except asyncio.CancelledError:
        raise
    except GroupLimitError as exc:
        raise FrameError(FORBIDDEN, group_limit_reason(exc), frame.id) from exc
    except Exception as exc:
        _group_failed.hit(exc=exc)
        raise FrameError(frames.INTERNAL, "storage unavailable; retry", frame.id) from exc
    try:  # connections follow the group's stream, or stop; then the answer
        # Also when nothing changed: a resend after an answer lost to a store timeout
        # finds the change made, and the user's connections have yet to follow it. A
        # failure here is answered internal, so the client's resend does it again.
        control_id, now_ms = ids.new_id()
        await groups.membership_changed(
            frame.to,
            [user],
            was_large=was_large,
            now_ms=now_ms,
            control_id=control_id,
            left=frame.type != frames.JOIN,
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        _group_failed.hit(exc=exc)
        raise FrameError(frames.INTERNAL, "storage unavailable; retry", frame.id) from exc
    msg_id, now_ms = ids.new_id()
    push(frames.encode_accepted(frame.id, msg_id, now_ms))
