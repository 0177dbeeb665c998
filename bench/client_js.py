"""The JavaScript client's own CPU per message sent and per message received.

    python bench/client_js.py [--count 5000] [--window 50] [--quick]

Redis, a hub and two gateways as processes; a sender (on gw-1) and a receiver (on gw-2),
each its own Node process, measure themselves with ``process.cpuUsage()``
(``bench/client_js.mjs``): the sender from its first send to its last answer (type 10),
``--window`` in flight; the receiver from its first message to its last. Each pair runs
twice: with ``im_gateway/static/client.js`` and with a bare ``ws`` client that does only
the minimum (JSON, client ids, type 10 matching, type 11 every 100 ms), so the difference
is what the library's guarantees cost. A third row feeds the pure ``ClientCore`` alone.
Node's ``ws`` package comes from ``.tools`` (installed with npm if missing).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import harness

SECRET = "bench-client-js-secret-of-at-least-32-bytes!"
SCRIPT = harness.REPO / "bench" / "client_js.mjs"
TOOLS = harness.REPO / ".tools"
SENDER, RECEIVER = 1, 2


def ensure_ws() -> Path:
    """``.tools`` with ``ws`` in it (npm, by name, into the project folder)."""
    if not (TOOLS / "node_modules" / "ws" / "package.json").exists():
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("npm is missing: it installs the 'ws' package this benchmark uses")
        TOOLS.mkdir(exist_ok=True)
        command = [npm, "install", "--silent", "--no-audit", "--no-fund"]
        subprocess.run([*command, "--prefix", str(TOOLS), "ws@8"], check=True)
    return TOOLS


def node_argv(role: str, impl: str, options: dict[str, Any]) -> list[str]:
    node = shutil.which("node")
    if node is None:
        raise SystemExit("node (20 or later) is missing")
    return [node, str(SCRIPT), role, impl, json.dumps(options)]


def result_line(child: harness.Child, timeout: float) -> dict[str, Any]:
    line = child.wait_line("{", timeout=timeout)
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def pair(
    started: list[harness.Child], ports: dict[str, int], impl: str, args: argparse.Namespace
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One sender and one receiver with ``impl``; their reports."""
    common = {"tools": str(TOOLS), "count": args.count, "size": args.size, "window": args.window}
    receiver = harness.Child(
        f"receive-{impl}",
        node_argv(
            "receive",
            impl,
            {
                **common,
                "url": f"ws://127.0.0.1:{ports['gw-2']}/ws",
                "token": harness.mint_token(RECEIVER, SECRET),
            },
        ),
    ).start()
    started.append(receiver)
    receiver.wait_line("ready", timeout=30)
    sender = harness.Child(
        f"send-{impl}",
        node_argv(
            "send",
            impl,
            {
                **common,
                "url": f"ws://127.0.0.1:{ports['gw-1']}/ws",
                "token": harness.mint_token(SENDER, SECRET),
                "peer": RECEIVER,
            },
        ),
    ).start()
    started.append(sender)
    timeout = 60 + args.count / 100
    return result_line(sender, timeout), result_line(receiver, timeout)


def run(args: argparse.Namespace) -> dict[str, Any]:
    ensure_ws()
    results: dict[str, Any] = {}
    with harness.children() as started:
        # (The per-connection rate limit, 200 frames/s by default, would time the limiter.)
        limits = ["--rate-limit", "1000000", "--rate-burst", "1000000"]
        ports = harness.start_stack(
            started, gateways=["gw-1", "gw-2"], secret=SECRET, gateway_args=limits
        )
        for round_ in range(args.repeat):
            for impl in ("raw", "client"):
                sent, received = pair(started, ports, impl, args)
                results.setdefault(impl, []).append({"send": sent, "receive": received})
                print(f"round {round_ + 1} {impl}: {sent} {received}", flush=True)
        core = harness.Child(
            "core",
            node_argv("core", "client", {"tools": str(TOOLS), "count": 20000, "size": args.size}),
        ).start()
        started.append(core)
        results["core"] = result_line(core, 60)
    return results


def per_message(report: dict[str, Any]) -> float:
    return float(report["cpuUs"]) / max(1, int(report["count"]))


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    rows = []
    for impl, label in (("raw", "bare ws (the floor)"), ("client", "client.js")):
        runs = results[impl]
        send = median([per_message(r["send"]) for r in runs])
        receive = median([per_message(r["receive"]) for r in runs])
        rate = median([r["send"]["count"] / r["send"]["wallS"] for r in runs])
        rows.append([label, f"{send:.1f}", f"{receive:.1f}", f"{rate:,.0f}"])
    core = per_message(results["core"])
    rows.append(["ClientCore alone (no I/O)", "", f"{core:.1f}", ""])
    title = (
        f"{args.count} messages of {args.size} bytes, {args.window} in flight, "
        f"median of {args.repeat} rounds"
    )
    headers = ["client", "CPU µs / msg sent", "CPU µs / msg received", "sends/s"]
    return title + "\n\n" + harness.table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="The JavaScript client's own CPU per message sent and received."
    )
    parser.add_argument("--count", type=int, default=5000, help="messages per run")
    parser.add_argument("--window", type=int, default=50, help="sends in flight")
    parser.add_argument("--size", type=int, default=100, help="content bytes per message")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (medians are reported)")
    harness.add_run_options(parser, each=None)
    parser.add_argument("--quick", action="store_true", help="1,000 messages, 1 round; < 20 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.count, args.repeat = 1000, 1
    started = harness.start_run("client_js", args)
    results = run(args)
    return harness.finish_run(report(results, args), started, args, results)


if __name__ == "__main__":
    sys.exit(main())
