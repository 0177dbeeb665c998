"""Members only: posts of a large group reach this gateway's followers of the group once
the store says they were members at the post's position.

A leaver sees no post stored after the leave, whatever the order of arrival: the leave's
control share and a later post may go through different hubs, the post first. So a
gateway shows a post to its followers of the group only once the store says each was a
member when it was stored (:meth:`~im_gateway.store.Store.memberships`: the join and
leave positions of their current and latest ended membership, one call for all of this
gateway's followers of the group). Judged at the post's position, not "now": a post
stored just before a member left still reaches them, and a member who left and came
back is not shown what was posted while they were out. After the posts are handed out,
a follower who is no longer a member stops following the group. Cost: one store round
trip per post per gateway with followers (not per member), and posts of a group that
arrive while a check runs share the next one (at most ``held_max``, the gateway's
``--large-group-held``, wait). Posts beyond that bound, and posts whose check fails (the
store down or silent), are not handed out: the followers read the group's stream to its
end instead (once the checks are done; reads retried every second until the store
answers), since no later post may come to show them the hole. Hole fills and replays of
a group's stream apply the same rule after each read (:mod:`im_gateway.streams`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Final, Generic, Protocol, TypeVar

from transmit_hub.types import UserId

from .errors import ConfigError
from .metrics import GatewayMetrics
from .store import Membership, Store
from .throttle import Throttled

logger = logging.getLogger(__name__)

DEFAULT_HELD_MAX: Final = 1000
"""Posts of one large group held while its followers' membership is checked (beyond: the
followers read them from the group's stream once the check is done); the gateway's
``--large-group-held``."""
FROM_HUB: Final = object()
"""The caller of a post the hub pushed (not stored here)."""


class Follower(Protocol):
    """What the check needs of a local connection that follows a large group."""

    @property
    def user(self) -> UserId: ...

    def deliver_group(self, group: int, pos: int, text: str) -> None:
        """A post at ``pos`` in large group ``group``'s stream."""
        ...

    def regroup(self, left: int | None = None) -> None:
        """The user left ``left``: stop following it at once."""
        ...

    def catch_up(self, end: int | None = None) -> None:
        """Read the inbox and the large groups' streams to their ends (posts it was not
        handed, their check having failed)."""
        ...


F = TypeVar("F", bound=Follower)


class Screen(Generic[F]):
    """The fan-out's posts of large groups, held until their followers are checked."""

    def __init__(
        self,
        followers: Mapping[int, Sequence[F]],
        *,
        store: Store,
        unfollow: Callable[[F, Collection[int]], None],
        metrics: GatewayMetrics,
        held_max: int = DEFAULT_HELD_MAX,
    ) -> None:
        """``followers``: the fan-out's local connections by large group they follow;
        ``unfollow``: the fan-out's, for a follower who is no longer a member;
        ``held_max``: posts of one group held while a check runs."""
        if held_max < 1:
            raise ConfigError("held_max must be at least 1")
        self._held_max = held_max
        self._followers = followers
        self._store = store
        self._unfollow = unfollow
        self._metrics = metrics
        self._screening: dict[int, list[tuple[int, str, int, object]]] = {}
        """Large group -> posts waiting for its followers' membership check."""
        self.tasks: set[asyncio.Task[None]] = set()
        """The checks running (the fan-out cancels them when it closes)."""
        self._failed = Throttled(
            logger, "checking followers' group membership failed %d times (posts held back)"
        )
        self._overflowed: set[int] = set()
        """Large groups with posts dropped beyond ``held_max`` since their check began."""
        self._dropped = Throttled(
            logger,
            "%d large-group posts came beyond --large-group-held while their group's "
            "membership check ran; the followers read them from the group's stream",
            level=logging.INFO,
        )

    def post(self, group: int, pos: int, text: str, sent_ms: int, caller: object) -> None:
        """A post of large ``group`` for its followers here, once the store says they
        are still members: a leaver's notice (a control share) may come through another
        hub than the post and arrive after it, so the post itself is checked. Posts that
        arrive while a check runs wait for the next one (one check covers them all)."""
        waiting = self._screening.get(group)
        if waiting is not None:
            if len(waiting) < self._held_max:
                waiting.append((pos, text, sent_ms, caller))
            else:  # dropped: read from the stream once the checks are done (checked too)
                self._overflowed.add(group)
                self._dropped.hit()
            return
        self._screening[group] = [(pos, text, sent_ms, caller)]
        task = asyncio.get_running_loop().create_task(self._loop(group))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _loop(self, group: int) -> None:
        """Check the followers' membership of ``group`` (one store call for all of them),
        deliver each waiting post to those who were members at its position, then stop
        the followers who are no longer members."""
        try:
            while True:
                posts = self._screening.get(group)
                if not posts:
                    if group in self._overflowed:  # the posts dropped: nothing later may
                        self._overflowed.discard(group)  # come to show the hole
                        for connection in self._followers.get(group, ()):
                            connection.catch_up()
                    return
                self._screening[group] = []  # posts arriving from now wait for the next check
                users = sorted({c.user for c in self._followers.get(group, ())})
                if not users:
                    continue
                try:
                    # Only these posts are judged: the joins and leaves after the oldest.
                    since = min(pos for pos, _, _, _ in posts) - 1
                    pairs = [(group, u) for u in users]
                    found = await self._store.memberships(pairs, since=since)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # Not shown: the followers read them from the stream (checked there;
                    # retried every second until the store answers). Nothing later may
                    # come to show them the hole.
                    self._failed.hit(exc=exc)
                    for connection in self._followers.get(group, ()):
                        connection.catch_up()
                    continue
                spans: dict[UserId, Membership] = dict(zip(users, found, strict=True))
                # (a follower since the check fills its hole itself)
                followers = [c for c in self._followers.get(group, ()) if c.user in spans]
                for pos, text, sent_ms, caller in posts:
                    shown = False
                    for connection in followers:
                        if connection is not caller and spans[connection.user].covers(pos):
                            connection.deliver_group(group, pos, text)
                            shown = True
                    if not shown:
                        continue
                    if caller is not FROM_HUB:  # stored here
                        self._metrics.pushed_local(sent_ms)
                    else:
                        self._metrics.pushed(sent_ms)
                for connection in followers:
                    if not spans[connection.user].member:
                        connection.regroup(group)
                        self._unfollow(connection, (group,))
        finally:
            self._screening.pop(group, None)
