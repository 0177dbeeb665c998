"""The Redis Cluster store's group changes and group reads, apart from the message path
(:mod:`~im_gateway.store.cluster_batch`): joins, leaves, members added and removed, a large
group's acks, memberships and the gateways that watch a group. A group's keys share its
slot and a user's set of groups is in the user's slot, so each change takes one call per
slot (:meth:`~.nodes.Nodes.run`: one pipeline per node, the nodes in parallel), in as
many round trips as its bounds need. :class:`~.cluster.ClusterStore` checks it is open,
then calls these.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from transmit_hub.types import GatewayId, UserId

from ..errors import GroupLimitError
from . import scripts
from .contract import Joined, Membership
from .keyspace import Settings, membership_args, membership_rows
from .nodes import Call, Nodes, slot_of


async def join(nodes: Nodes, settings: Settings, group: int, user: UserId) -> bool:
    """The user's set of groups first (its bound holds), then the group's members (its
    bound holds); a full group takes the group back out of the user's set."""
    ukey, gkey = settings.key("groups", user), settings.group_key(group)
    [(mine, _)] = await nodes.run(
        [nodes.script(scripts.JOIN_USER, [ukey], [str(group), settings.max_groups_per_user])]
    )
    if int(mine) == 1:
        raise GroupLimitError(group, settings.max_groups_per_user, user_full=True)
    [(theirs, _)] = await nodes.run(
        [
            nodes.script(
                scripts.JOIN_GROUP,
                [gkey],
                [
                    str(user),
                    settings.max_group_members,
                    settings.prefix,
                    str(group),
                    settings.large_group,
                    settings.max_age_ms,
                ],
            )
        ]
    )
    if int(theirs) == 2:
        if int(mine) == 3:
            await nodes.run([Call(slot_of(ukey), ("SREM", ukey, str(group)))])
        raise GroupLimitError(group, settings.max_group_members, user_full=False)
    return int(theirs) != 3


async def leave(nodes: Nodes, settings: Settings, group: int, user: UserId) -> bool:
    """The group's slot (members, and its form) and the user's set of groups, in parallel."""
    gkey, ukey = settings.group_key(group), settings.key("groups", user)
    args = [
        str(user),
        str(group),
        settings.prefix,
        *settings.reform_args(),
    ]
    [(removed, _), _] = await nodes.run(
        [
            nodes.script(scripts.LEAVE, [gkey], args),
            Call(slot_of(ukey), ("SREM", ukey, str(group))),
        ]
    )
    return bool(removed)


async def add_members(
    nodes: Nodes, settings: Settings, group: int, users: Sequence[UserId]
) -> list[Joined]:
    """Three round trips, each one call per slot, the nodes in parallel: the users' sets
    of groups (their bound), the group's members (its bound, and its form), then the users
    whom a full group refused are taken out of their sets again."""
    order = list(dict.fromkeys(users))
    by_slot: dict[int, list[UserId]] = {}
    for u in order:
        by_slot.setdefault(slot_of(settings.key("groups", u)), []).append(u)
    replies = await nodes.run(
        [
            nodes.script(
                scripts.JOIN_USERS,
                [settings.key("groups", u) for u in us],
                [str(group), settings.max_groups_per_user],
            )
            for us in by_slot.values()
        ]
    )
    mine: dict[UserId, int] = {}
    for us, (codes, _) in zip(by_slot.values(), replies, strict=True):
        mine.update(zip(us, (int(c) for c in codes), strict=True))
    result: dict[UserId, Joined] = {u: Joined.USER_FULL for u in order if mine[u] == 1}
    todo = [u for u in order if mine[u] != 1]
    if todo:
        args = [
            settings.prefix,
            str(group),
            settings.max_group_members,
            settings.large_group,
            settings.max_age_ms,
            *map(str, todo),
        ]
        [(codes, _)] = await nodes.run(
            [nodes.script(scripts.GROUP_ADD, [settings.group_key(group)], args)]
        )
        undo = []
        for u, code in zip(todo, (int(c) for c in codes), strict=True):
            result[u] = Joined(code)
            if code == Joined.GROUP_FULL.value and mine[u] == 3:
                undo.append(u)
        if undo:
            await nodes.run(
                [
                    Call(slot_of(k), ("SREM", k, str(group)))
                    for k in (settings.key("groups", u) for u in undo)
                ]
            )
    seen: set[UserId] = set()
    out = []
    for u in users:  # a user listed twice: the second time, a member already
        out.append(Joined.MEMBER if u in seen and result[u] == Joined.ADDED else result[u])
        seen.add(u)
    return out


async def remove_members(
    nodes: Nodes, settings: Settings, group: int, users: Sequence[UserId]
) -> list[bool]:
    """The group's slot (members, positions, form) and every user's slot, one call per
    slot, the nodes in parallel."""
    if not users:
        return []
    args = [
        settings.prefix,
        str(group),
        *settings.reform_args(),
        *map(str, users),
    ]
    calls = [nodes.script(scripts.REMOVE_MEMBERS, [settings.group_key(group)], args)]
    calls += [
        Call(slot_of(k), ("SREM", k, str(group)))
        for k in (settings.key("groups", u) for u in users)
    ]
    replies = await nodes.run(calls)
    return [bool(x) for x in replies[0][0]]


async def ack_group(nodes: Nodes, settings: Settings, user: UserId, group: int, upto: int) -> None:
    """The user's read position in a large group, in the group's slot."""
    if upto <= 0:
        return
    args = [settings.prefix, str(group), str(user), str(upto), settings.max_age_ms]
    await nodes.run([nodes.script(scripts.GROUP_ACK, [settings.group_key(group)], args)])


async def memberships(
    nodes: Nodes, settings: Settings, pairs: Sequence[tuple[int, UserId]], since: int
) -> list[Membership]:
    """Each (group, user) pair's membership, one call per group slot."""
    by_slot: dict[int, list[int]] = {}
    for i, (g, _) in enumerate(pairs):
        by_slot.setdefault(slot_of(settings.group_key(g)), []).append(i)
    calls, shapes = [], []
    for where in by_slot.values():
        mine = [pairs[i] for i in where]
        args, reads = membership_args(mine, since)
        keys = list(dict.fromkeys(settings.group_key(g) for g, _ in mine))
        calls.append(nodes.script(scripts.MEMBERSHIPS, keys, [settings.prefix, *args]))
        shapes.append((where, reads))
    replies = await nodes.run(calls)
    out: list[Membership] = [Membership()] * len(pairs)
    for (where, reads), (reply, _) in zip(shapes, replies, strict=True):
        found_all = membership_rows(reply, reads, [pairs[i] for i in where], since)
        for i, found in zip(where, found_all, strict=True):
            out[i] = found
    return out


async def watch(
    nodes: Nodes, settings: Settings, gateway: GatewayId, groups: Collection[int]
) -> None:
    """``gateway`` among each group's watchers, refreshed: per slot, ``keys_per_call``
    keys a call."""
    by_slot: dict[int, list[str]] = {}
    for g in groups:
        key = settings.gkey("gateways", g)
        by_slot.setdefault(slot_of(key), []).append(key)
    if by_slot:
        await nodes.run(
            [
                nodes.script(scripts.REFRESH, part, [gateway, settings.presence_ms])
                for keys in by_slot.values()
                for part in settings.chunks(keys)
            ]
        )
