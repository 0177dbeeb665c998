"""The JavaScript client (``im_gateway/static/client.js``): its pure core's Node tests,
and how the gateway serves it."""

from __future__ import annotations

from pathlib import Path

from im_gateway import http
from tests.node import CLIENT_JS, ROOT, run_node_tests

NODE_TESTS = ROOT / "tests" / "js"


def test_client_core_node_tests_pass() -> None:
    """node --test on the core: examples and the seeded property test (300 runs) pass."""
    done = run_node_tests(NODE_TESTS / "client_core.test.mjs")
    assert "property: any order of frames" in done.stdout


def test_client_adapter_node_tests_pass() -> None:
    """node --test on the Client with a fake WebSocket: URLs, refusals, 1012, ack timers."""
    done = run_node_tests(NODE_TESTS / "client_adapter.test.mjs")
    assert "after a 1012 close it reconnects at once" in done.stdout


def test_client_hostile_node_tests_pass() -> None:
    """node --test against real WebSocket servers: a gateway answering heartbeats (and
    delivering) but no send is left within answerTimeout; one streaming a catch-up that
    never ends keeps the buffer within catchUpBuffer and is left."""
    done = run_node_tests(NODE_TESTS / "hostile.test.mjs")
    assert "a catch-up that never ends" in done.stdout


def test_client_module_is_served_as_javascript() -> None:
    """GET /client.js's file is the module's bytes with a JavaScript type, no CSP."""
    served = http.static_file("client.js")
    assert served.status_code == 200
    assert served.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert served.body == CLIENT_JS.read_bytes()
    assert b"export class Client" in served.body


def test_client_module_has_no_imports() -> None:
    """The module depends on nothing: no import statements, no require."""
    text = Path(CLIENT_JS).read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("//")]
    assert not [line for line in lines if line.startswith("import ") or "require(" in line]
