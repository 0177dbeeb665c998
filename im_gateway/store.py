"""The gateway's shared state, as one interface: presence, groups, inboxes, dedupe.

Two implementations pass the same contract tests (tests/im_gateway/test_store.py):
``im_gateway.store_memory.MemoryStore`` for unit tests and
``im_gateway.store_redis.RedisStore`` for everything real (and its subclass
``im_gateway.store_cluster.ClusterStore`` on Redis Cluster). :func:`open_store`
picks one by URL (``memory://``, ``redis://...`` or ``redis+cluster://...``).

Rules every implementation keeps:

- :meth:`Store.submit` stores a whole batch of messages in a bounded number of
  round trips (never one per message or per recipient): dedupe, group membership,
  the appends to every recipient's inbox, and the presence look-up of every
  recipient. A message is in every recipient's inbox before ``submit`` returns,
  so the sender may be acknowledged then.
- Inbox positions are consecutive: each inbox numbers its messages 1, 2, 3, ... (the
  seq a client sees is that number in decimal), so whoever holds position N knows N+1
  comes next, and a missing number is a message not yet seen (or trimmed). ``0`` means
  "before everything". :func:`position` parses a seq; :class:`InboxPage` says where an
  inbox ends, so a reader can tell "nothing more" from "trimmed before you got it".
- An acknowledged position never moves back, nor past the end of its inbox.
- A duplicate (same client id from the same user within the dedupe window) is answered
  with the first message's id, time and recipients, positions included, so the caller
  can push it again: a push may have been lost with the gateway that stored it.
- Every key has a TTL except group membership, which is bounded instead: a user is in
  at most ``max_groups_per_user`` groups and a group has at most ``max_group_members``
  members (:meth:`Store.join` refuses beyond); presence entries expire unless the live
  gateway refreshes them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from transmit_hub.types import GatewayId, Message, Recipient, UserId

from .errors import BadPosition, GroupLimitError

START = "0"
"""The position before every inbox entry."""

MAX_POSITION = 2**64 - 1
"""Positions are uint64."""


def position(seq: str) -> int:
    """An inbox position from its seq: ``"0"`` (or ``""``) is 0, ``"17"`` is 17.

    Decimal digits only, at most ``2**64 - 1``; raises
    :class:`~im_gateway.errors.BadPosition` (a ValueError) for anything else, so nothing a
    client or a hub sends can pass as one.
    """
    if not seq:
        return 0
    if len(seq) <= 20 and seq.isascii() and seq.isdigit():
        value = int(seq)
        if value <= MAX_POSITION:
            return value
    raise BadPosition(f"bad inbox position {seq[:40]!r}")


DEFAULT_MAX_GROUPS_PER_USER = 1000
DEFAULT_MAX_GROUP_MEMBERS = 100_000


def group_limit_error(reason: str, group: int, limit: int) -> GroupLimitError:
    """The refusal of a join, in words a client can act on (``reason``: a store's code)."""
    if reason == "user_full":
        return GroupLimitError(
            f"you are in {limit} groups, the most allowed (--max-groups-per-user); leave one first"
        )
    return GroupLimitError(f"group {group} is full: {limit} members (--max-group-members)")


@dataclass(frozen=True, slots=True)
class Submission:
    """A validated message frame from a client, with the id and time the gateway gave it.

    ``message.type`` is 1 (private: ``to`` is a user) or 2 (group: ``to`` is a group).
    """

    client_id: str
    message: Message
    check_member: bool = True
    """A group message's sender must be a member (False: the server API, which is trusted,
    posts to any group; ``from`` 0 is the system, with no inbox)."""


def unencodable(batch: Sequence[Submission]) -> set[int]:
    """Positions in ``batch`` whose text cannot be stored as UTF-8 (lone surrogates).

    Stores refuse those submissions as ``bad_request`` instead of failing the batch.
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


@dataclass(frozen=True, slots=True)
class Refused:
    """A submission that was not stored; ``code`` is a WebSocket error code."""

    client_id: str
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class InboxEntry:
    """One message in a user's inbox, at ``position``."""

    position: int
    message: Message

    @property
    def seq(self) -> str:
        """The position as clients see it."""
        return str(self.position)


@dataclass(frozen=True, slots=True)
class InboxPage:
    """Entries read from an inbox, and the position of its newest message (0: none yet).

    ``entries`` are consecutive except where messages were trimmed (by length or age);
    ``last`` beyond the final entry means more can be read.
    """

    entries: list[InboxEntry]
    last: int


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

        A group message from a non-member is ``Refused(code="not_member")``.
        """
        ...

    async def join(self, group: int, user: UserId) -> bool:
        """Add ``user`` to ``group``; False when already in it (no change).

        Raises :class:`~im_gateway.errors.GroupLimitError` when the user is in
        ``max_groups_per_user`` groups already or the group has ``max_group_members``;
        the check and the add are one atomic step, so concurrent joins cannot overshoot.
        """
        ...

    async def leave(self, group: int, user: UserId) -> bool:
        """Remove ``user`` from ``group``; False when not in it."""
        ...

    async def members(self, group: int) -> list[UserId]:
        """The members of ``group``, in ascending order."""
        ...

    async def is_member(self, group: int, user: UserId) -> bool: ...

    async def attach(self, user: UserId, gateway: GatewayId) -> None:
        """Record that ``gateway`` holds a socket of ``user`` (other gateways' entries stay)."""
        ...

    async def detach(self, user: UserId, gateway: GatewayId) -> None:
        """``gateway`` holds no more sockets of ``user``: remove only that entry."""
        ...

    async def refresh(self, gateway: GatewayId, users: Collection[UserId]) -> None:
        """Extend the TTL of ``gateway``'s entries for ``users``, in one round trip."""
        ...

    async def forget(self, gateway: GatewayId, users: Collection[UserId]) -> None:
        """Drop stale entries (the hub said ``gateway`` is gone), in one round trip."""
        ...

    async def lookup(self, users: Collection[UserId]) -> dict[UserId, tuple[GatewayId, ...]]:
        """The live gateways of each user, in one round trip; users with none are absent."""
        ...

    async def read_inbox(self, user: UserId, after: int, limit: int) -> InboxPage:
        """Up to ``limit`` entries after position ``after``, oldest first, in one round trip."""
        ...

    async def ack(self, user: UserId, upto: int) -> None:
        """The user has everything up to ``upto``; the position only moves forward, and
        never past the newest message of the inbox."""
        ...

    async def acked(self, user: UserId) -> int:
        """The user's acknowledged position, 0 when none."""
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
