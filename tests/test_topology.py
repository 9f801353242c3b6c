"""The many-process topology on one machine: a real Redis Cluster (3 primaries + 3 replicas) holding the
data, a single Redis holding dramatiq's queues, 2 web processes (`server.app:create_app`, waking actors
through dramatiq) and 3 conversation worker processes (`dramatiq actors.worker`), the scripted LLM
streaming slowly. Clients are spread over both web processes; each socket is dropped mid-answer and
resumes on the other web process, and must see every frame of the turn once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from websockets.asyncio.client import ClientConnection

from server.auth import mint_token
from store.cluster import EmbeddedCluster
from store.log import conv_keys
from store.redis import EmbeddedRedis, sync_client
from tests.server_proc import REPO, ServerProcess, server_env
from tests.test_server_ws import open_chat, recv

WORKERS = 3
CONVERSATIONS = 4
DELAY_MS = 150  # between the scripted LLM's deltas: the answer takes ~1.4 s, so a drop lands mid-answer
SEEN_BEFORE_DROP = 3  # frames a client reads on its first web process
ANSWER_TIMEOUT_S = 60.0


def worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "dramatiq", "actors.worker", "--queues", "conversation", "approvals",
               "--processes", "1", "--threads", "2"]  # fmt: skip
    return subprocess.Popen(command, env=env, cwd=REPO, start_new_session=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.fixture
def topology(
    redis_cluster: EmbeddedCluster, redis_server: EmbeddedRedis, tmp_path: Path
) -> Iterator[tuple[list[ServerProcess], redis.Redis, set[int]]]:
    from actors.testing import ScriptedLLMThread

    redis_cluster.flushall()
    with redis.Redis.from_url(redis_server.url) as queues:
        queues.flushall()
    with ScriptedLLMThread(delay_ms=DELAY_MS) as llm:
        env = server_env(
            redis_cluster.url, tmp_path / "data", broker_url=redis_server.url, embed_model="hash",
            llm_backend="openai", llm_url=llm.url, llm_max_retries="0",
        )  # fmt: skip
        env["dramatiq_worker_timeout"] = "20"
        workers = [worker(env) for _ in range(WORKERS)]
        webs: list[ServerProcess] = []
        client = sync_client(redis_cluster.url)
        try:
            webs = [ServerProcess(env, app="server.app:create_app").start() for _ in range(2)]
            yield webs, client, {p.pid for p in workers}
        finally:
            for web in webs:
                web.stop()
            for process in workers:
                stop(process)
            client.close()


def token(web: ServerProcess, user: str) -> str:
    return mint_token(web.settings, tenant="acme", user=user, groups=("staff",), roles=("user",), ttl=600)


async def frames_until_answer(ws: ClientConnection, limit: int | None = None) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while limit is None or len(got) < limit:
        frame = await recv(ws, ANSWER_TIMEOUT_S)
        if frame["type"] in {"event", "delta"}:
            got.append(frame)
            if frame["type"] == "event" and frame["event"]["type"] == "answer_completed":
                break
    return got


async def converse(webs: list[ServerProcess], n: int) -> tuple[str, list[dict[str, Any]]]:
    first, other = webs[n % 2], webs[(n + 1) % 2]
    user = f"user{n}"
    ws, ready = await open_chat(first, token(first, user))
    conv = ready["conversation_id"]
    ask = {"type": "ask", "text": f"what is item {n}?", "mode": "qa", "client_message_id": "m1"}
    await ws.send(json.dumps(ask))
    before = await frames_until_answer(ws, SEEN_BEFORE_DROP)
    ws.transport.abort()  # the network drops mid-answer
    resume = {"conversation_id": conv, "last_event_id": before[-1]["id"]}
    ws, ready = await open_chat(other, token(other, user), **resume)
    after = await frames_until_answer(ws)
    await ws.close()
    return conv, before + after


async def run_all(webs: list[ServerProcess]) -> list[tuple[str, list[dict[str, Any]]]]:
    return await asyncio.gather(*(converse(webs, n) for n in range(CONVERSATIONS)))


def test_sockets_resume_on_the_other_web_process_without_gap_or_duplicate(
    topology: tuple[list[ServerProcess], redis.Redis, set[int]],
) -> None:
    webs, client, pids = topology
    for conv, frames in asyncio.run(run_all(webs)):
        ids = [f["id"] for f in frames]
        live: Any = client.xrange(conv_keys(conv).live)
        assert ids == [i.decode() for i, _ in live], conv  # every frame of the turn, once, in order
        assert frames[-1]["event"]["type"] == "answer_completed"
        deltas = [f for f in frames if f["type"] == "delta"]
        assert len(deltas) > SEEN_BEFORE_DROP
        assert "".join(d["text"] for d in deltas) == frames[-1]["event"]["text"]
        owner: Any = client.hget(conv_keys(conv).lease, "owner")  # host:pid:thread, kept after release
        assert os.getpgid(int(owner.decode().split(":")[1])) in pids  # a (forked) worker process answered
