"""Issue 11 item 3 (limits on what a client can grow) and the page CSP, each attack replayed over real sockets
and real HTTP against a real web process and a real Redis, and shown refused with nothing written."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from server.auth import mint_token
from store.approvals import ApprovalLedger
from store.redis import EmbeddedRedis
from tests.server_proc import TEST_ADMIN_KEY, WAKES_KEY, ServerProcess, StreamWriter, server_env
from tests.test_review import request_approval
from tests.test_server_ws import ask, expect_close, inbox, open_chat, recv, user_message

ALLOWED_ORIGIN = "http://allowed.example"
USER_BURST = 3
SOCKETS_PER_USER = 6
SOCKETS_PER_TENANT = 9
POLICY_ROOMS = [f"room-{n:02d}" for n in range(20)]
MAX_JSON_BODY = 4096
HUGE = 200 * 1024 * 1024
CLOSED_WITHIN_S = 60.0  # a closing handshake that ends at all ends well within this


@pytest.fixture(scope="module")
def server(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("limits")
    policy = data / "policy.json"
    policy.write_text(json.dumps({"tools": {f"tool_{n}": {"room": r} for n, r in enumerate(POLICY_ROOMS)}}))
    env = server_env(
        redis_server.url,
        data / "web",
        user_burst=str(USER_BURST),
        user_rate_per_s="0.01",
        ws_max_sockets_per_user=str(SOCKETS_PER_USER),
        ws_max_sockets_per_tenant=str(SOCKETS_PER_TENANT),
        max_json_body_bytes=str(MAX_JSON_BODY),
        tool_policy_path=str(policy),
        allowed_origins=ALLOWED_ORIGIN,
    )
    with ServerProcess(env) as process:
        yield process


def token(server: ServerProcess, user: str, tenant: str = "acme", roles: tuple[str, ...] = ("user",)) -> str:
    return mint_token(server.settings, tenant=tenant, user=user, roles=roles, ttl=600)


def keys(r: redis.Redis, pattern: str) -> list[bytes]:
    return list(r.scan_iter(match=pattern, count=1000))


async def open_many(server: ServerProcess, tok: str, n: int) -> list[ClientConnection]:
    return [(await open_chat(server, tok))[0] for _ in range(n)]


async def close_all(sockets: list[ClientConnection]) -> None:
    for ws in sockets:
        await ws.close()


# ---- cancel ---------------------------------------------------------------------------------------------


async def test_a_cancel_with_no_running_turn_writes_nothing(server: ServerProcess, r: redis.Redis) -> None:
    ws, ready = await open_chat(server, token(server, "carl"))
    conv = ready["conversation_id"]
    for _ in range(USER_BURST):
        await ws.send(json.dumps({"type": "cancel"}))
    await ws.send(json.dumps({"type": "ping"}))
    assert await recv(ws) == {"type": "pong"}  # no error: a no-op
    assert r.exists(f"conv:{{{conv}}}:inbox") == 0
    assert keys(r, f"conv:{{{conv}}}:inbox_seen:*") == []
    assert r.llen(WAKES_KEY) == 0  # no worker activation
    await ws.close()


async def test_cancels_are_rate_limited_like_asks(server: ServerProcess, r: redis.Redis) -> None:
    """The attack: 5 sockets x 20 cancels on a running turn; only the user's burst gets through."""
    tok = token(server, "cora")
    first, ready = await open_chat(server, tok)
    conv = ready["conversation_id"]
    StreamWriter(r, conv).event(user_message(1))  # a running turn
    assert (await recv(first))["type"] == "event"
    sockets = [first]
    for _ in range(4):
        ws, _ = await open_chat(server, tok, conversation_id=conv)
        assert (await recv(ws))["type"] == "event"  # the replayed user_message
        sockets.append(ws)
    refused = 0
    for ws in sockets:
        for _ in range(20):
            await ws.send(json.dumps({"type": "cancel"}))
        await ws.send(json.dumps({"type": "ping"}))
        while (frame := await recv(ws))["type"] != "pong":
            assert frame["type"] == "error" and frame["code"] == "rate_limited", frame
            assert frame["retry_after_ms"] > 0
            refused += 1
    posted = inbox(r, conv)
    assert 1 <= len(posted) <= USER_BURST and refused == 100 - len(posted)
    assert all(type(item).__name__ == "TurnCancelled" for item in posted)
    assert len(keys(r, f"conv:{{{conv}}}:inbox_seen:*")) == len(posted)
    assert r.llen(WAKES_KEY) == len(posted)
    await close_all(sockets)


# ---- sockets and conversations --------------------------------------------------------------------------


