"""The Redis Cluster store's reads of many users' or groups' keys (inbox ends, whether
users are in groups, openings, groups' pages and streams), each answered alone: one
pipeline per node (:meth:`~.nodes.Nodes.run` with ``errors``), the nodes in parallel, so
a node that does not answer (silent until a failover, or gone) fails only the users and
groups whose keys it holds. redis-py's cluster pipeline, which the shared reads of
:mod:`~im_gateway.store.keyspace` use, fails whole on one such node: one silent primary
would then hold every user of a catch-up sweep's batch, and every large group of a user,
until its failover.

The unknown inbox ends, users and groups are counted in one log line (they are a node's
failure, which the callers do not log per read), and the callers read them again later
(the contract: :mod:`~im_gateway.store.contract`); an opening's error fails its user's
connect.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from transmit_hub.types import UserId

from ..throttle import Throttled
from . import scripts
from .contract import GroupStream, InboxPage, Opening, Unread
from .keyspace import Settings, group_page, group_streams, range_start
from .nodes import Call, Nodes, slot_of

logger = logging.getLogger(__name__)

_unknown_reads = Throttled(
    logger,
    "%d users' inbox ends or groups, or groups' streams, unread: a Redis Cluster node "
    "holding them failed (the others of their reads were answered; these are read again "
    "later)",
)


async def inbox_ends(nodes: Nodes, settings: Settings, users: Sequence[UserId]) -> list[int | None]:
    """Each user's newest inbox position (``GET pos``); None where the user's node failed."""
    replies = await _each_user(nodes, settings, "GET", "pos", users)
    return [None if isinstance(r, Exception) else int(r or 0) for r in replies]


async def in_groups(nodes: Nodes, settings: Settings, users: Sequence[UserId]) -> list[bool | None]:
    """Whether each user is in a group (``EXISTS groups``); None where the user's node
    failed."""
    replies = await _each_user(nodes, settings, "EXISTS", "groups", users)
    return [None if isinstance(r, Exception) else bool(r) for r in replies]


async def _each_user(
    nodes: Nodes, settings: Settings, command: str, name: str, users: Sequence[UserId]
) -> list[Any]:
    """``command`` on each user's key ``name``, one pipeline per node: the replies in the
    users' order, the error in place of each user whose node failed (counted)."""
    if not users:
        return []
    key = settings.key
    calls = [Call(slot_of(k), (command, k)) for k in (key(name, u) for u in users)]
    replies = [reply for reply, _ in await nodes.run(calls, errors=True)]
    failed = [r for r in replies if isinstance(r, Exception)]
    if failed:
        _unknown_reads.hit(len(failed), exc=failed[-1])
    return replies


async def openings(
    nodes: Nodes, settings: Settings, users: Sequence[UserId]
) -> list[Opening | Exception]:
    """Many users' openings (``GET acked``, ``GET pos``, ``EXISTS groups``): a user whose
    node failed (silent) is answered with its error; the others, who connected in the
    same loop turn, are not held up by it (the error is raised to that user's
    :meth:`~.keyspace.KeyspaceStore.opening`, not counted here)."""
    key = settings.key
    calls: list[Call] = []
    for user in users:
        keys = (key("acked", user), key("pos", user), key("groups", user))
        slot = slot_of(keys[0])  # a user's keys share their slot
        calls += (Call(slot, ("GET", keys[0])), Call(slot, ("GET", keys[1])))
        calls.append(Call(slot, ("EXISTS", keys[2])))
    replies = [reply for reply, _ in await nodes.run(calls, errors=True)]
    out: list[Opening | Exception] = []
    for i in range(0, len(replies), 3):
        acked, pos, groups = replies[i : i + 3]
        failed = [r for r in (acked, pos, groups) if isinstance(r, Exception)]
        out.append(failed[0] if failed else Opening(int(acked or 0), int(pos or 0), bool(groups)))
    return out


async def read_groups(
    nodes: Nodes, settings: Settings, reads: Mapping[int, int], limit: int
) -> dict[int, InboxPage | Exception]:
    """Each group's page after its position (``GET last`` then ``XRANGE``, in its slot,
    on one connection: the newest position is read before the entries, as the page
    says); the error in its place where the group's node failed."""
    if not reads:
        return {}
    gkey = settings.gkey
    calls: list[Call] = []
    for group, after in reads.items():
        slot = slot_of(gkey("last", group))  # a group's keys share their slot
        calls.append(Call(slot, ("GET", gkey("last", group))))
        calls.append(
            Call(
                slot,
                ("XRANGE", gkey("stream", group), range_start(after), "+", "COUNT", max(limit, 1)),
            )
        )
    replies = [reply for reply, _ in await nodes.run(calls, errors=True)]
    out: dict[int, InboxPage | Exception] = {}
    for i, group in enumerate(reads):
        last, rows = replies[2 * i], replies[2 * i + 1]
        error = next((r for r in (last, rows) if isinstance(r, Exception)), None)
        if error is not None:
            out[group] = error
            _unknown_reads.hit(exc=error)
            continue
        out[group] = group_page(group, last, rows if limit > 0 else ())
    return out


async def streams(
    nodes: Nodes, settings: Settings, user: UserId, groups: Sequence[int], limit: int
) -> list[GroupStream | Unread]:
    """The large ones of the user's ``groups`` (``lua/streams.lua``, one call per group
    slot), by group; an :class:`Unread` for each group whose node failed."""
    by_slot: dict[int, list[int]] = {}
    for g in sorted(groups):
        by_slot.setdefault(slot_of(settings.group_key(g)), []).append(g)
    replies = await nodes.run(
        [
            nodes.script(
                scripts.STREAMS,
                [settings.group_key(g) for g in part],
                [settings.prefix, str(user), limit, *map(str, part)],
            )
            for part in by_slot.values()
        ],
        errors=True,
    )
    out: list[GroupStream | Unread] = []
    for part, (reply, _) in zip(by_slot.values(), replies, strict=True):
        if isinstance(reply, Exception):
            _unknown_reads.hit(len(part), exc=reply)
            out += (Unread(g, reply) for g in part)
        else:
            out += group_streams(reply)
    return sorted(out, key=lambda s: s.group)
