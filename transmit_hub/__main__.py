"""``python -m transmit_hub``: run the hub until SIGINT or SIGTERM (see ``--help``)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from .config import HubConfig, parse_config
from .errors import ConfigError
from .runtime import loop_factory, raise_open_file_limit, tune_gc
from .server import HubServer

log = logging.getLogger("transmit_hub")


async def serve(config: HubConfig, limit_note: str | None = None) -> None:
    """Run a hub with ``config`` until SIGINT/SIGTERM, then stop it gracefully
    (``limit_note``: the open-file limit's line, logged once the hub is up)."""
    hub = HubServer(
        listen=config.listen,
        auth_token=config.auth_token,
        hub_id=config.hub_id,
        queue_size=config.queue_size,
        grace=config.grace,
        tls=config.server_tls(),
        hello_timeout=config.hello_timeout,
        max_hello_waiting=config.max_hello_waiting,
        claim_timeout=config.claim_timeout,
        max_gateways=config.max_gateways,
        forget_after=config.forget_after,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before listening: no window without them
        loop.add_signal_handler(sig, stop.set)
    await hub.start()
    if limit_note:
        log.info("%s", limit_note)
    tune_gc()
    try:
        await stop.wait()
        log.info("signal received: shutting down")
    finally:
        await hub.stop()


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
    limit_note = raise_open_file_limit()
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(serve(config, limit_note))
    except ConfigError as exc:
        print(f"transmit_hub: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
