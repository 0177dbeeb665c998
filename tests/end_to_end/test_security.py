"""The gateway's client-facing trust boundary on real processes: who may join a group,
which tokens open a socket, how many sockets a user and a gateway hold, and TLS."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidMessage, InvalidStatus

from devtools.certs import make_server_cert
from im_gateway import auth
from im_gateway.config import GatewayConfig
from im_gateway.errors import StartupError
from im_gateway.gateway import Gateway
from tests.end_to_end.conftest import GatewayFactory
from tests.end_to_end.harness import SECRET, Client, http_get, token
from tests.helpers import wait_until
from transmit_hub.server import HubServer


async def _client(port: int, user: int, tok: str | None = None) -> Client:
    """A client past its replay end marker."""
    ws = await connect(f"ws://127.0.0.1:{port}/ws?token={tok or token(user)}")
    client = Client(ws, user)
    await client.wait_for(lambda f: f["type"] == 14, what="the replay end marker")
    return client


async def _change(client: Client, kind: int, group: int) -> dict[str, Any]:
    """Send a join (12) or leave (13); its answer (type 10 or 99)."""
    cid = client.next_id()
    await client.send({"type": kind, "id": cid, "to": group})
    return await client.wait_for(lambda f: f.get("id") == cid and f["type"] in (10, 99))


async def _refused(port: int, tok: str) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body of an upgrade the gateway refuses."""
    with pytest.raises(InvalidStatus) as caught:
        async with connect(f"ws://127.0.0.1:{port}/ws?token={tok}"):
            pass
    response = caught.value.response
    return response.status_code, json.loads(response.body or b"{}")


# -- who may join a group ------------------------------------------------------------------


async def test_by_default_clients_can_neither_join_nor_leave(
    hub: HubServer, redis_url: str
) -> None:
    """Default --group-join server: type 12 and 13 get type 99 forbidden, nothing joins
    (a post to the group is not_member), and the socket stays open."""
    async with Gateway(
        GatewayConfig(
            listen="127.0.0.1:0",
            gateway_id="gw-default",
            hub=hub.address,
            redis_url=redis_url,
            jwt_secret=SECRET,
        )
    ) as gw:
        await gw.wait_linked(10)
        client = await _client(gw.port, 1)
        try:
            for kind in (12, 13):
                answer = await _change(client, kind, 7)
                assert answer["type"] == 99, answer
                assert answer["code"] == "forbidden"
                assert "--group-join server" in answer["message"]
            assert not await gw.store.is_member(7, 1)  # type: ignore[arg-type]
            post = await client.say(7, "let me in", group=True)
            assert post["code"] == "not_member"
            await client.send({"type": 0})
            await client.wait_for(lambda f: f == {"type": 0}, what="the heartbeat answer")
        finally:
            await client.close()


async def test_token_policy_joins_only_the_groups_the_token_lists(
    start_gateway: GatewayFactory,
) -> None:
    """--group-join token: the token's groups claim [7, "8"] lets the user join 7 and 8,
    not 9; leaving any group is allowed; a token without the claim joins nothing."""
    gw = await start_gateway("gw-token", group_join="token")
    listed = await _client(gw.port, 1, auth.mint(1, SECRET, ttl=600, groups=[7, 8]))
    bare = await _client(gw.port, 2)
    try:
        assert (await _change(listed, 12, 7))["type"] == 10
        assert (await _change(listed, 12, 8))["type"] == 10
        refused = await _change(listed, 12, 9)
        assert (refused["type"], refused["code"]) == (99, "forbidden")
        assert "group 9" in refused["message"]
        assert (await listed.say(7, "hi 7", group=True))["type"] == 10
        assert (await _change(listed, 13, 8))["type"] == 10
        assert (await _change(listed, 13, 9))["type"] == 10  # not in it: harmless
        assert not await gw.store.is_member(8, 1)  # type: ignore[arg-type]
        assert (await _change(bare, 12, 7))["code"] == "forbidden"
        assert not await gw.store.is_member(7, 2)  # type: ignore[arg-type]
    finally:
        await listed.close()
        await bare.close()


async def test_group_bounds_refuse_joins_with_a_clear_error(
    start_gateway: GatewayFactory,
) -> None:
    """--max-groups-per-user 2 and --max-group-members 2 on Redis: the third join of a
    user, and a third member of a group, get type 99 forbidden naming the flag."""
    gw = await start_gateway("gw-bounds", max_groups_per_user=2, max_group_members=2)
    a, b, c = [await _client(gw.port, u) for u in (11, 12, 13)]
    try:
        assert (await _change(a, 12, 1))["type"] == 10
        assert (await _change(a, 12, 2))["type"] == 10
        too_many = await _change(a, 12, 3)
        assert (too_many["type"], too_many["code"]) == (99, "forbidden")
        assert "--max-groups-per-user" in too_many["message"]
        assert (await _change(b, 12, 1))["type"] == 10
        full = await _change(c, 12, 1)
        assert (full["type"], full["code"]) == (99, "forbidden")
        assert "--max-group-members" in full["message"]
        assert (await _change(a, 13, 2))["type"] == 10
        assert (await _change(a, 12, 3))["type"] == 10
    finally:
        for client in (a, b, c):
            await client.close()


