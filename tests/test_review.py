"""Reviewer rooms end to end: a real web process, real sockets, real Redis, a real dramatiq timer worker.

The test plays the conversation actor: it records approvals in the ledger (as the actor does) and
schedules their timers with `actors.approvals.schedule_expiry`. The timer worker runs with its clock three
days ahead (`DOCENT_APPROVAL_CLOCK_OFFSET_MS`), so an approval created now is due at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from actors.approvals import schedule_expiry
from actors.broker import NAMESPACE
from server.auth import mint_token
from store.approvals import ApprovalLedger, ApprovalRecord
from store.clock import now_ms
from store.events import ApprovalDecided, ApprovalExpired, UserMessage, decode_event
from store.settings import Settings
from tests.conftest import RedisTarget
from tests.server_proc import REPO, TEST_ADMIN_KEY, WAKES_KEY, ServerProcess, StreamWriter, server_env

RECV_TIMEOUT_S = 20.0  # a frame across the web process and Redis, on a loaded machine
DAY_MS = 24 * 3600 * 1000
TTL_MS = 3 * DAY_MS
WORKER_OFFSET_MS = TTL_MS  # the timer worker lives three days ahead
WAIT_S = 30.0  # a matching frame across processes and Redis, on a loaded machine


# ---- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(redis_target: RedisTarget, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = server_env(redis_target.url, tmp_path_factory.mktemp("web"), broker_url=redis_target.broker_url)
    with ServerProcess(env) as process:
        yield process


@pytest.fixture(scope="module")
def timer_worker(redis_target: RedisTarget, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    env = server_env(
        redis_target.url,
        tmp_path_factory.mktemp("worker"),
        broker_url=redis_target.broker_url,
        approval_clock_offset_ms=str(WORKER_OFFSET_MS),
        broker_heartbeat_timeout_ms="2000",
    )
    worker = subprocess.Popen([sys.executable, "-m", "actors.approvals"], env=env, cwd=REPO)
    try:
        yield
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


@pytest.fixture
def ledger(r: redis.Redis) -> ApprovalLedger:
    return ApprovalLedger(r)


@pytest.fixture
def broker(redis_url: str, broker_url: str) -> Iterator[RedisBroker]:
    broker = RedisBroker(url=broker_url or redis_url, namespace=NAMESPACE)
    yield broker
    broker.close()


def sched_settings(redis_url: str, broker_url: str = "", **fields: Any) -> Settings:
    env = {"DOCENT_REDIS_URL": redis_url, "DOCENT_BROKER_URL": broker_url, "DOCENT_LLM_BACKEND": "none"}
    base = Settings.from_env(env)
    return msgspec.structs.replace(base, approval_clock_offset_ms=WORKER_OFFSET_MS, **fields)


# ---- helpers ------------------------------------------------------------------------------------------


def tok(server: ServerProcess, user: str, tenant: str = "acme", roles: tuple[str, ...] = ("reviewer",),
        groups: tuple[str, ...] = ()) -> str:  # fmt: skip
    return mint_token(server.settings, tenant=tenant, user=user, groups=groups, roles=roles, ttl=600)


def request_approval(
    r: redis.Redis,
    ledger: ApprovalLedger,
    *,
    tenant: str = "acme",
    room: str = "email",
    requested_by: str = "alice",
    created_ms: int | None = None,
    ttl_ms: int = TTL_MS,
    question: str = "compare these three contracts into a table and email it",
) -> ApprovalRecord:
    """What the conversation actor does: the user's message in the log, then a pending approval."""
    conv = uuid.uuid4().hex
    StreamWriter(r, conv).event(UserMessage(text=question, user=requested_by, tenant=tenant, turn=1))
    args = json.dumps({"to": ["legal@acme.test"], "subject": "Contracts", "body": "| a | b |"})
    created = now_ms() if created_ms is None else created_ms
    record = ApprovalRecord(
        approval_id=f"ap-{uuid.uuid4().hex[:12]}",
        conv_id=conv,
        tenant=tenant,
        room=room,
        tool="send_email",
        args=args,
        args_hash=hashlib.sha256(args.encode()).hexdigest(),
        requested_by=requested_by,
        reason="the user asked to email the comparison table",
        created_ms=created,
        expires_ms=created + ttl_ms,
    )
    return ledger.create(record)


