"""Calls on a Redis Cluster's nodes, for :class:`~im_gateway.store.cluster.ClusterStore`:
each call goes to its slot's primary, one pipeline per node, the nodes in parallel.

A node's pipeline goes on a connection of the store's own to it (:class:`~.lane.Lane`,
one write, replies matched in order) rather than redis-py's cluster pipeline, which reads
each reply under its own timeout: about 31 µs of the gateway's CPU per presence key
refreshed (5,000 users, a slot each: 157 ms per refresh; bench/RESULTS.md section 23).
What a lane cannot answer as redis-py would, and what fails on it (a redirection after a
slot moved, a lost connection), goes through the cluster client. This module is where the
store leans on redis-py's cluster internals (``nodes_manager``, ``ClusterNode``'s
pipeline, settings and response callbacks); ``tests/im_gateway/store/test_cluster*.py``
pin what it relies on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.crc import key_slot
from redis.exceptions import ClusterError, ConnectionError, NoScriptError

from ..errors import StoreError
from .lane import Lane

logger = logging.getLogger(__name__)


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The ``HOST:PORT`` list of a ``redis+cluster://HOST:PORT[,HOST:PORT...]`` URL."""
    rest = url.partition("://")[2].split("?", 1)[0].split("/", 1)[0]
    nodes = []
    for part in rest.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise StoreError(
                f"bad Redis Cluster URL {url!r}: use redis+cluster://HOST:PORT[,HOST:PORT...]"
            )
        nodes.append((host.strip("[]"), int(port)))
    return nodes


@dataclass(slots=True)
class Call:
    """One command for the primary of ``slot``; ``source``: the script, for EVAL."""

    slot: int
    args: tuple[Any, ...]
    source: str | None = None


def slot_of(key: str) -> int:
    """The cluster slot of ``key``."""
    return key_slot(key.encode())


