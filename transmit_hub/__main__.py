"""``python -m transmit_hub``: run the hub until SIGINT or SIGTERM (see ``--help``)."""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import sys
from collections.abc import Sequence

from . import cli, grpc_io
from .config import PROGRAM, HubConfig
from .errors import ConfigError
from .runtime import tune_gc

log = logging.getLogger("transmit_hub")


async def serve(
    config: HubConfig, limit_note: str | None = None, *, engine_note: str | None = None
) -> None:
    """Run a hub with ``config`` until SIGINT/SIGTERM, then stop it gracefully
    (``limit_note``: the open-file limit's line, ``engine_note`` gRPC's I/O engine's
    (:func:`grpc_io.choose`), each logged once the hub is up)."""
    from .server import HubServer  # imports gRPC: after main() chose its engine

    hub = HubServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before listening: no window without them
        loop.add_signal_handler(sig, stop.set)
    await hub.start()
    for note in (limit_note, engine_note):
        if note:
            log.info("%s", note)
    tune_gc()
    try:
        await stop.wait()
        log.info("signal received: shutting down")
    finally:
        await hub.stop()


def main(argv: Sequence[str] | None = None) -> int:
    engine = grpc_io.choose()  # before anything imports gRPC (it reads the choice once)
    config = cli.configure(PROGRAM, list(sys.argv[1:] if argv is None else argv))
    if config is None:
        return 0  # --print-config
    return cli.run(
        PROGRAM, config, functools.partial(serve, config, engine_note=engine), failure=ConfigError
    )


if __name__ == "__main__":
    sys.exit(main())