async def recv(ws: ClientConnection, timeout: float = RECV_TIMEOUT_S) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))  # type: ignore[no-any-return]


_skipped: dict[int, list[dict[str, Any]]] = {}


async def recv_until(ws: ClientConnection, match: Any, timeout: float = WAIT_S) -> dict[str, Any]:
    """The first frame (already skipped by an earlier call, or new) that `match`es; others are kept."""
    backlog = _skipped.setdefault(id(ws), [])
    for n, frame in enumerate(backlog):
        if match(frame):
            return backlog.pop(n)
    deadline = time.monotonic() + timeout
    while True:
        frame = await recv(ws, max(0.1, deadline - time.monotonic()))
        if match(frame):
            return frame
        backlog.append(frame)


async def open_review(
    server: ServerProcess, token: str, rooms: list[str] | None = None
) -> tuple[ClientConnection, dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """A reviewer socket after its hello: the ready frame and each room's snapshot."""
    ws = await connect(f"ws://127.0.0.1:{server.port}/ws/review", open_timeout=20)
    _skipped.pop(id(ws), None)
    hello: dict[str, Any] = {"type": "hello", "token": token}
    if rooms is not None:
        hello["rooms"] = rooms
    await ws.send(json.dumps(hello))
    ready = await recv(ws)
    assert ready["type"] == "ready", ready
    snapshots = {}
    for _ in ready["rooms"]:
        snap = await recv(ws)
        assert snap["type"] == "snapshot", snap
        snapshots[snap["room"]] = snap["items"]
    return ws, ready, snapshots


async def refused(server: ServerProcess, token: str, rooms: list[str] | None = None) -> tuple[int, str]:
    ws = await connect(f"ws://127.0.0.1:{server.port}/ws/review", open_timeout=20)
    await ws.send(json.dumps({"type": "hello", "token": token, **({"rooms": rooms} if rooms else {})}))
    code = ""
    with contextlib.suppress(ConnectionClosed):
        while True:
            frame = await recv(ws)
            code = frame.get("code", code)
    assert ws.close_code is not None
    return ws.close_code, code


def http(
    server: ServerProcess, method: str, path: str, body: Any = None, token: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:  # fmt: skip
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{server.http_url}{path}", data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def inbox(r: redis.Redis, conv: str) -> list[Any]:
    raw: Any = r.xrange(f"conv:{{{conv}}}:inbox")
    return [decode_event(fields[b"e"]) for _, fields in raw]


def advance_messages(queues: redis.Redis) -> list[dict[str, Any]]:
    """The `advance` messages waiting on the broker's Redis (beside a cluster, the single one)."""
    raw: Any = queues.hvals(f"{NAMESPACE}:conversation.msgs")
    return [json.loads(m) for m in raw]


async def wait_for(predicate: Any, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


# ---- tests --------------------------------------------------------------------------------------------


async def test_two_reviewers_race_exactly_one_wins_and_the_loser_is_told_who(
    server: ServerProcess, r: redis.Redis, ledger: ApprovalLedger
) -> None:
    record = request_approval(r, ledger)
    bob, _, bob_snap = await open_review(server, tok(server, "bob"), ["email"])
    carol, _, carol_snap = await open_review(server, tok(server, "carol"), ["email"])
    for snap in (bob_snap, carol_snap):
        (item,) = snap["email"]
        assert item["approval_id"] == record.approval_id
        assert item["requested_by"] == "alice"
        assert item["context"] == "compare these three contracts into a table and email it"
        assert item["reason"] == "the user asked to email the comparison table"
        assert item["tool"] == "send_email" and item["risk"] == "high"
        assert item["args"] == json.loads(record.args)

    for ws, word in ((bob, "approve"), (carol, "deny")):
        frame = {"type": "decide", "approval_id": record.approval_id, "decision": word,
                 "reason": f"{word} it", "request_id": "r1"}  # fmt: skip
        await ws.send(json.dumps(frame))
    results = {}
    for name, ws in (("bob", bob), ("carol", carol)):
        results[name] = await recv_until(ws, lambda f: f["type"] == "decision")
    winners = [n for n, res in results.items() if res["ok"]]
    assert len(winners) == 1
    winner = winners[0]
    loser = "carol" if winner == "bob" else "bob"
    assert results[loser]["by"] == winner
    assert results[loser]["state"] == results[winner]["state"]

    for ws in (bob, carol):  # both consoles see the decision live
        item = await recv_until(ws, lambda f: f["type"] == "item" and f["kind"] == "decided")
        assert item["approval"]["reviewer"] == winner
    decided = [e for e in inbox(r, record.conv_id) if isinstance(e, ApprovalDecided)]
    assert len(decided) == 1 and decided[0].reviewer == winner
    assert decided[0].approval_id == record.approval_id
    assert record.conv_id.encode() in r.lrange(WAKES_KEY, 0, -1)
    await bob.close()
    await carol.close()


async def test_new_requests_are_pushed_live_to_every_reviewer_in_the_room(
    server: ServerProcess, r: redis.Redis, ledger: ApprovalLedger
) -> None:
    sockets = [
        (await open_review(server, tok(server, name), ["email", "general"]))[0] for name in ("bob", "carol")
    ]
    other_room, _, _ = await open_review(server, tok(server, "dave"), ["deletions"])
    record = request_approval(r, ledger)
    for ws in sockets:
        item = await recv_until(ws, lambda f: f["type"] == "item")
        assert item["kind"] == "requested" and item["room"] == "email"
        assert item["approval"]["approval_id"] == record.approval_id
        assert item["approval"]["context"].startswith("compare these three contracts")
    with pytest.raises(TimeoutError):  # another room hears nothing
        await recv(other_room, timeout=0.5)

    path = f"/api/approvals/{record.approval_id}/decision"
    status, body = http(server, "POST", path, {"decision": "denied", "reason": "not to external lists"},
                        tok(server, "bob"))  # fmt: skip
    assert status == 200 and body["ok"] and body["approval"]["state"] == "denied"
    for ws in sockets:
        item = await recv_until(ws, lambda f: f["type"] == "item" and f["kind"] == "decided")
        assert item["approval"]["decision_reason"] == "not to external lists"
    status, body = http(server, "POST", path, {"decision": "approved"}, tok(server, "carol"))
    assert status == 409 and body["code"] == "already_decided" and body["by"] == "bob"
    assert body["decision"] == "denied"
    for ws in (*sockets, other_room):
        await ws.close()


async def test_only_reviewers_of_the_tenant_and_room_may_see_or_decide(
    server: ServerProcess, r: redis.Redis, ledger: ApprovalLedger
) -> None:
    record = request_approval(r, ledger, requested_by="bob")
    path = f"/api/approvals/{record.approval_id}/decision"

    assert await refused(server, tok(server, "alice", roles=("user",))) == (4403, "forbidden")
    assert await refused(server, "not-a-token") == (4401, "unauthorized")
    legal_only = tok(server, "erin", groups=("review.legal",))
    assert await refused(server, legal_only, ["email"]) == (4403, "forbidden")

    # Another tenant's reviewer sees nothing and cannot tell the approval exists.
    _, _, snap = await open_review(server, tok(server, "mallory", tenant="globex"), ["email"])
    assert snap == {"email": []}
    assert (
        http(server, "POST", path, {"decision": "approve"}, tok(server, "mallory", tenant="globex"))[0] == 404
    )
    assert http(server, "GET", f"/api/approvals/{record.approval_id}", None,
                tok(server, "mallory", tenant="globex"))[0] == 404  # fmt: skip
    assert (
        http(server, "POST", path, {"decision": "approve"}, tok(server, "alice", roles=("user",)))[0] == 403
    )
    assert http(server, "POST", path, {"decision": "approve"}, legal_only)[0] == 403
    assert http(server, "POST", path, {"decision": "approve"})[0] == 401
    assert http(server, "POST", path, {"decision": "maybe"}, tok(server, "carol"))[0] == 400

    # The requester is a reviewer too, but may not approve their own request (the default policy).
    status, body = http(server, "POST", path, {"decision": "approve"}, tok(server, "bob"))
    assert (status, body["code"]) == (403, "forbidden")
    bob, _, _ = await open_review(server, tok(server, "bob"), ["email"])
    await bob.send(json.dumps({"type": "decide", "approval_id": record.approval_id, "decision": "approved",
                               "request_id": "own"}))  # fmt: skip
    error = await recv_until(bob, lambda f: f["type"] == "error")
    assert error["code"] == "forbidden" and error["request_id"] == "own"
    assert ledger.get(record.approval_id).state == "pending"  # type: ignore[union-attr]
    assert inbox(r, record.conv_id) == []

    # A reviewer of the room (here an admin) decides; the socket stayed open after the refusal.
    status, body = http(
        server, "POST", path, {"decision": "approve", "reason": "ok"}, tok(server, "root", roles=("admin",))
    )
    assert status == 200 and body["approval"]["reviewer"] == "root"
    await recv_until(bob, lambda f: f["type"] == "item" and f["kind"] == "decided")
    await bob.close()


async def test_expiry_through_a_delayed_message_with_injected_time(
    server: ServerProcess, timer_worker: None, r: redis.Redis, ledger: ApprovalLedger, broker: RedisBroker,
    redis_url: str,
) -> None:  # fmt: skip
    watcher, _, _ = await open_review(server, tok(server, "bob"), ["email"])
    record = request_approval(r, ledger)
    await recv_until(watcher, lambda f: f["type"] == "item" and f["kind"] == "requested")
    schedule_expiry(record.approval_id, record.conv_id, record.expires_ms, settings=sched_settings(redis_url),
                    broker=broker)  # fmt: skip

    item = await recv_until(watcher, lambda f: f["type"] == "item" and f["kind"] == "expired")
    assert item["approval"]["approval_id"] == record.approval_id
    expired = await wait_for(lambda: [e for e in inbox(r, record.conv_id) if isinstance(e, ApprovalExpired)])
    assert len(expired) == 1 and expired[0].approval_id == record.approval_id
    await wait_for(lambda: any(m["args"] == [record.conv_id] and m["actor_name"] == "advance"
                               for m in advance_messages(broker.client)))  # fmt: skip
    assert ledger.get(record.approval_id).state == "expired"  # type: ignore[union-attr]

    # A reviewer who clicks after the expiry loses to the clock.
    status, body = http(server, "POST", f"/api/approvals/{record.approval_id}/decision",
                        {"decision": "approve"}, tok(server, "carol"))  # fmt: skip
    assert status == 409 and body["decision"] == "expired" and body["by"] == ""
    await watcher.close()


async def test_reminder_before_expiry_and_repair_of_a_lost_delivery(
    server: ServerProcess, timer_worker: None, r: redis.Redis, ledger: ApprovalLedger, broker: RedisBroker,
    redis_url: str,
) -> None:  # fmt: skip
    watcher, _, _ = await open_review(server, tok(server, "bob"), ["email"])
    # Due in (worker time) 60 s; the reminder goes out 59 s before that, i.e. in about a second.
    pending = request_approval(r, ledger, ttl_ms=TTL_MS + 60_000)
    schedule_expiry(pending.approval_id, pending.conv_id, pending.expires_ms,
                    settings=sched_settings(redis_url, approval_reminder_s=59), broker=broker)  # fmt: skip
    item = await recv_until(watcher, lambda f: f["type"] == "item" and f["kind"] == "reminder")
    assert item["approval"]["approval_id"] == pending.approval_id
    assert item["approval"]["state"] == "pending"

    # Decided, but the deciding process died before telling the conversation: the expiry timer repairs it.
    lost = request_approval(r, ledger)
    ledger.decide(lost.approval_id, "approved", "carol", "fine", tenant="acme")
    assert inbox(r, lost.conv_id) == []
    schedule_expiry(lost.approval_id, lost.conv_id, lost.expires_ms, settings=sched_settings(redis_url),
                    broker=broker)  # fmt: skip
    decided = await wait_for(lambda: inbox(r, lost.conv_id))
    assert [(e.approval_id, e.decision, e.reviewer) for e in decided] == [
        (lost.approval_id, "approved", "carol")
    ]
    await watcher.close()


async def test_admin_lists_decisions_by_tenant_tool_and_time(
    server: ServerProcess, r: redis.Redis, ledger: ApprovalLedger
) -> None:
    t0 = now_ms()
    first = request_approval(r, ledger)
    second = request_approval(r, ledger)
    foreign = request_approval(r, ledger, tenant="globex")
    reviewer = tok(server, "bob")
    assert http(server, "POST", f"/api/approvals/{first.approval_id}/decision",
                {"decision": "approve", "reason": "table checked"}, reviewer)[0] == 200  # fmt: skip
    time.sleep(0.01)
    t1 = now_ms()
    assert http(server, "POST", f"/api/approvals/{second.approval_id}/decision",
                {"decision": "deny", "reason": "wrong list"}, reviewer)[0] == 200  # fmt: skip
    ledger.decide(foreign.approval_id, "approved", "mallory", tenant="globex")

    admin = {"X-Admin-Key": TEST_ADMIN_KEY}
    status, body = http(server, "GET", "/admin/decisions?tenant=acme&tool=send_email", headers=admin)
    assert status == 200
    rows = [(d["approval_id"], d["outcome"], d["reviewer"], d["reason"]) for d in body["decisions"]]
    assert rows == [
        (second.approval_id, "denied", "bob", "wrong list"),
        (first.approval_id, "approved", "bob", "table checked"),
    ]
    assert all(d["decided_ms"] >= t0 and d["requested_by"] == "alice" for d in body["decisions"])
    status, body = http(server, "GET", f"/admin/decisions?tenant=acme&since={t1}", headers=admin)
    assert [d["approval_id"] for d in body["decisions"]] == [second.approval_id]
    status, body = http(server, "GET", f"/admin/decisions?tenant=acme&until={t1}", headers=admin)
    assert [d["approval_id"] for d in body["decisions"]] == [first.approval_id]
    status, body = http(server, "GET", "/admin/decisions?tenant=acme&tool=http_request", headers=admin)
    assert body["decisions"] == []
    assert http(server, "GET", "/admin/decisions?tenant=acme", headers={"X-Admin-Key": "wrong"})[0] == 401
    assert http(server, "GET", "/admin/decisions?tenant=acme", token=reviewer)[0] == 403
    assert http(server, "GET", "/admin/decisions?tenant=acme&since=yesterday", headers=admin)[0] == 400


async def test_a_pending_approval_survives_a_web_restart(
    redis_target: RedisTarget, r: redis.Redis, ledger: ApprovalLedger, tmp_path: Path
) -> None:
    with ServerProcess(server_env(redis_target.url, tmp_path, broker_url=redis_target.broker_url)) as web:
        record = request_approval(r, ledger)
        bob, _, snap = await open_review(web, tok(web, "bob"), ["email"])
        assert [i["approval_id"] for i in snap["email"]] == [record.approval_id]
        web.restart()  # SIGKILL: the socket just dies
        with pytest.raises(ConnectionClosed):
            await recv(bob)
        bob, _, snap = await open_review(web, tok(web, "bob"), ["email"])
        assert [i["approval_id"] for i in snap["email"]] == [record.approval_id]
        await bob.send(json.dumps({"type": "decide", "approval_id": record.approval_id, "decision": "approve",
                                   "request_id": "after-restart"}))  # fmt: skip
        result = await recv_until(bob, lambda f: f["type"] == "decision")
        assert result["ok"] and result["state"] == "approved"
        assert [type(e) for e in inbox(r, record.conv_id)] == [ApprovalDecided]
        await bob.close()


async def test_bad_frames_get_errors_and_change_nothing(
    server: ServerProcess, r: redis.Redis, ledger: ApprovalLedger
) -> None:
    record = request_approval(r, ledger)
    ws, _, _ = await open_review(server, tok(server, "bob"), ["email"])
    await ws.send("not json")
    assert (await recv(ws))["code"] == "bad_frame"
    await ws.send(json.dumps({"type": "decide", "approval_id": record.approval_id, "decision": "yes",
                              "request_id": "x"}))  # fmt: skip
    assert (await recv(ws))["code"] == "bad_frame"
    await ws.send(
        json.dumps({"type": "decide", "approval_id": "nope", "decision": "deny", "request_id": "y"})
    )
    error = await recv(ws)
    assert (error["code"], error["request_id"]) == ("not_found", "y")
    await ws.send(json.dumps({"type": "ping"}))
    assert (await recv(ws))["type"] == "pong"
    assert ledger.get(record.approval_id).state == "pending"  # type: ignore[union-attr]
    await ws.close()
