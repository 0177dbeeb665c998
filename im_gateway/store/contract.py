"""The store's contract: the :class:`Store` protocol and the types it speaks.

The gateway's shared state, as one interface: presence, groups, inboxes, dedupe. Three
implementations pass the same contract tests (``tests/im_gateway/store/``):
:class:`~im_gateway.store.memory.MemoryStore` for unit tests,
:class:`~im_gateway.store.redis.RedisStore` for everything real and
:class:`~im_gateway.store.cluster.ClusterStore` on Redis Cluster;
:func:`~im_gateway.store.open_store` picks one by URL.

The store speaks its own words, not the wire's: a refusal is a :class:`Refusal`, a join
beyond a bound raises :class:`~im_gateway.errors.GroupLimitError` with the bound it hit;
the pipeline and the sessions put those into frames.

Rules every implementation keeps:

- :meth:`Store.submit` stores a whole batch of messages in a bounded number of
  round trips (never one per message or per recipient): dedupe, group membership,
  the appends to every recipient's inbox, and the presence look-up of every
  recipient. A message is in every recipient's inbox before ``submit`` returns,
  so the sender may be acknowledged then.
- Inbox positions are consecutive: each inbox numbers its messages 1, 2, 3, ... (see
  :mod:`im_gateway.positions`), so whoever holds position N knows N+1 comes next, and a
  missing number is a message not yet seen (or trimmed). ``0`` means "before
  everything". :class:`InboxPage` says where an inbox ends, so a reader can tell
  "nothing more" from "trimmed before you got it".
- An acknowledged position never moves back, nor past the end of its inbox.
- A duplicate (same client id from the same user within the dedupe window) is answered
  with the first message's id, time and recipients, positions included, so the caller
  can push it again: a push may have been lost with the gateway that stored it.
- A group with more than ``large_group`` members is *large*: its messages are stored
  once, in the group's own stream (positions consecutive as in an inbox, seq
  ``g<group>:<position>``), and each member keeps a position there (where they joined, or
  what they acknowledged). The form changes as membership crosses the bound (in
  :meth:`Store.join` and :meth:`Store.leave`, atomically in the group's slot): on becoming
  large every member's position is the stream's newest (what came before is in their
  inboxes), so nobody loses or gets twice a message. A leaver's position goes.
- Membership of a large group is also kept in the stream's positions
  (:meth:`Store.memberships`): a member's join position J (the stream's newest position
  when they joined, or when the group became large) and, when they leave, the leave
  position L (the newest then). A post at position p was stored while the user was a
  member when ``J < p <= L`` (``L`` open while they still are). Per user and group the
  current membership and the latest ended one are kept (an older one is forgotten when
  they leave again), for at most ``max_group_members`` leavers per group (the latest;
  older records go first); they live and expire with the group's stream.
- A read of many users' or groups' keys (:meth:`Store.inbox_ends`,
  :meth:`Store.in_groups`, :meth:`Store.read_groups`, :meth:`Store.streams`) answers
  each user or group alone on a Redis Cluster: a node that does not answer (silent
  until a failover) fails only the keys it holds, answered as unknown in their place
  (``None``, the error, an :class:`Unread`), while the others' answers are good; the
  caller reads those again later. One Redis and the memory store answer all or raise,
  as every other call does.
- Every key has a TTL except group membership, which is bounded instead: a user is in
  at most ``max_groups_per_user`` groups and a group has at most ``max_group_members``
  members (:meth:`Store.join` refuses beyond); presence entries expire unless the live
  gateway refreshes them.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from transmit_hub.types import GatewayId, Message, Recipient, UserId

from ..positions import group_seq

DEFAULT_MAX_GROUPS_PER_USER = 1000
DEFAULT_MAX_GROUP_MEMBERS = 100_000
DEFAULT_LARGE_GROUP = 500
"""A group with more members than this is stored once, in its own stream."""
DEFAULT_KEYS_PER_CALL = 256
"""Most keys in one presence call of a Redis store (``keys_per_call``): a script holds
Redis, and every other client waits, for 5 to 10 µs a key on the 2-core machine
(``bench/presence_calls.py``), so 1.5 to 3 ms a call."""


@dataclass(frozen=True, slots=True)
class Submission:
    """A validated message frame from a client, with the id and time the gateway gave it.

    ``message.type`` is ``MESSAGE_PRIVATE`` (``to`` is a user) or ``MESSAGE_GROUP``
    (``to`` is a group).
    """

    client_id: str
    message: Message
    check_member: bool = True
    """A group message's sender must be a member (False: the server API, which is trusted,
    posts to any group; ``from`` 0 is the system, with no inbox)."""


def unencodable(batch: Sequence[Submission]) -> set[int]:
    """Positions in ``batch`` whose text cannot be stored as UTF-8 (lone surrogates).

    Stores refuse those submissions (:attr:`Refusal.UNENCODABLE`) instead of failing the
    batch.
    """
    bad = set()
    for i, sub in enumerate(batch):
        if not (sub.message.content.isascii() and sub.client_id.isascii()):
            try:
                sub.message.content.encode()
                sub.client_id.encode()
            except UnicodeEncodeError:
                bad.add(i)
    return bad


@dataclass(frozen=True, slots=True)
class Accepted:
    """A submission that is stored (or was stored before, when ``duplicate``)."""

    client_id: str
    message: Message
    """The stored message; for a duplicate, the first one's id and time."""
    duplicate: bool
    """Seen before from this user with this client id: nothing stored this time."""
    recipients: tuple[Recipient, ...] = ()
    """Every inbox written, with the position there; includes the sender's own inbox
    (for the sender's other devices). For a duplicate: the first submission's, so the
    message can be pushed again (receivers drop what they already have)."""
    presence: Mapping[UserId, tuple[GatewayId, ...]] = field(default_factory=dict)
    """The live gateways of each recipient, looked up in the same batch."""
    post: GroupPost | None = None
    """A message to a large group: stored once, in the group's stream. ``recipients`` is
    then empty, except when the server API posts as a user who is not a member: that
    user's inbox gets a copy (as in a small group), for their devices. A duplicate answers
    both again, as the first one did."""


