"""A batch's way through a Redis Cluster, without the I/O: which calls each of the three
steps of :meth:`~.cluster.ClusterStore.submit` sends, per slot, and what their replies say
(why the steps lose no acknowledged message and write none twice: the
:mod:`~im_gateway.store.cluster` docstring). The store runs the calls and calls these
between the round trips:

0. :func:`prepare`: a :class:`Work` per message to store (the unencodable refused, a
   client id sent twice in the batch answered as its first);
1. *claim*: :func:`claims` and :func:`claim_calls` (per sender), :func:`posted` and
   :func:`members_call` (per group); :func:`read_claims` and :meth:`Groups.read` read the
   replies, :func:`missing` names a resumed message's group not read yet, and
   :func:`route` decides each message's recipients (or refuses it);
2. *append*: :func:`inbox_slots` and :func:`append_calls` (per recipient slot),
   :func:`posts` and :func:`post_calls` (per large group); :func:`read_appends` and
   :func:`read_posts` read the positions and the recipients' presence;
3. *finish*: :func:`releases` (a refused message's record), :func:`done_calls` (the
   others' records marked done), :func:`failed` and :func:`answers`.

Everything here works on the batch's :class:`Work` items in place: no object per message
beyond them, as the hot path wants.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from transmit_hub.types import MESSAGE_GROUP, GatewayId, Message, Recipient, UserId

from . import entry, scripts
from .contract import Accepted, GroupPost, Refusal, Refused, Submission, unencodable
from .keyspace import Settings, text
from .nodes import Call, slot_of

Answers = list[Accepted | Refused | None]
"""A batch's answers by position; None while undecided."""

Replies = Sequence[tuple[Any, bool]]
"""What :meth:`~.nodes.Nodes.run` answers (with ``errors``): per call, its reply or its
error, and whether its ``WAIT`` confirmed it."""


class Scripts(Protocol):
    """What makes a script's call (:meth:`~.nodes.Nodes.script`)."""

    def script(
        self, source: str, keys: Sequence[str], args: Sequence[Any], *, slot: int | None = None
    ) -> Call: ...


@dataclass(slots=True)
class Work:
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


def prepare(
    batch: Sequence[Submission], settings: Settings
) -> tuple[Answers, list[Work], dict[int, int]]:
    """The batch's answers so far (the unencodable refused), its work (a message to store
    each, with its dedupe key when it has a client id) and its later submissions of a
    client id already in it (position -> the first's position: answered as the first)."""
    out: Answers = [None] * len(batch)
    for i in unencodable(batch):
        out[i] = Refused(batch[i].client_id, Refusal.UNENCODABLE)
    first: dict[tuple[int, str], int] = {}
    later: dict[int, int] = {}
    work: list[Work] = []
    for i, s in enumerate(batch):
        if out[i] is not None:
            continue
        m = s.message
        if s.client_id:
            seen = first.setdefault((m.sender, s.client_id), i)
            if seen != i:
                later[i] = seen
                continue
        dkey = settings.key(f"dedupe:{s.client_id}", m.sender) if s.client_id else None
        work.append(Work(i, s, m, entry.encode(m), dkey))
    return out, work, later


# -- step 1: claim ------------------------------------------------------------------------


def claims(work: Sequence[Work]) -> dict[int, list[Work]]:
    """The messages with a client id, by sender: one claim call each."""
    by_sender: dict[int, list[Work]] = {}
    for w in work:
        if w.dkey is not None:
            by_sender.setdefault(w.message.sender, []).append(w)
    return by_sender


def claim_calls(claims: dict[int, list[Work]], settings: Settings, nodes: Scripts) -> list[Call]:
    """Per sender, ``SET NX`` of each dedupe key to a *pending* record."""
    return [
        nodes.script(
            scripts.CLAIM,
            [w.dkey for w in ws if w.dkey is not None],
            [
                settings.window_ms,
                *(json.dumps(["p", w.message.time, w.message.id, w.entry]) for w in ws),
            ],
        )
        for ws in claims.values()
    ]


def posted(work: Sequence[Work]) -> dict[int, set[int]]:
    """Every group the batch posts to, with its senders."""
    senders: dict[int, set[int]] = {}
    for w in work:
        if w.message.type == MESSAGE_GROUP:
            senders.setdefault(w.message.to, set()).add(w.message.sender)
    return senders


def members_call(group: int, senders: Iterable[int], settings: Settings, nodes: Scripts) -> Call:
    """``lua/group_check.lua``: the group's members, or, for a large group, which of
    ``senders`` are members."""
    keys = [settings.group_key(group), settings.gkey("large", group)]
    return nodes.script(scripts.GROUP_CHECK, keys, [str(s) for s in sorted(senders)])


