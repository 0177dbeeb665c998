"""The group-join policy: pure decisions, no event loop."""

from __future__ import annotations

import pytest

from im_gateway.group_policy import (
    JOIN,
    LEAVE,
    OPEN,
    OPEN_RIGHTS,
    SERVER,
    TOKEN,
    GroupRights,
    refusal,
)


@pytest.mark.parametrize("kind", [JOIN, LEAVE])
def test_server_policy_refuses_joins_and_leaves(kind: int) -> None:
    """Under ``server`` a client may neither join nor leave, whatever its token lists."""
    reason = refusal(SERVER, kind, 7, {7})
    assert reason is not None
    assert "--group-join server" in reason


def test_token_policy_joins_only_listed_groups() -> None:
    """Under ``token`` a join needs the group in the token's list; no list: no join."""
    assert refusal(TOKEN, JOIN, 7, {7, 8}) is None
    assert refusal(TOKEN, JOIN, 9, {7, 8}) == "your token does not let you join group 9"
    assert refusal(TOKEN, JOIN, 7, frozenset()) is not None


def test_token_policy_leaves_any_group() -> None:
    """Under ``token`` leaving is always allowed (a user can always get out)."""
    assert refusal(TOKEN, LEAVE, 9, frozenset()) is None


@pytest.mark.parametrize("kind", [JOIN, LEAVE])
def test_open_policy_allows_everything(kind: int) -> None:
    """Under ``open`` anyone joins or leaves anything."""
    assert refusal(OPEN, kind, 2**64 - 1, frozenset()) is None
    assert OPEN_RIGHTS.refusal(kind, 1) is None


def test_rights_default_to_server_and_reject_unknown_policies() -> None:
    """A bare GroupRights is the safe default (server); an unknown policy is an error."""
    assert GroupRights().refusal(JOIN, 1) is not None
    assert GroupRights(TOKEN, frozenset({1})).refusal(JOIN, 1) is None
    with pytest.raises(ValueError, match="server, token, open"):
        GroupRights("anyone")
