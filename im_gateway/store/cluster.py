"""The :class:`~im_gateway.store.Store` on Redis Cluster (``redis+cluster://``).

Same keys as on one Redis (:mod:`~im_gateway.store.keyspace`: every key of a user shares
the hash tag ``{u:<user>}``, every key of a group ``{g:<group>}``), plus one:
``{u:<user>}:msg:<message id>``, the position at which that message went into that
user's inbox, kept for the dedupe window (only for messages that have a client id).
Every script declares its KEYS and touches one slot; a batch becomes one call per slot,
one pipeline per node, the nodes in parallel.

Where things are: this module holds the store and runs a batch's steps (below);
:mod:`~.cluster_batch` says which calls each step sends, per slot, and what their replies
mean (pure); :mod:`~.cluster_groups` the group changes; :mod:`~.node_reads` the reads of
many users' or groups' keys; :mod:`~.nodes` runs calls on the nodes.

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
  again, once). A claim not confirmed by its ``WAIT`` appends nothing (refused too): its
  node may be a primary failed over while stopped, which loses the claim once told, and
  the resend's fresh claim would store it twice (:func:`~.cluster_batch.read_claims`).
  Without ``wait_replicas``, a claim lost with a failed-over sender's node is claimed
  afresh by the resend with a new id: recipients may see the text twice, never zero times.

:attr:`ClusterStore.crash` is a hook for tests: called with ``"claimed"`` after step 1,
``"append K/N"`` after each slot's append (step 2 then goes one slot at a time) and
``"appended"`` after step 2, an exception it raises stops the batch there, like a crash.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from transmit_hub.types import GatewayId, UserId

from ..errors import StoreError
from ..throttle import Throttled
from . import cluster_batch, cluster_groups, node_reads, scripts
from .cluster_batch import Answers, Work
from .contract import (
    Accepted,
    GroupStream,
    InboxPage,
    Joined,
    Membership,
    Opening,
    Refused,
    Submission,
    Unread,
)
from .keyspace import KeyspaceStore, Settings, text
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

    # -- messages: the three steps of the module docstring ---------------------------------

    async def submit(self, batch: Sequence[Submission]) -> list[Accepted | Refused]:
        """Claim, append, finish: each one round trip to the nodes in parallel (the calls
        and what their replies say: :mod:`~.cluster_batch`)."""
        self._check_open()
        await self._finished()  # the last batch's records are done before these claim
        out, work, later = cluster_batch.prepare(batch, self.settings)
        live, refused = await self._claim(work, out)
        if self.crash is not None:
            self.crash("claimed")
        appends = [w for w in live if w.users is not None and w.failed is None and w.confirmed]
        presence = await self._append(work, appends, out)
        if self.crash is not None:
            self.crash("appended")
        # Step 3: the refused ones' records are released, then the answers; the others'
        # records are marked done meanwhile (the module docstring says why that is safe).
        releases = cluster_batch.releases(refused)
        if releases:
            await self._nodes.run(releases, answers=False)
        self._mark_done(cluster_batch.done_calls(appends, self.settings))
        failed = cluster_batch.failed(work, out)
        if failed:
            _unavailable.hit(len(failed), exc=failed[-1].failed)
        return cluster_batch.answers(batch, work, out, presence, later)

    async def _claim(self, work: list[Work], out: Answers) -> tuple[list[Work], list[Work]]:
        """Step 1: the claims (per sender) and the members of the groups posted to (per
        group), one round trip; a second reads a resumed message's group if the batch did
        not name it. The messages still to append (each routed), and those refused."""
        nodes, settings = self._nodes, self.settings
        claims = cluster_batch.claims(work)
        calls = cluster_batch.claim_calls(claims, settings, nodes)
        senders = cluster_batch.posted(work)
        groups = sorted(senders)
        calls += [cluster_batch.members_call(g, senders[g], settings, nodes) for g in groups]
        # With wait_replicas, the claims too: see cluster_batch.read_claims.
        wait = settings.wait_replicas > 0 and bool(claims)
        replies = await nodes.run(calls, wait=wait, errors=True)
        forms = cluster_batch.Groups()
        forms.read(groups, replies[len(claims) :])
        cluster_batch.read_claims(claims, replies[: len(claims)])
        live = [w for w in work if w.positions is None and w.failed is None]
        missing = cluster_batch.missing(live, forms)
        if missing:  # a resumed message to another group than its resend said
            replies = await nodes.run(
                [cluster_batch.members_call(g, missing[g], settings, nodes) for g in missing],
                errors=True,
            )
            forms.read(missing, replies)
        return live, cluster_batch.route(live, forms, out)

    async def _append(
        self, work: list[Work], appends: list[Work], out: Answers
    ) -> dict[UserId, tuple[GatewayId, ...]]:
        """Step 2: the appends per recipient slot (reading every recipient's presence,
        which is answered) and the large groups' posts, one round trip; with
        ``wait_replicas``, a ``WAIT`` ends each node's pipeline."""
        nodes, settings = self._nodes, self.settings
        slots, ops = cluster_batch.inbox_slots(work, appends, settings)
        calls = cluster_batch.append_calls(slots, ops, settings, nodes)
        posts = cluster_batch.posts(work, out)
        calls += cluster_batch.post_calls(posts, settings, nodes)
        wait = settings.wait_replicas > 0 and bool(appends or posts)
        if self.crash is None:
            replies = await nodes.run(calls, wait=wait, errors=True)
        else:  # tests: one slot at a time, with a crash point after each
            replies = []
            for k, call in enumerate(calls, 1):
                replies += await nodes.run([call], wait=wait, errors=True)
                self.crash(f"append {k}/{len(calls)}")
        cluster_batch.read_posts(posts, replies[len(slots) :])
        return cluster_batch.read_appends(slots, ops, replies)

    def _mark_done(self, calls: list[Call]) -> None:
        """Step 3's records marked done, in the background (the next submit waits)."""
        if calls:
            task = asyncio.create_task(self._finish(calls))
            self._finishing.add(task)
            task.add_done_callback(self._finishing.discard)

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

    # -- reads of many users: per node, each user answered alone ---------------------------

    async def inbox_ends(self, users: Sequence[UserId]) -> list[int | None]:
        """Per node, each user answered alone (:func:`~.node_reads.inbox_ends`)."""
        self._check_open()
        return await node_reads.inbox_ends(self._nodes, self.settings, users)

    async def in_groups(self, users: Sequence[UserId]) -> list[bool | None]:
        """Per node, each user answered alone (:func:`~.node_reads.in_groups`)."""
        self._check_open()
        return await node_reads.in_groups(self._nodes, self.settings, users)

    async def _read_openings(self, users: list[UserId]) -> list[Opening | Exception]:
        """Per node, each user answered alone (:func:`~.node_reads.openings`)."""
        return await node_reads.openings(self._nodes, self.settings, users)

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

    # -- groups: one call per slot (:mod:`~.cluster_groups`) -------------------------------

    async def join(self, group: int, user: UserId) -> bool:
        self._check_open()
        return await cluster_groups.join(self._nodes, self.settings, group, user)

    async def leave(self, group: int, user: UserId) -> bool:
        self._check_open()
        return await cluster_groups.leave(self._nodes, self.settings, group, user)

    async def add_members(self, group: int, users: Sequence[UserId]) -> list[Joined]:
        self._check_open()
        return await cluster_groups.add_members(self._nodes, self.settings, group, users)

    async def remove_members(self, group: int, users: Sequence[UserId]) -> list[bool]:
        self._check_open()
        return await cluster_groups.remove_members(self._nodes, self.settings, group, users)

    async def memberships(
        self, pairs: Sequence[tuple[int, UserId]], *, since: int = 0
    ) -> list[Membership]:
        self._check_open()
        return await cluster_groups.memberships(self._nodes, self.settings, pairs, since)

    async def watch(self, gateway: GatewayId, groups: Collection[int]) -> None:
        self._check_open()
        await cluster_groups.watch(self._nodes, self.settings, gateway, groups)

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
        await cluster_groups.ack_group(self._nodes, self.settings, user, group, upto)

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