# -- tokens --------------------------------------------------------------------------------


def _signed(**claims: object) -> str:
    body: dict[str, object] = {"sub": "1", "exp": int(time.time()) + 600}
    body.update(claims)
    return jwt.encode(body, SECRET, "HS256")


async def test_tokens_beyond_the_rules_get_401_in_our_words(
    start_gateway: GatewayFactory,
) -> None:
    """An exp in year 9999, 1e308 or given as a string, a wrong aud or iss: HTTP 401, no
    upgrade, and the body names the reason in the gateway's words; a good token opens."""
    gw = await start_gateway("gw-jwt", jwt_max_ttl=3600, jwt_audience="chat", jwt_issuer="backend")
    good = {"aud": "chat", "iss": "backend"}
    cases = [
        (_signed(exp=253402300799, **good), "lifetime too long"),
        (_signed(exp=1e308, **good), "lifetime too long"),
        (_signed(exp=str(int(time.time()) + 60), **good), "exp must be a number"),
        (_signed(aud="other", iss="backend"), "another audience"),
        (_signed(aud="chat"), "lacks the iss claim"),
        (jwt.encode({"sub": "1", "exp": int(time.time()) + 60, **good}, "x" * 40), "signature"),
    ]
    for tok, reason in cases:
        status, body = await _refused(gw.port, tok)
        assert status == 401, (reason, body)
        assert body["error"] == "unauthorized"
        assert reason in body["reason"], body
        assert "Signature" not in body["reason"]  # none of PyJWT's own messages
        assert "claim (" not in body["reason"]
    ok = await _client(gw.port, 1, _signed(**good))
    await ok.close()


async def test_refused_handshakes_are_logged_once_per_interval(
    start_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """40 handshakes with a wrong secret write one INFO line (the first), not 40 and not
    none; the line names the reason."""
    gw = await start_gateway("gw-log")
    bad = auth.mint(1, "a-different-secret-of-at-least-32-bytes!")
    with caplog.at_level(logging.INFO, logger="im_gateway.admission"):
        for _ in range(40):
            status, _, _ = await http_get(gw.port, f"/ws?token={bad}")
            assert status == 401
    lines = [r for r in caplog.records if r.name == "im_gateway.admission"]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].levelno == logging.INFO
    assert "signature does not match" in lines[0].getMessage()


# -- connection caps -----------------------------------------------------------------------


async def test_connections_per_user_are_capped_even_when_racing(
    start_gateway: GatewayFactory,
) -> None:
    """30 handshakes of one user at once with --max-connections-per-user 10: exactly 10
    open, 20 get HTTP 429; closing one makes room again; other users are unaffected."""
    gw = await start_gateway("gw-cap", max_connections_per_user=10)
    tok = token(5)
    results = await asyncio.gather(
        *(connect(f"ws://127.0.0.1:{gw.port}/ws?token={tok}") for _ in range(30)),
        return_exceptions=True,
    )
    opened = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, InvalidStatus)]
    try:
        assert len(opened) == 10, results
        assert len(refused) == 20
        assert {r.response.status_code for r in refused} == {429}
        body = json.loads(refused[0].response.body or b"{}")
        assert body["error"] == "too_many_connections"
        assert "--max-connections-per-user" in body["reason"]
        other = await _client(gw.port, 6)
        await other.close()
        await opened.pop().close()

        async def admitted() -> bool:
            try:
                opened.append(await connect(f"ws://127.0.0.1:{gw.port}/ws?token={tok}"))
            except InvalidStatus:
                return False
            return True

        await wait_until(admitted, what="a slot freed by the closed connection")
    finally:
        for ws in opened:
            await ws.close()


async def test_gateway_total_is_capped_with_503_and_slots_come_back(
    start_gateway: GatewayFactory,
) -> None:
    """--max-connections 3: the fourth user gets HTTP 503; handshakes that never upgrade
    (plain GETs with a good token) do not leak slots."""
    gw = await start_gateway("gw-full", max_connections=3, max_connections_per_user=3)
    for _ in range(10):  # each takes a slot in process_request, then fails to upgrade
        status, _, _ = await http_get(gw.port, f"/ws?token={token(9)}")
        assert status == 426
    clients = [await _client(gw.port, user) for user in (1, 2, 3)]
    try:
        status, body = await _refused(gw.port, token(4))
        assert status == 503
        assert body["error"] == "gateway_full"
        assert "--max-connections" in body["reason"]
        await clients.pop().close()
        await wait_until(
            lambda: gw.fanout.connections == 2, what="the closed connection to be released"
        )

        async def admitted() -> bool:
            try:
                clients.append(await _client(gw.port, 4))
            except InvalidStatus:
                return False
            return True

        await wait_until(admitted, what="the fourth user to get in")
    finally:
        for client in clients:
            await client.close()


