"""A scripted, deterministic OpenAI-compatible chat server over real HTTP (aiohttp.web), for tests and chaos.

What it answers is read from each request's messages as a model would (`actors.testing.transcript`): the
latest message naming a script picks the script (or the header `X-Docent-Conversation: NAME[@KEY]`), the
replies given since then pick its step; no script: it answers from the numbered passages it was given.
The scripts and their faults: `actors.testing.scripts`. Asking for a step past the end of a script is an
HTTP 400.

Observability: `GET /_stats` → `{"requests": {key: {step: count}}, "request_ids": {key: {step: [ids]}},
"repeated": [[key, step, count], ...], "total": n}`; `GET /_requests` → the last requests' bodies;
`POST /_reset` clears both. `/v1/models` lists one model.

Run standalone: `python -m actors.testing.scripted_llm --port 8089 --scripts scripts.json`. In async tests:
`async with ScriptedLLM(scripts) as srv: srv.url`; in sync tests: `with ScriptedLLMThread(scripts) as srv:`.
`srv.url` is the `/v1` base to give `OpenAIBackend` (or `DOCENT_LLM_URL`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
from collections import defaultdict, deque
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import msgspec
from aiohttp import web

from actors.testing.loop_thread import LoopThread
from actors.testing.replies import Chunk, chunks, error_body, whole_response
from actors.testing.scripts import Fault, Script, ScriptFile, Step, as_script_file, load_scripts
from actors.testing.transcript import (
    MODEL_NAME,
    ChatRequest,
    Reading,
    default_answer,
    default_rewrite,
    read,
)
from store.exceptions import ConfigError

CONVERSATION_HEADER = "X-Docent-Conversation"
HANG_LIMIT_S = 3600.0
MAX_RECORDED_REQUESTS = 500
SHUTDOWN_TIMEOUT_S = 1.0


class _Counter:
    def __init__(self) -> None:
        self.requests: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.request_ids: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
        self.recent: deque[dict[str, Any]] = deque(maxlen=MAX_RECORDED_REQUESTS)
        self.total = 0

    def count(self, reading: Reading, request_id: str, body: Any) -> int:
        key, step = reading.key, reading.step
        self.total += 1
        self.requests[key][step] += 1
        self.request_ids[key][step].append(request_id)
        self.recent.append({"key": key, "step": step, "request_id": request_id, "body": body})
        return self.requests[key][step]

    def stats(self) -> dict[str, Any]:
        return {
            "requests": {k: {str(s): n for s, n in steps.items()} for k, steps in self.requests.items()},
            "request_ids": {
                k: {str(s): i for s, i in steps.items()} for k, steps in self.request_ids.items()
            },
            "repeated": [[k, s, n] for k, steps in self.requests.items() for s, n in steps.items() if n > 1],
            "total": self.total,
        }


def _error(status: int, message: str, *, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(error_body(status, message), status=status, headers=dict(headers or {}))


def _first_set(*values: int | None) -> int:
    return next((v for v in values if v is not None), 0)


class ScriptedLLM:
    """The server, embeddable in an event loop: `async with ScriptedLLM(scripts) as srv: srv.url`."""

    def __init__(
        self,
        scripts: ScriptFile | Mapping[str, Any] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        delay_ms: int | None = None,
    ) -> None:
        self.file = as_script_file(scripts)
        self.delay_ms = self.file.delay_ms if delay_ms is None else delay_ms
        self.host = host
        self.port = port
        self.counter = _Counter()
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def add_script(self, name: str, script: Script | Mapping[str, Any]) -> None:
        value = script if isinstance(script, Script) else msgspec.convert(script, Script)
        self.file = msgspec.structs.replace(self.file, scripts={**self.file.scripts, name: value})

    def stats(self) -> dict[str, Any]:
        return self.counter.stats()

    def reset(self) -> None:
        self.counter = _Counter()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/_stats", self._stats)
        app.router.add_get("/_requests", self._requests)
        app.router.add_post("/_reset", self._reset)
        return app

    async def start(self) -> Self:
        self._stopping = asyncio.Event()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = int(sock.getsockname()[1])
        self._runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        return self

    async def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- handlers ---

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": MODEL_NAME, "object": "model"}]})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.counter.stats())

    async def _requests(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.counter.recent))

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    def _step(self, parsed: ChatRequest, reading: Reading) -> tuple[Step, int] | web.Response:
        """The step to play and its delta delay, or the 400 that says why there is none."""
        if reading.rewrite:
            return Step(text=default_rewrite(parsed.messages)), self.delay_ms
        if reading.script is None:
            return Step(text=default_answer(parsed.messages)), self.delay_ms
        script = self.file.scripts.get(reading.script)
        if script is None:
            return _error(400, f"no script named {reading.script!r}")
        if reading.step >= len(script.steps):
            return _error(400, f"script {reading.script!r} has {len(script.steps)} steps, "
                               f"asked for {reading.step}")  # fmt: skip
        step = script.steps[reading.step]
        return step, _first_set(step.delay_ms, script.delay_ms, self.delay_ms)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            parsed = msgspec.json.decode(raw, type=ChatRequest)
        except msgspec.DecodeError as exc:
            return _error(400, f"bad request: {exc}")
        reading = read(parsed.messages, request.headers.get(CONVERSATION_HEADER))
        seen = self.counter.count(reading, request.headers.get("X-Request-Id", ""), msgspec.json.decode(raw))
        chosen = self._step(parsed, reading)
        if isinstance(chosen, web.Response):
            return chosen
        step, delay_ms = chosen
        fault = step.fault if step.fault is not None and seen <= step.fault.times else None
        if fault is not None and fault.kind == "status":
            headers = {"Retry-After": f"{fault.retry_after_s:g}"} if fault.retry_after_s is not None else {}
            return _error(fault.status, f"scripted fault {fault.status}", headers=headers)
        if fault is not None and fault.after_deltas == 0:
            await self._misbehave(request, fault)
            return web.Response(status=499)  # never reaches anyone: the connection is gone
        if not parsed.stream:
            return web.json_response(whole_response(step, parsed, reading))
        return await self._stream(request, chunks(step, parsed, reading), delay_ms, fault)

    async def _misbehave(self, request: web.Request, fault: Fault) -> None:
        if fault.kind == "hang":
            assert self._stopping is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), HANG_LIMIT_S)
        if request.transport is not None:
            request.transport.abort()

    async def _stream(
        self, request: web.Request, items: list[Chunk], delay_ms: int, fault: Fault | None
    ) -> web.StreamResponse:
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        sent_deltas = 0
        try:
            for is_delta, chunk in items:
                if is_delta:
                    if fault is not None and sent_deltas == fault.after_deltas:
                        await self._misbehave(request, fault)
                        return response
                    if delay_ms:
                        await asyncio.sleep(delay_ms / 1000)
                    sent_deltas += 1
                await response.write(b"data: " + msgspec.json.encode(chunk) + b"\n\n")
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away
        return response


class ScriptedLLMThread:
    """`ScriptedLLM` on its own event loop in a daemon thread: `with ScriptedLLMThread(scripts) as srv:`."""

    def __init__(self, scripts: ScriptFile | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        self.server = ScriptedLLM(scripts, **kwargs)
        self._thread: LoopThread | None = None

    @property
    def url(self) -> str:
        return self.server.url

    def _loop(self) -> LoopThread:
        assert self._thread is not None, "the scripted LLM thread is not started"
        return self._thread

    def stats(self) -> dict[str, Any]:
        return self._loop().call(self.server.stats)

    def reset(self) -> None:
        self._loop().call(self.server.reset)

    def add_script(self, name: str, script: Script | Mapping[str, Any]) -> None:
        self._loop().call(lambda: self.server.add_script(name, script))

    def start(self) -> ScriptedLLMThread:
        self._thread = LoopThread("scripted-llm")
        self._thread.start()
        try:
            self._thread.run(self.server.start)
        except (OSError, TimeoutError) as exc:
            self.stop()
            raise ConfigError(f"scripted LLM server did not start: {exc}") from None
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._thread.run(self.server.stop)
            self._thread.stop()
        self._thread = None

    def __enter__(self) -> ScriptedLLMThread:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --- standalone --------------------------------------------------------------------------------------


async def _serve(server: ScriptedLLM) -> None:
    await server.start()
    print(f"scripted LLM on {server.url} ({len(server.file.scripts)} scripts)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actors.testing.scripted_llm",
                                     description="A scripted OpenAI-compatible chat server.")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--scripts", type=Path, help="script file (JSON, see actors.testing.scripts)")
    parser.add_argument("--delay-ms", type=int, default=None, help="default pause before each delta")
    args = parser.parse_args(argv)
    scripts = load_scripts(args.scripts) if args.scripts else ScriptFile()
    asyncio.run(_serve(ScriptedLLM(scripts, host=args.host, port=args.port, delay_ms=args.delay_ms)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
