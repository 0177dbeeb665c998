"""The cost of one catch-up sweep: every idle session reads its inbox to the end.

    python bench/catch_up.py                  # 100,000 sessions
    python bench/catch_up.py --quick          # 10,000 sessions, under 30 s
    python bench/catch_up.py --help

A gateway makes every local session read its inbox to the end when a hub link comes
back, and when one is lost (at once, and once more ``--hub-resend-window`` later), so
that pushes swallowed by a dead stream are shown even to users who get nothing more.
This measures what one such sweep costs with ``--sessions`` idle sessions: the
gateway-side objects are the real ones (:class:`~im_gateway.replayer.Replayer` over the
real Redis store, the store calls bounded by ``--store-concurrency`` as in the gateway),
against a real redis-server. Each user's inbox holds a few messages, all already
delivered (the connect replay read them), so a sweep finds nothing new: the last-resort
case. Two sweeps, interleaved: "ends", the fan-out's (the store says where 1,000 inboxes
end per round trip, and only the sessions behind theirs read), and "read-all" (every
session reads its inbox, as the gateway did before); with ``--mode regroup`` or ``all``,
"regroup" too: the fan-out's regroup after a lost hub link (the later sweep's, and the
link-up's after no link at all), as the code tree it runs from does it (run this script
from an older tree's ``bench/`` to measure that tree's: before the store said which users
are in a group, every session read its user's large groups, two round trips each).
``--in-groups`` of the users are in one large group (their sessions follow it), the rest
in none. Reported: each sweep's wall time, the gateway process's CPU and Redis's CPU
(from /proc), both per session, the sessions that read their groups, and the RSS at its
peak during the sweeps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Collection
from typing import Any

import harness

from im_gateway.fanout import Fanout
from im_gateway.replayer import Replayer
from transmit_hub.types import GatewayId, UserId


class IdleLink:
    """A hub link with no events (the sweeps are started by hand)."""

    connected = True

    def send(self, tmap: Any) -> bool:
        return True

    def send_everywhere(self, tmap: Any) -> bool:
        return True

    async def events(self) -> AsyncIterator[Any]:
        await asyncio.Event().wait()
        yield None


class BenchSession:
    """What the fan-out needs of a session, around a real replayer."""

    def __init__(self, user: UserId, replayer: Replayer) -> None:
        self.user = user
        self._replayer = replayer

    def catch_up(self, end: int | None = None) -> None:
        self._replayer.catch_up(end)

    def regroup(self, left: int | None = None) -> None:
        self._replayer.regroup(left)

    @property
    def follows_groups(self) -> bool:
        return self._replayer.follows_groups

    def deliver(self, pos: int, text: str) -> None: ...

    def own(self, pos: int) -> None: ...

    def rebase(self) -> None: ...

    def disconnect(self, code: int, reason: str) -> None: ...


class Sink:
    """A session's outlet that counts the frames it is given."""

    __slots__ = ("frames",)

    def __init__(self) -> None:
        self.frames = 0

    @property
    def closing(self) -> bool:
        return False

    def push(self, text: str) -> bool:
        self.frames += 1
        return True

    async def room(self) -> None:
        return None

    def close(self, code: int, reason: str) -> None:
        raise RuntimeError(f"a session closed ({code}, {reason}): a read failed")


class _NoGroups:
    """A follower that writes no mark in the store (the bench's gateway gets no posts)."""

    async def follow_groups(self, groups: Collection[int]) -> None:
        return None

    def unfollow_groups(self, groups: Collection[int]) -> None:
        return None


async def _open_store(url: str) -> Any:
    from im_gateway.store import open_store

    return await open_store(url)


async def _fill(url: str, sessions: int, per_inbox: int) -> None:
    """Put ``per_inbox`` messages in every user's inbox (one script call per batch)."""
    from im_gateway.ids import MessageIds
    from im_gateway.store import Submission
    from transmit_hub.types import MESSAGE_PRIVATE, Message

    store = await _open_store(url)
    ids = MessageIds()
    try:
        batch: list[Submission] = []
        for user in range(1, sessions + 1):
            for k in range(per_inbox):
                msg_id, now_ms = ids.next()
                message = Message(msg_id, UserId(0), user, MESSAGE_PRIVATE, 0, now_ms, f"m{k}")
                batch.append(Submission(f"f{user}-{k}", message, check_member=False))
            if len(batch) >= 512:
                await store.submit(batch)
                batch = []
        if batch:
            await store.submit(batch)
    finally:
        await store.close()


