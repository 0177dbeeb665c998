"""bench/chaos.py's one-sided network faults (``--partitions``): each gateway reaches each
hub, and with one Redis its Redis, through a link of :mod:`chaos_proxy` (its own
process), which a fault freezes (silence) or cuts (resets) while every other link goes on.

Link names are ``gw-1>hub-a``, ``gw-2>redis``. :func:`paths` is the pure rule that keeps
a way through: a gateway that is up, reaches its Redis and reaches a hub that is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Iterable
from pathlib import Path

import harness
from chaos_check import Fault, Run
from chaos_proxy import control

from devtools.launch import Process

KINDS = ("link-freeze", "link-cut")
"""The faults on links (``--partitions`` only): a freeze (silent) or a cut (resets)."""

REDIS = "redis"
"""The name a gateway's Redis link ends with."""


HEALTH_PROBE = 1.5
"""Seconds before a link fault's end that its gateway's /healthz is asked (its timeout)."""


def link(gateway: str, to: str) -> str:
    return f"{gateway}>{to}"


def paths(
    down: Collection[str], gateways: Iterable[str], hubs: Iterable[str], redis_links: bool
) -> list[str]:
    """The gateways with a way through, ``down`` being the processes and links faulted:
    up, with their Redis link up (when there is one) and an up link to an up hub."""
    hubs = list(hubs)
    return [
        g
        for g in gateways
        if g not in down
        and not (redis_links and link(g, REDIS) in down)
        and any(h not in down and link(g, h) not in down for h in hubs)
    ]


def healthz(port: int, names: dict[str, str]) -> str:
    """``GET /healthz``'s status, its hubs' states (``names``: address to name) and its
    reason, in one line."""
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=HEALTH_PROBE) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except OSError as exc:
        return f"no answer ({type(exc).__name__})"
    with contextlib.suppress(ValueError):
        report = json.loads(body)
        hubs = report.get("hubs") or {}
        states = " ".join(f"{names.get(a, a)} {state}" for a, state in sorted(hubs.items()))
        return f"{status} ({states}) {report.get('reason', '')}".rstrip()
    return f"{status} {body[:200]!r}"


class Links:
    """The proxy process and its links: ``address(name)`` is where a gateway connects."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.ports: dict[str, int] = {}
        self.targets: dict[str, str] = {}
        self.control_port = 0
        self.process: Process | None = None

    def add(self, name: str, target: str) -> str:
        """A link to ``target`` (HOST:PORT); the address to connect to instead."""
        self.ports[name] = harness.free_port()
        self.targets[name] = target
        return self.address(name)

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def start(self) -> None:
        self.control_port = harness.free_port()
        proxy = str(Path(__file__).with_name("chaos_proxy.py"))
        argv = [sys.executable, proxy, "--control", f"127.0.0.1:{self.control_port}"]
        for name, target in self.targets.items():
            argv += ["--link", f"{name}={self.address(name)}>{target}"]
        log = self.logs / "proxy.log"
        self.process = Process("proxy", argv, log_path=log).start()
        self.process.wait_port(self.control_port)

    @property
    def names(self) -> list[str]:
        return list(self.ports)

    async def command(self, do: str, name: str) -> None:
        """``freeze``, ``cut`` or ``heal`` the link ``name``."""
        answer = await control(self.control_port, do, name)
        if not answer.get("ok"):
            raise RuntimeError(f"the proxy refused {do} {name}: {answer}")

    async def report(self) -> str:
        """One line per link that was faulted or turned connections away: the proxy's
        counters (accepted, reset by a cut, refused while cut, target refused)."""
        answer = await control(self.control_port, "show")
        links = answer.get("links")
        lines = ["proxy links (counters):"]
        for entry in links if isinstance(links, list) else []:
            counts = {k: v for k, v in entry.items() if k not in ("link", "state", "connections")}
            if set(counts) - {"accepted"}:
                shown = ", ".join(f"{k} {v}" for k, v in counts.items())
                lines.append(f"  {entry['link']}: {shown}")
        return "\n".join(lines)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    async def fault(
        self,
        run: Run,
        rng: random.Random,
        kind: str,
        victim: str,
        max_stop: float,
        down: set[str],
        gateway_port: int,
    ) -> None:
        """A freeze or a cut of the link ``victim`` (in ``down`` meanwhile), then its heal;
        its gateway's ``/healthz`` (on ``gateway_port``) as the fault ends is printed."""
        seconds = rng.uniform(1.0, max_stop)
        down.add(victim)
        at = time.monotonic() - run.start
        run.faults.append(Fault(at, kind, victim, seconds))
        print(f"  {at:7.1f}s {kind} {victim} for {seconds:.1f}s", flush=True)
        ends = time.monotonic() + seconds
        try:
            await self.command("freeze" if kind == "link-freeze" else "cut", victim)
            await asyncio.sleep(max(0.0, seconds - HEALTH_PROBE))
            names = {self.address(n): n.split(">")[1] for n in self.names}
            health = await asyncio.to_thread(healthz, gateway_port, names)
            at = time.monotonic() - run.start
            gateway = victim.split(">")[0]
            print(f"  {at:7.1f}s {kind} {victim}: {gateway} /healthz {health}", flush=True)
            await asyncio.sleep(ends - time.monotonic())
        finally:
            await self.command("heal", victim)
            down.discard(victim)
