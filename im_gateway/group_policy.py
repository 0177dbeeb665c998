"""Who may join or leave a group from a WebSocket: ``--group-join server|token|open``.

Pure decisions over plain values, tested without an event loop:

- ``server`` (the default): clients may neither join (type 12) nor leave (type 13);
  membership changes only through the server API, on the application's say-so.
- ``token``: a client may join only the groups listed in its JWT's ``groups`` claim
  (no claim: none), and may leave any group.
- ``open``: anyone may join or leave any group (the demo and the README walk-through).
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass
from typing import Final

from .errors import ConfigError, GroupLimitError

SERVER: Final = "server"
TOKEN: Final = "token"
OPEN: Final = "open"
POLICIES: Final = (SERVER, TOKEN, OPEN)

FORBIDDEN: Final = "forbidden"
"""The type 99 code of a refused group change (pinned by DESIGN.md)."""

JOIN: Final = 12
LEAVE: Final = 13


@dataclass(frozen=True, slots=True)
class GroupRights:
    """What one connection may do to its groups: the gateway's policy and, under
    ``token``, the groups its token lists (empty when the token lists none)."""

    policy: str = SERVER
    token_groups: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"group policy must be one of {', '.join(POLICIES)}")

    def refusal(self, kind: int, group: int) -> str | None:
        """Why this connection may not make the change, or None when it may."""
        return refusal(self.policy, kind, group, self.token_groups)


OPEN_RIGHTS: Final = GroupRights(OPEN)
SERVER_RIGHTS: Final = GroupRights(SERVER)


def refusal(policy: str, kind: int, group: int, token_groups: Set[int]) -> str | None:
    """Why a client may not join (``kind`` 12) or leave (13) ``group``; None: it may."""
    if policy == OPEN:
        return None
    if policy == TOKEN:
        if kind == LEAVE or group in token_groups:
            return None
        return f"your token does not let you join group {group}"
    return (
        "groups are managed by the server on this gateway (--group-join server); "
        "ask the application to add or remove you"
    )


def group_limit_reason(exc: GroupLimitError) -> str:
    """A join the store refused (a bound was reached), in words a client can act on."""
    if exc.user_full:
        return (
            f"you are in {exc.limit} groups, the most allowed (--max-groups-per-user); "
            "leave one first"
        )
    return f"group {exc.group} is full: {exc.limit} members (--max-group-members)"
