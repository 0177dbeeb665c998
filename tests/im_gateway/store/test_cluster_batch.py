"""``store/cluster_batch.py``: a batch's calls per slot and the reading of their replies,
without Redis (the store that runs them: test_cluster.py, on a real cluster)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from im_gateway.store import (
    Accepted,
    GroupPost,
    Refusal,
    Refused,
    Submission,
    cluster_batch,
    scripts,
)
from im_gateway.store import entry as entry_module
from im_gateway.store.cluster_batch import Groups, Work
from im_gateway.store.keyspace import Settings
from im_gateway.store.nodes import Call, slot_of
from transmit_hub.types import (
    MESSAGE_GROUP,
    MESSAGE_PRIVATE,
    GatewayId,
    Message,
    MessageId,
    Recipient,
    UserId,
)

SETTINGS = Settings()
ALICE, BOB, CAROL = UserId(1), UserId(2), UserId(3)


class FakeScripts:
    """Makes script calls as :class:`~im_gateway.store.nodes.Nodes` does, with the
    script's name in place of its SHA."""

    def script(
        self, source: str, keys: Sequence[str], args: Sequence[Any], *, slot: int | None = None
    ) -> Call:
        name = NAMES[source]
        return Call(slot_of(keys[0]) if slot is None else slot, (name, *keys, *args), source)


NAMES = {getattr(scripts, n): n for n in ("CLAIM", "GROUP_CHECK", "APPEND", "GROUP_POST")}


def msg(sender: int, to: int, *, type: int = MESSAGE_PRIVATE, content: str = "hi") -> Message:
    return Message(MessageId(f"m-{sender}-{to}-{content}"), UserId(sender), to, type, 0, 7, content)


def prepared(batch: list[Submission]) -> tuple[cluster_batch.Answers, list[Work], dict[int, int]]:
    return cluster_batch.prepare(batch, SETTINGS)


def test_prepare_refuses_the_unencodable_and_answers_a_client_id_twice_as_its_first() -> None:
    """One work item per message to store; a repeated (sender, client id) maps to the first."""
    batch = [
        Submission("a", msg(1, 2)),
        Submission("bad", msg(1, 2, content="\ud800")),
        Submission("a", msg(1, 3)),
        Submission("a", msg(2, 1)),  # another sender: its own key
        Submission("", msg(1, 2)),
    ]
    out, work, later = prepared(batch)
    assert out[1] == Refused("bad", Refusal.UNENCODABLE)
    assert [w.index for w in work] == [0, 3, 4]
    assert later == {2: 0}
    assert [w.dkey for w in work] == [
        SETTINGS.key("dedupe:a", 1),
        SETTINGS.key("dedupe:a", 2),
        None,
    ]
    assert work[0].entry == entry_module.encode(batch[0].message)


def test_step_1_claims_per_sender_and_reads_each_group_once() -> None:
    """One claim call per sender (its pending records), one members call per group."""
    _, work, _ = prepared(
        [
            Submission("a", msg(1, 2)),
            Submission("b", msg(1, 9, type=MESSAGE_GROUP)),
            Submission("c", msg(2, 9, type=MESSAGE_GROUP)),
            Submission("", msg(3, 1)),
        ]
    )
    claims = cluster_batch.claims(work)
    assert {s: [w.index for w in ws] for s, ws in claims.items()} == {1: [0, 1], 2: [2]}
    [first, _] = cluster_batch.claim_calls(claims, SETTINGS, FakeScripts())
    dkeys = (SETTINGS.key("dedupe:a", 1), SETTINGS.key("dedupe:b", 1))
    assert first.args[:4] == ("CLAIM", *dkeys, SETTINGS.window_ms)
    assert json.loads(first.args[4]) == ["p", 7, "m-1-2-hi", work[0].entry]
    senders = cluster_batch.posted(work)
    assert senders == {9: {1, 2}}
    call = cluster_batch.members_call(9, senders[9], SETTINGS, FakeScripts())
    assert call.args == (
        "GROUP_CHECK",
        SETTINGS.group_key(9),
        SETTINGS.gkey("large", 9),
        "1",
        "2",
    )


