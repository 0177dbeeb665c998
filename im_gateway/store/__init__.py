"""The gateway's shared state: presence, groups, inboxes and dedupe, behind one seam.

- :mod:`~im_gateway.store.contract`: the :class:`Store` protocol and the types it speaks
  (re-exported here: ``from im_gateway.store import Store, Submission, ...``);
- :func:`open_store`: a store for a URL;
- :mod:`~im_gateway.store.memory`: in plain Python, for unit tests;
- :mod:`~im_gateway.store.redis`: on one Redis; :mod:`~im_gateway.store.cluster`: on a
  Redis Cluster (its parts: :mod:`~im_gateway.store.cluster_batch`, a batch's calls per
  slot, pure; :mod:`~im_gateway.store.cluster_groups`, the group changes;
  :mod:`~im_gateway.store.node_reads` and :mod:`~im_gateway.store.nodes`, the calls run
  per node). What the two share (settings, keys, the calls alike on both) is
  :mod:`~im_gateway.store.keyspace`; the inbox entry's layout is
  :mod:`~im_gateway.store.entry`; the Lua scripts are files in ``lua/``
  (:mod:`~im_gateway.store.scripts` reads them).
"""

from __future__ import annotations

from typing import Any

from ..errors import StoreError
from .cluster import ClusterStore
from .contract import (
    Accepted,
    Beacon,
    GroupPost,
    GroupStream,
    InboxEntry,
    InboxPage,
    Joined,
    Membership,
    Opening,
    Refusal,
    Refused,
    Store,
    Submission,
    Unread,
)
from .memory import MemoryStore
from .redis import RedisStore

__all__ = [
    "Accepted",
    "Beacon",
    "ClusterStore",
    "GroupPost",
    "GroupStream",
    "InboxEntry",
    "InboxPage",
    "Joined",
    "Membership",
    "MemoryStore",
    "Opening",
    "RedisStore",
    "Refusal",
    "Refused",
    "Store",
    "Submission",
    "Unread",
    "open_store",
]

_REDIS_ONLY = ("socket_timeout", "wait_replicas", "wait_timeout")
"""Options that mean nothing to the memory store."""


async def open_store(url: str, **options: Any) -> Store:
    """A store for ``url``: ``memory://``, ``redis://``, ``rediss://``, ``unix://`` (one
    Redis) or ``redis+cluster://HOST:PORT[,HOST:PORT...]`` (a Redis Cluster).

    ``options`` go to the store's constructor. A Redis store is pinged first, so an
    unreachable server fails here (the client is closed and the error re-raised).
    """
    scheme = url.partition("://")[0].lower()
    if scheme == "memory":
        return MemoryStore(**{k: v for k, v in options.items() if k not in _REDIS_ONLY})
    store: RedisStore | ClusterStore
    if scheme == "redis+cluster":
        store = ClusterStore(url, **options)
    elif scheme in ("redis", "rediss", "unix"):
        store = RedisStore(url, **options)
    else:
        raise StoreError(
            f"unsupported store URL {url!r}: use memory://, redis://HOST:PORT/DB or "
            "redis+cluster://HOST:PORT[,HOST:PORT...]"
        )
    try:
        await store.ping()
    except BaseException:
        await store.close()
        raise
    return store