GROUP = 1
"""The large group of ``--in-groups`` of the users."""


def grouped_users(sessions: int, fraction: float) -> list[UserId]:
    """``fraction`` of the users 1..``sessions``, spread evenly."""
    if fraction <= 0:
        return []
    return [UserId(1 + int(i / fraction)) for i in range(int(sessions * fraction))]


async def _join(url: str, users: list[UserId]) -> None:
    """Put ``users`` in the large group ``GROUP`` (one script call per 1,000)."""
    store = await _open_store(url)
    try:
        for start in range(0, len(users), 1000):
            await store.add_members(GROUP, users[start : start + 1000])
    finally:
        await store.close()


async def wait_idle(replayers: list[Replayer]) -> None:
    """Until no connect replay is still running (its end marker pushed)."""
    while any(r.replaying for r in replayers):  # noqa: ASYNC110 - a bench's polling
        await asyncio.sleep(0.05)


async def _run(url: str, redis_pid: int, args: argparse.Namespace) -> dict[str, Any]:
    store = await _open_store(url)
    slots = asyncio.Semaphore(args.store_concurrency)
    sinks = [Sink() for _ in range(args.sessions)]
    replayers = [
        Replayer(
            sinks[i],
            UserId(i + 1),
            store=store,
            slots=slots,
            follower=_NoGroups(),
            replay_page=200,
            held_max=1024,
            fill_delay=0.05,
            replay_budget=20_000,
        )
        for i in range(args.sessions)
    ]

    counts = {"read_inbox": 0, "streams": 0}
    """Calls done: inbox reads, and reads of a user's large groups."""
    target = 0
    done = asyncio.Event()

    def counted(name: str) -> Any:
        call = getattr(store, name)

        async def wrapper(*a: Any, **kw: Any) -> Any:
            found = await call(*a, **kw)
            counts[name] += 1
            if name == "read_inbox" and counts[name] >= target:
                done.set()
            return found

        return wrapper

    store.read_inbox, store.streams = counted("read_inbox"), counted("streams")

    async def reads_done(n: int) -> None:
        """Wait until ``n`` more inbox reads are done (one per session per sweep)."""
        nonlocal target
        target = counts["read_inbox"] + n
        done.clear()
        await done.wait()

    try:
        started = time.monotonic()
        for r in replayers:
            r.start()  # the connect replay: the sessions are now up to date
        await reads_done(args.sessions)
        await wait_idle(replayers)
        connected = time.monotonic() - started
        frames_before = sum(s.frames for s in sinks)
        rss_before = harness.rss_kb(os.getpid())
        peak = rss_before

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, harness.rss_kb(os.getpid()))
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample())
        fanout: Fanout[Any] = Fanout(gateway_id=GatewayId("bench"), store=store, link=IdleLink())
        for i, r in enumerate(replayers):
            fanout.add(BenchSession(UserId(i + 1), r))
        sweeps = []
        groups_read: list[int] = []
        """Per regroup sweep: the sessions that read their user's large groups."""
        modes = {"both": ["ends", "read-all"], "all": ["ends", "regroup", "read-all"]}
        for mode in modes.get(args.mode, [args.mode]) * args.repeat:
            cpu0 = time.process_time()
            redis0 = harness.cpu_seconds(redis_pid)
            t0 = time.monotonic()
            if mode == "ends":  # the fan-out's sweep: inbox ends in bulk, nobody behind
                await fanout.catch_up.wait()
            elif mode == "regroup":  # after a lost link: the sessions read their groups
                read_before = counts["streams"]
                catch_up = fanout.catch_up
                catch_up._regroup()  # what the later sweep and the link-up call
                regrouped = getattr(catch_up, "regrouped", None)  # (older trees: at once)
                if regrouped is not None:
                    await regrouped()
                await wait_idle(replayers)
                groups_read.append(counts["streams"] - read_before)
            else:  # every session reads its inbox (the sweep before it asked the store)
                for r in replayers:
                    r.catch_up()
                await reads_done(args.sessions)
            wall = time.monotonic() - t0
            sweeps.append(
                {
                    "mode": mode,
                    "wall_s": round(wall, 3),
                    "gateway_cpu_s": round(time.process_time() - cpu0, 3),
                    "redis_cpu_s": round(harness.cpu_seconds(redis_pid) - redis0, 3),
                }
            )
        sampler.cancel()
        new_frames = sum(s.frames for s in sinks) - frames_before
    finally:
        for r in replayers:
            await r.close()
        await store.close()
    n = args.sessions
    per_session = {
        mode: {
            "gateway_cpu_us": round(min(x["gateway_cpu_s"] for x in mine) / n * 1e6, 2),
            "redis_cpu_us": round(min(x["redis_cpu_s"] for x in mine) / n * 1e6, 2),
        }
        for mode in {x["mode"] for x in sweeps}
        if (mine := [x for x in sweeps if x["mode"] == mode])
    }
    return {
        "sessions": n,
        "connect_replay_s": round(connected, 2),
        "sweeps": sweeps,
        "frames_sent_by_sweeps": new_frames,
        "in_groups": args.in_groups,
        "groups_read_per_regroup": groups_read,
        "per_session": per_session,
        "rss_before_sweeps_mb": round(rss_before / 1024, 1),
        "rss_peak_during_sweeps_mb": round(peak / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=100_000, help="idle sessions (100000)")
    parser.add_argument("--per-inbox", type=int, default=3, help="messages per inbox (3)")
    parser.add_argument("--repeat", type=int, default=3, help="sweeps measured (3)")
    parser.add_argument(
        "--store-concurrency", type=int, default=32, help="as the gateway's flag (32)"
    )
    parser.add_argument(
        "--mode",
        choices=("ends", "read-all", "regroup", "both", "all"),
        default="both",
        help="ends: the fan-out's sweep (inbox ends in bulk, then only the sessions behind "
        "read); read-all: every session reads its inbox; regroup: every session reads its "
        "user's large groups (the later sweep after a lost hub link adds it); both "
        "(default): ends and read-all, interleaved; all: the three, interleaved",
    )
    parser.add_argument(
        "--in-groups",
        type=float,
        default=0.1,
        metavar="FRACTION",
        help="of the users in one large group, the rest in none (0.1)",
    )
    parser.add_argument("--quick", action="store_true", help="10,000 sessions")
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    args = parser.parse_args()
    if args.quick:
        args.sessions = 10_000
    port = harness.free_port()
    with harness.children() as started:
        redis = harness.redis_server(port).start()
        started.append(redis)
        redis.wait_port(port)
        url = f"redis://127.0.0.1:{port}/0"
        asyncio.run(_fill(url, args.sessions, args.per_inbox))
        asyncio.run(_join(url, grouped_users(args.sessions, args.in_groups)))
        result = asyncio.run(_run(url, redis.pid, args))
    n = result["sessions"]
    print(
        f"catch-up sweep over {n:,} idle sessions ({args.per_inbox} delivered messages each, "
        f"{args.in_groups:.0%} in a large group)"
    )
    for i, sweep in enumerate(result["sweeps"], 1):
        print(
            f"  sweep {i} ({sweep['mode']}): {sweep['wall_s']:.2f} s wall, gateway CPU "
            f"{sweep['gateway_cpu_s']:.2f} s, Redis CPU {sweep['redis_cpu_s']:.2f} s"
        )
    for mode, cost in result["per_session"].items():
        print(
            f"  per session ({mode}): gateway {cost['gateway_cpu_us']} us CPU, "
            f"Redis {cost['redis_cpu_us']} us CPU"
        )
    if result["groups_read_per_regroup"]:
        print(f"  sessions reading their groups per regroup: {result['groups_read_per_regroup']}")
    print(f"  frames sent by the sweeps: {result['frames_sent_by_sweeps']} (nothing was new)")
    print(
        f"  RSS {result['rss_before_sweeps_mb']} MB before the sweeps, "
        f"peak {result['rss_peak_during_sweeps_mb']} MB during them"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    sys.exit(0)


if __name__ == "__main__":
    main()
