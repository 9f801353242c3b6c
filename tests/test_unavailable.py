"""Issue 11, finding 5: while Redis is down, clients get the documented `unavailable` code, no address."""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from server.auth import mint_token
from store.redis import EmbeddedRedis
from tests.server_proc import ServerProcess, server_env

CLOSE_UNAVAILABLE = 4503


@pytest.fixture
def down(tmp_path: Path) -> Iterator[tuple[ServerProcess, int]]:
    """A web process whose Redis was SIGKILLed (and stays down)."""
    redis_server = EmbeddedRedis(tmp_path / "redis").start()
    web = ServerProcess(server_env(redis_server.url, tmp_path / "data")).start()
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGKILL)
    redis_server.process.wait()
    yield web, redis_server.port
    web.stop()


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _no_address(text: str, port: int) -> None:
    assert "127.0.0.1" not in text and str(port) not in text and "redis://" not in text, text


def test_rest_and_readiness_say_unavailable_without_internal_addresses(
    down: tuple[ServerProcess, int],
) -> None:
    web, port = down
    token = mint_token(web.settings, tenant="acme", user="alice")
    for path in ("/api/conversations", "/api/conversations/abc/events"):
        status, body = _get(f"{web.http_url}{path}", token)
        assert status == 503 and json.loads(body)["code"] == "unavailable", body
        _no_address(body, port)
    status, body = _get(f"{web.http_url}/readyz")
    assert status == 503 and json.loads(body) == {"ok": False, "redis": "unavailable"}


async def _hello(web: ServerProcess, token: str) -> tuple[list[dict[str, Any]], int | None]:
    frames: list[dict[str, Any]] = []
    async with connect(f"{web.ws_url}?token={token}", open_timeout=10) as ws:
        await ws.send(json.dumps({"type": "hello"}))
        try:
            while True:
                frames.append(json.loads(await asyncio.wait_for(ws.recv(), 15)))
        except ConnectionClosed:
            pass
        return frames, ws.close_code


def test_a_chat_socket_is_closed_with_unavailable_without_internal_addresses(
    down: tuple[ServerProcess, int],
) -> None:
    web, port = down
    frames, code = asyncio.run(_hello(web, mint_token(web.settings, tenant="acme", user="alice")))
    assert code == CLOSE_UNAVAILABLE
    assert [f["code"] for f in frames] == ["unavailable"]
    _no_address(json.dumps(frames), port)
