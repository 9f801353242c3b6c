"""Any OpenAI-compatible `/v1/chat/completions` endpoint (vLLM, llama.cpp server, Ollama, hosted APIs).

Always streams (`stream: true`, `stream_options.include_usage`), parsing server-sent events and assembling
tool calls from their fragments by index. `settings.llm_url` may be the server root, the `/v1` base, or the
full `/chat/completions` URL.

Timeouts: `settings.llm_timeout_s` bounds one attempt end to end; connecting is bounded by
`min(llm_timeout_s, CONNECT_TIMEOUT_S)`; silence between two reads (before the first chunk too) by
`idle_timeout_s` (default `min(llm_timeout_s, IDLE_TIMEOUT_S)`). A read timeout is `LLMTimeout` and is not
retried: the budget is spent.

Retries (up to `settings.llm_max_retries`, exponential backoff with jitter, never sooner than a
`Retry-After`): 408/429/5xx, refused or reset connections, and streams that break — but only while no text
has reached `on_delta`. Once a delta was delivered a retry would show the caller duplicated tokens, so a
broken stream is then an `LLMUnavailable(partial=True)` for the caller to handle. Every attempt carries the
same `X-Request-Id` / `Idempotency-Key`.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec

from actors.llm.toolparse import validate_call
from actors.llm.types import (
    ChatMessage,
    Completion,
    OnDelta,
    ToolSpec,
    estimate_prompt_tokens,
    estimate_tokens,
    price_usd,
)
from store.events import ToolCall
from store.exceptions import ConfigError, LLMError, LLMTimeout, LLMUnavailable
from store.retry import RetryPolicy
from store.settings import Settings

CHAT_PATH = "/chat/completions"
CONNECT_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 30.0
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0
RETRY_AFTER_JITTER = 0.1  # wait up to 10% longer than Retry-After so clients told the same moment spread out
RETRYABLE_STATUSES = frozenset({408, 429})
MAX_ERROR_BODY_CHARS = 500
MAX_SSE_LINE_BYTES = 4 * 1024 * 1024
DEFAULT_MODEL_NAME = "openai-compatible"


def chat_completions_url(base: str) -> str:
    url = base.rstrip("/")
    if url.endswith(CHAT_PATH):
        return url
    if url.endswith("/v1"):
        return url + CHAT_PATH
    return url + "/v1" + CHAT_PATH


# --- wire format -------------------------------------------------------------------------------------


class _FunctionDelta(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCallDelta(msgspec.Struct):
    index: int | None = None
    id: str | None = None
    function: _FunctionDelta | None = None


class _Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_ToolCallDelta] | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    delta: _Delta | None = None
    message: _Delta | None = None  # non-streamed responses
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Chunk(msgspec.Struct):
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    model: str | None = None
    error: Any = None


_chunk_decoder = msgspec.json.Decoder(_Chunk)
_encoder = msgspec.json.Encoder()


def wire_message(message: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["content"] = message.content or None
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.role == "tool":
        out["tool_call_id"] = message.tool_call_id
        if message.name:
            out["name"] = message.name
    return out


# --- server-sent events ------------------------------------------------------------------------------


class SSEParser:
    """Incremental `text/event-stream` parser: bytes in, complete events' `data` out."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._data: list[str] = []

    def feed(self, raw: bytes) -> list[str]:
        self._buffer += raw
        events: list[str] = []
        start = 0
        while (newline := self._buffer.find(b"\n", start)) != -1:
            self._line(bytes(self._buffer[start:newline]).rstrip(b"\r"), events)
            start = newline + 1
        del self._buffer[:start]
        if len(self._buffer) > MAX_SSE_LINE_BYTES:
            raise LLMError(f"event-stream line longer than {MAX_SSE_LINE_BYTES} bytes")
        return events

    def close(self) -> list[str]:
        events: list[str] = []
        if self._buffer:
            self._line(bytes(self._buffer).rstrip(b"\r"), events)
            self._buffer.clear()
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[str]) -> None:
        if not line:
            if self._data:
                events.append("\n".join(self._data))
                self._data = []
            return
        if line.startswith(b":"):
            return  # comment / keep-alive
        name, _, value = line.partition(b":")
        if name == b"data":
            try:
                self._data.append(value.removeprefix(b" ").decode("utf-8"))
            except UnicodeDecodeError:
                raise LLMError("event stream is not valid UTF-8") from None


