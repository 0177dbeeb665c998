"""deploy/: the Prometheus files pass promtool, the dashboard and the rules name only metrics
that a real scrape has, and the systemd units start real, valid commands."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from im_gateway import __main__ as gateway_main
from im_gateway import probe, probe_config
from im_gateway.config import GatewayConfig
from im_gateway.gateway import Gateway
from tests.end_to_end.harness import SECRET, Client, http_get
from tests.metrics_scrape import promtool
from transmit_hub import config as hub_config
from transmit_hub.config import HubConfig
from transmit_hub.server import HubServer

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "transmit-hub.json"
UNITS = DEPLOY / "systemd"
METRIC = re.compile(r"\b((?:im_gateway|transmit_hub)_[a-z0-9_]+)\b")
TYPE_LINE = re.compile(r"^# TYPE (\S+) (\S+)$", re.MULTILINE)


def test_promtool_accepts_the_rules_and_the_scrape_config() -> None:
    """``promtool check rules`` and ``check config`` pass."""
    for args in (["check", "rules", str(RULES)], ["check", "config", str(SCRAPE_CONFIG)]):
        done = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def queried_metrics() -> set[str]:
    """Every metric name in the dashboard's queries and in the alerting rules."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert exprs
    found = {m for expr in exprs for m in METRIC.findall(expr)}
    found |= set(METRIC.findall(RULES.read_text()))
    return found


def exposed(text: str) -> set[str]:
    """The sample names a scrape can hold: counters with ``_total``, histograms with their
    ``_bucket``, ``_count`` and ``_sum``."""
    names: set[str] = set()
    for name, kind in TYPE_LINE.findall(text):
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    return names


async def test_dashboard_and_rules_name_only_metrics_a_real_scrape_has(redis_url: str) -> None:
    """Scrape a real hub, a real gateway with a user on it, and the probe's registry: every
    metric the dashboard and the rules query is among them."""
    async with (
        HubServer(HubConfig(listen="127.0.0.1:0", metrics_listen="127.0.0.1:0", grace=0.2)) as hub,
        Gateway(
            GatewayConfig(
                listen="127.0.0.1:0",
                gateway_id="gw-deploy",
                jwt_secret=SECRET,
                hub=hub.address,
                redis_url=redis_url,
            )
        ) as gateway,
    ):
        await gateway.wait_linked(10)
        client = await Client.open(gateway.port, 1)
        try:
            await client.wait_for(lambda f: f["type"] == 14)
            texts = []
            for port in (gateway.port, hub.metrics_port):
                status, body, _ = await http_get(port, "/metrics")
                assert status == 200
                texts.append(body.decode())
        finally:
            await client.close()
    texts.append(probe.ProbeMetrics().render().decode())
    have = set().union(*(exposed(t) for t in texts))
    missing = queried_metrics() - have
    assert not missing, f"queried but never exposed: {sorted(missing)}"
    for pinned in (
        "im_gateway_connections",
        "im_gateway_messages_accepted_total",
        "im_gateway_frames_refused_total",
        "transmit_hub_gateways_attached",
        "transmit_hub_maps_received_total",
        "transmit_hub_deliveries_sent_total",
        "transmit_hub_undeliverable_total",
    ):
        assert pinned in have


def unit(name: str) -> configparser.SectionProxy:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((UNITS / name).read_text())
    return parser["Service"]


def exec_start(service: configparser.SectionProxy) -> list[str]:
    """The ExecStart command, with the installed interpreter replaced by this one."""
    argv = shlex.split(service["ExecStart"])
    assert argv[0].endswith("/python"), argv[0]
    assert argv[1] == "-m"
    return [sys.executable, *argv[1:]]


def flag(argv: list[str], name: str, default: float) -> float:
    return float(argv[argv.index(name) + 1]) if name in argv else default


@pytest.mark.parametrize(
    "name", ["transmit-hub.service", "im-gateway.service", "im-gateway-probe.service"]
)
def test_units_start_valid_commands(name: str) -> None:
    """ExecStart runs with --help (exit 0) and its flags parse and validate with the
    program's own parser; SIGTERM stops it, with a stop timeout above its drain."""
    service = unit(name)
    argv = exec_start(service)
    done = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    args = argv[3:]
    assert service["KillSignal"] == "SIGTERM"
    stop = float(service["TimeoutStopSec"])
    if argv[2] == "transmit_hub":
        config = hub_config.parse_config(args, env={})
        assert stop > config.grace + 1
    elif args[:1] == ["probe"]:
        probe_config.parse_config(args[1:], {"IM_GATEWAY_PROBE_JWT_SECRET": "s" * 32})
    else:
        env = {"IM_GATEWAY_JWT_SECRET": "s" * 32}
        gw = gateway_main.parse_config(args, env)
        assert stop > gw.drain_timeout + gw.close_timeout
        assert int(service["LimitNOFILE"]) > gw.max_connections