def read_claims(claims: dict[int, list[Work]], replies: Replies) -> None:
    """File the claims' replies: a claim whose node failed leaves its messages failed (the
    claim may have landed: left pending); a record already there is a duplicate (answered
    at its recorded positions) or an earlier attempt's (resumed: its message completed).
    A claim its ``WAIT`` did not confirm (with ``wait_replicas``) leaves its messages
    unconfirmed: not appended (refused ``NOT_REPLICATED``, the claim left pending). Its
    node may be a primary already failed over (stopped past ``cluster-node-timeout``, and
    not told yet): the claim is lost with it, a resend claims afresh under a new id, and
    what this attempt appended elsewhere would be stored twice."""
    for ws, (reply, confirmed) in zip(claims.values(), replies, strict=True):
        if isinstance(reply, Exception):
            for w in ws:
                w.failed = reply
            continue
        if not confirmed:
            for w in ws:
                w.confirmed = False
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


@dataclass(slots=True)
class Groups:
    """What step 1 read of the batch's groups."""

    members: dict[int, set[UserId]] = field(default_factory=dict)
    """A group stored in its members' inboxes: its members."""
    large: dict[int, set[UserId]] = field(default_factory=dict)
    """A large group (stored once, in its stream): which of its senders are members."""
    down: dict[int, Exception] = field(default_factory=dict)
    """A group whose members could not be read: its node's error."""

    def read(self, groups: Iterable[int], replies: Replies) -> None:
        """File the :func:`members_call` replies of ``groups``, in their order."""
        for g, (reply, _) in zip(groups, replies, strict=True):
            if isinstance(reply, Exception):
                self.down[g] = reply
            elif int(reply[0]) == 1:
                self.large[g] = _users(reply[1:])
            else:
                self.members[g] = _users(reply[1:])


def missing(live: Sequence[Work], groups: Groups) -> dict[int, set[int]]:
    """The groups of ``live`` messages not read yet, with their senders: a resumed message
    to another group than its resend said."""
    found: dict[int, set[int]] = {}
    members, large, down = groups.members, groups.large, groups.down
    for w in live:
        g = w.message.to
        known = g in members or g in large or g in down
        if w.message.type == MESSAGE_GROUP and not known:
            found.setdefault(g, set()).add(w.message.sender)
    return found


def route(live: Sequence[Work], groups: Groups, out: Answers) -> list[Work]:
    """Each ``live`` message's recipients (``users``) or large group (``stream``); a
    message to a group whose node failed fails (its claim stays pending: a resend
    completes it). Answers and returns the ones refused (a sender not in the group)."""
    refused: list[Work] = []
    members, large, down = groups.members, groups.large, groups.down
    for w in live:
        m = w.message
        if m.type == MESSAGE_GROUP and m.to in down:
            w.failed = down[m.to]
            continue
        if m.type == MESSAGE_GROUP and m.to in large:
            senders = large[m.to]
            if w.sub.check_member and UserId(m.sender) not in senders:
                w.users = None
            elif m.sender != 0 and UserId(m.sender) not in senders:
                w.stream, w.users = m.to, [UserId(m.sender)]  # the API's sender: a copy
            else:
                w.stream, w.users = m.to, []
        else:
            w.users = recipients(w, members)
        if w.users is None:
            refused.append(w)
            out[w.index] = Refused(w.sub.client_id, Refusal.NOT_MEMBER)
    return refused


def recipients(w: Work, members: dict[int, set[UserId]]) -> list[UserId] | None:
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


# -- step 2: append -----------------------------------------------------------------------


def inbox_slots(
    work: Sequence[Work], appends: Sequence[Work], settings: Settings
) -> tuple[dict[int, list[UserId]], dict[int, list[tuple[Work, UserId]]]]:
    """Every recipient of ``work`` by the slot of its inbox (a duplicate's too: its
    presence is read), and per slot the appends of ``appends`` in batch order."""
    slots: dict[int, list[UserId]] = {}
    for w in work:
        for u in w.users or ():
            slot = slot_of(settings.key("inbox", u))
            if u not in slots.setdefault(slot, []):
                slots[slot].append(u)
    ops: dict[int, list[tuple[Work, UserId]]] = {slot: [] for slot in slots}
    for w in appends:
        for u in w.users or ():
            ops[slot_of(settings.key("inbox", u))].append((w, u))
    return slots, ops


