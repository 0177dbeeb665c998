"""Same-port HTTP: routing, health, static files, JSON responses and token extraction
(pure: no loop, no socket)."""

from __future__ import annotations

from pathlib import Path

import pytest
from websockets.datastructures import Headers
from websockets.http11 import Request

from im_gateway import http


def test_static_files_by_bare_name_only(tmp_path: Path) -> None:
    """Known files are served with a content type; traversal and odd names are 404."""
    (tmp_path / "app.js").write_text("let x = 1;")
    (tmp_path / "index.html").write_text("<html></html>")
    ok = http.static_file("app.js", tmp_path)
    assert ok.status_code == 200
    assert ok.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert ok.body == b"let x = 1;"
    assert http.static_file("index.html", tmp_path).headers["Content-Type"].startswith("text/html")
    for bad in ("../app.js", "..", ".hidden", "sub/app.js", "missing.css", "a" * 200):
        assert http.static_file(bad, tmp_path).status_code == 404, bad


def test_json_response_has_length_and_type() -> None:
    """JSON responses carry Content-Type and Content-Length and close the connection."""
    response = http.json_response(503, {"status": "unavailable"})
    assert response.status_code == 503
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Content-Length"] == str(len(response.body))
    assert response.headers["Connection"] == "close"


def test_responses_keep_the_token_in_the_url_to_themselves(tmp_path: Path) -> None:
    """Every response forbids Referer, sniffing and framing; the page also carries a
    Content-Security-Policy that allows only its own scripts and sockets."""
    (tmp_path / "index.html").write_text("<html></html>")
    (tmp_path / "app.js").write_text("1;")
    page = http.static_file("index.html", tmp_path)
    for response in (page, http.static_file("app.js", tmp_path), http.json_response(200, {})):
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "Content-Security-Policy" not in http.static_file("app.js", tmp_path).headers


@pytest.mark.parametrize(
    ("path", "headers", "expected"),
    [
        ("/ws?token=abc", {}, "abc"),
        ("/ws", {"Authorization": "Bearer xyz"}, "xyz"),
        ("/ws", {"Authorization": "bearer  xyz "}, "xyz"),
        ("/ws?token=abc", {"Authorization": "Bearer xyz"}, "abc"),
        ("/ws", {"Authorization": "Basic Zm9v"}, ""),
        ("/ws", {}, ""),
    ],
)
def test_token_from_query_or_bearer_header(
    path: str, headers: dict[str, str], expected: str
) -> None:
    """The token comes from ?token= first, then Authorization: Bearer."""
    request = Request(path, Headers(headers))
    target, query = http.split_target(request)
    assert target == "/ws"
    assert http.bearer_token(request, query) == expected


@pytest.mark.parametrize(
    ("path", "metrics_on", "expected"),
    [
        ("/ws", True, http.Route(http.UPGRADE)),
        ("/healthz", True, http.Route(http.HEALTHZ)),
        ("/metrics", True, http.Route(http.METRICS)),
        ("/metrics", False, http.Route(http.NOT_FOUND)),  # off: no such page
        ("/info", True, http.Route(http.INFO)),
        ("/", True, http.Route(http.STATIC, "index.html")),
        ("/index.html", True, http.Route(http.STATIC, "index.html")),
        ("/client.js", True, http.Route(http.STATIC, "client.js")),
        ("/static/app.js", True, http.Route(http.STATIC, "app.js")),
        ("/static/../gateway.py", True, http.Route(http.STATIC, "../gateway.py")),
        ("/ws/", True, http.Route(http.NOT_FOUND)),
        ("/WS", True, http.Route(http.NOT_FOUND)),
        ("", True, http.Route(http.NOT_FOUND)),
    ],
)
def test_route_by_exact_path(path: str, metrics_on: bool, expected: http.Route) -> None:
    """Exact paths only; a static name is routed as given (static_file refuses bad ones)."""
    assert http.route(path, metrics_enabled=metrics_on) == expected


def test_a_routed_traversal_is_still_refused(tmp_path: Path) -> None:
    target = http.route("/static/../gateway.py", metrics_enabled=True)
    assert http.static_file(target.file, tmp_path).status_code == 404


def _health(**facts: object) -> tuple[bool, dict[str, object]]:
    base: dict[str, object] = {
        "gateway_id": "gw-1",
        "draining": False,
        "linked": True,
        "conflict": None,
        "refused": None,
        "configured_hubs": ("h1:1", "h2:2"),
        "hubs": None,
        "redis_error": None,
        "connections": 3,
    }
    base.update(facts)
    return http.health_report(**base)  # type: ignore[arg-type]


def test_health_ok_when_linked_and_the_store_answers() -> None:
    ok, report = _health()
    assert ok
    assert report == {
        "status": "ok",
        "gatewayId": "gw-1",
        "hub": "linked",
        "hubs": {"h1:1": "up", "h2:2": "up"},
        "redis": "ok",
        "connections": 3,
    }


def test_health_names_every_reason() -> None:
    """Draining, the hub (with the certificate refusal) and the store, in that order."""
    ok, report = _health(
        draining=True,
        linked=False,
        refused="bad certificate",
        redis_error=ConnectionError("connection refused"),
        hubs={"h1:1": "down", "h2:2": "down"},
    )
    assert not ok
    assert report["status"] == "unavailable"
    assert (report["hub"], report["redis"]) == ("down", "down")
    assert report["reason"] == (
        "draining: the gateway is shutting down; "
        "not linked to any hub (h1:1, h2:2): bad certificate; "
        "redis not answering: ConnectionError: connection refused"
    )


def test_health_says_why_each_hub_is_down() -> None:
    """With no hub linked, the reason says how each attempt ended; with one up, the
    report still names the other's error (and the gateway is healthy)."""
    errors = {"h1:1": "UNAVAILABLE: connection refused", "h2:2": "no Welcome from the hub"}
    ok, report = _health(linked=False, hub_errors=errors)
    assert not ok
    assert report["reason"] == (
        "not linked to any hub (h1:1, h2:2): "
        "h1:1: UNAVAILABLE: connection refused; h2:2: no Welcome from the hub"
    )
    assert report["hubErrors"] == errors
    ok, report = _health(hubs={"h1:1": "down", "h2:2": "up"}, hub_errors={"h1:1": "refused"})
    assert ok
    assert report["hubErrors"] == {"h1:1": "refused"}
    assert "reason" not in report


def test_health_a_refusal_says_more_than_the_hub_errors() -> None:
    _, report = _health(linked=False, refused="bad certificate", hub_errors={"h1:1": "x"})
    assert report["reason"] == "not linked to any hub (h1:1, h2:2): bad certificate"


def test_health_an_id_conflict_replaces_the_hub_reason() -> None:
    ok, report = _health(linked=False, conflict="gateway id gw-1 is held by another process")
    assert not ok
    assert report["reason"] == "gateway id gw-1 is held by another process"


def test_health_an_empty_store_error_has_no_trailing_colon() -> None:
    _, report = _health(redis_error=TimeoutError())
    assert report["reason"] == "redis not answering: TimeoutError"


def test_info_names_the_gateway_and_its_policy() -> None:
    assert http.info(None, "open") == {"gatewayId": None, "groupJoin": "open"}
