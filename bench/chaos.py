"""A randomized fault soak: users chat through the real client library while gateways,
hubs and Redis are killed and frozen at random; then every acknowledged message is
checked to have been shown exactly once, in order, to every device it was meant for.

    python bench/chaos.py                        # one Redis, 120 s of faults, seed 1
    python bench/chaos.py --redis cluster        # a Redis Cluster (3 primaries, 3 replicas)
    python bench/chaos.py --seed 7 --seconds 60  # replay a run's fault and traffic choices
    python bench/chaos.py --help

Real processes on 127.0.0.1: one redis-server (``--redis single``) or a Redis Cluster, two
hubs and three gateways (``python -m im_gateway``, each with ``--hub`` naming both hubs,
``--large-group`` low so large groups are cheap). In this process, ``--users`` users, the
first ``--two-devices`` of them with two devices, each device an
:class:`im_gateway.client.Client` given the three gateway URLs in its own shuffled order.
A small group and a large group (above ``--large-group``) are set up through the server
API first. Each device sends at about ``--rate`` messages a second to a random peer or
one of its groups, one at a time; every ``send`` that returns (type 10) is recorded with
its message id and the devices meant to show it (every device of the recipients, and the
sender's other device).

Faults at random (from ``--seed``), about every ``--fault-gap`` s, for ``--seconds``:
SIGKILL a gateway and restart it; SIGTERM one (it drains: 1012) and restart it; SIGSTOP
a gateway or a hub for up to ``--max-stop`` s; SIGKILL a hub and restart it; SIGSTOP the
Redis (or a cluster primary) for up to half that; with ``--redis cluster``, SIGKILL a
primary and restart it once its replica took over (the gateways then run with
``--redis-wait-replicas 1``); and, about every ``--restart-gap`` s, close a one-device
user's client and start a new one (an app restart: the new one must show what the old
one had not, and nothing it had). At least one gateway and one hub stay up throughout
unless ``--full-outages``. Each fault is printed with its time.

Then the faults stop, everything is resumed or restarted, and the run waits (up to
``--settle`` s) until every device has shown every acknowledged message meant for it.
The checks, per receiving device: every acknowledged message meant for it was yielded by
``messages()`` exactly once (by id); each stream (the inbox, each large group) in seq
order; and each sender's messages in the order it sent them. The report counts messages
acknowledged, shown, missing (the first few with their timeline: sent when, through which
gateway, the receiver's connections and the faults around), duplicates, out of order,
shown to a device they were not meant for, and the faults run. The processes' logs (and
the clients') stay in ``--logs`` (a new temporary directory by default). Exit status 1
when a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import logging
import os
import random
import secrets
import signal
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import harness
import redis

from devtools.launch import Process, gateway_argv, gateway_healthy, hub_argv
from im_gateway.client import Client, Message, Refused
from im_gateway.client_protocol import parse_seq

SMALL, LARGE = 7, 8
"""The small group's id and the large group's."""

Device = tuple[int, int]
"""(user, device index)."""


@dataclass
class Send:
    """One send attempt: acknowledged when ``msg_id`` is set."""

    content: str
    sender: Device
    target: str
    recipients: frozenset[Device]
    started: float
    via: str
    instance: int
    """Which Client of the sending device sent it (a restart starts the next)."""
    msg_id: str = ""
    acked: float = 0.0
    acked_via: str = ""


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
    """What the run records: sends, what each device showed, its connections, faults."""

    start: float = field(default_factory=time.monotonic)
    sends: dict[str, Send] = field(default_factory=dict)
    shown: dict[Device, list[Shown]] = field(default_factory=lambda: defaultdict(list))
    urls: dict[Device, list[tuple[float, str]]] = field(default_factory=lambda: defaultdict(list))
    faults: list[Fault] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)

    def now(self) -> float:
        return time.monotonic() - self.start


# --- the processes ----------------------------------------------------------------------


class Stack:
    """Redis (one or a cluster), two hubs and three gateways, each a process logging into
    ``logs``; ``up`` says which are neither killed nor stopped."""

    def __init__(self, args: argparse.Namespace, logs: Path, secret: str, api_key: str) -> None:
        self.args, self.logs, self.secret, self.api_key = args, logs, secret, api_key
        self.redis: list[Process] = []
        self.hubs: dict[str, Process] = {}
        self.gateways: dict[str, Process] = {}
        self.ports: dict[str, int] = {}
        self.down: set[str] = set()
        self.url = ""

    def _process(self, name: str, argv: list[str]) -> Process:
        return Process(name, argv, log_path=self.logs / f"{name}.log").start()

    def start(self) -> None:
        if self.args.redis == "cluster":
            started: list[harness.Child] = []
            self.url = harness.redis_cluster(started)
            self.redis = list(started)
        else:
            port = harness.free_port()
            self.redis = [harness.redis_server(port).start()]
            self.redis[0].wait_port(port)
            self.url = f"redis://127.0.0.1:{port}/0"
        for name in ("hub-a", "hub-b"):
            port = self.ports[name] = harness.free_port()
            self.hubs[name] = self._process(name, hub_argv(f"127.0.0.1:{port}", "--hub-id", name))
            self.hubs[name].wait_port(port)
        hubs = ",".join(f"127.0.0.1:{self.ports[h]}" for h in self.hubs)
        for i in (1, 2, 3):
            name = f"gw-{i}"
            port = self.ports[name] = harness.free_port()
            argv = gateway_argv(f"127.0.0.1:{port}", "--gateway-id", name, "--hub", hubs)
            argv += ["--redis-url", self.url, "--jwt-secret", self.secret]
            argv += ["--large-group", str(self.args.large_group)]
            argv += ["--redis-wait-replicas", str(self.args.wait_replicas)]
            if i == 1:
                api = self.ports["api"] = harness.free_port()
                argv += ["--api-listen", f"127.0.0.1:{api}", "--api-key", self.api_key]
            self.gateways[name] = self._process(name, argv)
        for name, gw in self.gateways.items():
            port = self.ports[name]
            gw.wait_ready(functools.partial(gateway_healthy, port), timeout=30, what="/healthz 200")

    def ws_urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{self.ports[g]}/ws" for g in self.gateways]

    def process(self, name: str) -> Process:
        return {**self.hubs, **self.gateways, **{p.name: p for p in self.redis}}[name]

    def primaries(self) -> list[str]:
        """The Redis processes that may be stopped: the one Redis, or the cluster's
        primaries now (asked of each node that answers)."""
        if self.args.redis != "cluster":
            return [p.name for p in self.redis]
        names = []
        for p in self.redis:
            port = int(p.argv[p.argv.index("--port") + 1])
            with contextlib.suppress(redis.RedisError, OSError):
                client = redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
                if client.execute_command("ROLE")[0] in (b"master", "master"):  # type: ignore[no-untyped-call]
                    names.append(p.name)
                client.close()
        return names

    def role(self, name: str) -> list[object]:
        """``ROLE`` of the Redis process ``name`` (empty when it does not answer)."""
        p = self.process(name)
        port = int(p.argv[p.argv.index("--port") + 1])
        with contextlib.suppress(redis.RedisError, OSError):
            client = redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
            try:
                role: list[object] = client.execute_command("ROLE")  # type: ignore[no-untyped-call]
                return role
            finally:
                client.close()
        return []

    def replicas_of(self, name: str) -> list[str]:
        p = self.process(name)
        port = int(p.argv[p.argv.index("--port") + 1])
        return [
            r.name
            for r in self.redis
            if r.name != name
            and (role := self.role(r.name))
            and role[0] in (b"slave", "slave")
            and int(str(role[2])) == port
        ]

    def promoted(self, replicas: list[str]) -> bool:
        return any(self.role(r)[:1] in ([b"master"], ["master"]) for r in replicas)

    def stop(self) -> None:
        for p in [*self.gateways.values(), *self.hubs.values(), *self.redis]:
            p.stop()


def api(stack: Stack, method: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.ports['api']}/api/{method}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {stack.api_key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, object] = json.loads(response.read())
        return answer


# --- the faults -------------------------------------------------------------------------


KINDS = ("gw-kill", "gw-term", "gw-stop", "hub-kill", "hub-stop", "redis-stop", "redis-kill")
"""The faults on processes; ``redis-kill`` (a cluster primary, restarted: it rejoins as a
replica) only with ``--redis cluster`` (one Redis runs without persistence)."""


async def fault(
    stack: Stack, run: Run, rng: random.Random, kind: str, victim: str, max_stop: float
) -> None:
    """One fault on ``victim``, from its start to its recovery (restart or SIGCONT)."""
    if kind.endswith("-stop"):
        seconds = rng.uniform(1.0, max_stop if kind != "redis-stop" else max_stop / 2)
    else:
        seconds = rng.uniform(0.3, 3.0)
    process = stack.process(victim)
    stack.down.add(victim)
    run.faults.append(Fault(run.now(), kind, victim, seconds))
    print(f"  {run.now():7.1f}s {kind} {victim} for {seconds:.1f}s", flush=True)
    stopped = kind.endswith("-stop")
    try:
        if stopped:
            os.kill(process.pid, signal.SIGSTOP)
        else:
            replicas = (
                await asyncio.to_thread(stack.replicas_of, victim) if kind == "redis-kill" else []
            )
            process.proc.send_signal(signal.SIGTERM if kind == "gw-term" else signal.SIGKILL)
            # A draining gateway takes a few seconds (its grace): wait without blocking.
            while process.proc.poll() is None:  # noqa: ASYNC110 - a child's exit has no event
                await asyncio.sleep(0.05)
            # A primary without persistence that came back before its replica took over
            # would come back empty and keep its slots: every key in them lost, a Redis
            # deployment's fault, not ours. Restart it only once the replica took over.
            deadline = time.monotonic() + 60
            while replicas and not await asyncio.to_thread(stack.promoted, replicas):
                if time.monotonic() > deadline:
                    print(f"  {run.now():7.1f}s no replica of {victim} took over", flush=True)
                    break
                await asyncio.sleep(0.1)
        await asyncio.sleep(seconds)
    finally:
        if stopped:
            os.kill(process.pid, signal.SIGCONT)
        else:
            process.start()  # from this (the main) thread: it dies with this process
        stack.down.discard(victim)


def pick(stack: Stack, rng: random.Random, full: bool) -> tuple[str, str] | None:
    """A fault and its victim, keeping a gateway and a hub up unless ``full``."""
    kinds = [k for k in KINDS if k != "redis-kill" or stack.args.redis == "cluster"]
    kind = rng.choice(kinds)
    if kind.startswith("gw"):
        names = list(stack.gateways)
    elif kind.startswith("hub"):
        names = list(stack.hubs)
    elif any(n.startswith("redis") for n in stack.down):
        return None  # one Redis fault at a time
    else:
        names = stack.primaries()
    free = [n for n in names if n not in stack.down]
    if not free or (not full and len(free) == 1 and not kind.startswith("redis")):
        return None
    return kind, rng.choice(free)


async def faults(
    stack: Stack, run: Run, rng: random.Random, until: float, args: argparse.Namespace
) -> None:
    tasks: list[asyncio.Task[None]] = []
    while True:
        await asyncio.sleep(rng.uniform(args.fault_gap / 2, args.fault_gap * 1.5))
        if time.monotonic() >= until:
            break
        chosen = pick(stack, rng, args.full_outages)
        if chosen is not None:
            tasks.append(asyncio.create_task(fault(stack, run, rng, *chosen, args.max_stop)))
    await asyncio.gather(*tasks)


# --- the clients ------------------------------------------------------------------------


async def device(
    run: Run,
    clients: dict[Device, Client],
    instances: Counter[Device],
    me: Device,
    rng: random.Random,
    peers: list[int],
    groups: dict[int, list[Device]],
    devices: dict[int, list[Device]],
    until: float,
    rate: float,
) -> None:
    """Send to random peers and groups, one at a time, until ``until``."""
    user = me[0]
    mine = [g for g, members in groups.items() if me in members]
    for n in itertools.count():
        await asyncio.sleep(rng.expovariate(rate))
        if time.monotonic() >= until:
            return
        content = f"{user}.{me[1]}.{n}"
        others = frozenset(d for d in devices[user] if d != me)
        if mine and rng.random() < 0.35:
            group = rng.choice(mine)
            target, kw = f"g{group}", {"group": group}
            recipients = frozenset(d for d in groups[group] if d != me) | others
        else:
            to = rng.choice([p for p in peers if p != user])
            target, kw = f"u{to}", {"to": to}
            recipients = frozenset(devices[to]) | others
        client = clients[me]
        record = Send(content, me, target, recipients, run.now(), client.url or "-", instances[me])
        run.sends[content] = record
        try:
            sent = await client.send(content=content, **kw)
        except Refused as exc:
            run.refused[exc.code] += 1
            continue
        record.msg_id, record.acked, record.acked_via = sent.msg_id, run.now(), client.url or "-"


async def receive(run: Run, client: Client, me: Device, instance: int) -> None:
    async for message in client.messages():
        run.shown[me].append(Shown(message, run.now(), instance))


async def restarts(
    run: Run,
    clients: dict[Device, Client],
    readers: list[asyncio.Task[None]],
    instances: Counter[Device],
    single: list[Device],
    rng: random.Random,
    until: float,
    gap: float,
) -> None:
    """Now and then close a one-device user's client and start a new one (an app
    restart): the new one must not show again what the old one showed, nor miss anything.
    (Only one-device users: positions are kept per user, so another device's
    acknowledgements may rightly move a restarted device past what it had not shown.)"""
    while gap > 0:
        await asyncio.sleep(rng.uniform(gap / 2, gap * 1.5))
        if time.monotonic() >= until:
            return
        me = rng.choice(single)
        old = clients[me]
        connected = "connected" if old.url else "disconnected"
        run.faults.append(Fault(run.now(), "client-restart", f"user {me[0]} ({connected})", 0.0))
        print(f"  {run.now():7.1f}s client-restart user {me[0]} ({connected})", flush=True)
        await old.close()
        instances[me] += 1
        clients[me] = Client(old._urls, token=old._token)
        readers.append(asyncio.create_task(receive(run, clients[me], me, instances[me])))


async def watch_urls(run: Run, clients: dict[Device, Client]) -> None:
    """Each device's connection (URL, or "-" while disconnected), as it changes."""
    while True:
        for me, client in clients.items():
            url = client.url or "-"
            seen = run.urls[me]
            if not seen or seen[-1][1] != url:
                seen.append((run.now(), url))
        await asyncio.sleep(0.1)