def append_calls(
    slots: dict[int, list[UserId]],
    ops: dict[int, list[tuple[Work, UserId]]],
    settings: Settings,
    nodes: Scripts,
) -> list[Call]:
    """Per slot, ``lua/append.lua``: its appends, each recorded by message id (a message
    with a client id), and its recipients' presence."""
    calls = []
    for slot, users in slots.items():
        keys = [
            settings.key(kind, u) for u in users for kind in ("inbox", "pos", "acked", "presence")
        ]
        args: list[Any] = [
            settings.inbox_max_len,
            settings.max_age_ms,
            settings.window_ms,
            len(users),
        ]
        for w, u in ops[slot]:
            mark = 0
            if w.dkey is not None:
                keys.append(settings.key(f"msg:{w.message.id}", u))
                mark = len(keys)
            args += (users.index(u) + 1, mark, w.entry)
        calls.append(nodes.script(scripts.APPEND, keys, args))
    return calls


def posts(work: Sequence[Work], out: Answers) -> dict[int, list[Work]]:
    """The large groups' messages still to store (or whose position to answer), by group."""
    by_group: dict[int, list[Work]] = {}
    for w in work:
        if w.stream is not None and out[w.index] is None and w.failed is None and w.confirmed:
            by_group.setdefault(w.stream, []).append(w)
    return by_group


def post_calls(posts: dict[int, list[Work]], settings: Settings, nodes: Scripts) -> list[Call]:
    """Per large group, ``lua/group_post.lua``: its messages into its stream."""
    calls = []
    for g, ws in posts.items():
        args: list[Any] = [
            settings.prefix,
            str(g),
            settings.inbox_max_len,
            settings.max_age_ms,
            settings.window_ms,
        ]
        for w in ws:
            args += (w.message.id if w.dkey is not None else "", w.entry)
        calls.append(nodes.script(scripts.GROUP_POST, [settings.group_key(g)], args))
    return calls


def read_posts(posts: dict[int, list[Work]], replies: Replies) -> None:
    """File the :func:`post_calls` replies: each message's position in its stream and the
    gateways that watch the group (a failed node fails its messages)."""
    for (g, ws), (reply, confirmed) in zip(posts.items(), replies, strict=True):
        if isinstance(reply, Exception):
            for w in ws:
                w.failed = reply
            continue
        positions, gateways = json.loads(reply)
        found = tuple(GatewayId(text(gw)) for gw in gateways[1:])
        for w, pos in zip(ws, positions, strict=True):
            w.post = GroupPost(g, int(pos), found)
            w.confirmed = w.confirmed and confirmed


def read_appends(
    slots: dict[int, list[UserId]], ops: dict[int, list[tuple[Work, UserId]]], replies: Replies
) -> dict[UserId, tuple[GatewayId, ...]]:
    """File the :func:`append_calls` replies (the first ``len(slots)`` of ``replies``):
    each append's position; the recipients' presence is returned. A failed slot fails its
    messages (what other slots appended stays recorded)."""
    presence: dict[UserId, tuple[GatewayId, ...]] = {}
    for (slot, users), (reply, confirmed) in zip(slots.items(), replies, strict=False):
        if isinstance(reply, Exception):
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
    return presence


# -- step 3: finish -----------------------------------------------------------------------


def releases(refused: Sequence[Work]) -> list[Call]:
    """The refused messages' dedupe records, deleted before the refusal is answered."""
    return [Call(slot_of(w.dkey), ("DEL", w.dkey)) for w in refused if w.dkey]


def done_calls(appends: Sequence[Work], settings: Settings) -> list[Call]:
    """The stored messages' dedupe records marked *done*, with their positions."""
    calls = []
    for w in appends:
        if w.dkey is not None and w.confirmed and w.failed is None:
            written: list[Any] = []
            if w.post is not None:
                written += (f"g{w.post.group}", str(w.post.position))
            for u in w.users or ():
                written += (int(u), (w.positions or {})[u])
            record = json.dumps(["d", w.message.time, w.message.id, w.entry, written])
            calls.append(Call(slot_of(w.dkey), ("SET", w.dkey, record, "PX", settings.window_ms)))
    return calls


def failed(work: Sequence[Work], out: Answers) -> list[Work]:
    """The messages a node failed, to be refused ``UNAVAILABLE`` (send again)."""
    return [w for w in work if w.failed is not None and out[w.index] is None]


def answers(
    batch: Sequence[Submission],
    work: Sequence[Work],
    out: Answers,
    presence: dict[UserId, tuple[GatewayId, ...]],
    later: dict[int, int],
) -> list[Accepted | Refused]:
    """Every submission's answer, in batch order: the undecided ones accepted, or refused
    when a node failed them or their ``WAIT`` was short."""
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


def _users(reply: Any) -> set[UserId]:
    return {UserId(int(u)) for u in reply or ()}