# Built once per message on the gateway's hot path: these fill the frozen dataclasses'
# slots directly, for about half the CPU of the generated __init__ (object.__setattr__
# per field); the objects are the same (tests/im_gateway/store/test_constructors.py).
_new = object.__new__
_SUBMISSION_SET = tuple(
    Submission.__dict__[name].__set__ for name in ("client_id", "message", "check_member")
)
_ACCEPTED_SET = tuple(
    Accepted.__dict__[name].__set__
    for name in ("client_id", "message", "duplicate", "recipients", "presence", "post")
)


def new_submission(client_id: str, message: Message, check_member: bool) -> Submission:
    """``Submission(client_id, message, check_member)``, for about half the CPU."""
    s: Submission = _new(Submission)
    set_client_id, set_message, set_check = _SUBMISSION_SET
    set_client_id(s, client_id)
    set_message(s, message)
    set_check(s, check_member)
    return s


def new_accepted(
    client_id: str,
    message: Message,
    duplicate: bool,
    recipients: tuple[Recipient, ...],
    presence: Mapping[UserId, tuple[GatewayId, ...]],
) -> Accepted:
    """``Accepted(client_id, message, duplicate, recipients, presence)`` (no ``post``),
    for about half the CPU."""
    a: Accepted = _new(Accepted)
    set_client_id, set_message, set_duplicate, set_recipients, set_presence, set_post = (
        _ACCEPTED_SET
    )
    set_client_id(a, client_id)
    set_message(a, message)
    set_duplicate(a, duplicate)
    set_recipients(a, recipients)
    set_presence(a, presence)
    set_post(a, None)
    return a