async def test_open_sockets_are_capped_per_user_and_per_tenant(server: ServerProcess, r: redis.Redis) -> None:
    mine = await open_many(server, token(server, "uma"), SOCKETS_PER_USER)
    ws, _ = await asyncio.wait_for(_refused_hello(server, token(server, "uma")), 10)
    assert ws == (4429, "too_many_sockets")

    others = await open_many(server, token(server, "vic"), SOCKETS_PER_TENANT - SOCKETS_PER_USER)
    assert (await _refused_hello(server, token(server, "wes")))[0] == (4429, "too_many_sockets")
    other_tenant, _ = await open_chat(server, token(server, "wes", tenant="globex"))  # not affected

    await mine.pop().close()  # a slot comes back when a socket closes
    deadline = time.monotonic() + 30  # the close reaches the web process and its Redis count
    while True:
        try:
            again, _ = await open_chat(server, token(server, "wes"))
            break
        except AssertionError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    assert keys(r, "convmeta:*") == []  # greetings wrote nothing
    await close_all([*mine, *others, other_tenant, again])


async def _refused_hello(server: ServerProcess, tok: str) -> tuple[tuple[int, str], list[dict[str, Any]]]:
    ws = await connect(f"{server.ws_url}?token={tok}", open_timeout=20)
    with contextlib.suppress(ConnectionClosed):
        await ws.send(json.dumps({"type": "hello"}))
    frames, code = await expect_close(ws)
    return (code, frames[-1]["code"] if frames else ""), frames


async def test_a_conversation_is_created_by_its_first_ask_not_by_hello(
    server: ServerProcess, r: redis.Redis
) -> None:
    tok = token(server, "ned")
    ids = []
    for _ in range(30):  # the attack: greeting after greeting
        ws, ready = await open_chat(server, tok)
        ids.append(ready["conversation_id"])
        await ws.close()
    assert keys(r, "convmeta:*") == [] and keys(r, "convs:*") == []

    # The owner can still resume a conversation nobody asked in yet; anyone else is refused as ever.
    ws, ready = await open_chat(server, tok, conversation_id=ids[0])
    assert ready["conversation_id"] == ids[0]
    stranger = await open_chat_refused(server, token(server, "eve"), ids[0])
    assert stranger == 4403
    await ws.send(ask("the first question", "n1"))
    assert (await recv(ws))["type"] == "accepted"
    assert keys(r, "convmeta:*") == [f"convmeta:{{{ids[0]}}}".encode()]
    meta = r.hgetall(f"convmeta:{{{ids[0]}}}")
    assert (meta[b"user"], meta[b"title"]) == (b"ned", b"the first question")
    assert r.ttl(f"convmeta:{{{ids[0]}}}") == -1
    assert r.zrange("convs:{acme}:{ned}", 0, -1) == [ids[0].encode()]
    await ws.close()
    assert await open_chat_refused(server, token(server, "eve"), ids[0]) == 4403


async def open_chat_refused(server: ServerProcess, tok: str, conv: str) -> int:
    ws = await connect(f"{server.ws_url}?token={tok}", open_timeout=20)
    await ws.send(json.dumps({"type": "hello", "conversation_id": conv}))
    return (await expect_close(ws))[1]


# ---- reviewer rooms -------------------------------------------------------------------------------------


async def review_hello(server: ServerProcess, tok: str, rooms: list[str]) -> ClientConnection:
    ws = await connect(f"ws://127.0.0.1:{server.port}/ws/review", open_timeout=20)
    await ws.send(json.dumps({"type": "hello", "token": tok, "rooms": rooms}))
    return ws


def hub_readers(r: redis.Redis, server: ServerProcess) -> list[dict[str, Any]]:
    assert server.process is not None
    name = f"docent-hub-{server.process.pid}"
    return [c for c in r.client_list() if c.get("name") == name and c.get("cmd") == "xread"]


async def test_only_policy_rooms_may_be_joined(server: ServerProcess, r: redis.Redis) -> None:
    reviewer = token(server, "rex", roles=("reviewer",))
    made_up = [f"made-up-{n}" for n in range(32)]  # the attack: 32 invented rooms per socket
    for rooms in (made_up, ["email", "made-up-0"]):
        frames, code = await expect_close(await review_hello(server, reviewer, rooms))
        assert code == 4403 and frames[-1]["code"] == "unknown_room", frames
    assert keys(r, "room:*") == []
    request = f"{server.http_url}/api/approvals?room=made-up-0"
    status, body = await asyncio.to_thread(_get, request, reviewer)
    assert (status, body["code"]) == (403, "unknown_room")


async def test_a_review_socket_flood_closes_with_4429_without_hanging(server: ServerProcess) -> None:
    """The close keeps reading (one session base): a flooding reviewer cannot wedge the closing handshake."""
    ws = await review_hello(server, token(server, "fay", roles=("reviewer",)), ["email"])
    with contextlib.suppress(ConnectionClosed):
        for _ in range(500):
            await ws.send(json.dumps({"type": "ping"}))
    # A wedged close never ends: a deadline, not an elapsed-time assertion (it was < 5 s).
    frames, code = await asyncio.wait_for(expect_close(ws), CLOSED_WITHIN_S)
    assert code == 4429 and frames[-1]["code"] == "rate_limited"


