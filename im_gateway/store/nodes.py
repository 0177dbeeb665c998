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
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import ClusterNode, PipelineCommand, RedisCluster
from redis.crc import key_slot
from redis.exceptions import ClusterError, ConnectionError, NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

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
    ends each node's pipeline when a run asks for one; ``timeout`` (seconds) bounds a
    call sent again after it failed on its node (see :meth:`run`)."""

    def __init__(
        self,
        cluster: RedisCluster,
        *,
        wait_replicas: int,
        wait_ms: int,
        lanes: bool = False,
        timeout: float | None = None,
    ) -> None:
        self._cluster = cluster
        self._timeout = timeout
        """The store's socket timeout: what a call sent again may take, twice (None: no
        bound but the client's)."""
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
        self,
        calls: Sequence[Call],
        *,
        wait: bool = False,
        answers: bool = True,
        errors: bool = False,
    ) -> list[tuple[Any, bool]]:
        """Each call on its slot's primary: one pipeline per node, the nodes in parallel.

        With ``wait``, each node's pipeline ends with ``WAIT`` on the same connection;
        ``(reply, confirmed)`` per call, confirmed when that WAIT counted enough replicas
        (always, without ``wait``). A script a node does not have yet is loaded on that
        node and its calls sent again the same way. A call that still failed on its
        node is sent again (see :meth:`_again`); it is then not confirmed. The first call
        that fails after that raises its error; with ``errors``, each failed call is
        answered with its exception in place of its reply instead (and not confirmed), so
        the caller can answer the calls that worked.

        Without ``answers`` the caller reads no reply but errors (a reply may then come
        as Redis sent it, not as redis-py would have turned it, e.g. ``SET``'s ``OK``).
        """
        cluster = self._cluster
        await cluster.initialize()
        results = await self._on_nodes(calls, range(len(calls)), wait, answers)
        unknown = [i for i, (r, _) in enumerate(results) if isinstance(r, NoScriptError)]
        if unknown:
            # Loaded on the nodes that said so only: another may be silent (it would hold
            # every call here up, not only its own).
            where = cluster.nodes_manager.get_node_from_slot
            loads = {
                (source, where(calls[i].slot).name): (source, where(calls[i].slot))
                for i in unknown
                if (source := calls[i].source) is not None
            }
            await asyncio.gather(
                *(
                    cluster.execute_command("SCRIPT LOAD", source, target_nodes=node)
                    for source, node in loads.values()
                ),
                return_exceptions=True,  # its calls fail again: sent again below
            )
            again = await self._on_nodes(calls, unknown, wait, answers)
            for i, result in zip(unknown, again, strict=True):
                results[i] = result
        failed = [i for i, (r, _) in enumerate(results) if isinstance(r, Exception)]
        if failed:
            replies = await self._again([calls[i] for i in failed], [results[i][0] for i in failed])
            for i, reply in zip(failed, replies, strict=True):
                if isinstance(reply, Exception) and not errors:
                    raise reply
                results[i] = (reply, not wait)
        return results

    async def _again(self, calls: Sequence[Call], failures: Sequence[Exception]) -> list[Any]:
        """The calls that failed on their node, each sent again through the cluster client
        (which follows redirections and reconnects), in parallel: per call its reply, or
        the exception it ended with.

        Bounded, so that a silent node costs a store call about one more timeout, not the
        cluster client's retries (two attempts on the client the store makes, see
        :func:`~.cluster.cluster_options`; 11 on a lent client with redis-py's defaults,
        each up to a timeout, with backoff between: 9.5 s with a 0.5 s timeout): a call
        that timed out (its node silent) is sent again only when the slot map, read anew
        from the nodes, names another primary for its slot (a failover); and every resend
        ends within two timeouts (a refresh of the map and one attempt), else it fails
        with ``TimeoutError``.
        """
        cluster = self._cluster
        where = cluster.nodes_manager.get_node_from_slot
        before = [where(call.slot).name for call in calls]
        limit = 2 * self._timeout if self._timeout is not None else None

        async def refreshed() -> None:
            async with asyncio.timeout(limit):
                await cluster.nodes_manager.initialize()

        if any(isinstance(f, RedisTimeoutError) for f in failures):
            with contextlib.suppress(Exception):
                # Read the map anew (a failover?); failing that, the old one serves.
                await refreshed()

        async def one(call: Call, failure: Exception, was: str) -> Any:
            if isinstance(failure, RedisTimeoutError) and where(call.slot).name == was:
                return failure  # the same node, silent: waiting on it again only delays
            args = call.args
            if call.source is not None:
                args = ("EVAL", call.source, *args[2:])
            try:
                async with asyncio.timeout(limit):
                    try:
                        return await cluster.execute_command(*args)
                    except (ConnectionError, ClusterError) as exc:
                        # The client's map of the slots is stale (a failover): read it
                        # anew from the nodes, once, and try again.
                        logger.debug("refreshing the cluster's slot map after %r", exc)
                        await cluster.nodes_manager.initialize()
                        return await cluster.execute_command(*args)
            except TimeoutError:
                return RedisTimeoutError(
                    f"no answer within {limit} s from the node of slot {call.slot} "
                    f"(first: {failure})"
                )
            except Exception as exc:
                return exc

        return await asyncio.gather(
            *(one(c, f, w) for c, f, w in zip(calls, failures, before, strict=True))
        )

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
