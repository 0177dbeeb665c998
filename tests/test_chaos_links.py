"""bench/chaos_links.py: which gateways keep a way through the faulted processes and
links (the rule that keeps one unless ``--full-outages``)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # the soak imports it as ``chaos_links``

from chaos_links import paths  # noqa: E402 - after the path it comes from

GATEWAYS, HUBS = ("gw-1", "gw-2"), ("hub-a", "hub-b")


def test_paths() -> None:
    """A gateway needs itself, its Redis link (when proxied) and one up link to an up hub."""
    assert paths(set(), GATEWAYS, HUBS, redis_links=True) == ["gw-1", "gw-2"]
    assert paths({"gw-1>hub-a"}, GATEWAYS, HUBS, redis_links=True) == ["gw-1", "gw-2"]
    assert paths({"gw-1>hub-a", "hub-b"}, GATEWAYS, HUBS, redis_links=True) == ["gw-2"]
    assert paths({"gw-2", "gw-1>redis"}, GATEWAYS, HUBS, redis_links=True) == []
    assert paths({"gw-2", "gw-1>redis"}, GATEWAYS, HUBS, redis_links=False) == ["gw-1"]
    assert paths({"gw-1>hub-a", "gw-2>hub-b", "hub-b"}, GATEWAYS, HUBS, redis_links=True) == [
        "gw-2"
    ]
