"""Group posts: fan-out on write against stored once, side by side, in one run.

    python bench/groups.py                 # sizes 10, 1,000, 100,000; 10,000 online
    python bench/groups.py --quick         # shorter phases, 2,000 online
    python bench/groups.py --help

Part 1, the store (a real redis-server, the gateway's own RedisStore in this process):
for each group size and each form (``fan-out``: every member's inbox, as below
``--large-group``; ``once``: the group's own stream, as above it) the members are added,
then posts are stored one per batch, back to back, for ``--seconds`` (at least one), while
another store connection sends private messages one at a time. Reported: posts per
second, Redis CPU per post (from /proc of the redis-server), and the private message's
latency p50/p99 during the posts, against a baseline measured first with no posts.

Part 2, live delivery (a hub, three gateways ``python -m im_gateway``, Redis):
``--online`` members of one large group hold a WebSocket each, spread over the three
gateways (held by three reader processes, one per gateway, so that the readers are not
the bottleneck measured); a member posts (type 2) and the time until every online member
has it is measured (wall clock, one machine), for ``--live-posts`` posts.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from typing import Any

import harness

SECRET = "bench-groups-secret-0123456789abcdef-01"
GROUP = 1
SIZES = (10, 1_000, 100_000)
_ids = itertools.count(1)


async def _store(url: str, prefix: str, large_group: int) -> Any:
    from im_gateway.store import RedisStore

    return RedisStore(
        url,
        prefix=prefix,
        large_group=large_group,
        max_group_members=200_000,
        socket_timeout=120,  # a post to 100,000 inboxes blocks Redis for seconds
    )


def _post(sender: int, to: int, kind: int) -> Any:
    from im_gateway.store import Submission
    from transmit_hub.types import Message, MessageId, UserId

    n = next(_ids)
    m = Message(MessageId(f"b{n}"), UserId(sender), to, kind, 0, int(time.time() * 1000), "x" * 64)
    return Submission(f"c{n}", m)


async def _private_loop(
    store: Any, stop: asyncio.Event, lat: list[float], busy: list[int] | None = None
) -> None:
    """One private message at a time, from user 1 to user 2, until ``stop``. A Redis that
    answers BUSY (a script ran past its time limit) is asked again; the latency counts
    until the message is stored, and ``busy`` counts the refusals."""
    from redis.exceptions import ResponseError

    while not stop.is_set():
        t0 = time.perf_counter()
        sub = _post(900_001, 900_002, 1)
        while True:
            try:
                await store.submit([sub])
                break
            except ResponseError as exc:
                if "BUSY" not in str(exc):
                    raise
                if busy is not None:
                    busy[0] += 1
                await asyncio.sleep(0.01)
        lat.append((time.perf_counter() - t0) * 1000)


async def _scenario(
    url: str, redis_pid: int, size: int, form: str, seconds: float, max_posts: int
) -> dict[str, Any]:
    from transmit_hub.types import UserId

    prefix = f"b:{size}:{form}:"
    store = await _store(url, prefix, 1 if form == "once" else 10**9)
    side = await _store(url, prefix, 500)
    members = [UserId(10_000_000 + i) for i in range(size)]
    for i in range(0, size, 10_000):
        await store.add_members(GROUP, members[i : i + 10_000])
    sender = members[0]
    lat: list[float] = []
    busy = [0]
    stop = asyncio.Event()
    private = asyncio.ensure_future(_private_loop(side, stop, lat, busy))
    await asyncio.sleep(0.2)  # the private loop runs first
    lat.clear()
    cpu0, t0 = harness.cpu_seconds(redis_pid), time.perf_counter()
    posts = 0
    while posts < max_posts and (posts == 0 or time.perf_counter() - t0 < seconds):
        await store.submit([_post(sender, GROUP, 2)])
        posts += 1
    wall = time.perf_counter() - t0
    cpu = harness.cpu_seconds(redis_pid) - cpu0
    stop.set()
    await private
    await store.client.flushdb()  # the next scenario starts from an empty Redis
    await store.close()
    await side.close()
    lat.sort()
    return {
        "size": size,
        "form": form,
        "posts": posts,
        "posts_per_s": posts / wall,
        "redis_ms_per_post": cpu * 1000 / posts,
        "private_p50_ms": harness.percentile(lat, 50) if lat else 0.0,
        "private_p99_ms": harness.percentile(lat, 99) if lat else 0.0,
        "private_count": len(lat),
        "private_busy": busy[0],
    }


async def _baseline(url: str, seconds: float) -> dict[str, float]:
    store = await _store(url, "b:base:", 500)
    lat: list[float] = []
    stop = asyncio.Event()
    task = asyncio.ensure_future(_private_loop(store, stop, lat))
    await asyncio.sleep(seconds)
    stop.set()
    await task
    await store.client.flushdb()
    await store.close()
    lat.sort()
    return {"p50_ms": harness.percentile(lat, 50), "p99_ms": harness.percentile(lat, 99)}


async def _reader(port: int, first: int, count: int) -> None:
    """A reader process: ``count`` members' sockets on one gateway; prints ``ready``, then
    per post ``<content> <wall time when the last of them had it>``."""
    from websockets.asyncio.client import connect

    socks = []
    for start in range(first, first + count, 200):  # connect in waves
        batch = range(start, min(first + count, start + 200))

        async def one(user: int) -> Any:
            url = f"ws://127.0.0.1:{port}/ws?token={harness.mint_token(user, SECRET)}"
            ws = await connect(url, proxy=None, max_queue=None)
            while '"type":14' not in await ws.recv():
                pass
            return ws

        socks += await asyncio.gather(*(one(u) for u in batch))
    got: dict[str, int] = {}

    async def read(ws: Any) -> None:
        async for data in ws:
            if data.startswith('{"type":2,'):
                content = data[data.index('"content":"') + 11 :].split('"', 1)[0]
                got[content] = got.get(content, 0) + 1
                if got[content] == count:
                    print(content, repr(time.time()), flush=True)

    print("ready", flush=True)
    await asyncio.gather(*(read(ws) for ws in socks))


async def _live(ports: dict[str, int], online: int, posts: int) -> list[float]:
    """Seconds from a post's send until every online member had it, per post. The members'
    sockets are held by three reader processes (one per gateway), so that reading them is
    not what is measured; the poster is one more member, on gw-1."""
    from websockets.asyncio.client import connect

    from im_gateway.store import RedisStore
    from transmit_hub.types import UserId

    first = 50_000_000
    poster_id = first + online
    users = [UserId(first + i) for i in range(online + 1)]
    async with RedisStore(f"redis://127.0.0.1:{ports['redis']}/0") as store:
        for i in range(0, len(users), 10_000):
            await store.add_members(GROUP + 1, users[i : i + 10_000])
    share = online // 3
    readers = []
    for k, gw in enumerate(("gw-1", "gw-2", "gw-3")):
        count = share if k < 2 else online - 2 * share
        proc = await asyncio.create_subprocess_exec(
            harness.PYTHON, __file__, "--reader", str(ports[gw]), str(first + k * share),
            str(count), stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        readers.append(proc)
    try:
        for proc in readers:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 600)
            assert line.strip() == b"ready", line
        url = f"ws://127.0.0.1:{ports['gw-1']}/ws?token={harness.mint_token(poster_id, SECRET)}"
        poster = await connect(url, proxy=None)
        while '"type":14' not in await poster.recv():
            pass
        times = []
        for n in range(posts):
            text = f"live-{n}"
            t0 = time.time()
            frame = {"type": 2, "id": f"p{n}", "to": GROUP + 1, "content": text}
            await poster.send(json.dumps(frame))
            last = 0.0
            for proc in readers:
                assert proc.stdout is not None
                content, at = (await asyncio.wait_for(proc.stdout.readline(), 60)).split()
                assert content.decode() == text, content
                last = max(last, float(at))
            times.append(last - t0)
        await poster.close()
        return times
    finally:
        for proc in readers:
            proc.kill()
            await proc.wait()


def main() -> int:
    if sys.argv[1:2] == ["--reader"]:  # one of part 2's reader processes
        port, first, count = map(int, sys.argv[2:5])
        asyncio.run(_reader(port, first, count))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="posting time per scenario")
    parser.add_argument("--max-posts", type=int, default=2000, help="posts per scenario at most")
    parser.add_argument("--online", type=int, default=10_000, help="online members (part 2)")
    parser.add_argument("--live-posts", type=int, default=5, help="posts timed in part 2")
    parser.add_argument("--quick", action="store_true", help="1 s per scenario, 2,000 online")
    parser.add_argument(
        "--part", choices=("all", "store", "live"), default="all", help="run one part only"
    )
    harness.add_run_options(parser, each=None)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.online, args.live_posts = 1.0, 2_000, 3
    started = harness.start_run("groups", args)
    with harness.children() as kids:
        ports = harness.start_stack(kids, gateways=["gw-1", "gw-2", "gw-3"], secret=SECRET)
        url = f"redis://127.0.0.1:{ports['redis']}/0"
        redis_pid = kids[0].pid

        async def run() -> dict[str, Any]:
            base = {"p50_ms": 0.0, "p99_ms": 0.0}
            rows = []
            if args.part in ("all", "store"):
                base = await _baseline(url, args.seconds)
                for size in SIZES:
                    for form in ("fan-out", "once"):
                        row = await _scenario(
                            url, redis_pid, size, form, args.seconds, args.max_posts
                        )
                        print(json.dumps(row), flush=True)
                        rows.append(row)
            live = []
            if args.part in ("all", "live"):
                live = await _live(ports, args.online, args.live_posts)
            return {"baseline": base, "scenarios": rows, "live_seconds": live}

        data = harness.run_async(run())
    base = data["baseline"]
    table = (
        ""
        if not data["scenarios"]
        else harness.table(
            [
                "members",
                "form",
                "posts",
                "posts/s",
                "Redis ms/post",
                "private p50 ms",
                "p99 ms",
                "BUSY",
            ],
            [
                [
                    f"{r['size']:,}",
                    r["form"],
                    str(r["posts"]),
                    f"{r['posts_per_s']:.0f}",
                    f"{r['redis_ms_per_post']:.3f}",
                    f"{r['private_p50_ms']:.2f}",
                    f"{r['private_p99_ms']:.2f}",
                    str(r["private_busy"]),
                ]
                for r in data["scenarios"]
            ],
        )
    )
    live = sorted(data["live_seconds"])
    report = ""
    if data["scenarios"]:
        report += (
            f"private message alone: p50 {base['p50_ms']:.2f} ms, "
            f"p99 {base['p99_ms']:.2f} ms\n\n{table}\n\n"
        )
    if live:
        report += (
            f"live delivery to {args.online:,} online members over 3 gateways: "
            f"median {live[len(live) // 2]:.3f} s, max {live[-1]:.3f} s per post"
        )
    return harness.finish_run(report, started, args, data)


if __name__ == "__main__":
    sys.exit(main())
