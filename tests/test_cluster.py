"""A real Redis Cluster (3 primaries + 3 replicas, store.cluster): its shape, one slot per conversation,
the hub's slot-batched reads, and the web process serving chat over it with real sockets.

The store-level suites (log, leases, approvals, idempotency, rate limits) run on the cluster too: their
modules are marked `pytest.mark.cluster` (tests/conftest.py); DOCENT_TEST_REDIS=cluster runs every
`redis_url` test on it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from actors.testing.ports import listening_socket
from server.app import create_app
from server.hub import Hub, hub_client
from store import keys
from store.approvals import ApprovalLedger, approval_key, audit_key, room_events_key, room_pending_key
from store.cluster import BUS_PORT_OFFSET, SLOTS, EmbeddedCluster, free_node_ports
from store.conversations import meta_key
from store.events import ApprovalDecided, UserMessage
from store.exceptions import ConfigError, LogError, PortInUse
from store.log import ConversationLog, conv_keys
from store.redis import key_slot, sync_client
from store.redis_owner import CLUSTER_DIR, PORTS_FILE
from store.settings import Settings
from tests.server_proc import WAKES_KEY, ServerProcess, StreamWriter, server_env
from tests.stack_proc import Stack
from tests.test_review import inbox as review_inbox
from tests.test_review import open_review, recv_until, request_approval
from tests.test_review import tok as review_token
from tests.test_server_ws import ANSWER, ask, inbox, open_chat, recv, recv_n, token, user_message
from tests.test_stack import TERMINAL
from tests.test_stack import _ask_until_terminal as ask_until_terminal

pytestmark = pytest.mark.cluster  # the tests taking `redis_url` run on one Redis and on the cluster
RECV_TIMEOUT_S = 20.0  # a frame across a web process and the cluster, on a loaded machine


def roles(cluster: EmbeddedCluster) -> list[str]:
    with cluster.node_client(cluster.nodes[0]) as client:
        raw: Any = client.execute_command("CLUSTER", "NODES")
    lines = (raw.decode() if isinstance(raw, bytes) else str(raw)).splitlines()
    return sorted("master" if "master" in line.split()[2] else "slave" for line in lines if line)


def test_three_primaries_each_with_a_replica_serve_every_slot(redis_cluster: EmbeddedCluster) -> None:
    assert roles(redis_cluster) == ["master"] * 3 + ["slave"] * 3
    with redis_cluster.node_client(redis_cluster.nodes[-1]) as client:
        info: Any = client.cluster("INFO")
    assert info["cluster_state"] == "ok" and int(info["cluster_slots_ok"]) == SLOTS


def test_a_conversations_keys_share_one_slot_and_conversations_spread_over_primaries(
    redis_cluster: EmbeddedCluster,
) -> None:
    ck = conv_keys("c1")
    family = [*ck, ck.inbox_seen("m1"), meta_key("c1")]
    assert {key_slot(k) for k in family} == {key_slot("conv:{c1}:log")}
    tenant = [room_pending_key("acme", "legal"), room_events_key("acme", "legal"), audit_key("acme")]
    assert len({key_slot(k) for k in tenant}) == 1
    assert key_slot(approval_key("a1")) == key_slot(f"{approval_key('a1')}:reminded")
    owners = {redis_cluster.primary_of(conv_keys(f"c{i}").log).port for i in range(30)}
    assert len(owners) == 3


def test_a_hub_wake_key_lands_in_the_slot_of_the_keys_it_wakes() -> None:
    for key in ("conv:{c9}:live", "room:{acme}:{legal}:events", keys.REINDEX_EVENTS):
        assert key_slot(keys.hub_wake("p1", 3, key)) == key_slot(key)
    assert keys.hub_wake("p1", 3) == "fanout:{p1}:wake:3"  # one node: the name is unchanged


async def test_the_hub_reads_keys_of_many_slots_batched_by_slot(redis_url: str, redis_kind: str) -> None:
    client = hub_client(redis_url)
    writer = sync_client(redis_url)
    hub = Hub(client)
    try:
        streams = [conv_keys(f"h{i}").live for i in range(12)] + [f"t:{{h0}}:{n}" for n in range(3)]
        subscribe = (hub.subscribe(k, lambda entry_id, fields: entry_id, capacity=16) for k in streams)
        subs = [await asyncio.wait_for(s, RECV_TIMEOUT_S) for s in subscribe]
        written = {k: writer.xadd(k, {"e": "x"}).decode() for k in streams}  # type: ignore[union-attr]
        got = {s.key: (await asyncio.wait_for(s.next_batch(), RECV_TIMEOUT_S))[0] for s in subs}
        assert got == written
        slots = {key_slot(k) for k in streams}
        assert hub.reader_count == (len(slots) if redis_kind == "cluster" else 1)
    finally:
        await hub.aclose()  # bounded (HUB_CLOSE_TIMEOUT_S)
        closing = asyncio.ensure_future(client.aclose())
        await asyncio.wait({closing}, timeout=RECV_TIMEOUT_S)  # never hang the suite on a client's close
        writer.close()


@pytest.fixture
def web(redis_url: str, broker_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(server_env(redis_url, tmp_path / "web", broker_url=broker_url)) as process:
        yield process


def test_a_cluster_without_a_broker_url_is_refused(redis_cluster: EmbeddedCluster, tmp_path: Path) -> None:
    settings = Settings.from_env({"DOCENT_REDIS_URL": redis_cluster.url, "DOCENT_DATA_DIR": str(tmp_path)})
    with pytest.raises(ConfigError, match="DOCENT_BROKER_URL"):
        create_app(settings)


async def test_chat_over_the_cluster_streams_resumes_and_dedups(web: ServerProcess, r: redis.Redis) -> None:
    ws, ready = await open_chat(web, token(web))
    conv = ready["conversation_id"]
    await ws.send(ask("What is X?", "m1"))
    assert await recv(ws) == {"type": "accepted", "client_message_id": "m1"}
    await ws.send(ask("What is X?", "m1"))  # a retry: accepted again, posted once
    assert (await recv(ws))["type"] == "accepted"
    assert len(inbox(r, conv)) == 1 and set(r.lrange(WAKES_KEY, 0, -1)) == {conv.encode()}  # type: ignore[arg-type]

    worker = StreamWriter(r, conv)
    seen = [worker.event(user_message(1, "What is X?", "m1")), worker.delta("Hello ", 1)]
    assert [f["id"] for f in await recv_n(ws, 2)] == seen
    ws.transport.abort()
    missed = [worker.delta("**world** ", 1), worker.delta("[1]", 1)]  # the turn is still running
    ws, ready = await open_chat(web, token(web), conversation_id=conv, last_event_id=seen[-1])
    assert ready["resumed_from"] == seen[-1]
    assert [f["id"] for f in await recv_n(ws, 2)] == missed
    answer = worker.event(ANSWER)  # live again, through the hub
    assert (await recv(ws))["id"] == answer
    await ws.send(json.dumps({"type": "ping"}))
    assert await recv(ws) == {"type": "pong"}  # no duplicate was queued
    await ws.close()


def test_docent_run_cluster_answers_over_the_cluster_and_survives_a_killed_node(
    tmp_path: Path, stacks: list[Stack]
) -> None:
    stack = Stack(tmp_path / "s", "--cluster")
    stacks.append(stack)
    stack.start()
    stack.wait_for("embedded redis cluster on redis+cluster://")
    settings = Settings.from_env({"DOCENT_DATA_DIR": str(stack.data_dir)})
    assert asyncio.run(ask_until_terminal(stack, settings)) in TERMINAL
    directory = stack.data_dir / CLUSTER_DIR
    ports = [int(p) for p in (directory / PORTS_FILE).read_text().split()]
    written = _all_keys(ports, (directory / "password").read_text().strip())
    assert any(k.startswith(b"conv:") for k in written), "the conversation was written to the cluster"
    mark = len(stack.lines)
    stack.kill_child("cluster")  # the supervisor's handle: the first node (a primary)
    stack.wait_for("supervisor: restarted cluster (pid", after=mark, timeout=60)
    stack.wait_ready()
    assert asyncio.run(ask_until_terminal(stack, settings)) in TERMINAL


def _all_keys(ports: list[int], password: str) -> set[bytes]:
    found: set[bytes] = set()
    for port in ports:
        with redis.Redis(port=port, username="docent", password=password) as client:
            found |= set(client.keys("*"))  # type: ignore[arg-type]
    return found


def test_node_ports_and_their_bus_ports_lie_below_the_ephemeral_range() -> None:
    """No outgoing connection (whose local port is ephemeral) can hold a node's port or bus port."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = free_node_ports(50)
    assert all(p + BUS_PORT_OFFSET < low for p in ports)


