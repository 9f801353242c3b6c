"""A real stack for the knowledge-base API tests: Redis, the web process (`server.app:create_app`), one
dramatiq worker on every queue (`python -m dramatiq actors.worker`), the scripted OpenAI-compatible LLM over
HTTP, and a small knowledge base ingested through `actors.ingestion` (hash embedder: no model files).

FALCON is readable by group:legal only and is the only document with its words; PUBLIC is readable by all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect

from server.auth import mint_token
from store.redis import sync_client
from store.settings import Settings
from tests.server_proc import REPO, TEST_ADMIN_KEY, ServerProcess, server_env

TENANT = "default"
FALCON_ID = "kb/falcon.md"
PUBLIC_ID = "kb/canteen.md"
SECRET = "amber seventeen"  # words of FALCON only: a leak check
FALCON = (
    "# Project Falcon\n\nThe secret launch code for the quantum harbor bridge is amber seventeen and the "
    "harbor bridge opens at the winter solstice in Reykjavik.\n"
)
PUBLIC = "# Canteen\n\nThe canteen serves lentil soup on Mondays and pancakes on Fridays for everyone.\n"
SCRIPTS = {
    "probe": {
        "steps": [
            {"tool_calls": [{"name": "search_knowledge_base",
                             "arguments": {"query": "quantum harbor bridge"}}]},
            {"tool_calls": [{"name": "read_document", "arguments": {"doc_id": FALCON_ID}}]},
            {"text": "Done looking."},
        ]
    },
    "mail": {"steps": [{"text": "Sending it.", "tool_calls": [{"name": "send_email", "arguments": {
        "to": ["legal@acme.test"], "subject": "Falcon", "body": "The bridge opens in winter."}}]}]},
    "short": {"steps": [{"tool_calls": [{"name": "search_knowledge_base",
                                         "arguments": {"query": "bridge"}}]}]},
    "filtered": {"steps": [
        {"tool_calls": [{"name": "search_knowledge_base",
                         "arguments": {"query": "harbor bridge ferry", "filters": {"tags_any": ["beta"]}}}]},
        {"text": "Done looking."},
    ]},
}  # fmt: skip
WAIT_S = 40.0


class Worker:
    def __init__(self, env: dict[str, str]) -> None:
        command = [sys.executable, "-m", "dramatiq", "actors.worker", "--queues", "conversation", "approvals",
                   "ingest", "--processes", "1", "--threads", "2"]  # fmt: skip
        self.process = subprocess.Popen(command, env=env, cwd=REPO, start_new_session=True)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class World:
    def __init__(self, web: ServerProcess, redis_url: str, kb: Path) -> None:
        self.web = web
        self.settings = web.settings
        self.redis = sync_client(redis_url)
        self.kb = kb

    def token(self, user: str, groups: tuple[str, ...] = (), roles: tuple[str, ...] = ("user",),
              tenant: str = TENANT) -> str:  # fmt: skip
        return mint_token(self.settings, tenant, user, groups=groups, roles=roles, ttl=900)

    def http(self, method: str, path: str, body: Any = None, token: str | None = None,
             admin: bool = False, raw: bytes | None = None) -> tuple[int, Any]:  # fmt: skip
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(f"{self.web.http_url}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        if admin:
            request.add_header("X-Admin-Key", TEST_ADMIN_KEY)
        try:
            with urllib.request.urlopen(request, timeout=20) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def log(self, conv_id: str) -> list[dict[str, Any]]:
        entries: Any = self.redis.xrange(f"conv:{{{conv_id}}}:log")
        return [json.loads(fields[b"e"]) for _, fields in entries]

    def ask(self, token: str, text: str, mode: str = "qa", conv_id: str | None = None) -> str:
        """One turn over /ws/chat, to its terminal event; the conversation id."""
        return asyncio.run(self._ask(token, text, mode, conv_id))

    def ask_with(self, token: str, text: str, mode: str = "qa", filters: Any = None) -> str:
        """`ask` in a new conversation with the ask's metadata `filters`."""
        return asyncio.run(self._ask(token, text, mode, None, filters))

    def ask_frames(self, token: str, text: str, filters: Any = None) -> list[dict[str, Any]]:
        """The frames an ask gets back until an error frame (or a second of silence)."""
        return asyncio.run(self._ask_frames(token, text, filters))

    @staticmethod
    def _ask_frame(text: str, mode: str, filters: Any) -> str:
        ask = {"type": "ask", "text": text, "mode": mode, "client_message_id": uuid.uuid4().hex}
        return json.dumps(ask if filters is None else {**ask, "filters": filters})

    async def _ask(self, token: str, text: str, mode: str, conv_id: str | None, filters: Any = None) -> str:
        async with connect(f"{self.web.ws_url}?token={token}", open_timeout=10) as ws:
            hello: dict[str, Any] = {"type": "hello", **({"conversation_id": conv_id} if conv_id else {})}
            await ws.send(json.dumps(hello))
            ready = json.loads(await asyncio.wait_for(ws.recv(), 10))
            conv = str(ready["conversation_id"])
            await ws.send(self._ask_frame(text, mode, filters))
            async with asyncio.timeout(WAIT_S):
                while not await _terminal(ws):
                    pass
        return conv

    async def _ask_frames(self, token: str, text: str, filters: Any) -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = []
        async with connect(f"{self.web.ws_url}?token={token}", open_timeout=10) as ws:
            await ws.send(json.dumps({"type": "hello"}))
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            await ws.send(self._ask_frame(text, "qa", filters))
            with contextlib.suppress(TimeoutError):
                while frames[-1]["type"] != "error":
                    frames.append(json.loads(await asyncio.wait_for(ws.recv(), 1.0)))
        return frames

    def replay(self, token: str, conv_id: str) -> list[dict[str, Any]]:
        return asyncio.run(self._replay(token, conv_id))

    async def _replay(self, token: str, conv_id: str) -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = []
        async with connect(f"{self.web.ws_url}?token={token}", open_timeout=10) as ws:
            await ws.send(json.dumps({"type": "hello", "conversation_id": conv_id}))
            with contextlib.suppress(TimeoutError):
                while True:
                    frames.append(json.loads(await asyncio.wait_for(ws.recv(), 1.5)))
        return frames


