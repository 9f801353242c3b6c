"""With `redis_wait_replicas` N > 0 the worker's appends are replicated too: right before each model or tool
call (after its own `LLMRequested` / `ToolIntent`) and at the activation's end, the activation waits (one
WAIT) until N replicas have everything it appended so far, so no model or tool call runs on a write a
failover could drop (store/wait.py `ReplicaWait`, actors/activation.py `before_effect`, `replicated`)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest

from actors.broker import use_stub_broker

if dramatiq.broker.global_broker is None:  # before the actor module declares its actor
    use_stub_broker()

from actors.conversation import activate
from actors.runtime import Runtime
from actors.testing import HttpSink, ScriptedLLMThread, SmtpSink
from store.cluster import EmbeddedCluster
from store.events import AnswerCompleted, LLMRequested, UserMessage
from store.exceptions import LogError
from store.log import ConversationLog, conv_keys, renew_plan
from store.redis import EmbeddedRedis, sync_client
from store.wait import ReplicaWait
from tests.test_conversation import llm, sinks, world_with  # noqa: F401  (the fixtures)
from tests.test_replicated_asks import pair, replica_of  # noqa: F401  (the fixture)

WAIT_TIMEOUT_MS = 300
NOT_HUNG_S = 30.0


def _replica_entries(node: EmbeddedRedis, key: str, cluster: bool) -> int:
    client = sync_client(node.url)
    try:
        if cluster:
            client.execute_command("READONLY")
        return int(client.xlen(key))
    finally:
        client.close()


def _append_and_wait(log: ConversationLog, conv_id: str, texts: list[str]) -> ReplicaWait:
    lease = log.acquire(conv_id, "worker-1")  # the same owner may take it again (a new epoch)
    log.append(lease, [UserMessage(text=t) for t in texts])  # on the log's pooled connections
    waiter = ReplicaWait(log.client, 1, WAIT_TIMEOUT_MS)
    waiter.run(conv_keys(conv_id).lease, renew_plan(lease, None))  # a renewal + WAIT, on another one
    return waiter


def test_a_step_boundary_waits_for_the_replica_and_refuses_when_it_stalls(
    pair: tuple[EmbeddedRedis, EmbeddedRedis],  # noqa: F811
) -> None:
    primary, replica = pair
    log = ConversationLog.from_url(primary.url)
    try:
        waiter = _append_and_wait(log, "s1", ["one", "two", "three"])
        assert _replica_entries(replica, conv_keys("s1").log, cluster=False) == 3
        assert replica.process is not None
        os.kill(replica.process.pid, signal.SIGSTOP)  # connected, stalled
        try:
            lease = log.acquire("s2", "worker-1")
            log.append(lease, [UserMessage(text="unreplicated")])
            started = time.monotonic()
            with pytest.raises(LogError):
                waiter.run(conv_keys("s2").lease, renew_plan(lease, None))
            # Bounded by the WAIT timeout (300 ms; without one WAIT blocks for good): 100x slack for load.
            assert time.monotonic() - started < NOT_HUNG_S
        finally:
            os.kill(replica.process.pid, signal.SIGCONT)
    finally:
        log.close()


def test_on_a_cluster_the_wait_runs_on_the_conversations_primary(redis_cluster: EmbeddedCluster) -> None:
    redis_cluster.flushall()
    log = ConversationLog.from_url(redis_cluster.url)
    try:
        waiter = _append_and_wait(log, "w1", ["one", "two"])
        replica = replica_of(redis_cluster, redis_cluster.primary_of(conv_keys("w1").log))
        assert _replica_entries(replica, conv_keys("w1").log, cluster=True) == 2
        assert replica.process is not None
        os.kill(replica.process.pid, signal.SIGSTOP)  # that shard's replica stalls: its steps wait...
        try:
            lease = log.acquire("w1", "worker-1")
            log.append(lease, [UserMessage(text="unreplicated")])
            with pytest.raises(LogError):
                waiter.run(conv_keys("w1").lease, renew_plan(lease, None))
            other = next(c for c in (f"o{n}" for n in range(100)) if _shard(redis_cluster, c) != replica)
            _append_and_wait(log, other, ["elsewhere"])  # ...the other shards' do not
        finally:
            os.kill(replica.process.pid, signal.SIGCONT)
    finally:
        log.close()


def _shard(cluster: EmbeddedCluster, conv_id: str) -> EmbeddedRedis:
    return replica_of(cluster, cluster.primary_of(conv_keys(conv_id).log))


@pytest.fixture
def waiting_world(
    tmp_path: Path,
    pair: tuple[EmbeddedRedis, EmbeddedRedis],  # noqa: F811
    llm: ScriptedLLMThread,  # noqa: F811
    sinks: tuple[SmtpSink, HttpSink],  # noqa: F811
) -> Iterator[Any]:
    primary, _ = pair
    with world_with(tmp_path, primary.url, llm, sinks, redis_wait_replicas="1",
                    redis_wait_timeout_ms=str(WAIT_TIMEOUT_MS)) as world:  # fmt: skip
        yield world


def _waits(node: EmbeddedRedis) -> int:
    """WAIT commands `node` has run (INFO commandstats)."""
    client = sync_client(node.url)
    try:
        stats: Any = client.info("commandstats")
        return int(stats.get("cmdstat_wait", {}).get("calls", 0))
    finally:
        client.close()


def test_a_qa_turn_waits_once_before_its_model_call_and_once_at_its_end(
    waiting_world: Any,
    pair: tuple[EmbeddedRedis, EmbeddedRedis],  # noqa: F811
) -> None:
    world, (primary, replica) = waiting_world, pair
    world.ask("qw1", "How many days of annual leave do employees get?", mode="qa")
    before = _waits(primary)
    assert world.run("qw1") == "done"
    events = world.events("qw1")
    assert isinstance(events[-1], AnswerCompleted)
    assert _waits(primary) - before == 2  # not one per step (turn start, retrieval, model, answer, end)
    assert _replica_entries(replica, conv_keys("qw1").log, cluster=False) == len(events)


def test_no_model_call_runs_until_the_replica_has_the_turn_and_then_every_step_is_replicated(
    waiting_world: Any,
    pair: tuple[EmbeddedRedis, EmbeddedRedis],  # noqa: F811
) -> None:
    world, (_, replica) = waiting_world, pair
    assert replica.process is not None
    world.ask("ag1", "[script:agent@ag1] look up leave and check the record service", mode="agent")
    os.kill(replica.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(LogError):  # the broker retries the activation later
            world.run("ag1")
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
    assert world.requests("agent@ag1") == {}  # the turn's first step did not run on an unreplicated log
    assert world.run("ag1") == "done"
    events = world.events("ag1")
    assert isinstance(events[-1], AnswerCompleted)
    assert world.requests("agent@ag1") == {"0": 1, "1": 1, "2": 1}
    # The refused activation logged step 0's request, then its WAIT stopped the call: logged twice, made once.
    assert [e.step for e in events if isinstance(e, LLMRequested)] == [0, 0, 1, 2]
    assert _replica_entries(replica, conv_keys("ag1").log, cluster=False) == len(events)


def _stall_at_first_response(replica: EmbeddedRedis) -> Callable[[str], None]:
    """A crash hook that stalls the replica (SIGSTOP) once the first model response is in: the next writes
    are the primary's alone, as when a replica falls behind just before its primary dies."""
    assert replica.process is not None
    pid = replica.process.pid

    def hook(point: str) -> None:
        if point == "llm_response" and not stalled:
            stalled.append(point)
            os.kill(pid, signal.SIGSTOP)

    stalled: list[str] = []
    return hook