def all_shown(run: Run) -> bool:
    ids = {me: {s.message.id for s in shown} for me, shown in run.shown.items()}
    return all(
        s.msg_id in ids.get(d, ()) for s in run.sends.values() if s.msg_id for d in s.recipients
    )


# --- the checks -------------------------------------------------------------------------


@dataclass
class Verdict:
    acked: int = 0
    unanswered: int = 0
    expected: int = 0
    shown: int = 0
    missing: list[tuple[Device, str]] = field(default_factory=list)
    duplicates: list[tuple[Device, str]] = field(default_factory=list)
    reshown: list[tuple[Device, str]] = field(default_factory=list)
    """Shown by a device's client, then again by the one started after it (a restart)."""
    out_of_order: list[tuple[Device, str, str]] = field(default_factory=list)
    misdelivered: list[tuple[Device, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.duplicates or self.out_of_order or self.misdelivered)


def check(run: Run) -> Verdict:
    v = Verdict()
    acked = [a for a in run.sends.values() if a.msg_id]
    v.acked, v.unanswered = len(acked), len(run.sends) - len(acked)
    by_content = run.sends
    expected: dict[Device, set[str]] = defaultdict(set)
    for a in acked:
        for d in a.recipients:
            expected[d].add(a.msg_id)
    v.expected = sum(len(e) for e in expected.values())
    for me in sorted(set(expected) | set(run.shown)):
        shown = run.shown.get(me, [])
        v.shown += len(shown)
        counts = Counter(x.message.id for x in shown)
        each = Counter((x.instance, x.message.id) for x in shown)
        v.duplicates += [(me, i) for (_, i), c in each.items() if c > 1]
        v.reshown += [(me, i) for i, c in counts.items() if c > 1 and (me, i) not in v.duplicates]
        v.missing += [(me, i) for i in sorted(expected[me] - set(counts))]
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
            if record is None or (me not in record.recipients and not restarted):
                v.misdelivered.append((me, x.message.id))
                continue
            n = int(record.content.rsplit(".", 1)[1])
            key = (x.instance, record.sender, name)
            if n < sender_last.get(key, -1):
                v.out_of_order.append(
                    (me, x.message.id, f"sender {record.sender} #{n} after later")
                )
            sender_last[key] = max(n, sender_last.get(key, -1))
    return v


def timeline(run: Run, me: Device, msg_id: str) -> str:
    s = next(s for s in run.sends.values() if s.msg_id == msg_id)
    lo, hi = s.started - 10, s.acked + 10
    around = [
        f"{f.at:.1f}s {f.kind} {f.victim} {f.seconds:.1f}s" for f in run.faults if lo <= f.at <= hi
    ]
    conns = [
        f"{t:.1f}s {u.split(':')[-1].split('/')[0] if u != '-' else '-'}"
        for t, u in run.urls[me]
        if lo <= t <= hi + 20
    ]
    return (
        f"  {msg_id} {s.content} {s.sender}->{me} ({s.target}): sent {s.started:.1f}s via "
        f"{s.via}, acked {s.acked:.1f}s via {s.acked_via}\n"
        f"    receiver's connections (port): {', '.join(conns) or '-'}\n"
        f"    faults around: {'; '.join(around) or 'none'}"
    )


def report(run: Run, v: Verdict, stack: Stack, settled: float | None) -> str:
    kinds = Counter(f.kind for f in run.faults)
    lines = [
        f"faults: {len(run.faults)} ({', '.join(f'{k} {c}' for k, c in sorted(kinds.items()))})",
        f"sends: {len(run.sends)}, acknowledged {v.acked}, never answered {v.unanswered}, "
        f"refused {dict(run.refused) or 0}",
        f"deliveries expected {v.expected}, shown {v.shown}; "
        + (
            f"all shown {settled:.1f}s after the faults stopped"
            if settled is not None
            else "NOT all shown"
        ),
        f"missing {len(v.missing)}, duplicates {len(v.duplicates)}, shown again by the client "
        f"started after a restart {len(v.reshown)}, out of order "
        f"{len(v.out_of_order)}, misdelivered {len(v.misdelivered)}",
    ]
    for me, msg_id in v.missing[:8]:
        lines.append(timeline(run, me, msg_id))
    for me, msg_id in v.duplicates[:5]:
        lines.append(f"  duplicate {msg_id} at {me}")
    for me, msg_id in v.reshown[:5]:
        times = [
            f"{x.at:.1f}s (client {x.instance})" for x in run.shown[me] if x.message.id == msg_id
        ]
        restarts = [
            f"{f.at:.1f}s {f.victim}" for f in run.faults if f.victim.startswith(f"user {me[0]} ")
        ]
        lines.append(
            f"  reshown {msg_id} at {me}: {', '.join(times)}; restarts {', '.join(restarts)}"
        )
    for me, msg_id, why in v.out_of_order[:5]:
        lines.append(f"  out of order {msg_id} at {me}: {why}")
    for me, msg_id in v.misdelivered[:5]:
        lines.append(f"  misdelivered {msg_id} at {me}")
    lines.append(f"logs: {stack.logs}")
    return "\n".join(lines)


# --- the run ----------------------------------------------------------------------------


async def soak(args: argparse.Namespace, stack: Stack) -> tuple[int, dict[str, object]]:
    rng = random.Random(args.seed)
    random.seed(args.seed)  # the client library's backoffs
    users = list(range(1001, 1001 + args.users))
    devices = {
        u: [(u, 0), (u, 1)] if i < args.two_devices else [(u, 0)] for i, u in enumerate(users)
    }
    small = rng.sample(users, max(2, args.large_group - 1))
    large = rng.sample(users, min(len(users), args.large_group * 3))
    await asyncio.to_thread(api, stack, "groups/add", {"group": SMALL, "users": small})
    await asyncio.to_thread(api, stack, "groups/add", {"group": LARGE, "users": large})
    groups = {
        SMALL: [d for u in small for d in devices[u]],
        LARGE: [d for u in large for d in devices[u]],
    }
    print(
        f"users {len(users)}, devices {sum(map(len, devices.values()))}, small group "
        f"{len(small)}, large group {len(large)} (--large-group {args.large_group})",
        flush=True,
    )
    run = Run()
    clients: dict[Device, Client] = {}
    for u in users:
        token = harness.mint_token(u, stack.secret)
        for d in devices[u]:
            urls = stack.ws_urls()
            rng.shuffle(urls)
            clients[d] = Client(urls, token=token)
    instances: Counter[Device] = Counter()
    readers = [asyncio.create_task(receive(run, c, d, 0)) for d, c in clients.items()]
    watcher = asyncio.create_task(watch_urls(run, clients))
    until = time.monotonic() + args.seconds
    senders = [
        asyncio.create_task(
            device(
                run,
                clients,
                instances,
                d,
                random.Random(rng.random()),
                users,
                groups,
                devices,
                until,
                args.rate,
            )
        )
        for d in clients
    ]
    single = [ds[0] for ds in devices.values() if len(ds) == 1]
    restarter = asyncio.create_task(
        restarts(
            run,
            clients,
            readers,
            instances,
            single,
            random.Random(rng.random()),
            until,
            args.restart_gap,
        )
    )
    print(f"traffic and faults for {args.seconds:.0f}s (seed {args.seed}):", flush=True)
    await faults(stack, run, rng, until, args)
    await restarter
    stopped = time.monotonic()
    print(f"  {run.now():7.1f}s faults over; settling (up to {args.settle:.0f}s)", flush=True)
    deadline = stopped + args.settle
    settled: float | None = None
    while time.monotonic() < deadline:
        if all(t.done() for t in senders) and all_shown(run):
            settled = time.monotonic() - stopped
            break
        await asyncio.sleep(0.2)
    for task in [*senders, watcher]:
        task.cancel()
    for client in clients.values():
        await client.close()
    await asyncio.gather(*senders, *readers, watcher, return_exceptions=True)
    verdict = check(run)
    print(report(run, verdict, stack, settled), flush=True)
    data: dict[str, object] = {
        "faults": [asdict(f) for f in run.faults],
        "verdict": asdict(verdict),
    }
    return (0 if verdict.ok and settled is not None else 1), data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--seed", type=int, default=1, help="the faults' and traffic's choices")
    parser.add_argument("--seconds", type=float, default=120, help="seconds of traffic and faults")
    parser.add_argument("--redis", choices=("single", "cluster"), default="single")
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--two-devices", type=int, default=10, help="users with two devices")
    parser.add_argument("--rate", type=float, default=0.5, help="messages a second per device")
    parser.add_argument("--large-group", type=int, default=5, help="the gateways' --large-group")
    parser.add_argument(
        "--wait-replicas", type=int, help="the gateways' --redis-wait-replicas (cluster: 1)"
    )
    parser.add_argument("--settle", type=float, default=90, help="seconds to wait for all shown")
    parser.add_argument(
        "--fault-gap", type=float, default=3.5, help="mean seconds between faults (half to 1.5x)"
    )
    parser.add_argument(
        "--restart-gap",
        type=float,
        default=6,
        help="mean seconds between client restarts (0: none)",
    )
    parser.add_argument("--max-stop", type=float, default=8, help="longest SIGSTOP, seconds")
    parser.add_argument("--full-outages", action="store_true", help="may stop every gateway or hub")
    parser.add_argument("--logs", help="directory for the processes' logs (default: a new one)")
    parser.add_argument("--json", help="write the faults and the verdict here")
    args = parser.parse_args(argv)
    if args.wait_replicas is None:
        args.wait_replicas = 1 if args.redis == "cluster" else 0
    logs = Path(args.logs or tempfile.mkdtemp(prefix="chaos-"))
    logs.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=logs / "clients.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    harness.exit_on_sigterm()
    print(f"chaos: {harness.machine()}; logs in {logs}", flush=True)
    stack = Stack(args, logs, secrets.token_hex(32), secrets.token_hex(24))
    try:
        stack.start()
        status, data = asyncio.run(soak(args, stack))
        if args.json:
            Path(args.json).write_text(json.dumps(data, indent=1))
        return status
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
