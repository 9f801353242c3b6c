"""redis-py 8.1's asyncio cluster client after a primary is cut: a connection closed under a command by a
concurrent disconnect is a `ConnectionError` (which the client retries), never an `AttributeError` that
reaches the caller (store/redis.py `ClusterConnection`)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
import redis.asyncio.connection as aconnection

from store.cluster import EmbeddedCluster
from store.redis import REDIS_ERRORS, ClusterConnection, EmbeddedRedis, async_client

HAMMER_TASKS = 40
PROMOTION_TIMEOUT_S = 30.0
RECOVERY_TIMEOUT_S = 30.0  # the client's first success after the rejoin


async def _closed_while_connecting(connection_class: type[aconnection.Connection], port: int) -> Exception:
    """A command on a fresh connection while another task drops that connection's socket as soon as it is
    up (what `ClusterNode.disconnect_free_connections` does to a connection another command just took)."""
    connection = connection_class(host="127.0.0.1", port=port)

    async def drop_once_connected() -> None:
        while not connection.is_connected:
            await asyncio.sleep(0)
        await connection.disconnect(nowait=True)

    dropper = asyncio.create_task(drop_once_connected())
    try:
        await connection.send_packed_command(connection.pack_command("PING"))
        await connection.read_response()
    except Exception as exc:  # the outcome under test
        return exc
    finally:
        await dropper
    raise AssertionError("the command went through a dropped connection")


async def test_a_connection_dropped_under_its_handshake_is_a_connection_error(
    redis_server: EmbeddedRedis,
) -> None:
    plain = await _closed_while_connecting(aconnection.Connection, redis_server.port)
    # redis-py's own connection: the AttributeError the cluster client does not retry. If this starts
    # failing, redis-py fixed the race: ClusterConnection can go.
    assert isinstance(plain, AttributeError), plain
    ours = await _closed_while_connecting(ClusterConnection, redis_server.port)
    assert type(ours) is redis.exceptions.ConnectionError  # exactly: the cluster client retries this type
    assert isinstance(ours.__cause__, AttributeError)


async def test_every_node_of_the_cluster_client_makes_guarded_connections(
    redis_cluster: EmbeddedCluster,
) -> None:
    client = async_client(redis_cluster.url)
    try:
        await asyncio.gather(*(client.set(f"guarded:{n}", n) for n in range(30)))  # every primary
        nodes = client.get_nodes()  # type: ignore[attr-defined]
        assert len(nodes) == len(redis_cluster.nodes)
        assert all(node.connection_class is ClusterConnection for node in nodes)
        opened = [c for node in nodes for c in node._connections]
        assert opened and all(isinstance(c, ClusterConnection) for c in opened)
    finally:
        await client.aclose()


async def _hammer(client: redis.asyncio.Redis, n: int, seen: Counter[str], stop: asyncio.Event) -> None:
    i = 0
    while not stop.is_set():
        i += 1
        try:
            await client.set(f"hammer:{n}:{i % 50}", i)
            seen["ok"] += 1
        except REDIS_ERRORS as exc:  # what a caller is promised: translated to `unavailable` at the edge
            seen[type(exc).__name__] += 1
            await asyncio.sleep(0.01)
        except Exception as exc:  # anything else (the AttributeError) fails the test
            seen[f"unexpected {type(exc).__name__}: {exc}"] += 1
            await asyncio.sleep(0.01)


def _promoted(cluster: EmbeddedCluster, before: set[int]) -> bool:
    """A node that was not a primary `before` is one now."""
    for node in cluster.running():
        if node.port in before:
            continue
        with cluster.node_client(node) as client:
            try:
                if client.info("replication").get("role") == "master":
                    return True
            except redis.RedisError:
                pass
    return False


async def test_callers_see_only_redis_errors_through_a_primary_sigkill_and_its_rejoin(tmp_path: Path) -> None:
    # The race shows when the killed primary starts again (commands that still have its address connect to
    # it while disconnects of its old connections are pending): kill it, restart it at its replica's
    # promotion, as `docent chaos --topology cluster` and a supervisor do, with commands in flight all along.
    with EmbeddedCluster(tmp_path / "cluster", password="pw", node_timeout_ms=500) as cluster:
        client = async_client(cluster.url, max_connections=64)
        seen: Counter[str] = Counter()
        stop = asyncio.Event()
        tasks = [asyncio.create_task(_hammer(client, n, seen, stop)) for n in range(HAMMER_TASKS)]
        try:
            await asyncio.sleep(0.3)
            killed = cluster.primary_of("hammer:0:1")
            primaries = {n.port for n in cluster.running() if _role(cluster, n) == "master"}
            assert killed.process is not None
            os.kill(killed.process.pid, signal.SIGKILL)
            killed.process.wait()
            deadline = time.monotonic() + PROMOTION_TIMEOUT_S
            while not await asyncio.to_thread(_promoted, cluster, primaries):
                assert time.monotonic() < deadline, "no replica was promoted"
                await asyncio.sleep(0.02)
            await asyncio.to_thread(killed.start)
            await asyncio.to_thread(cluster.wait_ok)
            during = Counter(seen)
            seen.clear()  # from here on the client recovers (a stale connection may still fail once)
            await asyncio.sleep(0.5)
            deadline = time.monotonic() + RECOVERY_TIMEOUT_S  # a loaded machine may take longer than 0.5 s
            while not seen["ok"]:
                assert time.monotonic() < deadline, seen
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            await client.aclose()
    unexpected = [kind for kind in (*during, *seen) if kind.startswith("unexpected")]
    assert not unexpected, (during, seen)
    assert seen["ok"] > 0, seen


def _role(cluster: EmbeddedCluster, node: EmbeddedRedis) -> str:
    with cluster.node_client(node) as client:
        return str(client.info("replication").get("role"))


@pytest.mark.parametrize("timeout_ms", [500, 2_000])
def test_the_node_timeout_reaches_every_node_config(tmp_path: Path, timeout_ms: int) -> None:
    cluster = EmbeddedCluster(tmp_path / "c", primaries=1, replicas=0, node_timeout_ms=timeout_ms)
    assert all(f"cluster-node-timeout {timeout_ms}\n" in node.config() for node in cluster.nodes)


def test_a_dead_primary_is_failed_over_by_its_supervisor_not_the_node_timeout(tmp_path: Path) -> None:
    # A node timeout of a minute: the cluster's own failure detection cannot be what promotes the replica.
    with EmbeddedCluster(tmp_path / "cluster", node_timeout_ms=60_000) as cluster:
        primary = cluster.primary_of("forced")
        replicas = [n for n in cluster.nodes if n.port not in {p.port for p in _primaries(cluster)}]
        assert cluster.fail_over(replicas[0]) is None  # a replica's exit needs no failover
        assert primary.process is not None
        os.kill(primary.process.pid, signal.SIGKILL)
        primary.process.wait()
        replica = cluster.fail_over(primary)
        assert replica is not None and replica is not primary
        deadline = time.monotonic() + PROMOTION_TIMEOUT_S
        while _role(cluster, replica) != "master":
            assert time.monotonic() < deadline, "the replica was not promoted"
            time.sleep(0.02)
        assert cluster.fail_over(primary) is None  # already done: nothing more to ask
        primary.start()  # it rejoins as the new primary's replica
        cluster.wait_ok()
        assert cluster.primary_of("forced").port == replica.port


def _primaries(cluster: EmbeddedCluster) -> list[EmbeddedRedis]:
    return [n for n in cluster.running() if _role(cluster, n) == "master"]