def test_claim_replies_mark_duplicates_resumed_and_failed_messages() -> None:
    """A done record answers its positions, a pending one resumes its message, an error
    fails the sender's messages; 0 (claimed now) leaves a message as it was."""
    _, work, _ = prepared(
        [
            Submission("dup", msg(1, 2)),
            Submission("old", msg(1, 3)),
            Submission("new", msg(1, 2)),
            Submission("x", msg(2, 1)),
        ]
    )
    earlier = msg(1, 3, content="first attempt")
    stored = entry_module.encode(earlier)
    replies = [
        (
            [
                json.dumps(["d", 7, "m0", work[0].entry, [2, "5-0", 1, "6-0"]]),
                json.dumps(["p", 7, earlier.id, stored]),
                0,
            ],
            True,
        ),
        (ConnectionError("silent"), False),
    ]
    cluster_batch.read_claims(cluster_batch.claims(work), replies)
    dup, old, new, failed = work
    assert dup.duplicate
    assert dup.positions == {BOB: "5-0", ALICE: "6-0"}
    assert old.resumed
    assert old.message == earlier
    assert old.entry == stored
    assert not new.duplicate
    assert not new.resumed
    assert new.failed is None
    assert isinstance(failed.failed, ConnectionError)


def test_a_claim_its_wait_did_not_confirm_appends_nothing_and_is_not_replicated() -> None:
    """With ``wait_replicas``, a claim WAIT did not confirm (its node may be a primary
    failed over already) stores nothing: not appended, not posted, refused
    ``NOT_REPLICATED`` (old code: appended, and the resend under a new id stored it
    twice)."""
    out, work, later = prepared(
        [Submission("dm", msg(1, 2)), Submission("big", msg(1, 7, type=MESSAGE_GROUP))]
    )
    cluster_batch.read_claims(cluster_batch.claims(work), [([0, 0], False)])
    groups = Groups()
    groups.read([7], [([1, 1], True)])  # large; the sender is a member
    cluster_batch.route(work, groups, out)
    assert [w.confirmed for w in work] == [False, False]
    assert cluster_batch.posts(work, out) == {}
    answers = cluster_batch.answers([w.sub for w in work], work, out, {}, later)
    assert answers == [
        Refused("dm", Refusal.NOT_REPLICATED),
        Refused("big", Refusal.NOT_REPLICATED),
    ]


def test_route_answers_members_refuses_strangers_and_fails_a_silent_group() -> None:
    """Members get a group message; a stranger is refused, the API's stranger sender gets
    a copy; a group whose node failed fails its messages; a large group's go to its
    stream."""
    out, work, _ = prepared(
        [
            Submission("in", msg(1, 9, type=MESSAGE_GROUP)),
            Submission("out", msg(3, 9, type=MESSAGE_GROUP)),
            Submission("api", msg(3, 9, type=MESSAGE_GROUP), check_member=False),
            Submission("down", msg(1, 8, type=MESSAGE_GROUP)),
            Submission("big", msg(1, 7, type=MESSAGE_GROUP)),
            Submission("dm", msg(1, 2)),
            Submission("self", msg(1, 1)),
        ]
    )
    groups = Groups()
    groups.read([9, 8, 7], [([0, "2", "1"], True), (OSError("x"), False), ([1, "1"], True)])
    assert groups.members == {9: {ALICE, BOB}}
    assert groups.large == {7: {ALICE}}
    assert cluster_batch.missing(work, groups) == {}
    refused = cluster_batch.route(work, groups, out)
    assert refused == [work[1]]
    assert out[1] == Refused("out", Refusal.NOT_MEMBER)
    assert [w.users for w in work] == [
        [ALICE, BOB],
        None,
        [ALICE, BOB, CAROL],
        None,
        [],
        [BOB, ALICE],
        [ALICE],
    ]
    assert isinstance(work[3].failed, OSError)
    assert work[4].stream == 7


def test_a_resumed_message_to_a_group_not_read_yet_is_missing() -> None:
    """A group no call of the batch read is named with its senders, for a second read."""
    _, work, _ = prepared([Submission("r", msg(1, 5, type=MESSAGE_GROUP))])
    assert cluster_batch.missing(work, Groups(members={9: set()})) == {5: {1}}