async def test_room_fanout_shares_the_bounded_reader_pool(server: ServerProcess, r: redis.Redis) -> None:
    reviewer = token(server, "rita", roles=("reviewer",))
    rooms = ["general", "email", *POLICY_ROOMS]
    sockets = []
    for _ in range(5):
        ws = await review_hello(server, reviewer, rooms)
        assert (await recv(ws))["type"] == "ready"
        for _ in rooms:
            assert (await recv(ws))["type"] == "snapshot"
        sockets.append(ws)
    chat, _ = await open_chat(server, token(server, "rita"))  # a conversation key in the same pool
    await asyncio.sleep(0.3)
    # 22 room keys and one live key, 5 sockets: one blocking reader (it was one per room per process).
    assert len(hub_readers(r, server)) == 1

    record = request_approval(r, ApprovalLedger(r), room=POLICY_ROOMS[7])
    for ws in sockets:
        item = await recv(ws)
        assert (item["type"], item["room"], item["approval"]["approval_id"]) == (
            "item",
            POLICY_ROOMS[7],
            record.approval_id,
        )
    await close_all([*sockets, chat])


# ---- request bodies -------------------------------------------------------------------------------------


def _get(url: str, tok: str) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {tok}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def raw_post(
    server: ServerProcess, path: str, headers: dict[str, str], declared: int | None, send: int
) -> tuple[int, dict[str, Any]]:
    """Declare a body of `declared` bytes (None: chunked), send only `send` of them, then wait for the answer:
    a server that waited for the whole body would never answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", "Connection: close"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    head.append("Transfer-Encoding: chunked" if declared is None else f"Content-Length: {declared}")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    piece = b'{"decision":"approve","reason":"' + b"x" * 1024
    with contextlib.suppress(ConnectionError):
        for _ in range(send // len(piece) + 1):
            writer.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if declared is None else piece)
        await writer.drain()
    try:
        return await asyncio.wait_for(_response(reader), 10)
    finally:
        writer.close()


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, Any]]:
    """Read as it arrives (the server may reset the connection right after answering)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    status = int(head.split()[1])
    lines = head.split("\r\n")
    length = next(int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length"))
    return status, json.loads(await reader.readexactly(length))


async def test_request_bodies_are_refused_before_they_are_read(server: ServerProcess, r: redis.Redis) -> None:
    record = request_approval(r, ApprovalLedger(r))
    path = f"/api/approvals/{record.approval_id}/decision"
    user = {"Authorization": f"Bearer {token(server, 'ursula')}"}
    reviewer = {"Authorization": f"Bearer {token(server, 'rob', roles=('reviewer',))}"}

    # The attack: a 200 MB decision with a user token. The role is checked first: 403, body unread.
    status, body = await raw_post(server, path, user, HUGE, 1024)
    assert (status, body["code"]) == (403, "forbidden")
    # A reviewer's 200 MB body is refused from its Content-Length alone...
    status, body = await raw_post(server, path, reviewer, HUGE, 1024)
    assert (status, body["code"]) == (413, "body_too_large")
    # ... and a chunked one as soon as it passes the limit (the rest never comes).
    status, body = await raw_post(server, path, reviewer, None, 2 * MAX_JSON_BODY)
    assert (status, body["code"], body["limit"]) == (413, "body_too_large", MAX_JSON_BODY)
    # Admin routes too: no key, 401 before the body; with the key, 413.
    assert (await raw_post(server, "/admin/reindex", {}, HUGE, 1024))[0] == 401
    status, body = await raw_post(server, "/admin/reindex", {"X-Admin-Key": TEST_ADMIN_KEY}, HUGE, 1024)
    assert (status, body["code"]) == (413, "body_too_large")
    assert ApprovalLedger(r).get(record.approval_id).state == "pending"  # type: ignore[union-attr]
    assert inbox(r, record.conv_id) == []


# ---- pages ----------------------------------------------------------------------------------------------


async def test_page_csp_connects_to_this_origin_and_the_configured_ones_only(server: ServerProcess) -> None:
    import urllib.request

    for page in ("/", "/review", "/admin"):
        with urllib.request.urlopen(f"{server.http_url}{page}", timeout=5) as response:
            csp = response.headers["Content-Security-Policy"]
        directive = next(d.strip() for d in csp.split(";") if d.strip().startswith("connect-src"))
        assert directive == f"connect-src 'self' {ALLOWED_ORIGIN} ws://allowed.example", csp
