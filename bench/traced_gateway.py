"""``python -m im_gateway ARGS`` with tracemalloc on, for ``bench/connections.py --trace``.

    python bench/traced_gateway.py DIR ARGS...

On SIGUSR1 the gateway writes DIR/<n>.snap (a tracemalloc snapshot) and DIR/<n>.json (the
live objects the garbage collector tracks, counted by type), then DIR/<n>.done, n = 1, 2, ...
tracemalloc costs memory and CPU of its own: figures from a traced gateway are for
comparing allocation sites, not for the RSS or CPU tables.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import runpy
import signal
import sys
import tracemalloc
from pathlib import Path
from types import FrameType


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    dumps = 0

    def dump(signum: int, frame: FrameType | None) -> None:
        nonlocal dumps
        dumps += 1
        gc.collect()
        tracemalloc.take_snapshot().dump(str(out / f"{dumps}.snap"))
        counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        (out / f"{dumps}.json").write_text(json.dumps(counts))
        (out / f"{dumps}.done").write_text("")

    sys.path.insert(0, os.getcwd())  # the code tree the gateway runs from (its cwd)
    tracemalloc.start(1)
    signal.signal(signal.SIGUSR1, dump)
    sys.argv = ["im_gateway", *sys.argv[2:]]
    runpy.run_module("im_gateway", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
