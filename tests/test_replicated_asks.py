"""With a replicated Redis (a primary and its replica, or a Redis Cluster), an ask is acknowledged only once a
replica has it (WAIT), and a retry is safe."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.dispatch import RedisDispatcher
from store.cluster import EmbeddedCluster
from store.events import UserMessage
from store.exceptions import Unavailable
from store.redis import EmbeddedRedis, async_client, sync_client

PROMOTION_TIMEOUT_S = 60.0  # the cluster's own failover: detection, then elections retried after 2 x timeout

FAILOVER_WAIT_S = 20.0
NOT_HUNG_S = 30.0  # a deadline, not a timing assertion: 100x the 300 ms WAIT timeout


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[EmbeddedRedis, EmbeddedRedis]]:
    primary = EmbeddedRedis(tmp_path / "primary").start()
    replica = EmbeddedRedis(tmp_path / "replica", replica_of=primary.port).start()
    client = sync_client(replica.url)
    deadline = time.monotonic() + 10
    while client.info("replication").get("master_link_status") != "up" and time.monotonic() < deadline:
        time.sleep(0.05)
    client.close()
    yield primary, replica
    replica.stop()
    primary.stop()


async def _no_wake(conversation_id: str) -> None:
    return None


async def test_an_ask_waits_for_its_replica_and_a_retry_after_a_refusal_posts_once(
    pair: tuple[EmbeddedRedis, EmbeddedRedis],
) -> None:
    primary, replica = pair
    client = async_client(primary.url)
    dispatcher = RedisDispatcher(client, _no_wake, replicas=1, wait_timeout_ms=300)
    first = await dispatcher.submit("c1", UserMessage(text="hello"), dedup_id="m1")
    copy = sync_client(replica.url)
    assert copy.xlen("conv:{c1}:inbox") == 1  # on the replica before the submit returned
    replica.stop()
    with pytest.raises(Unavailable):  # bounded by the WAIT timeout (without one WAIT blocks for good)
        await asyncio.wait_for(dispatcher.submit("c1", UserMessage(text="again"), dedup_id="m2"), NOT_HUNG_S)
    unreplicated = RedisDispatcher(client, _no_wake)  # the retry once replication is back (or not asked)
    assert await unreplicated.submit("c1", UserMessage(text="again"), dedup_id="m2") != first
    assert await client.xlen("conv:{c1}:inbox") == 2  # the refused ask and its retry: one entry
    copy.close()
    await client.aclose()


async def test_a_stalled_replica_refuses_every_concurrent_ask(
    pair: tuple[EmbeddedRedis, EmbeddedRedis],
) -> None:
    # WAIT counts the writes of the connection it runs on: a WAIT on another pooled connection (which
    # wrote nothing since) would acknowledge at once. A replica that is connected but stalled must refuse all.
    primary, replica = pair
    client = async_client(primary.url)
    dispatcher = RedisDispatcher(client, _no_wake, replicas=1, wait_timeout_ms=300)
    await asyncio.gather(*(client.ping() for _ in range(8)))  # several idle connections in the pool
    assert replica.process is not None
    os.kill(replica.process.pid, signal.SIGSTOP)
    try:
        asks = [dispatcher.submit(f"c{n}", UserMessage(text="hi"), dedup_id=f"m{n}") for n in range(8)]
        outcomes = await asyncio.gather(*asks, return_exceptions=True)
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
        await client.aclose()
    assert all(isinstance(outcome, Unavailable) for outcome in outcomes), outcomes


def replica_of(cluster: EmbeddedCluster, primary: EmbeddedRedis) -> EmbeddedRedis:
    with cluster.node_client(primary) as client:
        port = int(client.info("replication")["slave0"]["port"])
    return next(node for node in cluster.nodes if node.port == port)


async def submit_until_taken(dispatcher: RedisDispatcher, conv: str, dedup_id: str) -> str:
    deadline = time.monotonic() + FAILOVER_WAIT_S
    while True:
        try:
            return await dispatcher.submit(conv, UserMessage(text="after"), dedup_id=dedup_id)
        except Unavailable:  # until the replica is promoted and the slot map names it
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)


async def test_on_a_cluster_an_ask_waits_for_the_replica_of_its_slots_primary(tmp_path: Path) -> None:
    with EmbeddedCluster(tmp_path / "cluster") as cluster:
        client = async_client(cluster.url)
        dispatcher = RedisDispatcher(client, _no_wake, replicas=1, wait_timeout_ms=300)
        await dispatcher.submit("w1", UserMessage(text="hello"), dedup_id="m1")
        primary = cluster.primary_of("conv:{w1}:inbox")
        replica = replica_of(cluster, primary)
        with cluster.node_client(replica) as copy:
            copy.execute_command("READONLY")
            assert copy.xlen("conv:{w1}:inbox") == 1  # on the replica before the submit returned
        assert replica.process is not None and primary.process is not None
        os.kill(replica.process.pid, signal.SIGSTOP)  # connected but stalled: every ask is refused
        try:
            asks = [dispatcher.submit("w1", UserMessage(text="hi"), dedup_id=f"s{n}") for n in range(4)]
            outcomes = await asyncio.gather(*asks, return_exceptions=True)
        finally:
            os.kill(replica.process.pid, signal.SIGCONT)
        assert all(isinstance(outcome, Unavailable) for outcome in outcomes), outcomes
        cluster.wait_ok()  # the resumed replica linked and caught up again before its primary dies
        os.kill(primary.process.pid, signal.SIGKILL)  # the replica is promoted; asks go to it...
        primary.process.wait()
        cluster.wait_ok(timeout_s=PROMOTION_TIMEOUT_S)
        assert cluster.primary_of("conv:{w1}:inbox").port == replica.port
        with pytest.raises(Unavailable):  # ...but with no replica of its own, none is acknowledged
            await dispatcher.submit("w1", UserMessage(text="after"), dedup_id="m2")
        primary.start()  # the old primary rejoins as the new one's replica
        await submit_until_taken(dispatcher, "w1", "m2")
        await dispatcher.aclose()
        await client.aclose()