# --- one call's state --------------------------------------------------------------------------------


@dataclass
class _ToolCallBuilder:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class _Stream:
    """What has been received so far in one attempt."""

    text: list[str] = field(default_factory=list)
    calls: dict[int, _ToolCallBuilder] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: _Usage | None = None
    model: str = ""
    done: bool = False

    def add(self, chunk: _Chunk) -> str:
        """Fold one chunk in; return its text delta."""
        if chunk.error is not None:
            raise _server_error_in_stream(chunk.error)
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.model:
            self.model = chunk.model
        text = ""
        for choice in chunk.choices or ():
            if choice.index != 0:
                continue
            delta = choice.delta or choice.message
            if delta is not None:
                text += delta.content or ""
                for fragment in delta.tool_calls or ():
                    self._add_fragment(fragment)
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
        if text:
            self.text.append(text)
        return text

    def _add_fragment(self, fragment: _ToolCallDelta) -> None:
        index = fragment.index
        if index is None:  # some servers omit it: a new id starts a new call, else it continues the last
            last = max(self.calls, default=-1)
            new_call = last == -1 or bool(fragment.id and fragment.id != self.calls[last].id)
            index = last + 1 if new_call else last
        builder = self.calls.setdefault(index, _ToolCallBuilder())
        if fragment.id:
            builder.id = fragment.id
        if fragment.function is not None:
            if fragment.function.name:
                builder.name += fragment.function.name
            if fragment.function.arguments:
                builder.arguments.append(fragment.function.arguments)

    def tool_calls(self, request_id: str) -> tuple[ToolCall, ...]:
        return tuple(
            ToolCall(id=b.id or f"call_{request_id}_{i}", name=b.name, arguments="".join(b.arguments))
            for i, b in sorted(self.calls.items())
        )


def _server_error_in_stream(error: Any) -> LLMError:
    message = error.get("message", str(error)) if isinstance(error, dict) else str(error)
    code = error.get("code") if isinstance(error, dict) else None
    if isinstance(code, int) and code < 500 and code not in RETRYABLE_STATUSES:
        return LLMError(f"server error in stream: {message}", status=code)
    return LLMUnavailable(f"server error in stream: {message}", status=code)


@dataclass
class _Call:
    started: float
    request_id: str
    delivered_chars: int = 0
    first_token_s: float | None = None
    attempts: int = 0

    def touched(self) -> None:
        if self.first_token_s is None:
            self.first_token_s = time.monotonic() - self.started