@dataclass(frozen=True, slots=True)
class GroupPost:
    """Where a message to a large group went: its position in the group's stream, and the
    gateways that hold sockets of the group's members (see :meth:`Store.watch`), looked
    up in the same batch."""

    group: int
    position: int
    gateways: tuple[GatewayId, ...] = ()

    @property
    def seq(self) -> str:
        return group_seq(self.group, self.position)


@dataclass(frozen=True, slots=True)
class Membership:
    """A user's membership of a large group, in its stream's positions (see
    :meth:`Store.memberships`): a post at ``p`` was stored while they were a member when
    ``joined < p`` (a member now) or ``past[0] < p <= past[1]`` (their latest ended
    membership)."""

    joined: int | None = None
    """A member now, of the posts after this position; None: not a member now."""
    past: tuple[int, int] | None = None
    """The latest ended membership: (join position, leave position)."""

    @property
    def member(self) -> bool:
        """A member now."""
        return self.joined is not None

    def covers(self, pos: int) -> bool:
        """True when the post at ``pos`` was stored while the user was a member."""
        if self.joined is not None and pos > self.joined:
            return True
        return self.past is not None and self.past[0] < pos <= self.past[1]


class Refusal(enum.Enum):
    """Why a submission was not stored (the pipeline words it for the client)."""

    NOT_MEMBER = enum.auto()
    """A group message from a user who is not in the group (nothing stored)."""
    UNENCODABLE = enum.auto()
    """The content or client id cannot be stored as UTF-8 (a lone surrogate)."""
    NOT_REPLICATED = enum.auto()
    """Stored, but ``WAIT`` did not see it on enough replicas: the sender should send it
    again (the resend is deduplicated and completes it)."""
    UNAVAILABLE = enum.auto()
    """A Redis Cluster node holding some of its keys did not answer (silent, or gone
    before a failover), while the other nodes of its batch did: the sender should send
    it again (deduplicated: the resend completes what was written)."""


class Joined(enum.Enum):
    """What :meth:`Store.add_members` did for one user."""

    ADDED = 0
    USER_FULL = 1
    """The user is in ``max_groups_per_user`` groups already."""
    GROUP_FULL = 2
    """The group has ``max_group_members`` members."""
    MEMBER = 3
    """A member already (no change)."""


@dataclass(frozen=True, slots=True)
class Refused:
    """A submission that was not stored (or not safely enough: ``NOT_REPLICATED``)."""

    client_id: str
    why: Refusal


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """One message in a user's inbox (or, with ``group``, a large group's stream), at
    ``position``."""

    position: int
    message: Message
    group: int | None = None

    @property
    def seq(self) -> str:
        """The position as clients see it (``g<group>:<position>`` in a group's stream)."""
        if self.group is None:
            return str(self.position)
        return group_seq(self.group, self.position)


@dataclass(frozen=True, slots=True)
class GroupStream:
    """A member's place in one large group's stream (:meth:`Store.streams`)."""

    group: int
    position: int
    """The member has everything up to here: acknowledged, or from before they joined."""
    page: InboxPage
    """The first entries after ``position`` (``last``: the stream's newest position)."""


@dataclass(frozen=True, slots=True)
class Unread:
    """A large group whose stream :meth:`Store.streams` could not read: the Redis
    Cluster node holding it did not answer. Read it again later (the user is still in
    it, as far as anyone knows)."""

    group: int
    error: Exception
    """Why (the node's error)."""


@dataclass(frozen=True, slots=True)
class InboxPage:
    """Entries read from an inbox, and the position of its newest message (0: none yet).

    ``entries`` are consecutive except where messages were trimmed (by length or age);
    ``last`` beyond the final entry means more can be read.
    """

    entries: list[InboxEntry]
    last: int


@dataclass(frozen=True, slots=True)
class Opening:
    """Where a connection's replay starts (:meth:`Store.opening`)."""

    acked: int
    """The user's acknowledged position (0: none)."""
    inbox_end: int
    """The newest position of the user's inbox (0: none yet)."""
    in_groups: bool
    """The user is in at least one group (its large groups' streams need a read)."""


