"""``python -m transmit_hub``: run the hub until SIGINT or SIGTERM (see ``--help``)."""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence

from .config import HubConfig, parse_config
from .errors import ConfigError
from .server import HubServer

log = logging.getLogger("transmit_hub")


async def serve(config: HubConfig) -> None:
    """Run a hub with ``config`` until SIGINT/SIGTERM, then stop it gracefully."""
    hub = HubServer(
        listen=config.listen,
        auth_token=config.auth_token,
        hub_id=config.hub_id,
        queue_size=config.queue_size,
        grace=config.grace,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before listening: no window without them
        loop.add_signal_handler(sig, stop.set)
    await hub.start()
    # Startup objects (modules, descriptors) live forever: keep them out of the cyclic GC's
    # full collections, which would otherwise walk them all and stall routing.
    gc.collect()
    gc.freeze()
    try:
        await stop.wait()
        log.info("signal received: shutting down")
    finally:
        await hub.stop()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (less CPU per wake-up), else asyncio's."""
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_config(argv)
    except ConfigError as exc:
        print(f"transmit_hub: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level_number,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve(config))
    except ConfigError as exc:
        print(f"transmit_hub: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
