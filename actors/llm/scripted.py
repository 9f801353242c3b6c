"""A scripted, deterministic OpenAI-compatible chat server over real HTTP (aiohttp.web), for tests and chaos.

Which script answers: the header `X-Docent-Conversation: NAME`, else the first `[script:NAME]` marker in a
system or user message. `NAME@KEY` (e.g. `[script:compare@conv-7]`) runs script NAME but counts requests
under its own key, so two conversations can share a script. No marker: the default Q&A mode (below).

Which step: the number of assistant messages already in the request (0 for the first call, 1 after the
first tool round-trip, ...). Asking for a step past the end of a script is an HTTP 400.

Script file (JSON, decoded strictly with msgspec; see `ScriptFile`)::

    {
      "delay_ms": 0,                          # default pause before each streamed delta
      "scripts": {
        "compare": {
          "delay_ms": 5,                      # this script's default (overrides the file's)
          "steps": [
            {"tool_calls": [{"name": "search", "arguments": {"query": "contract A"}}]},
            {"text": "Here is the table [1].", "deltas": 4, "delay_ms": 50,
             "fault": {"kind": "drop", "times": 1, "after_deltas": 2}}
          ]
        }
      }
    }

A step is a text answer (`text`, streamed in `deltas` pieces — 0 means one per word) and/or `tool_calls`
(`name`, `arguments` object, optional `id`, or `raw_arguments` text to script a malformed call; arguments
are streamed in fragments, each counting as a delta). At least one is required.
`fault` applies to the first `times` requests of that step (per counting key):
  - `{"kind": "status", "status": 503}` / `{"kind": "status", "status": 429, "retry_after_s": 1}`
  - `{"kind": "hang", "after_deltas": 0}`: stop sending (0 = before the response headers) until shutdown
  - `{"kind": "drop", "after_deltas": 2}`: cut the TCP connection after that many deltas (0 = at once)

Default mode: the answer cites numbered context passages found in the messages (lines starting with
`[1]`, `[2]`, ...): "From the documents: <start of passage 1> [1] <start of passage 2> [2]", or says that
nothing was found when there are none. It is deterministic and streamed word by word.

Observability: `GET /_stats` → `{"requests": {key: {step: count}}, "request_ids": {key: {step: [ids]}},
"repeated": [[key, step, count], ...], "total": n}`; `GET /_requests` → the last requests' bodies;
`POST /_reset` clears both. `/v1/models` lists one model.

Run standalone: `python -m actors.llm.scripted --port 8089 --scripts scripts.json`. In async tests:
`async with ScriptedLLM(scripts) as srv: srv.url`; in sync tests: `with ScriptedLLMThread(scripts) as srv:`.
`srv.url` is the `/v1` base to give `OpenAIBackend` (or `DOCENT_LLM_URL`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import socket
import threading
import time
from collections import defaultdict, deque
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import msgspec
from aiohttp import web

from store.exceptions import ConfigError

SCRIPT_MARKER = re.compile(r"\[script:([A-Za-z0-9_.\-]+)(?:@([A-Za-z0-9_.:\-]+))?\]")
CONVERSATION_HEADER = "X-Docent-Conversation"
CONTEXT_PASSAGE = re.compile(r"^\s*\[(\d{1,3})\]\s*(.+)$", re.MULTILINE)
WORDS = re.compile(r"\s*\S+\s*|\s+")
DEFAULT_KEY = "default"
MODEL_NAME = "scripted"
HANG_LIMIT_S = 3600.0
ARGUMENT_FRAGMENTS = 3
CITED_WORDS = 12
MAX_RECORDED_REQUESTS = 500
SHUTDOWN_TIMEOUT_S = 1.0
THREAD_START_TIMEOUT_S = 10.0


class Fault(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: Literal["status", "hang", "drop"]
    times: int = 1
    status: int = 503
    retry_after_s: float | None = None
    after_deltas: int = 0

    def __post_init__(self) -> None:
        if self.times < 1 or self.after_deltas < 0:
            raise ValueError("fault times must be >= 1 and after_deltas >= 0")
        if self.kind == "status" and not 400 <= self.status <= 599:
            raise ValueError("a status fault needs a 4xx/5xx status")


class ScriptedCall(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    arguments: dict[str, Any] = {}
    id: str = ""
    raw_arguments: str | None = None  # sent verbatim instead of `arguments` (to script malformed calls)

    def arguments_text(self) -> str:
        if self.raw_arguments is not None:
            return self.raw_arguments
        return msgspec.json.encode(self.arguments).decode()


class Step(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    text: str = ""
    tool_calls: tuple[ScriptedCall, ...] = ()
    deltas: int = 0  # pieces the text is streamed in; 0 = one per word
    delay_ms: int | None = None
    fault: Fault | None = None
    usage: bool = True  # send a usage chunk

    def __post_init__(self) -> None:
        if not self.text and not self.tool_calls:
            raise ValueError("a step needs text or tool_calls")
        if self.deltas < 0 or (self.delay_ms is not None and self.delay_ms < 0):
            raise ValueError("deltas and delay_ms must be >= 0")


class Script(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    steps: tuple[Step, ...]
    delay_ms: int | None = None


class ScriptFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    scripts: dict[str, Script] = {}
    delay_ms: int = 0


def load_scripts(path: Path) -> ScriptFile:
    try:
        return msgspec.json.decode(path.read_bytes(), type=ScriptFile)
    except (OSError, msgspec.DecodeError) as exc:
        raise ConfigError(f"bad script file {path}: {exc}") from None


def as_script_file(scripts: ScriptFile | Mapping[str, Any] | None) -> ScriptFile:
    """A `ScriptFile`, a `{name: Script}` mapping, or the JSON-shaped dict of either."""
    if scripts is None:
        return ScriptFile()
    if isinstance(scripts, ScriptFile):
        return scripts
    if "scripts" in scripts:
        return msgspec.convert(scripts, ScriptFile)
    return ScriptFile(scripts={name: msgspec.convert(s, Script) for name, s in scripts.items()})


# --- request parsing ---------------------------------------------------------------------------------


class _Message(msgspec.Struct):
    role: str
    content: str | list[Any] | None = None


class _Request(msgspec.Struct):
    messages: list[_Message]
    stream: bool = False
    model: str = MODEL_NAME


def _text_of(message: _Message) -> str:
    if isinstance(message.content, str):
        return message.content
    if isinstance(message.content, list):  # content parts
        return " ".join(str(p.get("text", "")) for p in message.content if isinstance(p, dict))
    return ""


def conversation_of(request: _Request, header: str | None) -> tuple[str | None, str]:
    """(script name or None for default mode, counting key)."""
    found = SCRIPT_MARKER.fullmatch(f"[script:{header}]") if header else None
    if found is None:
        for message in request.messages:
            if message.role in ("system", "user") and (found := SCRIPT_MARKER.search(_text_of(message))):
                break
    if found is None:
        return None, DEFAULT_KEY
    name, key = found.group(1), found.group(2)
    return name, f"{name}@{key}" if key else name


def step_of(request: _Request) -> int:
    return sum(1 for m in request.messages if m.role == "assistant")


def default_answer(request: _Request) -> str:
    context = "\n".join(_text_of(m) for m in request.messages if m.role in ("system", "user"))
    passages: dict[int, str] = {}
    for match in CONTEXT_PASSAGE.finditer(context):
        passages.setdefault(int(match.group(1)), match.group(2).strip())
    cited = [n for n in (1, 2) if n in passages]
    if not cited:
        return "I could not find this in the documents."
    parts = ["From the documents:"]
    for n in cited:
        words = passages[n].split()
        parts.append(" ".join(words[:CITED_WORDS]).rstrip(".,;:") + f" [{n}].")
    return " ".join(parts)


def split_deltas(text: str, pieces: int) -> list[str]:
    if pieces <= 0:
        return WORDS.findall(text) or [text]
    size = max(1, -(-len(text) // pieces))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _fragments(text: str, pieces: int) -> list[str]:
    size = max(1, -(-len(text) // pieces))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


# --- the server --------------------------------------------------------------------------------------


class _Counter:
    def __init__(self) -> None:
        self.requests: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.request_ids: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
        self.recent: deque[dict[str, Any]] = deque(maxlen=MAX_RECORDED_REQUESTS)
        self.total = 0

    def count(self, key: str, step: int, request_id: str, body: Any) -> int:
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

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            parsed = msgspec.json.decode(raw, type=_Request)
        except msgspec.DecodeError as exc:
            return _error(400, f"bad request: {exc}")
        name, key = conversation_of(parsed, request.headers.get(CONVERSATION_HEADER))
        step_index = step_of(parsed)
        request_id = request.headers.get("X-Request-Id", "")
        seen = self.counter.count(key, step_index, request_id, msgspec.json.decode(raw))
        if name is None:
            step = Step(text=default_answer(parsed))
            delay_ms = self.delay_ms
        else:
            script = self.file.scripts.get(name)
            if script is None:
                return _error(400, f"no script named {name!r}")
            if step_index >= len(script.steps):
                return _error(400, f"script {name!r} has {len(script.steps)} steps, asked for {step_index}")
            step = script.steps[step_index]
            delay_ms = _first_set(step.delay_ms, script.delay_ms, self.delay_ms)
        fault = step.fault if step.fault is not None and seen <= step.fault.times else None
        if fault is not None and fault.kind == "status":
            headers = {"Retry-After": f"{fault.retry_after_s:g}"} if fault.retry_after_s is not None else {}
            return _error(fault.status, f"scripted fault {fault.status}", headers=headers)
        if fault is not None and fault.after_deltas == 0:
            await self._misbehave(request, fault)
            return web.Response(status=499)  # never reaches anyone: the connection is gone
        if not parsed.stream:
            return web.json_response(_whole_response(step, parsed, key, step_index))
        return await self._stream(request, _chunks(step, parsed, key, step_index), delay_ms, fault)

    async def _misbehave(self, request: web.Request, fault: Fault) -> None:
        if fault.kind == "hang":
            assert self._stopping is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), HANG_LIMIT_S)
        if request.transport is not None:
            request.transport.abort()

    async def _stream(
        self, request: web.Request, chunks: list[_Chunk], delay_ms: int, fault: Fault | None
    ) -> web.StreamResponse:
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        sent_deltas = 0
        try:
            for is_delta, chunk in chunks:
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


def _error(status: int, message: str, *, headers: Mapping[str, str] | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "scripted", "code": status}}
    return web.json_response(body, status=status, headers=dict(headers or {}))


def _first_set(*values: int | None) -> int:
    return next((v for v in values if v is not None), 0)


def _finish_reason(step: Step) -> str:
    return "tool_calls" if step.tool_calls else "stop"


def _completion_id(key: str, step: int) -> str:
    return f"chatcmpl-{key}-{step}"


def _call_id(key: str, step: int, index: int, call: ScriptedCall) -> str:
    return call.id or f"call_{key}_{step}_{index}"


def _usage(step: Step, request: _Request) -> dict[str, int]:
    prompt = sum(len(_text_of(m)) for m in request.messages) // 4 + 1
    generated = len(step.text) + sum(len(c.arguments_text()) for c in step.tool_calls)
    completion = generated // 4 + 1
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


_Chunk = tuple[bool, dict[str, Any]]  # (counts as a delta for faults, the chunk)


def _chunks(step: Step, request: _Request, key: str, step_index: int) -> list[_Chunk]:
    """In order: role, text deltas, tool-call fragments (deltas too), finish reason, usage."""
    created = int(time.time())
    base = {"id": _completion_id(key, step_index), "object": "chat.completion.chunk", "created": created,
            "model": request.model or MODEL_NAME}  # fmt: skip

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    out: list[_Chunk] = [(False, chunk({"role": "assistant", "content": ""}))]
    if step.text:
        out += [(True, chunk({"content": piece})) for piece in split_deltas(step.text, step.deltas)]
    for index, call in enumerate(step.tool_calls):
        arguments = call.arguments_text()
        head = {"index": index, "id": _call_id(key, step_index, index, call), "type": "function",
                "function": {"name": call.name, "arguments": ""}}  # fmt: skip
        out.append((True, chunk({"tool_calls": [head]})))
        for fragment in _fragments(arguments, ARGUMENT_FRAGMENTS):
            out.append((True, chunk({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})))
    out.append((False, chunk({}, _finish_reason(step))))
    if step.usage:
        out.append((False, {**base, "choices": [], "usage": _usage(step, request)}))
    return out


def _whole_response(step: Step, request: _Request, key: str, step_index: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": step.text or None}
    if step.tool_calls:
        message["tool_calls"] = [
            {"id": _call_id(key, step_index, i, c), "type": "function",
             "function": {"name": c.name, "arguments": c.arguments_text()}}
            for i, c in enumerate(step.tool_calls)
        ]  # fmt: skip
    body: dict[str, Any] = {
        "id": _completion_id(key, step_index),
        "object": "chat.completion",
        "model": request.model or MODEL_NAME,
        "choices": [{"index": 0, "message": message, "finish_reason": _finish_reason(step)}],
    }
    if step.usage:
        body["usage"] = _usage(step, request)
    return body


# --- a thread-hosted server for synchronous tests ----------------------------------------------------


class ScriptedLLMThread:
    """`ScriptedLLM` on its own event loop in a daemon thread: `with ScriptedLLMThread(scripts) as srv:`."""

    def __init__(self, scripts: ScriptFile | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        self.server = ScriptedLLM(scripts, **kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return self.server.url

    def stats(self) -> dict[str, Any]:
        return self._call(self.server.stats)

    def reset(self) -> None:
        self._call(self.server.reset)

    def add_script(self, name: str, script: Script | Mapping[str, Any]) -> None:
        self._call(lambda: self.server.add_script(name, script))

    def _call(self, fn: Any) -> Any:
        assert self._loop is not None

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(THREAD_START_TIMEOUT_S)

    def start(self) -> ScriptedLLMThread:
        self._thread = threading.Thread(target=self._run, name="scripted-llm", daemon=True)
        self._thread.start()
        if not self._ready.wait(THREAD_START_TIMEOUT_S) or self._error is not None:
            raise ConfigError(f"scripted LLM server did not start: {self._error}")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self.server.start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self.server.stop())
            loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(THREAD_START_TIMEOUT_S)
        self._loop = None
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
    parser = argparse.ArgumentParser(prog="python -m actors.llm.scripted", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--scripts", type=Path, help="script file (JSON, see the module docstring)")
    parser.add_argument("--delay-ms", type=int, default=None, help="default pause before each delta")
    args = parser.parse_args(argv)
    scripts = load_scripts(args.scripts) if args.scripts else ScriptFile()
    asyncio.run(_serve(ScriptedLLM(scripts, host=args.host, port=args.port, delay_ms=args.delay_ms)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
