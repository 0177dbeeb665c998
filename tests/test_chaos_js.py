"""bench/chaos_js.py: the Node process's events read and checked, which devices run the
JavaScript client, and a dead Node process said so (and the soak stopped)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # the soak imports it as ``chaos_js``

import chaos  # noqa: E402
import client_js  # noqa: E402
from chaos_js import Answer, ChildGone, JsHost, Live, Shown, Url, js_devices, parse_event  # noqa: E402

from im_gateway.client import Message, Sent  # noqa: E402


def test_answers_are_a_sent_a_refusal_or_done() -> None:
    """A type 10 becomes Sent, a rejection Refused with its code, a bare answer done."""
    sent = parse_event(b'{"ev":"answer","req":3,"clientId":"c-1","msgId":"9-0","time":"5"}\n')
    assert sent == Answer(3, sent=Sent("c-1", "9-0", "5"))
    refused = parse_event(b'{"ev":"answer","req":4,"code":"not_member","message":"no"}')
    assert isinstance(refused, Answer)
    assert refused.refused is not None
    assert (refused.req, refused.refused.code, refused.refused.message) == (4, "not_member", "no")
    assert parse_event(b'{"ev":"answer","req":5}') == Answer(5)


def test_messages_and_urls_are_read_as_the_python_client_has_them() -> None:
    """A shown message becomes the Python client's Message; a URL may be null."""
    line = (
        b'{"ev":"message","dev":"1001.1#0","message":{"id":"7-1","from":1002,"to":7,'
        b'"type":2,"contentType":0,"time":"12","content":"1002.0.3","seq":"g7:4"}}'
    )
    assert parse_event(line) == Shown(
        "1001.1#0", Message("7-1", 1002, 7, 2, 0, "12", "1002.0.3", "g7:4")
    )
    assert parse_event(b'{"ev":"url","dev":"d","url":"ws://x/ws"}') == Url("d", "ws://x/ws")
    assert parse_event(b'{"ev":"url","dev":"d","url":null}') == Url("d", None)
    assert parse_event(b'{"ev":"live","dev":"d"}') == Live("d")


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1]", "not an object"),
        (b'{"ev":"what","dev":"d"}', "unknown event"),
        (b'{"ev":"answer"}', "without a request number"),
        (b'{"ev":"answer","req":"1"}', "without a request number"),
        (b'{"ev":"answer","req":1,"msgId":"","clientId":"c","time":"1"}', "bad type 10"),
        (b'{"ev":"url","url":"ws://x"}', "without a device"),
        (b'{"ev":"url","dev":"d","url":5}', "bad url"),
        (b'{"ev":"message","dev":"d","message":{"id":"1"}}', "bad message"),
        (
            b'{"ev":"message","dev":"d","message":{"id":"1","from":"2","to":1,"type":1,'
            b'"time":"1","content":"x","seq":"1"}}',
            "bad message",
        ),
        (
            b'{"ev":"message","dev":"d","message":{"id":"1","from":2,"to":1,"type":"1",'
            b'"time":"1","content":"x","seq":"1"}}',
            "bad message",
        ),
    ],
)
def test_what_is_not_an_event_is_refused(line: bytes, why: str) -> None:
    """Anything else is a ValueError that says why (the soak then fails, saying so)."""
    with pytest.raises(ValueError, match=why):
        parse_event(line)


def shape(users: int, two: int) -> dict[int, list[tuple[int, int]]]:
    return {u: [(u, 0), (u, 1)] if u < two else [(u, 0)] for u in range(users)}


def test_js_devices_split_between_second_devices_and_one_device_users() -> None:
    """Half (rounded up) second devices of the first pairs, the rest singles from the last."""
    assert js_devices(shape(40, 10), 0) == set()
    assert js_devices(shape(40, 10), 3) == {(0, 1), (1, 1), (39, 0)}
    ten = js_devices(shape(40, 10), 10)
    assert ten == {(u, 1) for u in range(5)} | {(u, 0) for u in range(35, 40)}
    # One kind runs out: the other makes up the count.
    assert js_devices(shape(4, 3), 4) == {(0, 1), (1, 1), (2, 1), (3, 0)}
    assert js_devices(shape(4, 0), 3) == {(3, 0), (2, 0), (1, 0)}
    with pytest.raises(ValueError, match="only 4"):
        js_devices(shape(4, 1), 5)


async def test_a_node_process_that_dies_fails_every_waiting_call(tmp_path: Path) -> None:
    """Node exits (here: no ``ws`` where it is told to look): ``died`` says so, with its
    status and its log, and a call fails with ChildGone rather than waiting forever."""
    host = await JsHost.start(tmp_path, tmp_path / "js.log")
    try:
        client = host.open((1, 0), 0, ["ws://127.0.0.1:9/ws"], "t")
        with pytest.raises(ChildGone, match="exited with status 1"):
            await client.send(to=2, content="x")
        assert "js.log" in host.died.result()
        assert "Cannot find module 'ws'" in (tmp_path / "js.log").read_text()
    finally:
        await host.close()


async def test_the_soak_stops_and_fails_when_the_node_process_dies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """chaos.run_soak: a Node process that exits ends the run at once with status 1 and
    the reason printed, however long the soak would still run."""

    async def forever(*_: object) -> tuple[int, dict[str, object]]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    monkeypatch.setattr(chaos, "soak", forever)
    monkeypatch.setattr(client_js, "ensure_ws", lambda: tmp_path)  # no ws: node exits
    stack = chaos.Stack(argparse.Namespace(partitions=False), tmp_path, "s", "k")
    status, data = await asyncio.wait_for(
        chaos.run_soak(argparse.Namespace(js_devices=1), stack), 30
    )
    assert status == 1
    assert "exited with status 1" in str(data["error"])
    assert "FAILED: the JavaScript clients' Node process failed" in capsys.readouterr().out
