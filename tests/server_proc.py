"""Run the real web process (uvicorn + server.app) in a subprocess, and play the worker's part in Redis.

`ServerProcess` starts `tests.server_proc:recording_app` through `server.app.serve` (what the web process
runs, with its uvicorn options) on a free (or given) port, waits for /healthz, and can be SIGKILLed and
restarted on the same port. `recording_app` is `server.app.create_app` with a wake-up and an ingest
enqueuer that record their calls in Redis lists (`test:wakes`, `test:ingests`) so tests can see them.

`StreamWriter` appends to a conversation's streams the way the actor does: durable events to `:log`
and `:live` under one shared id, deltas to `:live` only, with a (small, exact) live cap when asked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import redis
from starlette.applications import Starlette

from actors.testing.ports import HeldPort
from server.app import create_app
from store.events import Delta, Event, SentenceAttributed, encode
from store.metadata import DocumentMetadata
from store.redis import async_client
from store.settings import Settings

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 90.0  # a web process's start on a loaded 2-core machine: over 20 s was seen
WAKES_KEY = "test:wakes"
INGESTS_KEY = "test:ingests"
TEST_SECRET = "test-secret-0123456789abcdef"
TEST_ADMIN_KEY = "test-admin-key-0123456789"


def recording_app() -> Starlette:
    settings = Settings.from_env()
    client = async_client(settings.redis_url)

    async def wake(conv_id: str) -> None:
        await client.rpush(WAKES_KEY, conv_id)

    async def ingest(tenant: str, path: Path, metadata: DocumentMetadata) -> str:
        return str(await client.rpush(INGESTS_KEY, f"{tenant}:{path}"))

    return create_app(settings, wake=wake, ingest=ingest)


def server_env(redis_url: str, data_dir: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCENT_")}
    env.update(
        {
            "DOCENT_DATA_DIR": str(data_dir),
            "DOCENT_REDIS_URL": redis_url,
            "DOCENT_SECRET": TEST_SECRET,
            "DOCENT_ADMIN_API_KEY": TEST_ADMIN_KEY,
            "DOCENT_LLM_BACKEND": "none",
        }
    )
    env.update({f"DOCENT_{k.upper()}": v for k, v in overrides.items()})
    return env


class LocalAddress:
    """The URLs of a web process listening on 127.0.0.1:`port`."""

    port: int

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/chat"


class ServerProcess(LocalAddress):
    def __init__(
        self, env: dict[str, str], port: int = 0, app: str = "tests.server_proc:recording_app"
    ) -> None:
        self.env = env
        # A port of its own is held until `stop`: across a SIGKILL and restart no other process takes it.
        self._held = None if port else HeldPort()
        self.port = self._held.port if self._held is not None else port
        self.app = app
        self.settings = Settings.from_env(env)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        # server.app.serve is what `python -m server.app` (the Procfile's web process) runs.
        launch = f"from server.app import serve; serve({self.app!r}, host='127.0.0.1', port={self.port})"
        command = [sys.executable, "-c", launch]
        self.process = subprocess.Popen(command, env=self.env, cwd=REPO)
        try:
            self._wait_healthy()
        except RuntimeError:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.http_url}/healthz", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        raise RuntimeError("server did not become healthy in time")

    def kill(self) -> None:
        """SIGKILL: no shutdown, no close frames; sockets just die."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._held is not None:
            self._held.release()

    def restart(self) -> ServerProcess:
        self.kill()
        return self.start()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_APPEND_EVENT = """
local id
if ARGV[2] ~= '' then
  id = redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], '*', 'e', ARGV[1])
else
  id = redis.call('XADD', KEYS[2], '*', 'e', ARGV[1])
end
if ARGV[3] == 'd' then redis.call('XADD', KEYS[1], id, 'e', ARGV[1]) end
return id
"""


class StreamWriter:
    """Plays the conversation actor: writes `:log` and `:live` with shared ids."""

    def __init__(self, client: redis.Redis, conv_id: str, live_maxlen: int | None = None) -> None:
        self.client = client
        self.conv_id = conv_id
        self.live_maxlen = live_maxlen
        self._script = client.register_script(_APPEND_EVENT)

    def _append(self, item: Event | Delta | SentenceAttributed, durable: bool) -> str:
        keys = [f"conv:{{{self.conv_id}}}:log", f"conv:{{{self.conv_id}}}:live"]
        maxlen = "" if self.live_maxlen is None else str(self.live_maxlen)
        entry_id: Any = self._script(keys=keys, args=[encode(item), maxlen, "d" if durable else "l"])
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    def event(self, event: Event) -> str:
        return self._append(event, durable=True)

    def delta(self, text: str, turn: int) -> str:
        return self._append(Delta(text=text, turn=turn), durable=False)

    def live(self, item: SentenceAttributed) -> str:
        """A live-only item besides deltas (a sentence attributed while the answer streams)."""
        return self._append(item, durable=False)
