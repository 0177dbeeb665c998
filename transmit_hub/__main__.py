"""``python -m transmit_hub``: run the hub until SIGINT or SIGTERM (see ``--help``)."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sys
from collections.abc import Sequence

from . import cli, grpc_io
from .config import PROGRAM, HubConfig
from .errors import ConfigError
from .runtime import tune_gc
from .server import HubServer

log = logging.getLogger("transmit_hub")


async def serve(config: HubConfig, limit_note: str | None = None) -> None:
    """Run a hub with ``config`` until SIGINT/SIGTERM, then stop it gracefully
    (``limit_note``: the open-file limit's line, logged once the hub is up)."""
    hub = HubServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before listening: no window without them
        loop.add_signal_handler(sig, stop.set)
    await hub.start()
    if limit_note:
        log.info("%s", limit_note)
    log.info("%s", grpc_io.engine_note(os.environ))
    tune_gc()
    try:
        await stop.wait()
        log.info("signal received: shutting down")
    finally:
        await hub.stop()


def main(argv: Sequence[str] | None = None) -> int:
    config = cli.configure(PROGRAM, list(sys.argv[1:] if argv is None else argv))
    if config is None:
        return 0  # --print-config
    return cli.run(PROGRAM, config, functools.partial(serve, config), failure=ConfigError)


if __name__ == "__main__":
    sys.exit(main())