# -- TLS -----------------------------------------------------------------------------------


async def test_tls_serves_wss_and_https_on_one_port(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """--tls-cert/--tls-key with a certificate the test makes: a websockets client with an
    SSL context trusting that CA chats over wss://, /healthz answers over https://, and a
    plain ws:// client gets no upgrade."""
    certs = make_server_cert(tmp_path)
    gw = await start_gateway("gw-tls", tls_cert=str(certs.cert), tls_key=str(certs.key))
    context = certs.client_context()
    url = f"wss://127.0.0.1:{gw.port}/ws?token="
    alice = Client(await connect(url + token(1), ssl=context), 1)
    bob = Client(await connect(url + token(2), ssl=context), 2)
    try:
        for client in (alice, bob):
            await client.wait_for(lambda f: f["type"] == 14, what="the replay end over wss")
        answer = await alice.say(2, "hi bob over TLS")
        assert answer["type"] == 10
        await bob.wait_contents(["hi bob over TLS"])
    finally:
        await alice.close()
        await bob.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port, ssl=context)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 200 "), raw[:80]
    with pytest.raises(InvalidMessage):  # the TLS port does not speak plain HTTP
        async with connect(f"ws://127.0.0.1:{gw.port}/ws?token={token(1)}", open_timeout=5):
            pass


async def test_a_tls_handshake_that_stops_midway_is_cut_after_the_open_timeout(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """Clients that open TCP to the TLS port and send nothing, or half a ClientHello, are
    cut after the default 10 s --handshake-timeout (instead of asyncio's 60 s); users get
    in meanwhile and after."""
    certs = make_server_cert(tmp_path)
    gw = await start_gateway("gw-tls-stall", tls_cert=str(certs.cert), tls_key=str(certs.key))
    stalled = [await asyncio.open_connection("127.0.0.1", gw.port) for _ in range(10)]
    url = f"wss://127.0.0.1:{gw.port}/ws?token="
    bob = Client(await connect(url + token(2), ssl=certs.client_context()), 2)
    await bob.wait_for(lambda f: f["type"] == 14, what="the replay end over wss")
    await bob.close()
    for _, writer in stalled[5:]:
        writer.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello's start
    loop = asyncio.get_running_loop()
    started = loop.time()
    for reader, _ in stalled:
        assert await asyncio.wait_for(reader.read(), 20) == b""
    assert loop.time() - started < 15.0
    for _, writer in stalled:
        writer.close()
    alice = Client(await connect(url + token(1), ssl=certs.client_context()), 1)
    await alice.wait_for(lambda f: f["type"] == 14, what="the replay end over wss")
    await alice.close()


async def test_tls_with_a_bad_key_fails_at_start_naming_the_files(
    hub: HubServer, redis_url: str, tmp_path: Path
) -> None:
    """A key that does not match the certificate stops the start with one StartupError."""
    certs = make_server_cert(tmp_path)
    (tmp_path / "other").mkdir()
    other = make_server_cert(tmp_path / "other")
    gateway = Gateway(
        GatewayConfig(
            listen="127.0.0.1:0",
            hub=hub.address,
            redis_url=redis_url,
            jwt_secret=SECRET,
            tls_cert=str(certs.cert),
            tls_key=str(other.key),
        )
    )
    with pytest.raises(StartupError, match="TLS certificate"):
        await gateway.start()
    await gateway.close()


async def test_clients_that_vanish_mid_handshake_leak_no_slots(
    start_gateway: GatewayFactory,
) -> None:
    """40 clients that send an upgrade request with a good token and at once reset the
    TCP connection or end their stream leave every slot free: with --max-connections 2, two users still
    get in afterwards."""
    gw = await start_gateway("gw-vanish", max_connections=2, max_connections_per_user=2)
    request = (
        f"GET /ws?token={token(8)} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    for i in range(40):
        if i % 2:
            # The request, then at once the end of the stream.
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", gw.port))
            await loop.sock_sendall(sock, request)
            sock.shutdown(socket.SHUT_WR)
            sock.close()
            continue
        _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(request)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST, possibly before the gateway read the request

    async def two_get_in() -> bool:
        clients = []
        try:
            for user in (1, 2):
                clients.append(await _client(gw.port, user))
        except InvalidStatus:
            return False
        finally:
            for client in clients:
                await client.close()
        return True

    await wait_until(two_get_in, what="two free slots after the vanished handshakes")