class Nodes:
    """Runs calls on a cluster; ``wait_replicas`` and ``wait_ms`` make the ``WAIT`` that
    ends each node's pipeline when a run asks for one."""

    def __init__(
        self, cluster: RedisCluster, *, wait_replicas: int, wait_ms: int, lanes: bool = False
    ) -> None:
        self._cluster = cluster
        self._wait_replicas = wait_replicas
        self._wait_ms = wait_ms
        self._shas: dict[str, str] = {}
        self._use_lanes = lanes
        self._lanes: dict[str, Lane | None] = {}
        """Per node name, its lane (None: the node's settings allow none, see
        :meth:`Lane.of_node`); a node gone from the slot map loses its lane."""
        self._closing: set[asyncio.Future[None]] = set()
        """Lanes of nodes gone, closing."""

    def script(
        self, source: str, keys: Sequence[str], args: Sequence[Any], *, slot: int | None = None
    ) -> Call:
        """A call of the script ``source`` (EVALSHA) in the slot of ``keys[0]`` (``slot``
        when the caller knows it)."""
        sha = self._shas.get(source)
        if sha is None:
            sha = self._shas[source] = self._cluster.register_script(source).sha
        if slot is None:
            slot = slot_of(keys[0])
        return Call(slot, ("EVALSHA", sha, len(keys), *keys, *args), source)

    async def run(
        self, calls: Sequence[Call], *, wait: bool = False, answers: bool = True
    ) -> list[tuple[Any, bool]]:
        """Each call on its slot's primary: one pipeline per node, the nodes in parallel.

        With ``wait``, each node's pipeline ends with ``WAIT`` on the same connection;
        ``(reply, confirmed)`` per call, confirmed when that WAIT counted enough replicas
        (always, without ``wait``). A script a node does not have yet is loaded on every
        primary and its calls sent again the same way. A call that still failed on its
        node (MOVED after a failover, a dead connection) is sent again through the cluster
        client, which follows redirections and reconnects; it is then not confirmed.

        Without ``answers`` the caller reads no reply but errors (a reply may then come
        as Redis sent it, not as redis-py would have turned it, e.g. ``SET``'s ``OK``).
        """
        cluster = self._cluster
        await cluster.initialize()
        results = await self._on_nodes(calls, range(len(calls)), wait, answers)
        unknown = [i for i, (r, _) in enumerate(results) if isinstance(r, NoScriptError)]
        if unknown:
            for source in {calls[i].source for i in unknown}:
                if source is not None:
                    await cluster.script_load(source)
            again = await self._on_nodes(calls, unknown, wait, answers)
            for i, result in zip(unknown, again, strict=True):
                results[i] = result
        out: list[tuple[Any, bool]] = []
        for call, (reply, confirmed) in zip(calls, results, strict=True):
            if isinstance(reply, Exception):
                args = call.args
                if call.source is not None:
                    args = ("EVAL", call.source, *args[2:])
                try:
                    reply = await cluster.execute_command(*args)
                except (ConnectionError, ClusterError) as exc:
                    # The client's map of the slots is stale (a failover): read it anew
                    # from the nodes, once, and try again.
                    logger.debug("refreshing the cluster's slot map after %r", exc)
                    await cluster.nodes_manager.initialize()
                    reply = await cluster.execute_command(*args)
                confirmed = not wait
            out.append((reply, confirmed))
        return out

    def _lane(
        self, node: ClusterNode, commands: Sequence[tuple[Any, ...]], answers: bool
    ) -> Lane | None:
        """The node's lane for ``commands`` (None: redis-py's pipeline): when the caller reads
        no reply (``answers`` false), or when every command is one whose reply redis-py
        hands on as it comes (a script's, ``WAIT``'s, ``SREM``'s: no response callback),
        so the lane answers exactly what the client would. Looking up a node not seen
        before also drops the lanes of nodes gone from the cluster's map, so there are
        never more lanes than nodes."""
        if not self._use_lanes:
            return None
        if answers:
            callbacks = node.response_callbacks
            if any(args[0] in callbacks for args in commands):
                return None
        try:
            return self._lanes[node.name]
        except KeyError:
            pass
        live = {n.name for n in self._cluster.nodes_manager.nodes_cache.values()}
        for name in [n for n in self._lanes if n not in live]:
            gone = self._lanes.pop(name)
            if gone is not None:
                closing = asyncio.ensure_future(gone.close())
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)
        lane = self._lanes[node.name] = Lane.of_node(node)
        return lane

    async def close(self) -> None:
        """Close the lanes; idempotent."""
        lanes = [lane for lane in self._lanes.values() if lane is not None]
        self._lanes.clear()
        await asyncio.gather(*(lane.close() for lane in lanes), *self._closing)

    async def _on_nodes(
        self, calls: Sequence[Call], indexes: Sequence[int], wait: bool, answers: bool
    ) -> list[tuple[Any, bool]]:
        """The calls at ``indexes`` in one pipeline per node (see :meth:`run`): per call
        its reply (an exception when it failed) and whether WAIT confirmed it."""
        get_node = self._cluster.nodes_manager.get_node_from_slot
        by_node: dict[str, tuple[ClusterNode, list[int]]] = {}
        for i in indexes:
            node = get_node(calls[i].slot)
            mine = by_node.get(node.name)
            if mine is None:
                mine = by_node[node.name] = (node, [])
            mine[1].append(i)
        wait_command = ("WAIT", self._wait_replicas, self._wait_ms)

        async def one(node: ClusterNode, share: list[int]) -> list[Any] | Exception:
            """The replies of the node's share (its WAIT's last), or why it failed."""
            commands = [calls[i].args for i in share]
            if wait:
                commands.append(wait_command)
            try:
                lane = self._lane(node, commands, answers)
                if lane is not None:
                    return await lane.pipeline(commands)
                cmds = [PipelineCommand(k, *args) for k, args in enumerate(commands)]
                await node.execute_pipeline(cmds)
                return [cmd.result for cmd in cmds]
            except Exception as exc:  # the node is gone: its calls are sent again
                return exc

        shares = list(by_node.values())
        replies = await asyncio.gather(*(one(node, share) for node, share in shares))
        found: dict[int, tuple[Any, bool]] = {}
        for (_, share), got in zip(shares, replies, strict=True):
            if isinstance(got, Exception):
                for i in share:
                    found[i] = (got, not wait)
                continue
            confirmed = True
            if wait:
                count = got.pop()
                confirmed = isinstance(count, int) and count >= self._wait_replicas
            for i, reply in zip(share, got, strict=True):
                found[i] = (reply, confirmed)
        return [found[i] for i in indexes]
