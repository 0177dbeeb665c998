"""bench/chaos_js.py on a real gateway: a JavaScript device driven through the Node
process sends, joins, shows what a Python device sends it, says its URL, and after its
close has shown everything it showed, and its next client does not show it again."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from im_gateway.client import Client, Message
from tests.end_to_end.conftest import GatewayFactory
from tests.end_to_end.harness import token
from tests.helpers import wait_until
from tests.node import ensure_ws

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))  # the soak imports it as ``chaos_js``

from chaos_js import JsClient, JsHost  # noqa: E402

JS, PY = 4301, 4302


async def collect(client: JsClient, into: list[Message]) -> None:
    async for message in client.messages():
        into.append(message)


async def test_a_js_device_through_the_node_process(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """Sends both ways, a group post, the URL, the first replay's end, close and a
    restart, as the soak uses them."""
    gateway = await start_gateway("gw-chaos-js")
    url = f"ws://127.0.0.1:{gateway.port}/ws"
    host = await JsHost.start(ensure_ws(), tmp_path / "js.log")
    python = Client(url, token=token(PY))
    try:
        js = host.open((JS, 0), 0, [url], token(JS))
        shown: list[Message] = []
        reader = asyncio.create_task(collect(js, shown))
        await wait_until(lambda: js.url == url, timeout=10)
        await wait_until(lambda: js.replayed, timeout=10, what="the first connect replay's end")
        await js.join(7)
        await python.join(7)
        sent = await js.send(to=PY, content="js to py")
        assert sent.msg_id
        assert sent.client_id
        mine = [await python.send(to=JS, content=f"py to js {i}") for i in range(3)]
        mine.append(await python.send(group=7, content="py to g7"))
        await wait_until(lambda: len(shown) == 4, timeout=10)
        assert [m.id for m in shown] == [s.msg_id for s in mine]
        assert [m.content for m in shown][-1] == "py to g7"
        assert shown[-1].type == 2
        await js.close()
        assert js.url is None
        await asyncio.wait_for(reader, 5)  # messages() ends at the close
        # The next client (an app restart) starts after what the old one acknowledged.
        again = host.open((JS, 0), 1, [url], token(JS))
        later: list[Message] = []
        reader = asyncio.create_task(collect(again, later))
        last = await python.send(to=JS, content="after the restart")
        await wait_until(lambda: len(later) >= 1, timeout=10)
        assert [m.id for m in later] == [last.msg_id]
        await again.close()
        await asyncio.wait_for(reader, 5)
    finally:
        await python.close()
        await host.close()
    assert not host.died.done()
