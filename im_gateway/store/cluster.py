"""The :class:`~im_gateway.store.Store` on Redis Cluster (``redis+cluster://``).

Same keys as on one Redis (:mod:`~im_gateway.store.keyspace`: every key of a user shares
the hash tag ``{u:<user>}``, every key of a group ``{g:<group>}``), plus one:
``{u:<user>}:msg:<message id>``, the position at which that message went into that
user's inbox, kept for the dedupe window (only for messages that have a client id). Every script declares its KEYS
and touches one slot; a batch becomes one call per slot, one pipeline per node, the nodes
in parallel.

**Submitting without cross-slot atomicity.** One Redis stores a batch in one atomic
script. Here a batch takes three steps, each one round trip to the nodes in parallel:

1. *Claim*, in each sender's slot: ``SET NX`` of the dedupe key to a *pending* record
   ``["p", time, message id, entry]`` (the message itself, as
   :mod:`~im_gateway.store.entry` lays it out). A key already there is either
   *done* (``["d", time, id, entry, [user, pos, ...]]``: a duplicate, answered as on one
   Redis) or *pending*: an earlier attempt stopped part way (a gateway or a node crashed,
   a WAIT failed). Then this attempt completes *that* message: its id, time and text.
   Group members are read (``SMEMBERS``) in the same round trip.
2. *Append*, in each recipient's slot: one script per slot appends the batch's messages in
   batch order and records ``{u:R}:msg:<id>`` in the same atomic step. A message whose
   record exists is not appended again: its recorded position is answered. The same call
   reads the recipients' presence; with ``wait_replicas``, a ``WAIT`` ends each node's
   pipeline on the same connection.
3. *Finish*, in each sender's slot: a refused submission's record is deleted before the
   refusal is answered; the others' dedupe keys become *done*, with the positions, while
   the senders are acknowledged (the store's next batch waits for it before its step 1).

Why no acknowledged message is lost, and none is written twice:

- The acknowledgement (type 10) follows every append of step 2 (and its WAIT). So an
  acknowledged message is in every recipient's inbox (and on ``wait_replicas`` replicas
  of each). Step 3 only turns a *pending* record into a *done* one, and the two answer a
  resend alike (below), so the acknowledgement need not wait for it: that saves a round
  trip on every message's way.
- A crash after step 1 or during step 2 leaves the record *pending* and some inboxes
  written, each with its ``msg`` record in the same atomic script. The client was not
  acknowledged, so it sends again with the same client id (the contract asks it to); the
  resend finds the pending record and runs step 2 for the first message id: inboxes that
  have it answer their recorded position, the others append it. Each inbox holds the
  message exactly once. So does a crash after the acknowledgement but before step 3
  landed (or a step 3 that failed: counted in the log): a client that resends anyway,
  its acknowledgement lost with the connection, gets the first message's answer. A
  crash after step 3 is a plain duplicate.
- A node that does not answer (silent until a failover, or gone) fails only the
  messages with a key on it: refused ``UNAVAILABLE`` (send again), their records left
  pending, while the rest of the batch is stored and acknowledged. So one silent
  primary costs the batches that touch it about a ``socket_timeout`` (see
  :meth:`~.nodes.Nodes.run`), not the whole gateway's traffic until a failover. What
  the refused message's other slots appended is recorded with it, so the resend
  completes it once, as after a crash.
- Two attempts at once (a resend while the first is still running) both run step 2 for
  the same id: the per-slot script is atomic, so whichever comes second finds the record.
- The ``msg`` records live as long as the dedupe key, so a resend that can find the
  pending record can find them. (Without a client id nothing is recorded, and nothing can
  be resent as the same message either.)
- Order per sender and recipient: the gateway submits one batch at a time, each slot's
  script appends in batch order, and step 2 of a batch ends before the next batch starts.
  A message completed by a resend lands where the resend was sent.
- A primary that fails over before its replica had a write loses that write. With
  ``wait_replicas`` the sender is acknowledged only when ``WAIT`` confirmed the appends;
  otherwise it is refused (``NOT_REPLICATED``: send again), the record stays pending,
  and the resend completes the message (an append the promoted replica lacks is written
  again, once). If the *claim* itself is lost with a failed-over sender's node, a resend
  claims afresh with a new id: recipients may then see the text twice, never zero times.

:attr:`ClusterStore.crash` is a hook for tests: called with ``"claimed"`` after step 1,
``"append K/N"`` after each slot's append (step 2 then goes one slot at a time) and
``"appended"`` after step 2, an exception it raises stops the batch there, like a crash.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from transmit_hub.types import MESSAGE_GROUP, GatewayId, Message, Recipient, UserId

from ..errors import GroupLimitError, StoreError
from ..throttle import Throttled
from . import entry, node_reads, scripts
from .contract import (
    Accepted,
    GroupPost,
    GroupStream,
    InboxPage,
    Joined,
    Membership,
    Opening,
    Refusal,
    Refused,
    Submission,
    Unread,
    unencodable,
)
from .keyspace import KeyspaceStore, Settings, membership_args, membership_rows, text
from .nodes import Call, Nodes, cluster_nodes, slot_of

__all__ = ["ClusterStore", "cluster_options"]

logger = logging.getLogger(__name__)

_unavailable = Throttled(
    logger,
    "%d messages answered 'send again': a Redis Cluster node holding their keys failed "
    "them (the others of their batches were stored)",
)
_unfinished = Throttled(
    logger,
    "%d batches' dedupe records left pending (a resend completes them to the same answer)",
)


ATTEMPTS = 2
"""How many times the cluster client the store makes sends a command or a pipeline
(:func:`cluster_options`)."""


def cluster_options(socket_timeout: float) -> dict[str, Any]:
    """Connection settings for the Redis Cluster client the store makes.

    redis-py's cluster client sends a command (or a pipeline) again after a connection
    error, a timeout, ``CLUSTERDOWN`` or an uncovered slot, reading its map of the slots
    anew first (at most once a second), as often as its ``retry`` allows: by default 10
    times, with a backoff of up to a second between. Against a silent node (stopped, or
    cut off, with no failover coming) every attempt waits out ``socket_timeout``: 9.5 s
    with 0.5 s, about a minute with the default 5 s, for every read of a user whose keys
    are there (a replay, a connect). Here a call is sent :data:`ATTEMPTS` times (once
    more), with a short backoff: it fails within about two ``socket_timeout`` and a
    refresh of the map (which asks the node that failed last). A timeout is not worth
    more waiting on the same node (the single Redis store does not retry one at all), and
    the second attempt goes to the new primary when the refresh found a failover.

    A redirection (``MOVED`` once a replica took over, ``ASK`` while a slot migrates) is
    followed within an attempt, not counted. A failover still under way (the old primary
    refuses connections, or the cluster answers ``CLUSTERDOWN``, until a replica is
    promoted) fails the call sooner than the default's retries would have ridden it out:
    its caller answers ``internal`` (a send, a replay) or tries again (presence, a connect
    replay a second later), as for any store error, and the client's retry lands once the
    map names the new primary.
    """
    return {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": min(socket_timeout, 5.0),
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), ATTEMPTS - 1),
    }


@dataclass(slots=True)
class _Work:
    """One submission on its way through the three steps."""

    index: int
    sub: Submission
    message: Message
    entry: str
    dkey: str | None
    resumed: bool = False
    duplicate: bool = False
    users: list[UserId] | None = None
    positions: dict[UserId, str] | None = None
    confirmed: bool = True
    failed: Exception | None = None
    """Why a node its keys are on did not answer (it is refused: send again)."""
    stream: int | None = None
    """A large group's message: stored once, in this group's stream."""
    post: GroupPost | None = None


class ClusterStore(KeyspaceStore):
    """Presence, groups, inboxes and dedupe on a Redis Cluster (6.2 or later).

    ``client`` is a ``redis.asyncio.cluster.RedisCluster`` (the caller keeps owning it,
    with its own retries) or a ``redis+cluster://`` URL (the store makes the client with
    :func:`cluster_options`). The options are :class:`~im_gateway.store.keyspace.Settings`'
    fields, as for :class:`~im_gateway.store.redis.RedisStore`; see the module docstring
    for how a batch is stored.
    """

    def __init__(self, client: RedisCluster | str, **options: Any) -> None:
        settings = Settings(**options)
        owns = isinstance(client, str)
        if isinstance(client, str):
            # The cluster client sends a failed command once more itself (a dead
            # connection, a node that moved its slots) after refreshing its map of the
            # slots: once, so a silent node costs a call about two timeouts.
            client = RedisCluster(
                startup_nodes=[ClusterNode(h, p) for h, p in cluster_nodes(client)],
                **cluster_options(settings.socket_timeout),
            )
        super().__init__(client, settings, owns_client=owns)
        self._cluster = client
        # Calls go on the store's own connection per node (``lane.py``) when it made the
        # client: redis-py's pipeline reads each reply under its own timeout, which cost
        # the gateway about 31 µs per presence key refreshed.
        self._nodes = Nodes(
            client,
            wait_replicas=settings.wait_replicas,
            wait_ms=settings.wait_ms,
            lanes=owns,
            timeout=settings.socket_timeout,
        )
        self.crash: Callable[[str], None] | None = None
        """Test hook: called between the steps of :meth:`submit` (see the module doc)."""
        self._finishing: set[asyncio.Task[None]] = set()
        """Step 3 of the batches answered (their dedupe records marked done), under way:
        one at a time, as the gateway submits, and every submit waits for them first."""

    @property
    def client(self) -> RedisCluster:
        """The Redis Cluster client the store uses."""
        return self._cluster

    # -- messages -------------------------------------------------------------------------

    async def submit(self, batch: Sequence[Submission]) -> list[Accepted | Refused]:
        self._check_open()
        await self._finished()  # the last batch's records are done before these claim
        out: list[Accepted | Refused | None] = [None] * len(batch)
        for i in unencodable(batch):
            out[i] = Refused(batch[i].client_id, Refusal.UNENCODABLE)
        first: dict[tuple[int, str], int] = {}
        later: dict[int, int] = {}
        work: list[_Work] = []
        for i, s in enumerate(batch):
            if out[i] is not None:
                continue
            m = s.message
            if s.client_id:
                seen = first.setdefault((m.sender, s.client_id), i)
                if seen != i:
                    later[i] = seen
                    continue
            dkey = self.settings.key(f"dedupe:{s.client_id}", m.sender) if s.client_id else None
            work.append(_Work(i, s, m, entry.encode(m), dkey))

        # Step 1: claims (per sender) and group members (per group), one round trip.
        claims: dict[int, list[_Work]] = {}
        for w in work:
            if w.dkey is not None:
                claims.setdefault(w.message.sender, []).append(w)
        calls = [
            self._nodes.script(
                scripts.CLAIM,
                [w.dkey for w in ws if w.dkey is not None],
                [
                    self.settings.window_ms,
                    *(json.dumps(["p", w.message.time, w.message.id, w.entry]) for w in ws),
                ],
            )
            for ws in claims.values()
        ]
        senders: dict[int, set[int]] = {}
        for w in work:
            if w.message.type == MESSAGE_GROUP:
                senders.setdefault(w.message.to, set()).add(w.message.sender)
        groups = sorted(senders)
        calls += [self._members_call(g, senders[g]) for g in groups]
        replies = await self._nodes.run(calls, errors=True)
        members: dict[int, set[UserId]] = {}
        large: dict[int, set[UserId]] = {}
        down: dict[int, Exception] = {}  # groups whose members could not be read
        for g, (reply, _) in zip(groups, replies[len(claims) :], strict=True):
            if isinstance(reply, Exception):
                down[g] = reply
            else:
                _group_form(g, reply, members, large)
        for ws, (reply, _) in zip(claims.values(), replies[: len(claims)], strict=True):
            if isinstance(reply, Exception):  # the claim may have landed: left pending
                for w in ws:
                    w.failed = reply
                continue
            for w, record in zip(ws, reply, strict=True):
                if record == 0:
                    continue
                kind, _, _, stored, *rest = json.loads(record)
                w.message = entry.decode(stored)
                w.entry = stored
                if kind == "d" and rest[0] and str(rest[0][0]).startswith("g"):
                    w.duplicate = True  # stored once: step 2 answers its position
                    w.stream = int(str(rest[0][0])[1:])
                    pairs = rest[0][2:]  # a server API sender's own copy, if any
                    w.users = [UserId(int(u)) for u in pairs[0::2]]
                    w.positions = dict(zip(w.users, (str(p) for p in pairs[1::2]), strict=True))
                elif kind == "d":
                    w.duplicate = True
                    pairs = rest[0]
                    w.users = [UserId(int(u)) for u in pairs[0::2]]
                    w.positions = dict(zip(w.users, (str(p) for p in pairs[1::2]), strict=True))
                else:
                    w.resumed = True
        live = [w for w in work if w.positions is None and w.failed is None]
        missing: dict[int, set[int]] = {}
        for w in live:
            g = w.message.to
            known = g in members or g in large or g in down
            if w.message.type == MESSAGE_GROUP and not known:
                missing.setdefault(g, set()).add(w.message.sender)
        if missing:  # a resumed message to another group than its resend said
            replies = await self._nodes.run(
                [self._members_call(g, missing[g]) for g in missing], errors=True
            )
            for g, (reply, _) in zip(missing, replies, strict=True):
                if isinstance(reply, Exception):
                    down[g] = reply
                else:
                    _group_form(g, reply, members, large)
        refused: list[_Work] = []
        for w in live:
            m = w.message
            if m.type == MESSAGE_GROUP and m.to in down:
                w.failed = down[m.to]  # its claim stays pending: a resend completes it
                continue
            if m.type == MESSAGE_GROUP and m.to in large:
                if w.sub.check_member and UserId(m.sender) not in large[m.to]:
                    w.users = None
                elif m.sender != 0 and UserId(m.sender) not in large[m.to]:
                    w.stream, w.users = m.to, [UserId(m.sender)]  # the API's sender: a copy
                else:
                    w.stream, w.users = m.to, []
            else:
                w.users = self._recipients(w, members)
            if w.users is None:
                refused.append(w)
                out[w.index] = Refused(w.sub.client_id, Refusal.NOT_MEMBER)
        if self.crash is not None:
            self.crash("claimed")

        # Step 2: appends per recipient slot, and every recipient's presence.
        appends = [w for w in live if w.users is not None and w.failed is None]
        slots: dict[int, list[UserId]] = {}
        for w in work:
            for u in w.users or ():
                slot = slot_of(self.settings.key("inbox", u))
                if u not in slots.setdefault(slot, []):
                    slots[slot].append(u)
        ops: dict[int, list[tuple[_Work, UserId]]] = {slot: [] for slot in slots}
        for w in appends:
            for u in w.users or ():
                ops[slot_of(self.settings.key("inbox", u))].append((w, u))
        calls = []
        for slot, users in slots.items():
            keys = [
                self.settings.key(kind, u)
                for u in users
                for kind in ("inbox", "pos", "acked", "presence")
            ]
            args: list[Any] = [
                self.settings.inbox_max_len,
                self.settings.max_age_ms,
                self.settings.window_ms,
                len(users),
            ]
            for w, u in ops[slot]:
                mark = 0
                if w.dkey is not None:
                    keys.append(self.settings.key(f"msg:{w.message.id}", u))
                    mark = len(keys)
                args += (users.index(u) + 1, mark, w.entry)
            calls.append(self._nodes.script(scripts.APPEND, keys, args))
        streams: dict[int, list[_Work]] = {}
        for w in work:
            if w.stream is not None and out[w.index] is None and w.failed is None:
                streams.setdefault(w.stream, []).append(w)
        for g, ws in streams.items():
            args = [
                self.settings.prefix,
                str(g),
                self.settings.inbox_max_len,
                self.settings.max_age_ms,
                self.settings.window_ms,
            ]
            for w in ws:
                args += (w.message.id if w.dkey is not None else "", w.entry)
            calls.append(self._nodes.script(scripts.GROUP_POST, [self.settings.group_key(g)], args))
        wait = self.settings.wait_replicas > 0 and bool(appends or streams)
        if self.crash is None:
            replies = await self._nodes.run(calls, wait=wait, errors=True)
        else:  # tests: one slot at a time, with a crash point after each
            replies = []
            for k, call in enumerate(calls, 1):
                replies += await self._nodes.run([call], wait=wait, errors=True)
                self.crash(f"append {k}/{len(calls)}")
        for (g, ws), (reply, confirmed) in zip(streams.items(), replies[len(slots) :], strict=True):
            if isinstance(reply, Exception):
                for w in ws:
                    w.failed = reply
                continue
            positions, gateways = json.loads(reply)
            found = tuple(GatewayId(text(gw)) for gw in gateways[1:])
            for w, pos in zip(ws, positions, strict=True):
                w.post = GroupPost(g, int(pos), found)
                w.confirmed = w.confirmed and confirmed
        presence: dict[UserId, tuple[GatewayId, ...]] = {}
        for (slot, users), (reply, confirmed) in zip(slots.items(), replies, strict=False):
            if isinstance(reply, Exception):  # what other slots appended stays recorded
                for w, _ in ops[slot]:
                    w.failed = reply
                continue
            positions, gateways = json.loads(reply)
            if isinstance(positions, dict):  # cjson writes an empty table as {}
                positions = []
            for (w, u), pos in zip(ops[slot], positions, strict=True):
                if w.positions is None:
                    w.positions = {}
                w.positions[u] = str(pos)
                w.confirmed = w.confirmed and confirmed
            for u, gws in zip(users, gateways, strict=True):
                if len(gws) > 1:
                    presence[u] = tuple(GatewayId(text(g)) for g in gws[1:])
        if self.crash is not None:
            self.crash("appended")

        # Step 3: the refused ones' records are released, then the answers; the others'
        # records are marked done meanwhile (the module docstring says why that is safe).
        releases = [Call(slot_of(w.dkey), ("DEL", w.dkey)) for w in refused if w.dkey]
        if releases:
            await self._nodes.run(releases, answers=False)
        calls = []
        for w in appends:
            if w.dkey is not None and w.confirmed and w.failed is None:
                written: list[Any] = []
                if w.post is not None:
                    written += (f"g{w.post.group}", str(w.post.position))
                for u in w.users or ():
                    written += (int(u), (w.positions or {})[u])
                record = json.dumps(["d", w.message.time, w.message.id, w.entry, written])
                calls.append(
                    Call(slot_of(w.dkey), ("SET", w.dkey, record, "PX", self.settings.window_ms))
                )
        if calls:
            task = asyncio.create_task(self._finish(calls))
            self._finishing.add(task)
            task.add_done_callback(self._finishing.discard)
        failed = [w for w in work if w.failed is not None and out[w.index] is None]
        if failed:
            _unavailable.hit(len(failed), exc=failed[-1].failed)
        for w in work:
            if out[w.index] is not None:
                continue
            if w.failed is not None:
                out[w.index] = Refused(w.sub.client_id, Refusal.UNAVAILABLE)
                continue
            if not w.confirmed:
                out[w.index] = Refused(w.sub.client_id, Refusal.NOT_REPLICATED)
                continue
            users = w.users or []
            positions = w.positions or {}
            out[w.index] = Accepted(
                w.sub.client_id,
                w.message,
                w.duplicate,
                tuple(Recipient(u, positions[u]) for u in users),
                {u: presence[u] for u in users if u in presence},
                w.post,
            )
        for i, j in later.items():
            done = out[j]
            if isinstance(done, Accepted):
                out[i] = Accepted(
                    batch[i].client_id,
                    done.message,
                    True,
                    done.recipients,
                    done.presence,
                    done.post,
                )
            else:
                out[i] = done
        return [r for r in out if r is not None]

    async def _finish(self, calls: list[Call]) -> None:
        """Step 3 of a batch already answered: its dedupe records marked done. A failure
        leaves them pending, which a resend completes to the same answer: counted."""
        try:
            await self._nodes.run(calls, answers=False)
        except Exception as exc:
            _unfinished.hit(exc=exc)

    async def _finished(self) -> None:
        """Wait for the step 3 of the batches answered, if any is still under way."""
        if self._finishing:
            await asyncio.wait(list(self._finishing))

    async def inbox_ends(self, users: Sequence[UserId]) -> list[int | None]:
        """Per node, each user answered alone (:func:`~.node_reads.inbox_ends`)."""
        self._check_open()
        return await node_reads.inbox_ends(self._nodes, self.settings, users)

    async def _read_openings(self, users: list[UserId]) -> list[Opening | Exception]:
        """Many users' openings: a pipeline per node, the nodes in parallel. A user whose
        node failed (silent) is answered with its error; the others, who connected in the
        same loop turn, are not held up by it."""
        key = self.settings.key
        calls: list[Call] = []
        for user in users:
            keys = (key("acked", user), key("pos", user), key("groups", user))
            slot = slot_of(keys[0])  # a user's keys share their slot
            calls += (Call(slot, ("GET", keys[0])), Call(slot, ("GET", keys[1])))
            calls.append(Call(slot, ("EXISTS", keys[2])))
        replies = [reply for reply, _ in await self._nodes.run(calls, errors=True)]
        out: list[Opening | Exception] = []
        for i in range(0, len(replies), 3):
            acked, pos, groups = replies[i : i + 3]
            failed = [r for r in (acked, pos, groups) if isinstance(r, Exception)]
            out.append(
                failed[0] if failed else Opening(int(acked or 0), int(pos or 0), bool(groups))
            )
        return out

    def _members_call(self, group: int, senders: Collection[int]) -> Call:
        keys = [self.settings.group_key(group), self.settings.gkey("large", group)]
        return self._nodes.script(scripts.GROUP_CHECK, keys, [str(s) for s in sorted(senders)])

    def _recipients(self, w: _Work, members: dict[int, set[UserId]]) -> list[UserId] | None:
        """Whose inboxes get ``w``'s message; None when the sender may not post it."""
        m = w.message
        sender = UserId(m.sender)
        if m.type == MESSAGE_GROUP:
            group = members.get(m.to, set())
            check = w.sub.check_member
            if check and sender not in group:
                return None
            users = sorted(group)
            if not check and sender != 0 and sender not in group:
                users.append(sender)
            return users
        to = UserId(m.to)
        return [to] if sender in (to, 0) else [to, sender]

    # -- acks, presence, groups: one call per slot ----------------------------------------

    async def _write_acks(self, acks: dict[str, int]) -> None:
        """The gathered acks (see :meth:`~.keyspace.KeyspaceStore.ack`), one script call per slot."""
        by_slot: dict[int, tuple[list[str], list[Any]]] = {}
        for key, upto in acks.items():
            keys, args = by_slot.setdefault(slot_of(key), ([], []))
            keys += self.settings.ack_keys(key)
            args.append(upto)
        await self._nodes.run(
            [
                self._nodes.script(scripts.ACK, keys, [*args, self.settings.max_age_ms])
                for keys, args in by_slot.values()
            ]
        )

    def _per_slot(self, users: Collection[UserId]) -> list[tuple[int, list[UserId], list[str]]]:
        """``users`` by the slot of their presence key, at most ``keys_per_call`` a group
        (a slot's script holds its node for as long as its keys take): per group its slot,
        its users and their presence keys (each key and slot worked out once: a slot
        costs about 2 µs)."""
        key = self.settings.key
        by_slot: dict[int, tuple[list[UserId], list[str]]] = {}
        for u in users:
            k = key("presence", u)
            us, ks = by_slot.setdefault(slot_of(k), ([], []))
            us.append(u)
            ks.append(k)
        n = self.settings.keys_per_call
        out: list[tuple[int, list[UserId], list[str]]] = []
        for slot, (us, ks) in by_slot.items():
            if len(us) <= n:  # the common case: a slot holds a user or two
                out.append((slot, us, ks))
            else:
                out += [(slot, us[i : i + n], ks[i : i + n]) for i in range(0, len(us), n)]
        return out

    async def refresh(self, gateway: GatewayId, users: Collection[UserId]) -> None:
        self._check_open()
        if users:
            args = [gateway, self.settings.presence_ms]
            await self._nodes.run(
                [
                    self._nodes.script(scripts.REFRESH, keys, args, slot=slot)
                    for slot, _, keys in self._per_slot(users)
                ]
            )

    async def lookup(self, users: Collection[UserId]) -> dict[UserId, tuple[GatewayId, ...]]:
        self._check_open()
        if not users:
            return {}
        groups = self._per_slot(users)
        replies = await self._nodes.run(
            [self._nodes.script(scripts.LOOKUP, keys, [], slot=slot) for slot, _, keys in groups]
        )
        found: dict[UserId, tuple[GatewayId, ...]] = {}
        for (_, us, _), (rows, _) in zip(groups, replies, strict=True):
            for u, gws in zip(us, rows, strict=True):
                if gws:
                    found[u] = tuple(GatewayId(text(g)) for g in gws)
        return found

    async def join(self, group: int, user: UserId) -> bool:
        """The user's set of groups first (its bound holds), then the group's members
        (its bound holds); a full group takes the group back out of the user's set."""
        self._check_open()
        ukey, gkey = self.settings.key("groups", user), self.settings.group_key(group)
        [(mine, _)] = await self._nodes.run(
            [
                self._nodes.script(
                    scripts.JOIN_USER, [ukey], [str(group), self.settings.max_groups_per_user]
                )
            ]
        )
        if int(mine) == 1:
            raise GroupLimitError(group, self.settings.max_groups_per_user, user_full=True)
        [(theirs, _)] = await self._nodes.run(
            [
                self._nodes.script(
                    scripts.JOIN_GROUP,
                    [gkey],
                    [
                        str(user),
                        self.settings.max_group_members,
                        self.settings.prefix,
                        str(group),
                        self.settings.large_group,
                        self.settings.max_age_ms,
                    ],
                )
            ]
        )
        if int(theirs) == 2:
            if int(mine) == 3:
                await self._nodes.run([Call(slot_of(ukey), ("SREM", ukey, str(group)))])
            raise GroupLimitError(group, self.settings.max_group_members, user_full=False)
        return int(theirs) != 3

    async def leave(self, group: int, user: UserId) -> bool:
        self._check_open()
        settings = self.settings
        gkey, ukey = settings.group_key(group), settings.key("groups", user)
        args = [
            str(user),
            str(group),
            settings.prefix,
            settings.large_group,
            settings.max_age_ms,
            settings.max_group_members,
        ]
        [(removed, _), _] = await self._nodes.run(
            [
                self._nodes.script(scripts.LEAVE, [gkey], args),
                Call(slot_of(ukey), ("SREM", ukey, str(group))),
            ]
        )
        return bool(removed)

    async def add_members(self, group: int, users: Sequence[UserId]) -> list[Joined]:
        """Three round trips, each one call per slot, the nodes in parallel: the users'
        sets of groups (their bound), the group's members (its bound, and its form), then
        the users whom a full group refused are taken out of their sets again."""
        self._check_open()
        settings = self.settings
        order = list(dict.fromkeys(users))
        by_slot: dict[int, list[UserId]] = {}
        for u in order:
            by_slot.setdefault(slot_of(settings.key("groups", u)), []).append(u)
        replies = await self._nodes.run(
            [
                self._nodes.script(
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
            [(codes, _)] = await self._nodes.run(
                [self._nodes.script(scripts.GROUP_ADD, [settings.group_key(group)], args)]
            )
            undo = []
            for u, code in zip(todo, (int(c) for c in codes), strict=True):
                result[u] = Joined(code)
                if code == Joined.GROUP_FULL.value and mine[u] == 3:
                    undo.append(u)
            if undo:
                await self._nodes.run(
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

    async def remove_members(self, group: int, users: Sequence[UserId]) -> list[bool]:
        """The group's slot (members, positions, form) and every user's slot, one call per
        slot, the nodes in parallel."""
        self._check_open()
        if not users:
            return []
        settings = self.settings
        args = [
            settings.prefix,
            str(group),
            settings.large_group,
            settings.max_age_ms,
            settings.max_group_members,
            *map(str, users),
        ]
        calls = [self._nodes.script(scripts.REMOVE_MEMBERS, [settings.group_key(group)], args)]
        calls += [
            Call(slot_of(k), ("SREM", k, str(group)))
            for k in (settings.key("groups", u) for u in users)
        ]
        replies = await self._nodes.run(calls)
        return [bool(x) for x in replies[0][0]]

    # -- large groups: one call per group slot --------------------------------------------

    async def streams(self, user: UserId, limit: int) -> list[GroupStream | Unread]:
        """The user's groups (its slot), then one call per group slot, each answered
        alone (:func:`~.node_reads.streams`)."""
        self._check_open()
        found = await self._cluster.smembers(self.settings.key("groups", user))
        groups = [int(g) for g in found]
        return await node_reads.streams(self._nodes, self.settings, user, groups, limit)

    async def read_groups(
        self, reads: Mapping[int, int], limit: int
    ) -> dict[int, InboxPage | Exception]:
        """Per node, each group answered alone (:func:`~.node_reads.read_groups`)."""
        self._check_open()
        return await node_reads.read_groups(self._nodes, self.settings, reads, limit)

    async def ack_group(self, user: UserId, group: int, upto: int) -> None:
        self._check_open()
        if upto <= 0:
            return
        settings = self.settings
        args = [settings.prefix, str(group), str(user), str(upto), settings.max_age_ms]
        await self._nodes.run(
            [self._nodes.script(scripts.GROUP_ACK, [settings.group_key(group)], args)]
        )

    async def memberships(
        self, pairs: Sequence[tuple[int, UserId]], *, since: int = 0
    ) -> list[Membership]:
        self._check_open()
        settings = self.settings
        by_slot: dict[int, list[int]] = {}
        for i, (g, _) in enumerate(pairs):
            by_slot.setdefault(slot_of(settings.group_key(g)), []).append(i)
        calls, shapes = [], []
        for where in by_slot.values():
            mine = [pairs[i] for i in where]
            args, reads = membership_args(mine, since)
            keys = list(dict.fromkeys(settings.group_key(g) for g, _ in mine))
            calls.append(self._nodes.script(scripts.MEMBERSHIPS, keys, [settings.prefix, *args]))
            shapes.append((where, reads))
        replies = await self._nodes.run(calls)
        out: list[Membership] = [Membership()] * len(pairs)
        for (where, reads), (reply, _) in zip(shapes, replies, strict=True):
            found_all = membership_rows(reply, reads, [pairs[i] for i in where], since)
            for i, found in zip(where, found_all, strict=True):
                out[i] = found
        return out

    async def watch(self, gateway: GatewayId, groups: Collection[int]) -> None:
        self._check_open()
        by_slot: dict[int, list[str]] = {}
        for g in groups:
            key = self.settings.gkey("gateways", g)
            by_slot.setdefault(slot_of(key), []).append(key)
        if by_slot:
            await self._nodes.run(
                [
                    self._nodes.script(scripts.REFRESH, part, [gateway, self.settings.presence_ms])
                    for keys in by_slot.values()
                    for part in self.settings.chunks(keys)
                ]
            )

    async def ping(self) -> None:
        """Raise unless a node answers and says every slot has a primary."""
        self._check_open()
        cluster = self._cluster
        await cluster.initialize()
        error: Exception | None = None
        for node in [*cluster.get_primaries(), *cluster.get_replicas()]:
            try:
                info = await cluster.cluster_info(target_nodes=node)
            except Exception as exc:  # a dead node: ask the next one
                error = exc
                continue
            break
        else:
            raise StoreError(f"no Redis Cluster node answers: {error}")
        state = info.get("cluster_state") if isinstance(info, dict) else None
        if state != "ok":
            raise StoreError(f"Redis Cluster state is {state!r}: a slot has no primary")

    async def close(self) -> None:
        await self._finished()
        await super().close()
        await self._nodes.close()


def _users(reply: Any) -> set[UserId]:
    return {UserId(int(u)) for u in reply or ()}


def _group_form(
    group: int, reply: Any, members: dict[int, set[UserId]], large: dict[int, set[UserId]]
) -> None:
    """File ``lua/group_check.lua``'s answer: a large group's member senders, or the
    members of one stored in inboxes."""
    if int(reply[0]) == 1:
        large[group] = _users(reply[1:])
    else:
        members[group] = _users(reply[1:])