def test_step_2_appends_per_inbox_slot_in_batch_order_with_their_records() -> None:
    """Each slot's call lists its users' keys once, then per append the user's place, the
    place of its msg record (0 without a client id) and the entry; the replies give the
    positions and the presence."""
    out, work, _ = prepared([Submission("a", msg(1, 2)), Submission("", msg(2, 1))])
    groups = Groups()
    cluster_batch.route(work, groups, out)
    slots, ops = cluster_batch.inbox_slots(work, work, SETTINGS)
    by_user = {u: slot for slot, us in slots.items() for u in us}
    assert sorted(by_user) == [ALICE, BOB]
    calls = cluster_batch.append_calls(slots, ops, SETTINGS, FakeScripts())
    assert [c.slot for c in calls] == list(slots)
    assert all(c.args[0] == "APPEND" for c in calls)
    replies: list[tuple[Any, bool]] = []
    for slot, users in slots.items():
        positions = [f"{len(replies)}-{k}" for k, _ in enumerate(ops[slot])]
        gateways = [[0, "gw-a"] if u == BOB else [0] for u in users]
        replies.append((json.dumps([positions, gateways]), True))
    presence = cluster_batch.read_appends(slots, ops, replies)
    assert presence == {BOB: (GatewayId("gw-a"),)}
    assert work[0].positions is not None
    assert set(work[0].positions) == {BOB, ALICE}
    answers = cluster_batch.answers([w.sub for w in work], work, out, presence, {})
    first = answers[0]
    assert isinstance(first, Accepted)
    assert not first.duplicate
    assert first.recipients == tuple(Recipient(u, work[0].positions[u]) for u in (BOB, ALICE))
    assert first.presence == {BOB: (GatewayId("gw-a"),)}


def test_append_call_marks_the_msg_record_of_a_message_with_a_client_id() -> None:
    """The append's arguments: inbox length, age, window, users, then (place, mark, entry)."""
    out, work, _ = prepared([Submission("a", msg(1, 1)), Submission("", msg(1, 1, content="b"))])
    cluster_batch.route(work, Groups(), out)
    slots, ops = cluster_batch.inbox_slots(work, work, SETTINGS)
    [call] = cluster_batch.append_calls(slots, ops, SETTINGS, FakeScripts())
    keys = [SETTINGS.key(k, ALICE) for k in ("inbox", "pos", "acked", "presence")]
    record = SETTINGS.key(f"msg:{work[0].message.id}", ALICE)
    assert call.args == (
        "APPEND",
        *keys,
        record,
        SETTINGS.inbox_max_len,
        SETTINGS.max_age_ms,
        SETTINGS.window_ms,
        1,
        1,
        5,
        work[0].entry,
        1,
        0,
        work[1].entry,
    )


def test_large_group_posts_answer_their_stream_positions_and_watchers() -> None:
    """One post call per large group; its reply gives each message a GroupPost."""
    out, work, _ = prepared([Submission("a", msg(1, 7, type=MESSAGE_GROUP))])
    groups = Groups(large={7: {ALICE}})
    cluster_batch.route(work, groups, out)
    posts = cluster_batch.posts(work, out)
    [call] = cluster_batch.post_calls(posts, SETTINGS, FakeScripts())
    assert call.args[0] == "GROUP_POST"
    assert call.args[-2:] == (work[0].message.id, work[0].entry)
    cluster_batch.read_posts(posts, [(json.dumps([[4], [0, "gw-b"]]), False)])
    assert work[0].post == GroupPost(7, 4, (GatewayId("gw-b"),))
    assert not work[0].confirmed
    [answer] = cluster_batch.answers([work[0].sub], work, out, {}, {})
    assert answer == Refused("a", Refusal.NOT_REPLICATED)


def test_step_3_releases_the_refused_marks_the_rest_done_and_refuses_the_failed() -> None:
    """A refused record is deleted; a stored one becomes done with its positions; a failed
    message is refused UNAVAILABLE, and a later copy of a client id gets its first's answer."""
    batch = [
        Submission("ok", msg(1, 2)),
        Submission("no", msg(1, 2)),
        Submission("ok", msg(1, 2, content="again")),
    ]
    out, work, later = prepared(batch)
    ok, no = work
    ok.users, ok.positions = [BOB, ALICE], {BOB: "1-0", ALICE: "2-0"}
    no.failed = OSError("silent")
    assert cluster_batch.releases([ok]) == [Call(slot_of(ok.dkey or ""), ("DEL", ok.dkey))]
    [done] = cluster_batch.done_calls(work, SETTINGS)
    assert done.args[:2] == ("SET", ok.dkey)
    assert done.args[3:] == ("PX", SETTINGS.window_ms)
    assert json.loads(done.args[2]) == ["d", 7, ok.message.id, ok.entry, [2, "1-0", 1, "2-0"]]
    assert cluster_batch.failed(work, out) == [no]
    first, refused, again = cluster_batch.answers(batch, work, out, {}, later)
    assert refused == Refused("no", Refusal.UNAVAILABLE)
    assert isinstance(first, Accepted)
    assert isinstance(again, Accepted)
    assert again.duplicate
    assert again.client_id == "ok"
    assert again.recipients == first.recipients == (Recipient(BOB, "1-0"), Recipient(ALICE, "2-0"))
