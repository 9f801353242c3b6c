"""Shared fixtures: a real Redis per session, settings pointing at temporary dirs, a shared model cache.

`redis_url` is a flushed single-node Redis, or a real Redis Cluster (3 primaries + 3 replicas,
store.cluster) for tests of a module marked `pytest.mark.cluster` (they run on both) and for every test
when DOCENT_TEST_REDIS=cluster.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pytest
import redis

from store.cluster import EmbeddedCluster
from store.redis import EmbeddedRedis, is_cluster_url, sync_client
from store.settings import Settings, get_settings

if TYPE_CHECKING:
    from tests.stack_proc import Stack

REPO = Path(__file__).resolve().parent.parent
# Converted models are cached across test runs (and shared with `make run` only by choice).
MODEL_CACHE = Path(os.environ.get("DOCENT_TEST_MODEL_DIR", REPO / ".cache" / "models"))
SHARED = REPO.parent / "shared"
REDIS_KINDS = ("single", "cluster")
DEFAULT_REDIS_KIND = os.environ.get("DOCENT_TEST_REDIS", "single")
# Stacks under test re-measure the golden sets only when a test asks (tests/test_golden_recall.py).
os.environ.setdefault("DOCENT_GOLDEN_RECALL_INTERVAL_S", "0")
os.environ.setdefault("DOCENT_GOLDEN_RECALL_AFTER_DOCS", "0")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: run the Redis-backed tests on one node and on a cluster")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marked = metafunc.definition.get_closest_marker("cluster") is not None
    if marked and "redis_kind" in metafunc.fixturenames:
        metafunc.parametrize("redis_kind", REDIS_KINDS, indirect=True)


@pytest.fixture
def redis_kind(request: pytest.FixtureRequest) -> str:
    """`single` or `cluster`: both for a module marked `cluster`, else DOCENT_TEST_REDIS (default single)."""
    return str(getattr(request, "param", DEFAULT_REDIS_KIND))


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    """`get_settings()` is read once per process: each test that sets DOCENT_* variables (monkeypatch) and
    calls an actor's body reads its own, not the settings an earlier test left cached."""
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    """A real Redis Cluster: 3 primaries, 3 replicas, free ports, its own data dirs."""
    with EmbeddedCluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


class RedisTarget(NamedTuple):
    url: str  # DOCENT_REDIS_URL
    broker_url: str  # DOCENT_BROKER_URL ("" = the same Redis)


@pytest.fixture(scope="session")
def redis_target(request: pytest.FixtureRequest) -> RedisTarget:
    """The Redis of module-scoped web processes and workers: one node, or with DOCENT_TEST_REDIS=cluster
    the cluster (queues on the single one), the same one `redis_url` flushes for each test."""
    server: EmbeddedRedis = request.getfixturevalue("redis_server")
    if DEFAULT_REDIS_KIND != "cluster":
        return RedisTarget(server.url, "")
    cluster: EmbeddedCluster = request.getfixturevalue("redis_cluster")
    return RedisTarget(cluster.url, server.url)


@pytest.fixture
def redis_url(redis_kind: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a flushed test Redis: one node, or the cluster (`redis+cluster://`)."""
    if redis_kind == "cluster":
        cluster: EmbeddedCluster = request.getfixturevalue("redis_cluster")
        cluster.flushall()
        yield cluster.url
        return
    server: EmbeddedRedis = request.getfixturevalue("redis_server")
    client = redis.Redis.from_url(server.url)
    client.flushall()
    client.close()
    yield server.url


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    """A client of the flushed test Redis (a cluster client on the cluster)."""
    client = sync_client(redis_url)
    yield client
    client.close()


@pytest.fixture
def broker_url(redis_url: str, request: pytest.FixtureRequest) -> str:
    """Where dramatiq's queues go: the test Redis, or beside a cluster the single-node one (flushed)."""
    if not is_cluster_url(redis_url):
        return ""
    server: EmbeddedRedis = request.getfixturevalue("redis_server")
    with redis.Redis.from_url(server.url) as client:
        client.flushall()
    return server.url


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, broker_url: str) -> Settings:
    return Settings.from_env(
        {
            "DOCENT_DATA_DIR": str(tmp_path / "data"),
            "DOCENT_MODEL_DIR": str(MODEL_CACHE),
            "DOCENT_REDIS_URL": redis_url,
            "DOCENT_BROKER_URL": broker_url,
            "DOCENT_LLM_BACKEND": "none",
        }
    )


@pytest.fixture
def stacks() -> Iterator[list[Stack]]:
    """`docent run` stacks a test started (tests.stack_proc.Stack); each is stopped afterwards."""
    started: list[Stack] = []
    yield started
    for stack in started:
        stack.stop()
