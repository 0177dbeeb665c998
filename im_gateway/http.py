"""Same-port HTTP: what the gateway answers before (or instead of) a WebSocket upgrade.

``GET /ws`` upgrades after :meth:`Front.admit` (the JWT, 401 otherwise; draining, the
descriptor budget and the connection caps, 503/429 otherwise), ``GET /healthz`` is 200
while at least one hub is linked and the store answers (503 with the reason otherwise;
``"hubs"`` says which hub is up), ``GET /metrics`` the Prometheus text (when enabled),
``GET /info`` names the gateway, ``GET /`` and ``GET /static/<file>`` serve the chat page
from ``im_gateway/static``, ``GET /client.js`` the JavaScript client module.

The decisions are pure (:func:`route`, :func:`health_report`, :func:`info`, the response
builders); :class:`Front` is the thin ``process_request`` hook that applies them.
"""

from __future__ import annotations

import http
import json
import mimetypes
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from transmit_hub.types import GatewayId

from . import auth, metrics
from .admission import ConnectionCaps, RejectionLog
from .config import GatewayConfig
from .descriptors import Sockets
from .errors import AuthError
from .group_policy import TOKEN, GroupRights
from .ws import Connection, peer

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


# --- routing (pure) -----------------------------------------------------------------------

UPGRADE: Final = "ws"
HEALTHZ: Final = "healthz"
METRICS: Final = "metrics"
INFO: Final = "info"
STATIC: Final = "static"
NOT_FOUND: Final = "not found"


@dataclass(frozen=True, slots=True)
class Route:
    """Where a path goes: one of the endpoints above; ``file`` names a static file."""

    endpoint: str
    file: str = ""


def route(path: str, *, metrics_enabled: bool) -> Route:
    """The endpoint for ``path`` (``/metrics`` only when metrics are enabled)."""
    if path == "/ws":
        return Route(UPGRADE)
    if path == "/healthz":
        return Route(HEALTHZ)
    if path == "/metrics" and metrics_enabled:
        return Route(METRICS)
    if path == "/info":
        return Route(INFO)
    if path in ("/", "/index.html"):
        return Route(STATIC, "index.html")
    if path == "/client.js":
        return Route(STATIC, "client.js")
    if path.startswith("/static/"):
        return Route(STATIC, path[len("/static/") :])
    return Route(NOT_FOUND)


def info(gateway_id: GatewayId | None, group_join: str) -> dict[str, object]:
    """``GET /info``: the gateway's id and its group-join policy."""
    return {"gatewayId": gateway_id, "groupJoin": group_join}


def health_report(
    *,
    gateway_id: GatewayId | None,
    draining: bool,
    linked: bool,
    conflict: object,
    refused: object,
    configured_hubs: tuple[str, ...] | list[str],
    hubs: Mapping[str, str] | None,
    redis_error: BaseException | None,
    connections: int,
    hub_errors: Mapping[str, str] | None = None,
) -> tuple[bool, dict[str, object]]:
    """Whether the gateway can do its job, and a JSON-ready report saying why.

    ``conflict``: another process holds our gateway id; ``refused``: a hub refuses our
    certificate; ``hubs``: each hub's state (None: all as ``linked`` says);
    ``hub_errors``: why each hub that is down is down (``"hubErrors"`` in the report,
    also while another hub is up; the reason when none is, and no refusal says more).
    """
    reasons: list[str] = []
    if draining:
        reasons.append("draining: the gateway is shutting down")
    hub = "linked" if linked else "down"
    if conflict:
        reasons.append(str(conflict))
    elif hub != "linked":
        if refused:
            why = f": {refused}"
        elif hub_errors:
            why = ": " + "; ".join(f"{hub}: {error}" for hub, error in hub_errors.items())
        else:
            why = ""
        reasons.append(f"not linked to any hub ({', '.join(configured_hubs)}){why}")
    if hubs is None:
        hubs = dict.fromkeys(configured_hubs, "up" if linked else "down")
    redis = "ok"
    if redis_error is not None:
        redis = "down"
        exc = redis_error
        reasons.append(f"redis not answering: {type(exc).__name__}: {exc}".rstrip(": "))
    report: dict[str, object] = {
        "status": "ok" if not reasons else "unavailable",
        "gatewayId": gateway_id,
        "hub": hub,
        "hubs": hubs,
        "redis": redis,
        "connections": connections,
    }
    if hub_errors:
        report["hubErrors"] = dict(hub_errors)
    if reasons:
        report["reason"] = "; ".join(reasons)
    return not reasons, report