@dataclass(frozen=True, slots=True)
class Beacon:
    """What :meth:`Store.beacon` found."""

    missing: bool
    """The gateway's mark was not there (first call, expired, or the data was lost)."""
    epoch: str
    """The store's data generation: it changes only when the data is lost."""


class Store(Protocol):
    """Presence, groups, inboxes and dedupe, shared by every gateway."""

    async def submit(self, batch: Sequence[Submission]) -> list[Accepted | Refused]:
        """Store a batch of messages; results in the batch's order.

        A group message from a non-member is ``Refused(why=Refusal.NOT_MEMBER)``.
        """
        ...

    async def join(self, group: int, user: UserId) -> bool:
        """Add ``user`` to ``group``; False when already in it (no change).

        Raises :class:`~im_gateway.errors.GroupLimitError` (saying which bound) when the
        user is in ``max_groups_per_user`` groups already or the group has
        ``max_group_members``;
        the check and the add are one atomic step, so concurrent joins cannot overshoot.
        """
        ...

    async def leave(self, group: int, user: UserId) -> bool:
        """Remove ``user`` from ``group``; False when not in it."""
        ...

    async def add_members(self, group: int, users: Sequence[UserId]) -> list[Joined]:
        """:meth:`join` for many users at once, with the same bounds; what happened to
        each, in order. One round trip per slot (not one call per user); the group
        changes form at most once."""
        ...

    async def remove_members(self, group: int, users: Sequence[UserId]) -> list[bool]:
        """:meth:`leave` for many users at once; per user, whether they were a member."""
        ...

    async def streams(self, user: UserId, limit: int) -> list[GroupStream | Unread]:
        """The large groups ``user`` is in (and those once large whose stream still holds
        messages), each with the user's position and the first ``limit`` entries after it;
        two round trips (the user's groups, then one call per group slot, pipelined).

        On a Redis Cluster a group whose node failed the second round trip is an
        :class:`Unread` (it may not even be large: its node could not say); the others
        are read. Failing the first (the user's own node) raises."""
        ...

    async def read_group(self, group: int, after: int, limit: int) -> InboxPage:
        """Up to ``limit`` entries of ``group``'s stream after ``after``; one round trip."""
        ...

    async def read_groups(
        self, reads: Mapping[int, int], limit: int
    ) -> dict[int, InboxPage | Exception]:
        """:meth:`read_group` for each group -> position of ``reads``, in one round trip
        (one pipeline per node on a cluster). On a Redis Cluster a group whose node failed
        is answered with that error in place of its page (nothing of it was read: read it
        again later); the other groups' pages are good."""
        ...

    async def ack_group(self, user: UserId, group: int, upto: int) -> None:
        """``user`` has ``group``'s stream up to ``upto``: only forward, never past the
        stream's newest position, and only while ``user`` is a member."""
        ...

    async def watch(self, gateway: GatewayId, groups: Collection[int]) -> None:
        """``gateway`` holds sockets of members of ``groups`` (large ones): posts there
        name it in :attr:`GroupPost.gateways`. Expires after ``presence_ttl`` unless
        called again; one call per group slot (and per ``keys_per_call`` groups)."""
        ...

    async def unwatch(self, gateway: GatewayId, groups: Collection[int]) -> None:
        """``gateway`` holds no more sockets of members of ``groups``."""
        ...

    async def is_large(self, group: int) -> bool:
        """True while ``group`` is stored once (it has more than ``large_group`` members)."""
        ...

    async def to_regroup(self, group: int) -> bool:
        """True from when ``group`` became large until :meth:`regrouped`: its members'
        connections may not follow its stream yet (the change that made it large may
        have been answered with an error before they did)."""
        ...

    async def regrouped(self, group: int) -> None:
        """Every member's connections were made to follow ``group``'s stream."""
        ...

    async def members(self, group: int) -> list[UserId]:
        """The members of ``group``, in ascending order."""
        ...

    async def is_member(self, group: int, user: UserId) -> bool: ...

    async def are_members(self, group: int, users: Sequence[UserId]) -> list[bool]:
        """Whether each of ``users`` is in ``group`` now, in order; one round trip."""
        ...

    async def memberships(
        self, pairs: Sequence[tuple[int, UserId]], *, since: int = 0
    ) -> list[Membership]:
        """Per (large group, user) of ``pairs``, in order: the user's membership of that
        group in its stream's positions (current, and the latest ended one), read
        atomically per group; one round trip (one call per group slot on a cluster).
        A group that was never large answers ``Membership(0)`` for a member now.

        ``since``: only posts after this position will be judged, so a join at or before
        it may read as ``since`` and a membership that ended at or before it as none;
        the store then reads the members' flags and only the joins and leaves after
        ``since``, whatever the number of users (what a live post's check needs)."""
        ...

    async def attach(self, user: UserId, gateway: GatewayId) -> None:
        """Record that ``gateway`` holds a socket of ``user`` (other gateways' entries stay)."""
        ...

    async def detach(self, user: UserId, gateway: GatewayId) -> None:
        """``gateway`` holds no more sockets of ``user``: remove only that entry."""
        ...

    async def refresh(self, gateway: GatewayId, users: Collection[UserId]) -> None:
        """Extend the TTL of ``gateway``'s entries for ``users``, in one round trip per
        ``keys_per_call`` users (a Redis store), one after the other."""
        ...

    async def forget(self, gateway: GatewayId, users: Collection[UserId]) -> None:
        """Drop stale entries (the hub said ``gateway`` is gone), in one round trip per
        ``keys_per_call`` users."""
        ...

    async def lookup(self, users: Collection[UserId]) -> dict[UserId, tuple[GatewayId, ...]]:
        """The live gateways of each user, in one round trip per ``keys_per_call`` users;
        users with none are absent."""
        ...

    async def read_inbox(self, user: UserId, after: int, limit: int) -> InboxPage:
        """Up to ``limit`` entries after position ``after``, oldest first, in one round trip."""
        ...

    async def inbox_ends(self, users: Sequence[UserId]) -> list[int | None]:
        """The newest position of each user's inbox (0: none yet), in the order asked, in
        one round trip per node (a catch-up sweep reads only the inboxes that moved).
        None: unknown, the Redis Cluster node holding that user's keys failed (the other
        stores answer every user, or raise)."""
        ...

    async def in_groups(self, users: Sequence[UserId]) -> list[bool | None]:
        """Whether each user is in any group (small or large: the set :meth:`streams`
        reads; False: :meth:`streams` answers nothing), in the order asked, in one round
        trip per node (a regroup sweep reads only the users in one). None: unknown, the
        Redis Cluster node holding that user's keys failed (the other stores answer every
        user, or raise)."""
        ...

    async def ack(self, user: UserId, upto: int) -> None:
        """The user has everything up to ``upto``; the position only moves forward, and
        never past the newest message of the inbox."""
        ...

    async def acked(self, user: UserId) -> int:
        """The user's acknowledged position, 0 when none."""
        ...

    async def opening(self, user: UserId) -> Opening:
        """What a connect replay starts from, in one round trip: the acknowledged
        position, the inbox's newest position, and whether the user is in any group.
        (A user with nothing unacknowledged and no group needs no other read.)"""
        ...

    async def beacon(self, gateway: GatewayId, ttl: float) -> Beacon:
        """Mark ``gateway`` as present in the store for ``ttl`` seconds, in one round trip,
        and read the store's epoch (made on first use). A missing mark means the gateway
        should re-assert its presence at once; a new epoch, that the store lost its data
        (a Redis restarted without persistence, or flushed) and inbox positions start
        from 1 again."""
        ...

    async def ping(self) -> None:
        """Raise when the store does not answer."""
        ...

    async def close(self) -> None: ...
