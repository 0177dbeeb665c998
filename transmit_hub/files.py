"""Bounded reads of the files a program's settings name: its config file, its PEM files.

A file named on the command line is read at start, before anything else runs, so it must
not be able to hang the start (a FIFO that no one writes) or fill the memory (a device
that never ends, a huge file): it must be a regular file, and at most a bound is read.
"""

from __future__ import annotations

import os
import stat

from .errors import ConfigError

__all__ = ["CONFIG_FILE_MAX_BYTES", "read_small_file"]

CONFIG_FILE_MAX_BYTES = 1 << 20
"""The largest config file read: a real one is a few KiB. Not a flag: it bounds the read
of the file that flags may come from."""


def read_small_file(path: str, limit: int) -> bytes:
    """The bytes of the regular file ``path`` if it holds at most ``limit`` of them.

    :class:`OSError` when it cannot be opened or read; :class:`ConfigError` saying why
    (without the path: the caller names the flag) when it is not a regular file (a FIFO,
    a device, a directory) or is larger than ``limit``. It is opened without blocking, so
    a FIFO that no one writes cannot hang a start, and at most ``limit + 1`` bytes are
    read, so neither can an endless or huge file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError("not a regular file")
        data = file.read(limit + 1)
    if len(data) > limit:
        size = f"{limit >> 20} MiB" if limit % (1 << 20) == 0 else f"{limit} bytes"
        raise ConfigError(f"larger than {size}")
    return data
