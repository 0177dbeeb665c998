"""``python -m transmit_hub``: run the hub until SIGINT or SIGTERM (see ``--help``)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from . import logs
from .config import ENV_PREFIX, PROGRAM, HubConfig, load
from .errors import ConfigError
from .runtime import loop_factory, raise_open_file_limit, tune_gc
from .server import HubServer

log = logging.getLogger("transmit_hub")

PROG = "transmit_hub"


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
    tune_gc()
    try:
        await stop.wait()
        log.info("signal received: shutting down")
    finally:
        await hub.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        loaded = load(args)
    except ConfigError as exc:
        json_format = logs.sniff_format(args, os.environ, ENV_PREFIX) == "json"
        print(logs.error_line(PROG, str(exc), json_format=json_format), file=sys.stderr)
        return 2
    config = loaded.config
    if loaded.print_config:
        print(PROGRAM.render(config), end="")
        return 0
    logs.configure(config.log_level_number, config.log_format, program=PROG)
    limit_note = raise_open_file_limit()
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(serve(config, limit_note))
    except ConfigError as exc:
        print(
            logs.error_line(PROG, str(exc), json_format=config.log_format == "json"),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
