"""A randomized fault soak: users chat through the real client library while gateways,
hubs and Redis are killed and frozen at random; then every acknowledged message is
checked to have been shown exactly once, in order, to every device it was meant for.

    python bench/chaos.py                        # one Redis, 120 s of faults, seed 1
    python bench/chaos.py --redis cluster        # a Redis Cluster (3 primaries, 3 replicas)
    python bench/chaos.py --seed 7 --seconds 60  # replay a run's fault and traffic choices
    python bench/chaos.py --help

Real processes on 127.0.0.1: one redis-server (``--redis single``) or a Redis Cluster, two
hubs and three gateways (``python -m im_gateway``, each with ``--hub`` naming both hubs,
``--large-group`` low so large groups are cheap, ``--group-join open``; gw-3 with
``--workers 2``, two gateway processes on one port under a parent). In this process,
``--users`` users, the first ``--two-devices`` of them with two devices, each device an
:class:`im_gateway.client.Client` given the three gateway URLs in its own shuffled order.
Three groups are set up through the server API first: a small one, a large one (above
``--large-group``) and one right at the bound. Each device sends at about ``--rate``
messages a second to a random peer or one of the groups it is in, one at a time; every
``send`` that returns (type 10) is recorded with its message id and time.

Membership changes, about every ``--group-gap`` s, each tried until answered and never two
at once for one user and group: a client's ``join``/``leave`` or the server API's
``groups/add``/``groups/remove`` of one user in the small or the large group (kept near
one and three times the bound, so the small one crosses it both ways), or the server API
moving the third group across the bound (growing it past, shrinking it back to it).

Faults at random (from ``--seed``), about every ``--fault-gap`` s, for ``--seconds``:
SIGKILL a gateway and restart it; SIGTERM one (it drains: 1012) and restart it; SIGSTOP
a gateway or a hub for up to ``--max-stop`` s; SIGKILL one worker of gw-3 (its parent
starts it again); on gw-3, SIGKILL and SIGSTOP take the parent and both workers (a
machine lost or frozen), SIGTERM the parent (both drain); SIGKILL a hub and restart it;
SIGSTOP the Redis (or a cluster primary) for up to half that; with ``--redis cluster``,
SIGKILL a primary and restart it once its replica took over (the gateways then run with
``--redis-wait-replicas 1``); and, about every ``--restart-gap`` s, close a device's
client and start a new one (an app restart: the new one must show what the old one had
not, and nothing it had). At least one gateway and one hub stay up throughout unless
``--full-outages``. Each fault and membership change is printed with its time.

With ``--partitions`` (off by default: a run without it makes the same choices for a
seed), each gateway reaches each hub, and with one Redis its Redis, through its own link
of ``bench/chaos_proxy.py`` (one process; a cluster's links stay direct, its nodes
announce their own addresses), and one-sided network faults join the draw: ``link-freeze``
(silence both ways, every socket left open) or ``link-cut`` (every connection reset, new
ones reset) of one link such as ``gw-1>hub-a`` or ``gw-2>redis`` for up to ``--max-stop``
s, then healed, while every other link goes on. Unless ``--full-outages``, a fault is
then only made if some gateway keeps a way through (up, its Redis link up, an up link to
an up hub; :mod:`chaos_links`).

Then the faults stop, everything is resumed or restarted, and the run waits (up to
``--settle`` s) until every device has shown every acknowledged message meant for it.
Who must show what (:mod:`chaos_check` has the details): a message to a user, every device
of theirs and the sender's other device; a message to a group, every device of a user
who was a member from the send's start to its answer (joined, and answered, before it
began; not leaving until after), and no device of a user who was not a member all that
time ("shown to a non-member"); changes in between leave it unchecked. A device of a
two-device user that was restarted may rightly miss what its other device showed
(positions are per user): counted apart, but then that other device must have shown it.
The checks, per receiving device: every message it must show was yielded by
``messages()`` exactly once (by id) by each of its clients; each stream (the inbox, each
large group) in seq order; and each sender's answered messages in the order it sent them. The
report counts messages acknowledged, shown, missing (the first few with their timeline:
sent when, through which gateway, the receiver's connections, membership changes and the
faults around), duplicates, out of order, shown to a device they were not meant for or to
a non-member, and the faults run. The processes' logs (and the clients') stay in
``--logs`` (a new temporary directory by default). Exit status 1 when a check failed.

``--js-devices N`` (default 0) puts N devices on the JavaScript client
(``im_gateway/static/client.js``) instead: the second devices of the first two-device
users for half of them (rounded up: users with one device of each kind, sharing
positions), one-device users from the last for the rest. All of them run in one Node
process (``bench/chaos_js.mjs``, stderr in ``js-clients.log``) that the soak drives in
JSON lines through :class:`chaos_js.JsClient`, a stand-in for the Python client with the
same calls; what ``onmessage`` got is what the device showed. Every choice the run makes
stays the seed's; a run fails at once, saying so, if the Node process dies.
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
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import chaos_links
import client_js
import harness
import redis
from chaos_check import Change, Device, Fault, Run, Send, Shown, check, report, unshown
from chaos_js import JsClient, JsHost, js_devices

from devtools.launch import Process, gateway_argv, gateway_healthy, hub_argv
from im_gateway.client import Client, Refused

SMALL, LARGE, GROW = 7, 8, 9
"""The small group's id, the large group's, and the one that the server API grows past
``--large-group`` and shrinks back below it."""

WORKERS = "gw-3"
"""The gateway that runs ``--workers 2`` (unless ``--workers 1``)."""


def now(run: Run) -> float:
    return time.monotonic() - run.start


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
        self.links = chaos_links.Links(logs) if args.partitions else None

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
        hubs = {
            f"gw-{i}": ",".join(f"127.0.0.1:{self.ports[h]}" for h in self.hubs) for i in (1, 2, 3)
        }
        urls = dict.fromkeys(hubs, self.url)
        if self.links is not None:
            hubs, urls = self._proxied(self.links, hubs, urls)
        for i in (1, 2, 3):
            name = f"gw-{i}"
            port = self.ports[name] = harness.free_port()
            argv = gateway_argv(f"127.0.0.1:{port}", "--gateway-id", name, "--hub", hubs[name])
            argv += ["--redis-url", urls[name], "--jwt-secret", self.secret]
            argv += ["--large-group", str(self.args.large_group)]
            argv += ["--redis-wait-replicas", str(self.args.wait_replicas)]
            argv += ["--group-join", "open"]
            if name == WORKERS and self.args.workers > 1:
                argv += ["--workers", str(self.args.workers), "--worker-restarts", "100"]
            if i == 1:
                api = self.ports["api"] = harness.free_port()
                argv += ["--api-listen", f"127.0.0.1:{api}", "--api-key", self.api_key]
            self.gateways[name] = self._process(name, argv)
        for name, gw in self.gateways.items():
            port = self.ports[name]
            gw.wait_ready(functools.partial(gateway_healthy, port), timeout=30, what="/healthz 200")

    def _proxied(
        self, links: chaos_links.Links, hubs: dict[str, str], urls: dict[str, str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Each gateway's hubs and Redis URL through the proxy (a cluster's links stay
        direct: its nodes announce their own addresses)."""
        for gw in hubs:
            hubs[gw] = ",".join(
                links.add(chaos_links.link(gw, h), f"127.0.0.1:{self.ports[h]}") for h in self.hubs
            )
            if self.args.redis == "single":
                port = self.redis[0].argv[self.redis[0].argv.index("--port") + 1]
                address = links.add(chaos_links.link(gw, chaos_links.REDIS), f"127.0.0.1:{port}")
                urls[gw] = f"redis://{address}/0"
        links.start()
        return hubs, urls

    def ws_urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{self.ports[g]}/ws" for g in self.gateways]

    def workers(self, name: str) -> list[int]:
        """The worker processes of gateway ``name`` (none unless it runs ``--workers``)."""
        if name != WORKERS or self.args.workers < 2:
            return []
        pid = self.gateways[name].pid
        with contextlib.suppress(OSError):
            return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        return []

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
        if self.links is not None:
            self.links.stop()