def test_a_chosen_node_port_taken_before_the_node_binds_is_chosen_again(tmp_path: Path) -> None:
    """The CI failure of stop 21: a node's port was taken between its choice and the node's bind."""
    cluster = EmbeddedCluster(tmp_path / "cluster", primaries=1, replicas=0)
    taken = cluster.nodes[0].port
    with listening_socket(taken), cluster:
        assert [n.port for n in cluster.nodes] != [taken]
        assert sync_client(cluster.url).ping()


def test_an_explicit_node_port_that_is_taken_stays_a_typed_error(tmp_path: Path) -> None:
    port = free_node_ports(1)[0]
    with listening_socket(port), pytest.raises(PortInUse, match=str(port)):
        EmbeddedCluster(tmp_path / "cluster", primaries=1, replicas=0, ports=[port]).start()


def test_a_killed_primary_is_failed_over_and_the_log_carries_on(tmp_path: Path) -> None:
    """SIGKILL the primary of a conversation's slot: its replica is promoted, and the same clients go on
    (fenced appends, reads) once redis-py has found the new primary; the lease and the log survive
    (WAIT 1 before the kill: the replica had them)."""
    with EmbeddedCluster(tmp_path / "cluster") as cluster:
        log = ConversationLog.from_url(cluster.url)
        lease = log.acquire("fo", "w1", 60_000)
        log.append(lease, [UserMessage(text="before", turn=1)])
        primary = cluster.primary_of(conv_keys("fo").log)
        with cluster.node_client(primary) as direct:
            assert direct.wait(1, 30_000) == 1  # the replica acknowledged what came before the kill (at once)
        assert primary.process is not None
        os.kill(primary.process.pid, signal.SIGKILL)
        primary.process.wait()
        cluster.wait_ok()  # the replica was promoted; every slot is served again
        assert cluster.primary_of(conv_keys("fo").log).port != primary.port
        deadline = time.monotonic() + 30  # redis-py refreshes its slot map (a loaded machine)
        while True:
            try:
                log.append(lease, [UserMessage(text="after", turn=2)])
                break
            except LogError:  # `unavailable` until redis-py refreshes its slot map
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert [e.text for _, e in log.read("fo") if isinstance(e, UserMessage)] == ["before", "after"]
        log.close()


