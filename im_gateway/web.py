"""Plain HTTP answers on the gateway's port: JSON, static files and routing by path.

Pure helpers (no sockets): they build ``websockets`` HTTP responses that the server's
``process_request`` hook returns instead of upgrading the connection.
"""

from __future__ import annotations

import http
import json
import mimetypes
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

STATIC_DIR = Path(__file__).resolve().parent / "static"
_STATIC_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css"}
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
"""The chat page's Content-Security-Policy: its own scripts, styles and sockets only
(the page URL carries the user's token, so nothing else may run or frame it)."""


def response(status: int, body: bytes, content_type: str, **headers: str) -> Response:
    """An HTTP response that closes the connection after the body."""
    status_ = http.HTTPStatus(status)
    hdrs = Headers()
    hdrs["Content-Type"] = content_type
    hdrs["Content-Length"] = str(len(body))
    hdrs["Cache-Control"] = "no-store"
    hdrs["Connection"] = "close"
    # The page's URL holds the user's token: never send it on as a Referer; no sniffing
    # of types, no framing.
    hdrs["Referrer-Policy"] = "no-referrer"
    hdrs["X-Content-Type-Options"] = "nosniff"
    hdrs["X-Frame-Options"] = "DENY"
    for name, value in headers.items():
        hdrs[name.replace("_", "-")] = value
    return Response(status_.value, status_.phrase, hdrs, body)


def json_response(status: int, payload: object, **headers: str) -> Response:
    """A JSON response."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    return response(status, body, "application/json", **headers)


def not_found() -> Response:
    return json_response(404, {"error": "not found"})


def static_file(name: str, directory: Path = STATIC_DIR) -> Response:
    """A file from ``directory`` by bare name (no sub-directories, no traversal), or 404."""
    if not _STATIC_NAME.match(name) or ".." in name:
        return not_found()
    path = directory / name
    try:
        body = path.read_bytes()
    except OSError:
        return not_found()
    suffix = path.suffix.lower()
    content_type = _TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
    if content_type.startswith("text/") or content_type in ("application/json",):
        content_type += "; charset=utf-8"
    if content_type.startswith("text/html"):
        return response(200, body, content_type, Content_Security_Policy=PAGE_POLICY)
    return response(200, body, content_type)


def split_target(request: Request) -> tuple[str, dict[str, list[str]]]:
    """The request's path and query parameters."""
    parts = urlsplit(request.path)
    return parts.path, parse_qs(parts.query)


def bearer_token(request: Request, query: dict[str, list[str]]) -> str:
    """The token from ``?token=`` or ``Authorization: Bearer``; ``""`` when neither."""
    values = query.get("token")
    if values and values[0]:
        return values[0]
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer":
        return token.strip()
    return ""