def api(
    stack: Stack, method: str, body: dict[str, object], timeout: float = 10
) -> dict[str, object]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{stack.ports['api']}/api/{method}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {stack.api_key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer: dict[str, object] = json.loads(response.read())
        return answer


# --- the faults -------------------------------------------------------------------------


KINDS = (
    "gw-kill",
    "gw-term",
    "gw-stop",
    "worker-kill",
    "hub-kill",
    "hub-stop",
    "redis-stop",
    "redis-kill",
)
"""The faults on processes; ``redis-kill`` (a cluster primary, restarted: it rejoins as a
replica) only with ``--redis cluster`` (one Redis runs without persistence);
``worker-kill`` (one worker of the gateway with ``--workers``: its parent starts it
again) only with ``--workers`` 2 or more. On that gateway, ``gw-kill`` kills the parent
and its workers (a machine lost), ``gw-stop`` stops them all (a machine frozen)."""


async def exited(process: Process) -> None:
    # A draining gateway takes a few seconds (its grace): wait without blocking.
    while process.proc.poll() is None:  # noqa: ASYNC110 - a child's exit has no event
        await asyncio.sleep(0.05)


def signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


async def fault(
    stack: Stack, run: Run, rng: random.Random, kind: str, victim: str, max_stop: float
) -> None:
    """One fault on ``victim``, from its start to its recovery (restart or SIGCONT)."""
    if kind in chaos_links.KINDS:
        assert stack.links is not None
        gateway = victim.split(">")[0]
        await stack.links.fault(run, rng, kind, victim, max_stop, stack.down, stack.ports[gateway])
        return
    if kind.endswith("-stop"):
        seconds = rng.uniform(1.0, max_stop if kind != "redis-stop" else max_stop / 2)
    else:
        seconds = rng.uniform(0.3, 3.0)
    process = stack.process(victim)
    workers = stack.workers(victim)
    stack.down.add(victim)
    shown = victim
    if kind == "worker-kill" and workers:
        worker = rng.choice(workers)
        shown = f"{victim} worker {workers.index(worker)} (pid {worker})"
    run.faults.append(Fault(now(run), kind, shown, seconds))
    print(f"  {now(run):7.1f}s {kind} {shown} for {seconds:.1f}s", flush=True)
    stopped = kind.endswith("-stop")
    frozen = [process.pid, *workers] if stopped else []
    try:
        if stopped:
            signal_all(frozen, signal.SIGSTOP)
        elif kind == "worker-kill":
            signal_all([worker] if workers else [], signal.SIGKILL)
        else:
            replicas = (
                await asyncio.to_thread(stack.replicas_of, victim) if kind == "redis-kill" else []
            )
            if kind == "gw-kill":
                signal_all(workers, signal.SIGKILL)
            process.proc.send_signal(signal.SIGTERM if kind == "gw-term" else signal.SIGKILL)
            await exited(process)
            # A primary without persistence that came back before its replica took over
            # would come back empty and keep its slots: every key in them lost, a Redis
            # deployment's fault, not ours. Restart it only once the replica took over.
            deadline = time.monotonic() + 60
            while replicas and not await asyncio.to_thread(stack.promoted, replicas):
                if time.monotonic() > deadline:
                    print(f"  {now(run):7.1f}s no replica of {victim} took over", flush=True)
                    break
                await asyncio.sleep(0.1)
        await asyncio.sleep(seconds)
    finally:
        if stopped:
            signal_all(frozen, signal.SIGCONT)
        elif kind != "worker-kill":
            process.start()  # from this (the main) thread: it dies with this process
        stack.down.discard(victim)


async def supervise(stack: Stack, run: Run) -> None:
    """Start again a gateway or hub that exited by itself (not in a fault of ours), as a
    supervisor (systemd, Kubernetes) would: a gateway started while its Redis does not
    answer exits with "cannot reach Redis", by design."""
    while True:
        await asyncio.sleep(1.0)
        for name, process in [*stack.hubs.items(), *stack.gateways.items()]:
            code = process.proc.poll()
            if name not in stack.down and code is not None:
                run.faults.append(Fault(now(run), "exited", name, 0.0))  # (not ours)
                print(f"  {now(run):7.1f}s {name} exited by itself ({code}); started", flush=True)
                process.start()


def pick(stack: Stack, rng: random.Random, full: bool) -> tuple[str, str] | None:
    """A fault and its victim, keeping a gateway and a hub up unless ``full`` (with
    ``--partitions``: a gateway that reaches its Redis and an up hub)."""
    kinds = [k for k in KINDS if k != "redis-kill" or stack.args.redis == "cluster"]
    kinds = [k for k in kinds if k != "worker-kill" or stack.args.workers > 1]
    if stack.links is not None:
        kinds += chaos_links.KINDS
    kind = rng.choice(kinds)
    if kind in chaos_links.KINDS:
        names = stack.links.names if stack.links is not None else []
    elif kind == "worker-kill":
        names = [WORKERS]
    elif kind.startswith("gw"):
        names = list(stack.gateways)
    elif kind.startswith("hub"):
        names = list(stack.hubs)
    elif any(n.startswith("redis") for n in stack.down):
        return None  # one Redis fault at a time
    else:
        names = stack.primaries()
    free = [n for n in names if n not in stack.down]
    if kind == "worker-kill":
        return (kind, WORKERS) if free else None
    if not free or (not full and len(free) == 1 and kind.startswith(("gw", "hub"))):
        return None
    victim = rng.choice(free)
    if stack.links is not None and not full and not kind.startswith("redis"):
        after = {*stack.down, victim}
        if not chaos_links.paths(after, stack.gateways, stack.hubs, stack.args.redis == "single"):
            return None
    return kind, victim


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


@dataclass
class Users:
    """The users' devices and clients, and what the harness believes of the groups."""

    devices: dict[int, list[Device]]
    clients: dict[Device, Client | JsClient] = field(default_factory=dict)
    instances: Counter[Device] = field(default_factory=Counter)
    members: dict[int, set[int]] = field(default_factory=dict)
    """Each group's members as of the last answered change (a send to a group the user has
    just left is refused ``not_member``: counted, harmless)."""
    busy: set[tuple[int, int]] = field(default_factory=set)
    """(user, group) pairs with a change under way: never two at once."""
    js: JsHost | None = None
    on_js: set[Device] = field(default_factory=set)
    """The devices that run the JavaScript client (``--js-devices``), in ``js``."""

    def start(self, me: Device, urls: list[str], token: str) -> Client | JsClient:
        """A new client for device ``me`` (the next instance: a start or a restart)."""
        if self.js is not None and me in self.on_js:
            client: Client | JsClient = self.js.open(me, self.instances[me], urls, token)
        else:
            client = Client(urls, token=token)
        self.clients[me] = client
        return client


async def device(
    run: Run, users: Users, me: Device, rng: random.Random, until: float, rate: float
) -> None:
    """Send to random peers and groups, one at a time, until ``until``."""
    user = me[0]
    peers = list(users.devices)
    for n in itertools.count():
        await asyncio.sleep(rng.expovariate(rate))
        if time.monotonic() >= until:
            return
        content = f"{user}.{me[1]}.{n}"
        others = frozenset(d for d in users.devices[user] if d != me)
        mine = sorted(g for g, members in users.members.items() if user in members)
        group = 0
        if mine and rng.random() < 0.35:
            group = rng.choice(mine)
            target, kw = f"g{group}", {"group": group}
            recipients = others
        else:
            to = rng.choice([p for p in peers if p != user])
            target, kw = f"u{to}", {"to": to}
            recipients = frozenset(users.devices[to]) | others
        client = users.clients[me]
        instance = users.instances[me]
        record = Send(content, me, target, recipients, now(run), client.url or "-", instance)
        record.group = group
        run.sends[content] = record
        try:
            sent = await client.send(content=content, **kw)
        except Refused as exc:
            run.refused[exc.code] += 1
            continue
        record.msg_id, record.acked, record.acked_via = sent.msg_id, now(run), client.url or "-"


async def receive(run: Run, client: Client | JsClient, me: Device, instance: int) -> None:
    async for message in client.messages():
        run.shown[me].append(Shown(message, now(run), instance))


async def restarts(
    run: Run,
    users: Users,
    readers: list[asyncio.Task[None]],
    rng: random.Random,
    until: float,
    gap: float,
) -> None:
    """Now and then close a device's client and start a new one (an app restart): the new
    one must not show again what the old one showed, nor miss anything (a device of a
    two-device user may rightly miss what the other showed: positions are per user)."""
    while gap > 0:
        await asyncio.sleep(rng.uniform(gap / 2, gap * 1.5))
        if time.monotonic() >= until:
            return
        me = rng.choice(sorted(users.clients))
        old = users.clients[me]
        connected = "connected" if old.url else "disconnected"
        victim = f"user {me[0]} device {me[1]} ({connected})"
        run.faults.append(Fault(now(run), "client-restart", victim, 0.0))
        run.restarts.append((now(run), me))
        print(f"  {now(run):7.1f}s client-restart {victim}", flush=True)
        await old.close()
        users.instances[me] += 1
        new = users.start(me, old._urls, old._token)
        instance = users.instances[me]
        readers.append(asyncio.create_task(receive(run, new, me, instance)))


async def change(
    run: Run, stack: Stack, users: Users, user_ids: list[int], group: int, join: bool, how: str
) -> None:
    """One membership change, tried until answered (joins and leaves are idempotent):
    through a client of the user (``how`` "client"), or the server API ("api")."""
    started = now(run)
    records = [Change(u, group, join, started, how) for u in user_ids]
    run.changes += records
    try:
        while True:
            try:
                if how == "client":
                    me = random.choice(users.devices[user_ids[0]])
                    client = users.clients[me]
                    await (client.join(group) if join else client.leave(group))
                else:
                    method = "groups/add" if join else "groups/remove"
                    body = {"group": group, "users": user_ids}
                    # A long timeout: an attempt given up on while a stopped gateway
                    # holds it could take effect after a later change of the pair.
                    await asyncio.to_thread(api, stack, method, body, 60.0)
                break
            except (Refused, OSError) as exc:
                code = exc.code if isinstance(exc, Refused) else type(exc).__name__
                run.refused[f"{how} {'join' if join else 'leave'}: {code}"] += 1
                await asyncio.sleep(0.5)
        answered = now(run)
        for r in records:
            r.answered = answered
        for u in user_ids:
            (users.members[group].add if join else users.members[group].discard)(u)
    finally:
        users.busy -= {(u, group) for u in user_ids}


TARGETS = {SMALL: 1, LARGE: 3}
"""Clients' joins and leaves keep these groups near this many times ``--large-group``
members (the small one crossing it now and then)."""


async def memberships(
    run: Run, stack: Stack, users: Users, rng: random.Random, until: float, gap: float
) -> None:
    """About every ``gap`` s: a client joins or leaves the small or the large group, or
    the server API adds or removes a user, or moves the third group across
    ``--large-group`` (growing it past, or shrinking it back to, the bound)."""
    bound = stack.args.large_group
    tasks: list[asyncio.Task[None]] = []
    while gap > 0:
        await asyncio.sleep(rng.uniform(gap / 2, gap * 1.5))
        if time.monotonic() >= until:
            break
        if rng.random() < 0.3:  # the third group across the bound, either way
            group, members = GROW, users.members[GROW]
            join = len(members) <= bound
            count = bound + 2 - len(members) if join else len(members) - bound + 1
            how = "api"
        else:
            group = rng.choice(sorted(TARGETS))
            members = users.members[group]
            join = (len(members) < TARGETS[group] * bound) != (rng.random() < 0.25)
            count, how = 1, "client" if rng.random() < 0.7 else "api"
        pool = [u for u in users.devices if (u in members) != join and (u, group) not in users.busy]
        chosen = rng.sample(pool, min(count, len(pool)))
        if not chosen:
            continue
        users.busy |= {(u, group) for u in chosen}
        verb = "join" if join else "leave"
        print(
            f"  {now(run):7.1f}s {how} {verb} g{group}: {' '.join(map(str, chosen))} "
            f"({len(members)} members before)",
            flush=True,
        )
        tasks.append(asyncio.create_task(change(run, stack, users, chosen, group, join, how)))
    if tasks:  # those still unanswered a minute on stay unanswered (never checked after)
        _, late = await asyncio.wait(tasks, timeout=60)
        for task in late:
            task.cancel()


def replay_ended(client: Client | JsClient) -> bool:
    """A connect replay of ``client`` has ended (the Python client's state's, private: no
    public word; the JavaScript client's first "live" status)."""
    if isinstance(client, JsClient):
        return client.replayed
    return client._state._marked


async def watch_urls(run: Run, users: Users) -> None:
    """Each device's connection (URL, or "-" while disconnected), as it changes, and when
    each client's first connect replay ended."""
    while True:
        for me, client in users.clients.items():
            url, instance = client.url or "-", users.instances[me]
            seen = run.urls[me]
            if not seen or seen[-1][1:] != (url, instance):
                seen.append((now(run), url, instance))
            if (me, instance) not in run.replayed and replay_ended(client):
                run.replayed[me, instance] = now(run)
        await asyncio.sleep(0.1)


# --- the run ----------------------------------------------------------------------------


async def soak(
    args: argparse.Namespace, stack: Stack, js: JsHost | None
) -> tuple[int, dict[str, object]]:
    rng = random.Random(args.seed)
    random.seed(args.seed)  # the client library's backoffs
    ids = list(range(1001, 1001 + args.users))
    users = Users(
        {u: [(u, 0), (u, 1)] if i < args.two_devices else [(u, 0)] for i, u in enumerate(ids)}
    )
    users.js, users.on_js = js, js_devices(users.devices, args.js_devices)
    users.members = {
        SMALL: set(rng.sample(ids, max(2, args.large_group - 1))),
        LARGE: set(rng.sample(ids, min(len(ids), args.large_group * 3))),
        GROW: set(rng.sample(ids, args.large_group)),
    }
    run = Run(start=time.monotonic(), devices=users.devices)
    for group, members in users.members.items():
        body: dict[str, object] = {"group": group, "users": sorted(members)}
        await asyncio.to_thread(api, stack, "groups/add", body)
        run.changes += [Change(u, group, True, -1.0, "setup", -1.0) for u in members]
    print(
        f"users {len(ids)}, devices {sum(map(len, users.devices.values()))}, groups "
        + ", ".join(f"g{g} {len(m)}" for g, m in users.members.items())
        + f" members (--large-group {args.large_group}), gateway {WORKERS} with "
        f"--workers {args.workers}",
        flush=True,
    )
    if users.on_js:
        named = " ".join(f"{u}.{d}" for u, d in sorted(users.on_js))
        print(f"JavaScript client (one Node process) on devices {named}", flush=True)
    for u in ids:
        token = harness.mint_token(u, stack.secret)
        for d in users.devices[u]:
            urls = stack.ws_urls()
            rng.shuffle(urls)
            users.start(d, urls, token)
    readers = [asyncio.create_task(receive(run, c, d, 0)) for d, c in users.clients.items()]
    watcher = asyncio.create_task(watch_urls(run, users))
    until = time.monotonic() + args.seconds
    senders = [
        asyncio.create_task(device(run, users, d, random.Random(rng.random()), until, args.rate))
        for d in users.clients
    ]
    restarter = asyncio.create_task(
        restarts(run, users, readers, random.Random(rng.random()), until, args.restart_gap)
    )
    changer = asyncio.create_task(
        memberships(run, stack, users, random.Random(rng.random()), until, args.group_gap)
    )
    print(f"traffic and faults for {args.seconds:.0f}s (seed {args.seed}):", flush=True)
    supervisor = asyncio.create_task(supervise(stack, run))
    await faults(stack, run, rng, until, args)
    await restarter
    stopped = time.monotonic()
    print(f"  {now(run):7.1f}s faults over; settling (up to {args.settle:.0f}s)", flush=True)
    await changer
    deadline = stopped + args.settle
    settled: float | None = None
    while time.monotonic() < deadline:
        if all(t.done() for t in senders) and not unshown(run):
            settled = time.monotonic() - stopped
            break
        await asyncio.sleep(1.0)
    for task in [*senders, watcher, supervisor]:
        task.cancel()
    for client in users.clients.values():
        await client.close()
    await asyncio.gather(*senders, *readers, watcher, supervisor, return_exceptions=True)
    verdict = check(run)
    print(report(run, verdict, stack.logs, settled), flush=True)
    if stack.links is not None:
        print(await stack.links.report(), flush=True)
    data: dict[str, object] = {
        "faults": [asdict(f) for f in run.faults],
        "changes": [asdict(c) for c in run.changes],
        "connections": {f"{u}.{d}": seen for (u, d), seen in run.urls.items()},
        "js_devices": [f"{u}.{d}" for u, d in sorted(users.on_js)],
        "replayed": {f"{u}.{d}#{i}": at for ((u, d), i), at in run.replayed.items()},
        "verdict": asdict(verdict),
    }
    return (0 if verdict.ok and settled is not None else 1), data


async def run_soak(args: argparse.Namespace, stack: Stack) -> tuple[int, dict[str, object]]:
    """The soak, with the JavaScript devices' Node process when ``--js-devices``: the run
    fails at once, saying so, when that process dies."""
    if not args.js_devices:
        return await soak(args, stack, None)
    js = await JsHost.start(client_js.ensure_ws(), stack.logs / "js-clients.log")

    async def died() -> tuple[int, dict[str, object]]:
        why = await asyncio.shield(js.died)
        print(f"FAILED: {why}", flush=True)
        return 1, {"error": why}

    task, watch = asyncio.create_task(soak(args, stack, js)), asyncio.create_task(died())
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        first = task if task in done else watch
        for other in (task, watch):
            if other is not first:
                other.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await other
        return first.result()
    finally:
        await js.close()


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
    parser.add_argument(
        "--group-gap",
        type=float,
        default=2,
        help="mean seconds between membership changes (0: none)",
    )
    parser.add_argument(
        "--workers", type=int, default=2, help=f"{WORKERS}'s --workers (1: a plain gateway)"
    )
    parser.add_argument("--max-stop", type=float, default=8, help="longest SIGSTOP, seconds")
    parser.add_argument("--full-outages", action="store_true", help="may stop every gateway or hub")
    parser.add_argument(
        "--js-devices",
        type=int,
        default=0,
        help="devices that run the JavaScript client, in one Node process (0: none)",
    )
    parser.add_argument(
        "--partitions",
        action="store_true",
        help="gateways reach hubs (and one Redis) through bench/chaos_proxy.py: adds "
        "link-freeze and link-cut of one link",
    )
    parser.add_argument("--logs", help="directory for the processes' logs (default: a new one)")
    parser.add_argument("--json", help="write the faults and the verdict here")
    args = parser.parse_args(argv)
    if args.wait_replicas is None:
        args.wait_replicas = 1 if args.redis == "cluster" else 0
    shape = {u: [(u, 0), (u, 1)][: 1 + (u < args.two_devices)] for u in range(args.users)}
    try:
        js_devices(shape, args.js_devices)
    except ValueError as exc:
        parser.error(str(exc))
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
        status, data = asyncio.run(run_soak(args, stack))
        if args.json:
            Path(args.json).write_text(json.dumps(data, indent=1))
        return status
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
