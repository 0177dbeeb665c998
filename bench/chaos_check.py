"""bench/chaos.py's records and checks (pure: no processes, no sockets, no clock).

What a run records (:class:`Run`): every send attempt, every membership change with the
time it began and the time it was answered, what each device's clients showed, each
device's connections, the faults and the client restarts. :func:`check` turns that into a
:class:`Verdict`.

Who must show what:

- A message to a user: every device of that user, and the sender's other device.
- A message to a group: a device of a user who was a member for the whole time from the
  send's start to its acknowledgement (the last change before the send was a join
  answered before it began, and the next change began after the answer) must show it; a
  device of a user who was not a member for that whole time (never in, or the last change
  before the send was a leave answered before it began, and the next began after the
  answer) must NOT show it ("shown to a non-member"); anything in between is not checked.
  The harness never runs two changes of one (user, group) at once, so the changes of one
  pair take effect in the order they began.
- A user with two devices whose device was restarted: positions are per user, so the
  other device's acknowledgements may rightly move the restarted one past a message. A
  message not shown on the restarted device is excused (counted apart) when the user's
  other device showed it (or sent it), and the restart came no sooner than the send
  began... up to the end of the new client's first connect replay (which reads the user's
  position: its gateway may have been cut off from Redis long after the connection was
  made): the send began no later than that, and the old client either lost its
  connection after the send began or was closed within :data:`RESTART_SLACK` seconds of
  the answer. A device's first client, started with the run, is a new client too: what
  was sent before its first connect replay ended and the other device showed is excused
  (the soak's clients start together, and one may connect after the other acknowledged).
  Nothing is ever excused from being shown twice by one client.
- A large group's post that a member had not read when they left the group (a leave that
  began after the post's answer) stays unread by design (README, "Large groups": a
  connection replays only the groups the user is in now): counted apart when another
  device showed it with a group seq (so it was such a post).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from im_gateway.client import Message
from im_gateway.client_protocol import parse_seq

Device = tuple[int, int]
"""(user, device index)."""

RESTART_SLACK = 10.0
"""Seconds after a message's answer within which a restart may still excuse it (its old
client may not have shown it yet) though that client never lost its connection."""


@dataclass
class Send:
    """One send attempt: acknowledged when ``msg_id`` is set."""

    content: str
    sender: Device
    target: str
    recipients: frozenset[Device]
    """A message to a user: the devices meant to show it (a group's: the sender's other
    devices only; the members are judged by :func:`expectations`)."""
    started: float
    via: str
    instance: int
    """Which Client of the sending device sent it (a restart starts the next)."""
    group: int = 0
    msg_id: str = ""
    acked: float = 0.0
    acked_via: str = ""


@dataclass
class Change:
    """A membership change (a client's join or leave, or the server API's)."""

    user: int
    group: int
    join: bool
    started: float
    how: str
    answered: float = math.inf
    """When it was answered; infinite while (or if never) answered."""


@dataclass
class Fault:
    at: float
    kind: str
    victim: str
    seconds: float


@dataclass
class Shown:
    message: Message
    at: float
    instance: int
    """Which Client of the device showed it (a restart starts the next)."""


@dataclass
class Run:
    """What the run records: sends, changes, what each device showed, its connections
    (time, URL or "-", client instance), faults and restarts (time, device)."""

    start: float = 0.0
    devices: dict[int, list[Device]] = field(default_factory=dict)
    sends: dict[str, Send] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    shown: dict[Device, list[Shown]] = field(default_factory=lambda: defaultdict(list))
    urls: dict[Device, list[tuple[float, str, int]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    faults: list[Fault] = field(default_factory=list)
    restarts: list[tuple[float, Device]] = field(default_factory=list)
    replayed: dict[tuple[Device, int], float] = field(default_factory=dict)
    """When each client (device, instance) first ended a connect replay."""
    refused: Counter[str] = field(default_factory=Counter)


def member_over(changes: Iterable[Change], lo: float, hi: float) -> bool | None:
    """True when a member for all of [lo, hi], False when not one for all of it, None when
    a change may have taken effect within it (``changes``: one pair's, never concurrent)."""
    state = False
    for c in sorted(changes, key=lambda c: c.started):
        if c.answered < lo:
            state = c.join
        elif c.started <= hi:
            return None
    return state


@dataclass
class Expected:
    """Per device: the message ids it must show, and those it must not."""

    must: dict[Device, set[str]] = field(default_factory=lambda: defaultdict(set))
    must_not: dict[Device, set[str]] = field(default_factory=lambda: defaultdict(set))
    unchecked: int = 0


def expectations(run: Run) -> Expected:
    e = Expected()
    pairs: dict[tuple[int, int], list[Change]] = defaultdict(list)
    for c in run.changes:
        pairs[c.user, c.group].append(c)
    for s in run.sends.values():
        if not s.group:
            if s.msg_id:
                for d in s.recipients:
                    e.must[d].add(s.msg_id)
            continue
        hi = s.acked if s.msg_id else math.inf
        for user, devices in run.devices.items():
            member = member_over(pairs.get((user, s.group), ()), s.started, hi)
            for d in devices:
                if d == s.sender:
                    continue
                if member is None:
                    e.unchecked += 1
                elif member and s.msg_id:
                    e.must[d].add(s.msg_id)
                elif not member:
                    e.must_not[d].add(s.content)
    return e


def left_unread(run: Run, me: Device, s: Send, posts: set[str]) -> bool:
    """A large group's post (``posts``: shown somewhere with a group seq) that ``me``'s
    user left the group after, before reading it."""
    return s.msg_id in posts and any(
        c.user == me[0] and c.group == s.group and not c.join and c.started > s.acked
        for c in run.changes
    )


def large_posts(run: Run) -> set[str]:
    """The message ids shown somewhere with a large group's seq."""
    return {x.message.id for shown in run.shown.values() for x in shown if x.message.seq[:1] == "g"}


def excused(run: Run, me: Device, s: Send, shown_ids: dict[Device, set[str]]) -> bool:
    """Not shown on ``me`` rightly: its user's other device showed (or sent) it, and a
    new client of ``me`` (a restart, or the first) may have skipped it (see the module's
    docstring)."""
    others = [d for d in run.devices.get(me[0], []) if d != me]
    if not any(s.sender == d or s.msg_id in shown_ids.get(d, ()) for d in others):
        return False
    urls = run.urls.get(me, [])
    # Each client of ``me`` and when it started: the first with the run, then each restart.
    mine = [0.0, *(at for at, who in run.restarts if who == me)]
    for instance, at in enumerate(mine):
        # Its connect replay reads the user's position: until it ended, what the other
        # device acknowledged may be skipped (connected long before it, when its gateway
        # could not reach Redis).
        # (The first client: only once its first connect replay ended.)
        replayed = run.replayed.get((me, instance), math.inf if instance else -math.inf)
        lost = any(u == "-" and i == instance - 1 and s.started <= t <= at for t, u, i in urls)
        if s.started <= replayed and (lost or at - s.acked <= RESTART_SLACK):
            return True
    return False


@dataclass
class Verdict:
    acked: int = 0
    unanswered: int = 0
    expected: int = 0
    unchecked: int = 0
    must_not: int = 0
    """Deliveries that must not happen (a group's message, a user out of it all along)."""
    shown: int = 0
    shown_large: int = 0
    """Of those shown, with a large group's seq."""
    changes: int = 0
    missing: list[tuple[Device, str]] = field(default_factory=list)
    excused: list[tuple[Device, str]] = field(default_factory=list)
    """Not shown on a restarted device of a two-device user; shown on the other."""
    left: list[tuple[Device, str]] = field(default_factory=list)
    """A large group's post not read before the user left the group (by design)."""
    duplicates: list[tuple[Device, str]] = field(default_factory=list)
    twins: list[tuple[Device, str]] = field(default_factory=list)
    """One send's content shown by one client under two message ids (stored twice)."""
    reshown: list[tuple[Device, str]] = field(default_factory=list)
    """Shown by a device's client, then again by the one started after it (a restart)."""
    reshown_late: list[tuple[Device, str]] = field(default_factory=list)
    """Of :attr:`reshown`, those shown more than ``RESHOWN_GRACE`` seconds before the
    restart: their acknowledgement should have been stored long before it."""
    out_of_order: list[tuple[Device, str, str]] = field(default_factory=list)
    misdelivered: list[tuple[Device, str]] = field(default_factory=list)
    non_member: list[tuple[Device, str]] = field(default_factory=list)
    """A group's message shown to a device whose user was not in the group all along."""

    @property
    def ok(self) -> bool:
        return not (
            self.missing
            or self.duplicates
            or self.twins
            or self.out_of_order
            or self.misdelivered
            or self.non_member
            or self.reshown_late
        )


def unshown(run: Run) -> list[tuple[Device, str]]:
    """The (device, message id) pairs that must be shown and are not (nor excused)."""
    e = expectations(run)
    ids = {me: {s.message.id for s in shown} for me, shown in run.shown.items()}
    by_id = {s.msg_id: s for s in run.sends.values() if s.msg_id}
    posts = large_posts(run)
    return [
        (me, i)
        for me, must in sorted(e.must.items())
        for i in sorted(must - ids.get(me, set()))
        if not excused(run, me, by_id[i], ids) and not left_unread(run, me, by_id[i], posts)
    ]


RESHOWN_GRACE = 30.0
"""A message a device's client showed this long before the device restarted was
acknowledged long before, unless its gateway or Redis was down all along (no fault of the
soak lasts this long): shown again by the next client, it is a failure, not the last
acknowledgement lost with the closing client (by design)."""


def reshown_late(run: Run, me: Device, msg_id: str) -> bool:
    """``msg_id`` was shown by one client of ``me`` and again by a later one, and the
    first showing came more than ``RESHOWN_GRACE`` before the restart between them."""
    times = sorted((x.at, x.instance) for x in run.shown.get(me, []) if x.message.id == msg_id)
    first_at, first = times[0]
    later = [at for at, instance in times if instance != first]
    if not later:
        return False
    restarts = [at for at, who in run.restarts if who == me and first_at <= at <= later[0]]
    return bool(restarts) and restarts[0] - first_at > RESHOWN_GRACE


def check(run: Run) -> Verdict:
    v = Verdict(changes=sum(c.how != "setup" for c in run.changes))
    acked = [a for a in run.sends.values() if a.msg_id]
    v.acked, v.unanswered = len(acked), len(run.sends) - len(acked)
    by_content = run.sends
    by_id = {a.msg_id: a for a in acked}
    e = expectations(run)
    v.expected, v.unchecked = sum(len(m) for m in e.must.values()), e.unchecked
    v.must_not = sum(len(m) for m in e.must_not.values())
    ids = {me: {s.message.id for s in shown} for me, shown in run.shown.items()}
    posts = large_posts(run)
    for me in sorted(set(e.must) | set(run.shown)):
        shown = run.shown.get(me, [])
        v.shown += len(shown)
        v.shown_large += sum(x.message.seq[:1] == "g" for x in shown)
        counts = Counter(x.message.id for x in shown)
        each = Counter((x.instance, x.message.id) for x in shown)
        v.duplicates += [(me, i) for (_, i), c in each.items() if c > 1]
        ids_of: dict[tuple[int, str], set[str]] = defaultdict(set)
        for x in shown:
            if x.message.content in by_content:
                ids_of[x.instance, x.message.content].add(x.message.id)
        v.twins += [(me, i) for ids_ in ids_of.values() if len(ids_) > 1 for i in sorted(ids_)]
        again = [(me, i) for i, c in counts.items() if c > 1 and (me, i) not in v.duplicates]
        v.reshown += again
        v.reshown_late += [(me, i) for me, i in again if reshown_late(run, me, i)]
        for i in sorted(e.must[me] - set(counts)):
            if excused(run, me, by_id[i], ids):
                v.excused.append((me, i))
            elif left_unread(run, me, by_id[i], posts):
                v.left.append((me, i))
            else:
                v.missing.append((me, i))
        last: dict[tuple[int, str], int] = {}
        sender_last: dict[tuple[int, Device, str], int] = {}
        for x in shown:
            parsed = parse_seq(x.message.seq)
            name, pos = parsed if parsed else ("?", -1)
            stream = (x.instance, name)
            if pos <= last.get(stream, -1):
                v.out_of_order.append(
                    (me, x.message.id, f"seq {x.message.seq} after {last[stream]}")
                )
            last[stream] = max(pos, last.get(stream, -1))
            record = by_content.get(x.message.content)
            # A restarted device rightly shows what its previous client sent (the new one
            # did not send it); the client that sent it never shows it.
            restarted = record is not None and record.sender == me and record.instance < x.instance
            if record is not None and record.content in e.must_not[me] and not restarted:
                v.non_member.append((me, x.message.id))
                continue
            if record is None or (
                not record.group and me not in record.recipients and not restarted
            ):
                v.misdelivered.append((me, x.message.id))
                continue
            if not record.msg_id:
                # Never answered (its client closed first): it may be stored after the
                # sender's next message, sent by the client started after a restart.
                continue
            n = int(record.content.rsplit(".", 1)[1])
            key = (x.instance, record.sender, name)
            if n < sender_last.get(key, -1):
                v.out_of_order.append(
                    (me, x.message.id, f"sender {record.sender} #{n} after later")
                )
            sender_last[key] = max(n, sender_last.get(key, -1))
    return v


def neighbours(run: Run, me: Device, msg_id: str) -> str:
    """The message's seq (as another device showed it) and what ``me`` showed of that
    stream just before and after it: a hole (later ones shown) or a stall (none)."""
    seq = next(
        (x.message.seq for xs in run.shown.values() for x in xs if x.message.id == msg_id), ""
    )
    parsed = parse_seq(seq)
    if parsed is None:
        return ""
    name, pos = parsed
    mine = [
        (p[1], x) for x in run.shown.get(me, []) if (p := parse_seq(x.message.seq)) and p[0] == name
    ]
    before = max((q for q in mine if q[0] < pos), default=None, key=lambda q: q[0])
    after = min((q for q in mine if q[0] > pos), default=None, key=lambda q: q[0])
    return f"its seq {seq}; the receiver showed of that stream " + ", ".join(
        f"{label} {q[0]} at {q[1].at:.1f}s (client {q[1].instance})" if q else f"{label} none"
        for label, q in (("before it", before), ("after it", after))
    )


def timeline(run: Run, me: Device, msg_id: str) -> str:
    s = next((s for s in run.sends.values() if s.msg_id == msg_id), None)
    if s is None:
        return f"  {msg_id} at {me}: its send was never answered"
    lo, hi = s.started - 10, s.acked + 10
    around = [
        f"{f.at:.1f}s {f.kind} {f.victim} {f.seconds:.1f}s" for f in run.faults if lo <= f.at <= hi
    ]
    conns = [
        f"{t:.1f}s {u.split(':')[-1].split('/')[0] if u != '-' else '-'}#{i}"
        for t, u, i in run.urls[me]
        if lo <= t <= hi + 20
    ]
    changes = [
        f"{'join' if c.join else 'leave'} ({c.how}) {c.started:.1f}-{c.answered:.1f}s"
        for c in run.changes
        if s.group and c.group == s.group and c.user == me[0]
    ]
    replays = [f"{t:.1f}s#{i}" for (d, i), t in sorted(run.replayed.items()) if d == me]
    stream = neighbours(run, me, msg_id)
    others = [
        f"{d} at {x.at:.1f}s (client {x.instance})"
        for d in run.devices.get(me[0], [])
        if d != me
        for x in run.shown.get(d, [])
        if x.message.id == msg_id
    ]
    return (
        f"  {msg_id} {s.content} {s.sender}->{me} ({s.target}): sent {s.started:.1f}s via "
        f"{s.via}, acked {s.acked:.1f}s via {s.acked_via}\n"
        f"    receiver's connections (port#client): {', '.join(conns) or '-'}\n"
        + f"    receiver's connect replays ended (time#client): {', '.join(replays) or '-'}\n"
        + (f"    shown on the user's other device: {', '.join(others)}\n" if others else "")
        + (f"    {stream}\n" if stream else "")
        + (f"    receiver's changes of {s.target}: {', '.join(changes)}\n" if changes else "")
        + f"    faults around: {'; '.join(around) or 'none'}"
    )


def misdelivered(run: Run, me: Device, msg_id: str) -> str:
    """What a device was shown that was not meant for it: the frame, and the send it
    matches (by content) with its timeline, or that it matches none."""
    shown = [x for x in run.shown.get(me, []) if x.message.id == msg_id]
    what = ", ".join(
        f"{x.at:.1f}s (client {x.instance}): from {x.message.sender} to {x.message.to} "
        f"type {x.message.type} seq {x.message.seq} content {x.message.content!r}"
        for x in shown
    )
    record = next(
        (r for r in run.sends.values() if shown and r.content == shown[0].message.content), None
    )
    if record is None:
        return f"{msg_id} at {me}: {what}; matches no send"
    return f"{msg_id} at {me}: {what}; {timeline(run, me, record.msg_id or msg_id).lstrip()}"


def report(run: Run, v: Verdict, logs: Path, settled: float | None) -> str:
    kinds = Counter(f.kind for f in run.faults)
    lines = [
        f"faults: {len(run.faults)} ({', '.join(f'{k} {c}' for k, c in sorted(kinds.items()))})",
        f"membership changes: {v.changes} ("
        + ", ".join(
            f"{k} {c}"
            for k, c in sorted(
                Counter(
                    f"{c.how} {'join' if c.join else 'leave'}" for c in run.changes if c.started > 0
                ).items()
            )
        )
        + f"; never answered {sum(c.answered == math.inf for c in run.changes)})",
        f"sends: {len(run.sends)}, acknowledged {v.acked}, never answered {v.unanswered}, "
        f"refused {dict(run.refused) or 0}",
        f"deliveries expected {v.expected}, not checked (membership changing) {v.unchecked}, "
        f"must not be shown (non-members) {v.must_not}, shown {v.shown} ({v.shown_large} "
        "with a large group's seq); "
        + (
            f"all shown {settled:.1f}s after the faults stopped"
            if settled is not None
            else "NOT all shown"
        ),
        f"missing {len(v.missing)}, not shown on a restarted device (shown on the other) "
        f"{len(v.excused)}, a large group's posts unread when the user left it "
        f"{len(v.left)}, duplicates {len(v.duplicates)} (one content under two ids "
        f"{len(v.twins)}), shown again by the client "
        f"started after a restart {len(v.reshown)} ({len(v.reshown_late)} shown over "
        f"{RESHOWN_GRACE:.0f}s before it), out of order "
        f"{len(v.out_of_order)}, misdelivered {len(v.misdelivered)}, shown to a non-member "
        f"{len(v.non_member)}",
    ]
    for me, msg_id in v.missing[:8]:
        lines.append(timeline(run, me, msg_id))
    for me, msg_id in [*v.excused[:2], *v.left[:2]]:
        lines.append(f"  (not a failure) {timeline(run, me, msg_id).lstrip()}")
    for me, msg_id in v.duplicates[:5]:
        lines.append(f"  duplicate {msg_id} at {me}")
    for me, msg_id in v.twins[:6]:
        lines.append(f"  one content under two ids: {misdelivered(run, me, msg_id)}")
    for me, msg_id in v.reshown[:5]:
        times = [
            f"{x.at:.1f}s (client {x.instance})" for x in run.shown[me] if x.message.id == msg_id
        ]
        restarts = [f"{at:.1f}s" for at, d in run.restarts if d == me]
        lines.append(
            f"  reshown {msg_id} at {me}: {', '.join(times)}; restarts {', '.join(restarts)}"
        )
    for me, msg_id, why in v.out_of_order[:5]:
        lines.append(f"  out of order {msg_id} at {me}: {why}")
    for me, msg_id in v.misdelivered[:5]:
        lines.append(f"  misdelivered {misdelivered(run, me, msg_id)}")
    for me, msg_id in v.non_member[:5]:
        lines.append(f"  shown to a non-member: {timeline(run, me, msg_id).lstrip()}")
    lines.append(f"logs: {logs}")
    return "\n".join(lines)
