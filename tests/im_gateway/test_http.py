"""Static files, JSON responses and token extraction (pure helpers)."""

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