@pytest.fixture
def two_webs(redis_url: str, broker_url: str, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    webs = [ServerProcess(server_env(redis_url, tmp_path / f"web{n}", broker_url=broker_url)) for n in (1, 2)]
    try:
        yield [web.start() for web in webs]
    finally:
        for web in webs:
            web.stop()


async def test_a_decision_on_one_web_process_reaches_reviewers_on_the_other(
    two_webs: list[ServerProcess], r: redis.Redis
) -> None:
    one, two = two_webs
    ledger = ApprovalLedger(r)
    bob, _, _ = await open_review(one, review_token(one, "bob"), ["email"])
    carol, _, _ = await open_review(two, review_token(two, "carol"), ["email"])
    record = request_approval(r, ledger)
    for ws in (bob, carol):  # the request reaches both processes' rooms
        item = await recv_until(ws, lambda f: f["type"] == "item" and f["kind"] == "requested")
        assert item["approval"]["approval_id"] == record.approval_id
    decide = {"type": "decide", "approval_id": record.approval_id, "decision": "approve", "reason": "ok",
              "request_id": "r1"}  # fmt: skip
    await carol.send(json.dumps(decide))
    assert (await recv_until(carol, lambda f: f["type"] == "decision"))["ok"]
    item = await recv_until(bob, lambda f: f["type"] == "item" and f["kind"] == "decided")
    assert item["approval"]["reviewer"] == "carol"  # decided on web 2, seen live on web 1
    decided = [e for e in review_inbox(r, record.conv_id) if isinstance(e, ApprovalDecided)]
    assert len(decided) == 1 and decided[0].reviewer == "carol"
    await bob.close()
    await carol.close()