async def _terminal(ws: Any) -> bool:
    frame = json.loads(await ws.recv())
    event = frame.get("event") or {}
    return frame["type"] == "event" and event.get("type") in {
        "answer_completed", "turn_failed", "turn_cancelled", "limit_reached"
    }  # fmt: skip


def ingest_kb(settings: Settings, kb: Path) -> None:
    from actors.ingestion import ingest_documents
    from index.types import Access

    kb.mkdir(parents=True, exist_ok=True)
    (kb / "falcon.md").write_text(FALCON)
    (kb / "canteen.md").write_text(PUBLIC)
    ingest_documents(settings, [
        (FALCON_ID, {"path": kb / "falcon.md", "access": Access(tenant=TENANT, readers=("group:legal",))}),
        (PUBLIC_ID, {"path": kb / "canteen.md", "access": Access(tenant=TENANT, readers=("*",))}),
    ])  # fmt: skip


def start_world(redis_url: str, data: Path, llm_url: str) -> tuple[World, Worker]:
    env = server_env(
        redis_url, data, embed_model="hash", llm_backend="openai", llm_url=llm_url, llm_max_retries="0",
        allowed_roots=str(data), broker_heartbeat_timeout_ms="2000", top_k="3", user_burst="200",
    )  # fmt: skip
    ingest_kb(Settings.from_env(env), data / "kb")
    worker = Worker(env)
    try:
        web = ServerProcess(env, app="server.app:create_app").start()
    except RuntimeError:  # a web process that does not start leaves no worker behind
        worker.stop()
        raise
    return World(web, redis_url, data / "kb"), worker


def running_world(redis_url: str, data: Path) -> Iterator[World]:
    """A module's world: started with the scripted LLM, stopped after the module's tests."""
    from actors.testing import ScriptedLLMThread

    with ScriptedLLMThread(SCRIPTS) as llm:
        world, worker = start_world(redis_url, data, llm.url)
        try:
            yield world
        finally:
            world.web.stop()
            worker.stop()
