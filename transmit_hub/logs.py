"""``--log-format text|json`` for both programs.

``json``: every line the program writes to stdout and stderr is one JSON object with
``time`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``; a traceback is its
``traceback`` field, a warning is a record of the ``py.warnings`` logger, and an exception
nobody caught is a CRITICAL record instead of Python's own report.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TextIO

from .settings import one_of, setting

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "JsonFormatter",
    "configure",
    "format_setting",
    "level_setting",
    "say",
    "sniff_format",
]

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def level_setting() -> Any:
    """The ``log_level`` field of both programs' config."""
    return setting(
        "INFO",
        f"one of {', '.join(LOG_LEVELS)}",
        metavar="LEVEL",
        check=one_of(*LOG_LEVELS, fold=str.upper),
    )


def format_setting() -> Any:
    """The ``log_format`` field of both programs' config."""
    return setting(
        "text",
        "text, or json: every line on stdout and stderr one JSON object "
        "(time, level, logger, message)",
        choices=LOG_FORMATS,
    )


_json = False
"""Whether :func:`configure` chose json (read by :func:`say`)."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (+ traceback, stack)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["traceback"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(level: str | int, log_format: str, *, program: str) -> None:
    """Log to stderr at ``level`` in ``log_format``; ``program`` names uncaught errors."""
    global _json
    _json = log_format == "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if _json else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    if not _json:
        return
    logging.captureWarnings(True)  # a warning becomes a record of "py.warnings"
    log = logging.getLogger(program)

    def uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        log.critical("uncaught %s: %s", kind.__name__, value, exc_info=(kind, value, tb))

    def uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            uncaught(args.exc_type, args.exc_value, args.exc_traceback)

    sys.excepthook = uncaught
    threading.excepthook = uncaught_in_thread


def say(message: str, *, logger: str, stream: TextIO | None = None) -> None:
    """Write one line meant for stdout (a start banner) in the configured format."""
    out = sys.stdout if stream is None else stream
    if _json:
        record = logging.LogRecord(logger, logging.INFO, "", 0, message, None, None)
        message = JsonFormatter().format(record)
    print(message, file=out, flush=True)


def error_line(program: str, message: str, *, json_format: bool) -> str:
    """The one line a program prints on a bad flag or an unusable dependency."""
    if not json_format:
        return f"{program}: error: {message}"
    record = logging.LogRecord(program, logging.ERROR, "", 0, message, None, None)
    return JsonFormatter().format(record)


def sniff_format(argv: Sequence[str], environ: Mapping[str, str], env_prefix: str) -> str:
    """The log format asked for, read before the settings are (for an error in them)."""
    chosen = environ.get(env_prefix + "LOG_FORMAT") or "text"
    for i, arg in enumerate(argv):
        if arg == "--log-format" and i + 1 < len(argv):
            chosen = argv[i + 1]
        elif arg.startswith("--log-format="):
            chosen = arg.partition("=")[2]
    return "json" if chosen == "json" else "text"
