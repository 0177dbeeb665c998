"""What every program's ``main()`` does around its settings, written once for the hub, a
gateway and the probe (each program is a :class:`~transmit_hub.settings.Program`):

- a problem in the flags, the environment or the ``--config`` file is one line on stderr,
  in the log format asked for (read before the settings are), and exit status 2
  (:data:`EXIT_USAGE`);
- ``--print-config`` prints the effective settings and exits 0;
- logging is set up from the settings' ``log_level`` and ``log_format``;
- a failure once running (an unusable dependency at start) is one line and exit status 1
  (:data:`EXIT_STARTUP`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Final, NoReturn, Protocol, TypeVar

from . import logs
from .runtime import loop_factory, raise_open_file_limit
from .settings import Program

__all__ = ["EXIT_STARTUP", "EXIT_USAGE", "configure", "failed", "parse", "run", "usage_error"]

EXIT_USAGE: Final = 2
EXIT_STARTUP: Final = 1


class Logged(Protocol):
    """A program's settings: each program has these two (``logs.level_setting()``...)."""

    @property
    def log_level(self) -> str: ...

    @property
    def log_format(self) -> str: ...


C = TypeVar("C")
L = TypeVar("L", bound=Logged)


def usage_error(
    program: Program[Any],
    message: str,
    argv: Sequence[str],
    environ: Mapping[str, str] | None = None,
) -> NoReturn:
    """Print ``message`` as the program's one error line and exit 2."""
    environ = os.environ if environ is None else environ
    json_format = logs.sniff_format(argv, environ, program.env_prefix) == "json"
    print(logs.error_line(program.name, message, json_format=json_format), file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def parse(program: Program[C], argv: Sequence[str], environ: Mapping[str, str] | None = None) -> C:
    """Flags, environment and file -> a validated config; a problem exits 2 with one line."""
    try:
        return program.load(argv, environ).config
    except program.error as exc:
        usage_error(program, str(exc), argv, environ)


def configure(program: Program[L], argv: Sequence[str], *, quiet: Sequence[str] = ()) -> L | None:
    """The start of ``main()``: the settings (a problem exits 2), then either
    ``--print-config`` (printed: None, the program exits 0) or logging set up from them
    (``quiet``: loggers of libraries kept at WARNING unless the level is DEBUG)."""
    try:
        loaded = program.load(argv)
    except program.error as exc:
        usage_error(program, str(exc), argv)
    config = loaded.config
    if loaded.print_config:
        print(program.render(config), end="")
        return None
    logs.configure(config.log_level, config.log_format, program=program.logger)
    if config.log_level.upper() != "DEBUG":
        for name in quiet:
            logging.getLogger(name).setLevel(logging.WARNING)
    return config


def failed(program: Program[L], config: L, error: Exception) -> int:
    """Print ``error`` as the program's one line (in its log format); returns exit status 1."""
    json_format = config.log_format == "json"
    print(logs.error_line(program.name, str(error), json_format=json_format), file=sys.stderr)
    return EXIT_STARTUP


def run(
    program: Program[L],
    config: L,
    serve: Callable[[str], Coroutine[Any, Any, None]],
    *,
    failure: type[Exception],
) -> int:
    """Run ``serve(limit_note)`` (``limit_note``: the open-file limit's line, to log once
    up) on the tuned event loop until it returns; ``failure`` is one line and exit 1."""
    limit_note = raise_open_file_limit()
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(serve(limit_note))
    except failure as exc:
        return failed(program, config, exc)
    return 0