@pytest.mark.parametrize("wait", [True, False])
def test_a_replica_falling_behind_mid_turn_stops_the_next_step_only_with_wait(
    tmp_path: Path,
    pair: tuple[EmbeddedRedis, EmbeddedRedis],  # noqa: F811
    llm: ScriptedLLMThread,  # noqa: F811
    sinks: tuple[SmtpSink, HttpSink],  # noqa: F811
    wait: bool,
) -> None:
    primary, replica = pair
    extra = {"redis_wait_replicas": "1", "redis_wait_timeout_ms": str(WAIT_TIMEOUT_MS)} if wait else {}
    with world_with(tmp_path, primary.url, llm, sinks, **extra) as world:
        rt = Runtime.from_settings(world.settings, crash=_stall_at_first_response(replica))
        conv = f"mid{int(wait)}"  # its own script key: the scripted server's counts live for the module
        world.ask(conv, f"[script:agent@{conv}] look up leave and check the record service", mode="agent")
        try:
            if wait:
                with pytest.raises(LogError):
                    activate(conv, rt)
                # The model step's result is the primary's alone: the tool step it asked for did not run.
                assert world.requests(f"agent@{conv}") == {"0": 1} and not world.http.requests_by_key
            else:  # without WAIT the turn runs on, every later step on writes no replica has
                assert activate(conv, rt) == "done"
                assert world.requests(f"agent@{conv}") == {"0": 1, "1": 1, "2": 1}
        finally:
            assert replica.process is not None
            os.kill(replica.process.pid, signal.SIGCONT)
            rt.close()
        if wait:  # the replica caught up: the next activation reuses the recorded response
            assert world.run(conv) == "done"
            assert world.requests(f"agent@{conv}") == {"0": 1, "1": 1, "2": 1}
            assert _replica_entries(replica, conv_keys(conv).log, cluster=False) == len(world.events(conv))