class _Retryable(Exception):
    def __init__(self, error: LLMError, retry_after_s: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after_s = retry_after_s


class _SinkFailed(Exception):
    """`on_delta` raised: the caller's error, passed through as is (never taken for a network error)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date); None if absent or unparseable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# --- the backend -------------------------------------------------------------------------------------


class OpenAIBackend:
    def __init__(
        self,
        settings: Settings,
        *,
        url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        timeout_s: float | None = None,
        idle_timeout_s: float | None = None,
        connect_timeout_s: float | None = None,
        max_retries: int | None = None,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        base = url if url is not None else settings.llm_url
        if not base:
            raise ConfigError("the openai backend needs DOCENT_LLM_URL")
        self.settings = settings
        self.url = chat_completions_url(base)
        self.model = settings.llm_model if model is None else model
        self.api_key = settings.llm_api_key if api_key is None else api_key
        self.timeout_s = timeout_s if timeout_s is not None else settings.llm_timeout_s
        self.idle_timeout_s = idle_timeout_s or min(self.timeout_s, IDLE_TIMEOUT_S)
        self.connect_timeout_s = connect_timeout_s or min(self.timeout_s, CONNECT_TIMEOUT_S)
        self.retry = RetryPolicy(
            max_retries=settings.llm_max_retries if max_retries is None else max_retries,
            first_s=backoff_base_s, max_s=backoff_max_s, jitter=True,
        )  # fmt: skip
        self.extra_headers = dict(headers or {})
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None

    @property
    def model_name(self) -> str:
        return self.model or DEFAULT_MODEL_NAME

    def price(self, tokens_in: int, tokens_out: int) -> float:
        return price_usd(self.settings, tokens_in, tokens_out)

    def _client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            # A session is bound to its loop; a worker that runs each message in a new loop needs a new one.
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=self.timeout_s, connect=self.connect_timeout_s, sock_read=self.idle_timeout_s
                ),
            )
            self._session_loop = loop
        return self._session

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed and self._session_loop is asyncio.get_running_loop():
            await session.close()
        self._session_loop = None

    def _body(
        self, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec], max_tokens: int, temperature: float
    ) -> bytes:
        body: dict[str, Any] = {
            "messages": [wire_message(m) for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if self.model:
            body["model"] = self.model
        if tools:
            body["tools"] = [t.to_openai() for t in tools]
        return _encoder.encode(body)

    def _headers(self, request_id: str) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "X-Request-Id": request_id,
            "Idempotency-Key": request_id,
            **self.extra_headers,
        }
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec] = (),
        max_tokens: int | None = None,
        temperature: float = 0.0,
        on_delta: OnDelta | None = None,
        request_id: str = "",
    ) -> Completion:
        call = _Call(started=time.monotonic(), request_id=request_id or uuid.uuid4().hex)
        body = self._body(messages, tools, max_tokens or self.settings.llm_max_tokens, temperature)
        headers = self._headers(call.request_id)
        try:
            stream = await self._with_retries(body, headers, on_delta, call)
        except _SinkFailed as failed:
            raise failed.error from None
        return self._completion(stream, call, messages, tools)

    async def _with_retries(
        self, body: bytes, headers: dict[str, str], on_delta: OnDelta | None, call: _Call
    ) -> _Stream:
        while True:
            call.attempts += 1
            try:
                return await self._attempt(body, headers, on_delta, call)
            except _Retryable as retryable:
                error = retryable.error
                error.details.update(attempts=call.attempts, request_id=call.request_id)
                if call.delivered_chars:
                    error.details.update(partial=True, delivered_chars=call.delivered_chars)
                    raise error from None
                if call.attempts > self.retry.max_retries:
                    raise error from None
                delay = self._retry_delay(call.attempts, retryable.retry_after_s)
                if delay > self.timeout_s:
                    error.details.update(retry_after_s=retryable.retry_after_s)
                    raise error from None
                await asyncio.sleep(delay)

    def _retry_delay(self, attempt: int, retry_after_s: float | None) -> float:
        backoff = self.retry.delay_s(attempt - 1)
        if retry_after_s is None:
            return backoff
        return max(backoff, retry_after_s * random.uniform(1.0, 1.0 + RETRY_AFTER_JITTER))

    async def _attempt(
        self, body: bytes, headers: dict[str, str], on_delta: OnDelta | None, call: _Call
    ) -> _Stream:
        try:
            async with self._client().post(self.url, data=body, headers=headers) as response:
                if response.status != 200:
                    raise await _status_error(response)
                if response.content_type == "application/json":
                    return await self._read_whole(response, on_delta, call)
                return await self._read_stream(response, on_delta, call)
        except aiohttp.ConnectionTimeoutError as exc:
            raise _Retryable(LLMUnavailable(f"could not connect to {self.url}: {exc}")) from None
        except TimeoutError:
            raise LLMTimeout(
                f"no complete answer from {self.url} within the timeout "
                f"(idle {self.idle_timeout_s:g}s, total {self.timeout_s:g}s)",
                request_id=call.request_id,
                attempts=call.attempts,
                partial=call.delivered_chars > 0,
                delivered_chars=call.delivered_chars,
            ) from None
        except aiohttp.ClientError as exc:
            message = f"connection to {self.url} failed: {type(exc).__name__}: {exc}"
            raise _Retryable(LLMUnavailable(message)) from None

    async def _deliver(self, on_delta: OnDelta | None, text: str, call: _Call) -> None:
        call.touched()
        call.delivered_chars += len(text)
        if on_delta is None:
            return
        try:
            await on_delta(text)
        except Exception as exc:
            raise _SinkFailed(exc) from exc

    def _fold(self, data: str, stream: _Stream, call: _Call) -> str:
        """Add one event to the stream; the text it carries ('' for none)."""
        if data == "[DONE]":
            stream.done = True
            return ""
        try:
            chunk = _chunk_decoder.decode(data)
        except msgspec.DecodeError as exc:
            message = f"malformed stream chunk from {self.url}: {exc}"
            raise LLMError(message, chunk=data[:MAX_ERROR_BODY_CHARS]) from None
        calls_before = len(stream.calls)
        text = stream.add(chunk)
        if not text and len(stream.calls) > calls_before:
            call.touched()
        return text

    async def _fold_all(
        self, events: Sequence[str], stream: _Stream, on_delta: OnDelta | None, call: _Call
    ) -> None:
        """The events of one read, their text delivered as one delta: a fast server (or a busy worker)
        costs one append per read instead of one per token, and nothing received waits for more."""
        texts: list[str] = []
        try:
            for data in events:
                texts.append(self._fold(data, stream, call))
                if stream.done:
                    break
        except LLMError:
            await self._deliver_joined(on_delta, texts, call)  # what came before a malformed event
            raise
        await self._deliver_joined(on_delta, texts, call)

    async def _deliver_joined(self, on_delta: OnDelta | None, texts: list[str], call: _Call) -> None:
        if text := "".join(texts):
            await self._deliver(on_delta, text, call)

    async def _read_stream(
        self, response: aiohttp.ClientResponse, on_delta: OnDelta | None, call: _Call
    ) -> _Stream:
        stream = _Stream()
        parser = SSEParser()
        async for raw in response.content.iter_any():
            await self._fold_all(parser.feed(raw), stream, on_delta, call)
            if stream.done:
                return stream
        await self._fold_all(parser.close(), stream, on_delta, call)
        if not stream.done and stream.finish_reason is None:
            raise _Retryable(LLMUnavailable(f"the stream from {self.url} ended before the answer did"))
        return stream

    async def _read_whole(
        self, response: aiohttp.ClientResponse, on_delta: OnDelta | None, call: _Call
    ) -> _Stream:
        """A server that ignored `stream: true` and sent one JSON body."""
        stream = _Stream()
        await self._fold_all([(await response.read()).decode("utf-8", "replace")], stream, on_delta, call)
        stream.done = True
        return stream

    def _completion(
        self, stream: _Stream, call: _Call, messages: Sequence[ChatMessage], tools: Sequence[ToolSpec]
    ) -> Completion:
        text = "".join(stream.text)
        known = {t.name for t in tools}
        calls = tuple(validate_call(c, known) for c in stream.tool_calls(call.request_id))
        usage = stream.usage
        if usage is not None:
            tokens_in, tokens_out = usage.prompt_tokens, usage.completion_tokens
        else:
            tokens_in = estimate_prompt_tokens(messages, tools)
            tokens_out = estimate_tokens(text + "".join(c.name + c.arguments for c in calls))
        return Completion(
            text=text,
            tool_calls=calls,
            finish_reason=stream.finish_reason or ("tool_calls" if calls else "stop"),
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            model=stream.model or self.model_name,
            latency_ms=(time.monotonic() - call.started) * 1000,
            first_token_ms=(call.first_token_s or 0.0) * 1000,
            usage_estimated=usage is None,
        )


async def _status_error(response: aiohttp.ClientResponse) -> Exception:
    try:
        snippet = (await response.text(errors="replace"))[:MAX_ERROR_BODY_CHARS]
    except (aiohttp.ClientError, TimeoutError):
        snippet = ""
    message = f"HTTP {response.status} from {response.url}: {snippet}".rstrip(": ")
    if response.status in RETRYABLE_STATUSES or response.status >= 500:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return _Retryable(LLMUnavailable(message, status=response.status), retry_after)
    return LLMError(message, status=response.status)
