"""Issue 11, findings 1, 5 and 6 (file modes) against real `docent run` stacks: real processes, real Redis,
children killed with SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from websockets.asyncio.client import connect

from actors.testing.ports import listening_socket
from server.auth import mint_token
from store.exceptions import ConfigError, PortInUse
from store.redis import EmbeddedRedis, sync_client
from store.redis_owner import OwnedRedis
from store.settings import Settings
from tests.stack_proc import Stack

TERMINAL = {"answer_completed", "turn_failed", "turn_cancelled", "limit_reached"}


def _start(stacks: list[Stack], data_dir: Path, **overrides: str) -> Stack:
    stack = Stack(data_dir, **overrides)
    stacks.append(stack)
    return stack.start()


def _keys(url: str) -> set[bytes]:
    client = sync_client(url)
    try:
        return set(client.keys("*"))  # type: ignore[arg-type]
    finally:
        client.close()


def test_an_embedded_redis_never_takes_a_foreign_redis_on_its_port_for_its_own(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path / "foreign") as foreign:
        with pytest.raises(PortInUse, match=str(foreign.port)):
            EmbeddedRedis(tmp_path / "mine", port=foreign.port, password="p" * 32).start()
        assert _keys(foreign.url) == set()


def test_a_port_chosen_by_the_embedded_redis_and_taken_before_it_binds_is_chosen_again(
    tmp_path: Path,
) -> None:
    """Between choosing a free port and redis-server binding it another process may take it (the CI
    failure of stop 21, on a cluster node): a port the embedded Redis chose itself is chosen again."""
    server = EmbeddedRedis(tmp_path / "mine")
    with listening_socket(server.port):
        taken = server.port
        with server:
            assert server.port != taken
            assert sync_client(server.url).ping()


def test_an_explicit_port_that_is_taken_is_a_typed_error_naming_it(
    tmp_path: Path, stacks: list[Stack]
) -> None:
    with EmbeddedRedis(tmp_path / "foreign") as foreign:
        settings = Settings.from_env(
            {"DOCENT_DATA_DIR": str(tmp_path / "d"), "DOCENT_REDIS_PORT": str(foreign.port)}
        )
        with pytest.raises(PortInUse, match=f"DOCENT_REDIS_PORT {foreign.port} is taken"):
            OwnedRedis(settings)
        stack = Stack(tmp_path / "stack", redis_port=str(foreign.port))
        stacks.append(stack)
        stack.start(wait=False)
        assert stack.wait_exit() == 2
        stack.wait_for(f"docent: port_in_use: DOCENT_REDIS_PORT {foreign.port} is taken")
        assert _keys(foreign.url) == set()  # nothing written to the Redis that holds the port


def _private(root: Path) -> list[str]:
    loose = []
    for directory, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            if stat.S_IMODE((Path(directory) / name).lstat().st_mode) & 0o077:
                loose.append(str(Path(directory) / name))
    return loose


def test_two_stacks_on_one_machine_never_share_a_redis(tmp_path: Path, stacks: list[Stack]) -> None:
    a = _start(stacks, tmp_path / "a")
    b = _start(stacks, tmp_path / "b")
    url_a, url_b = a.redis_url(), b.redis_url()
    port_a, port_b = (int((s.data_dir / "redis" / "port").read_text()) for s in (a, b))
    assert port_a != port_b
    client_a, client_b = sync_client(url_a), sync_client(url_b)
    assert client_a.get("docent:identity") != client_b.get("docent:identity")
    password_b = (b.data_dir / "redis" / "password").read_text().strip()
    with pytest.raises(redis.AuthenticationError):  # B's credentials do not open A's Redis
        redis.Redis(port=port_a, username="docent", password=password_b).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port_a, password=password_b).ping()
    with pytest.raises(redis.AuthenticationError):  # and no password opens either
        redis.Redis(port=port_a).ping()
    client_a.close()
    client_b.close()
    # Finding 6: the AOF, the catalog, the secrets, the port and password files: the owner's alone.
    for stack in (a, b):
        assert (stack.data_dir / "redis" / "appendonly.aof").exists()
        assert _private(stack.data_dir) == []
        assert stat.S_IMODE(stack.data_dir.stat().st_mode) == 0o700


def test_a_stack_whose_redis_died_does_not_use_another_redis_on_its_port(
    tmp_path: Path, stacks: list[Stack]
) -> None:
    a = _start(stacks, tmp_path / "a")
    port = int((a.data_dir / "redis" / "port").read_text())
    assert a.process is not None
    # The foreign Redis takes the port before A's supervisor restarts its own: the supervisor is stopped
    # meanwhile (a race against its 0.5 s backoff is lost whenever starting a redis-server takes longer).
    os.kill(a.process.pid, signal.SIGSTOP)
    try:
        os.kill(a.pids["redis"], signal.SIGKILL)
        foreign = None
        deadline = time.monotonic() + 30
        while foreign is None:  # until the killed Redis's listening socket is closed
            try:
                foreign = EmbeddedRedis(tmp_path / "other", port=port).start()
            except ConfigError:  # PortInUse, or exited on a port that was freed meanwhile
                assert time.monotonic() < deadline
                time.sleep(0.01)
    finally:
        os.kill(a.process.pid, signal.SIGCONT)
    try:
        a.wait_for(f"redis could not start (port_in_use: port {port} is taken")
        status, body = a.readyz()
        assert status == 503 and body["redis"] in {"redis_not_owned", "unavailable"}
        assert str(port) not in json.dumps(body)
        assert a.wait_exit() == 1  # a crash loop of its Redis stops the stack
        a.wait_for("crash loop: redis crashed 5 times")
        assert _keys(foreign.url) == set()  # nobody of stack A wrote into the other Redis
    finally:
        foreign.stop()


async def _ask_until_terminal(stack: Stack, settings: Settings) -> str:
    token = mint_token(settings, tenant="default", user="alice")
    async with connect(f"{stack.ws_url}?token={token}", open_timeout=10) as ws:
        await ws.send(json.dumps({"type": "hello"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "ready"
        await ws.send(json.dumps({"type": "ask", "text": "hello?", "mode": "qa", "client_message_id": "m1"}))
        while True:
            frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if frame.get("type") == "event" and frame["event"]["type"] in TERMINAL:
                return str(frame["event"]["type"])


def test_the_supervisor_restarts_children_killed_with_sigkill_and_the_stack_recovers(
    tmp_path: Path, stacks: list[Stack]
) -> None:
    stack = _start(stacks, tmp_path / "s")
    settings = Settings.from_env({"DOCENT_DATA_DIR": str(stack.data_dir)})
    for name in ("worker", "web", "ingest", "redis"):
        old = stack.pids[name]
        mark = stack.kill_child(name)
        stack.wait_for(f"supervisor: {name} exited with -9; restarting in", after=mark)
        stack.wait_for(f"supervisor: restarted {name} (pid", after=mark)
        assert stack.pids[name] != old
        stack.wait_ready()
    assert stack.process is not None and stack.process.poll() is None  # still up
    # After the Redis restart the whole path works again: socket, inbox, worker, log, fan-out.
    assert asyncio.run(_ask_until_terminal(stack, settings)) in TERMINAL


def test_a_crash_loop_stops_the_stack(tmp_path: Path, stacks: list[Stack]) -> None:
    stack = _start(stacks, tmp_path / "s")
    for _ in range(4):
        mark = stack.kill_child("web")
        stack.wait_for("supervisor: restarted web (pid", after=mark)
    stack.kill_child("web")
    assert stack.wait_exit() == 1
    stack.wait_for("crash loop: web crashed 5 times in 60 s; stopping")