# --- the process_request hook ---------------------------------------------------------------


class GatewayView(Protocol):
    """What :class:`Front` reads of its gateway at request time."""

    @property
    def draining(self) -> bool: ...

    @property
    def known_id(self) -> GatewayId | None: ...

    async def health(self) -> tuple[bool, dict[str, object]]: ...


class Front:
    """The gateway's ``process_request`` hook: answers HTTP, or admits an upgrade (and
    owns what admission counts: the connection caps, the sockets, the refusals)."""

    def __init__(
        self,
        gateway: GatewayView,
        config: GatewayConfig,
        gateway_metrics: metrics.GatewayMetrics,
    ) -> None:
        self._gateway = gateway
        self._config = config
        self._metrics = gateway_metrics
        self.caps = ConnectionCaps(
            per_user=config.max_connections_per_user, total=config.max_connections
        )
        self.rejections = RejectionLog()
        self.sockets = Sockets(
            limit=None,
            baseline=0,
            reserve=config.fd_reserve,
            max_handshakes=config.max_handshakes,
        )
        """The client sockets on both ports (the API's too) and the descriptor budget."""
        self.rights = GroupRights(config.group_join)
        """The group rights of every connection, unless the policy reads the token."""

    async def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        path, query = split_target(request)
        target = route(path, metrics_enabled=self._metrics.enabled)
        if target.endpoint == UPGRADE:
            return self.admit(connection, request, query)
        if target.endpoint == HEALTHZ:
            ok, report = await self._gateway.health()
            return json_response(200 if ok else 503, report)
        if target.endpoint == METRICS:
            return response(200, self._metrics.render(), metrics.CONTENT_TYPE)
        if target.endpoint == INFO:
            return json_response(200, info(self._gateway.known_id, self._config.group_join))
        if target.endpoint == STATIC:
            return static_file(target.file)
        return not_found()

    def admit(
        self, connection: ServerConnection, request: Request, query: dict[str, list[str]]
    ) -> Response | None:
        """Check the token and take a connection slot, with no await between the check
        and the count (so concurrent handshakes cannot race past a cap)."""
        cfg = self._config
        try:
            identity = auth.verify_identity(
                bearer_token(request, query),
                cfg.jwt_secret,
                max_ttl=cfg.jwt_max_ttl,
                audience=cfg.jwt_audience,
                issuer=cfg.jwt_issuer,
                max_groups=cfg.max_groups_per_user,
            )
        except AuthError as exc:
            self.rejections.hit(f"401 {exc} (from {peer(connection)})")
            self._metrics.handshake_refused("unauthorized")
            return json_response(
                401, {"error": "unauthorized", "reason": str(exc)}, WWW_Authenticate="Bearer"
            )
        if self._gateway.draining:
            self._metrics.handshake_refused("draining")
            return json_response(503, {"error": "unavailable", "reason": "draining"})
        if not isinstance(connection, Connection) or connection.lost:
            # (A client gone before its request was read takes no slot: none would
            # ever be given back.)
            self._metrics.handshake_refused("not_ready")
            return json_response(503, {"error": "unavailable", "reason": "not ready"})
        user = identity.user
        refused = self.sockets.upgrade_refusal() or self.caps.admit(user)
        if refused is not None:
            self.rejections.hit(f"{refused.status} user {user}: {refused.code}")
            self._metrics.handshake_refused(refused.code)
            return json_response(refused.status, {"error": refused.code, "reason": refused.reason})
        connection.user = user
        connection.caps = self.caps
        connection.lists_groups = query.get("groups") == ["1"]
        if self.rights.policy == TOKEN:
            connection.group_rights = GroupRights(TOKEN, identity.groups)
        else:
            connection.group_rights = self.rights
        return None
