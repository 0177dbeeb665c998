"""Scraping and checking Prometheus endpoints in tests: parse, look up, ``promtool``."""

from __future__ import annotations

import shutil
import subprocess

from prometheus_client.parser import text_string_to_metric_families

from tests.end_to_end.harness import http_get

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

INSTALL_HINT = (
    "promtool is missing: install the Debian package 'prometheus' "
    "(apt-get install prometheus; .ci/run and scripts/test do it when they can)"
)


async def scrape(port: int, path: str = "/metrics") -> tuple[bytes, Samples]:
    """GET the endpoint; its body and every sample by (name, labels)."""
    status, body, headers = await http_get(port, path)
    assert status == 200, (status, body[:200])
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    return body, parse(body.decode())


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample ``name{labels}``; fails the test when it is absent."""
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no sample {name}{labels or ''} in the scrape"
    return samples[key]


def names(samples: Samples) -> set[str]:
    """Every metric family name in a scrape (``_total``, ``_bucket``... suffixes kept off)."""
    found = set()
    for name, _ in samples:
        found.add(name)
        for suffix in ("_total", "_bucket", "_count", "_sum", "_created"):
            if name.endswith(suffix):
                found.add(name[: -len(suffix)])
    return found


def promtool() -> str:
    """The path of ``promtool``; fails (never skips) the test when it is not installed."""
    path = shutil.which("promtool")
    assert path is not None, INSTALL_HINT
    return path


def promtool_check_metrics(body: bytes) -> None:
    """``promtool check metrics`` accepts ``body`` (lint problems included)."""
    done = subprocess.run(
        [promtool(), "check", "metrics"], input=body, capture_output=True, timeout=60
    )
    assert done.returncode == 0, (done.stdout + done.stderr).decode()
