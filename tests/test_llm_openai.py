"""The OpenAI-compatible backend against the scripted server over real HTTP: streams, tools, retries."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from actors.llm.backends import UnavailableBackend, load_backend
from actors.llm.openai import OpenAIBackend, SSEParser, chat_completions_url, parse_retry_after
from actors.llm.types import (
    ChatMessage,
    ToolSpec,
    messages_from_builtins,
    messages_to_builtins,
    prompt_hash,
    tool_specs,
)
from actors.testing import ScriptedLLM, ScriptedLLMThread
from actors.testing.replies import split_deltas
from store.events import ToolCall
from store.exceptions import InputError, LLMError, LLMTimeout, LLMUnavailable, MalformedToolCall
from store.redis import free_port
from store.settings import Settings

ANSWER = "Paris is the capital of France [1], on the Seine [2]."
SEARCH = ToolSpec(
    name="search",
    description="Search the knowledge base",
    parameters={"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
)
EMAIL = ToolSpec(name="send_email", description="Send an email")
NOT_HUNG_S = 30.0  # a deadline for a call that must fail at once (the scripted hang lasts until shutdown)


def step(text: str = ANSWER, **extra: Any) -> dict[str, Any]:
    return {"steps": [{"text": text, **extra}]}


SCRIPTS: dict[str, Any] = {
    "answer": step(deltas=6),
    "paced": step(deltas=3, delay_ms=60),
    "no_usage": step(usage=False),
    "tools": {
        "steps": [
            {
                "text": "Let me look.",
                "tool_calls": [
                    {"name": "search", "arguments": {"query": "capital of France", "k": 3}},
                    {"name": "send_email", "arguments": {"to": "a@example.com"}, "id": "call_fixed"},
                ],
            },
            {"text": "Found it [1]."},
        ]
    },
    "unknown_tool": {"steps": [{"tool_calls": [{"name": "rm_rf", "arguments": {}}]}]},
    "bad_arguments": {"steps": [{"tool_calls": [{"name": "search", "raw_arguments": '{"query": '}]}]},
    "flaky": step(fault={"kind": "status", "status": 503, "times": 2}),
    "down": step(fault={"kind": "status", "status": 502, "times": 99}),
    "rate_limited": step(fault={"kind": "status", "status": 429, "retry_after_s": 0.4}),
    "rate_limited_long": step(fault={"kind": "status", "status": 429, "retry_after_s": 120}),
    "hang": step(fault={"kind": "hang", "times": 99}),
    "hang_mid": step(fault={"kind": "hang", "after_deltas": 2}),
    "drop_mid": step(fault={"kind": "drop", "after_deltas": 3}),
    "drop_early": step(fault={"kind": "drop", "after_deltas": 0}),
    "drop_in_tool_call": {
        "steps": [
            {
                "tool_calls": [{"name": "search", "arguments": {"query": "x"}}],
                "fault": {"kind": "drop", "after_deltas": 2},
            }
        ]
    },
}


@pytest.fixture
async def server() -> AsyncIterator[ScriptedLLM]:
    async with ScriptedLLM(SCRIPTS) as srv:
        yield srv


def make_backend(url: str, **overrides: Any) -> OpenAIBackend:
    settings = Settings.from_env(
        {"DOCENT_LLM_BACKEND": "openai", "DOCENT_LLM_URL": url, "DOCENT_LLM_MODEL": "scripted-model"}
    )
    options: dict[str, Any] = {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "idle_timeout_s": 0.5}
    options.update(overrides)
    return OpenAIBackend(settings, **options)


@pytest.fixture
async def backend(server: ScriptedLLM) -> AsyncIterator[OpenAIBackend]:
    llm = make_backend(server.url)
    yield llm
    await llm.aclose()


def ask(script: str) -> list[ChatMessage]:
    return [
        ChatMessage(role="system", content=f"[script:{script}]"),
        ChatMessage(role="user", content="Capital?"),
    ]


class Collector:
    def __init__(self) -> None:
        self.deltas: list[str] = []
        self.at: list[float] = []

    async def __call__(self, text: str) -> None:
        self.deltas.append(text)
        self.at.append(time.monotonic())


async def test_streamed_deltas_arrive_in_order_and_join_to_the_text(
    server: ScriptedLLM, backend: OpenAIBackend
) -> None:
    collect = Collector()
    completion = await backend.complete(ask("answer"), on_delta=collect, request_id="req-42")
    assert 1 <= len(collect.deltas) <= 6  # the deltas of one read arrive as one (no pause between them)
    assert "".join(collect.deltas) == completion.text == ANSWER
    assert completion.finish_reason == "stop" and completion.tool_calls == ()
    assert completion.model == "scripted-model"
    assert completion.tokens_in > 0 and completion.tokens_out == len(ANSWER) // 4 + 1
    assert not completion.usage_estimated
    assert 0 < completion.first_token_ms <= completion.latency_ms
    stats = server.stats()
    assert stats["requests"] == {"answer": {"0": 1}} and stats["request_ids"]["answer"]["0"] == ["req-42"]
    assert backend.price(1_000_000, 0) == 0.0


async def test_paced_deltas_are_each_delivered_when_they_arrive(backend: OpenAIBackend) -> None:
    collect = Collector()
    completion = await backend.complete(ask("paced"), on_delta=collect)
    assert collect.deltas == split_deltas(ANSWER, 3) and completion.text == ANSWER  # nothing waits for more


async def test_missing_usage_is_estimated_and_marked(backend: OpenAIBackend) -> None:
    completion = await backend.complete(ask("no_usage"))
    assert completion.usage_estimated
    assert completion.tokens_out == -(-len(ANSWER) // 4) and completion.tokens_in > 0


async def test_tool_calls_are_assembled_from_fragments(server: ScriptedLLM, backend: OpenAIBackend) -> None:
    collect = Collector()
    completion = await backend.complete(ask("tools"), tools=[SEARCH, EMAIL], on_delta=collect)
    assert completion.finish_reason == "tool_calls"
    assert completion.text == "Let me look." == "".join(collect.deltas)
    first, second = completion.tool_calls
    assert first.name == "search" and json.loads(first.arguments) == {"query": "capital of France", "k": 3}
    assert first.id == "call_tools_0_0"
    assert second == ToolCall(id="call_fixed", name="send_email", arguments='{"to":"a@example.com"}')

    sent = server.counter.recent[-1]["body"]
    assert [t["function"]["name"] for t in sent["tools"]] == ["search", "send_email"]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}

    follow_up = [
        *ask("tools"),
        ChatMessage(role="assistant", content=completion.text, tool_calls=completion.tool_calls),
        ChatMessage(role="tool", content="[1] Paris", tool_call_id=first.id, name="search"),
        ChatMessage(role="tool", content="sent", tool_call_id=second.id, name="send_email"),
    ]
    assert (await backend.complete(follow_up, tools=[SEARCH, EMAIL])).text == "Found it [1]."
    wire = server.counter.recent[-1]["body"]["messages"]
    assert wire[2]["tool_calls"][0] == {
        "id": first.id,
        "type": "function",
        "function": {"name": "search", "arguments": first.arguments},
    }
    assert wire[3] == {"role": "tool", "content": "[1] Paris", "tool_call_id": first.id, "name": "search"}


async def test_a_call_to_an_unoffered_tool_or_with_bad_json_is_malformed(backend: OpenAIBackend) -> None:
    with pytest.raises(MalformedToolCall, match="unknown tool 'rm_rf'"):
        await backend.complete(ask("unknown_tool"), tools=[SEARCH])
    with pytest.raises(MalformedToolCall, match="not valid JSON"):
        await backend.complete(ask("bad_arguments"), tools=[SEARCH])


async def test_503_then_success_is_retried_with_the_same_request_id(
    server: ScriptedLLM, backend: OpenAIBackend
) -> None:
    completion = await backend.complete(ask("flaky"), request_id="same")
    assert completion.text == ANSWER
    assert server.stats()["request_ids"]["flaky"]["0"] == ["same", "same", "same"]


async def test_retries_are_bounded(server: ScriptedLLM) -> None:
    backend = make_backend(server.url, max_retries=2)
    with pytest.raises(LLMUnavailable) as raised:
        await backend.complete(ask("down"))
    assert raised.value.details["status"] == 502 and raised.value.details["attempts"] == 3
    assert server.stats()["requests"]["down"] == {"0": 3}
    await backend.aclose()


async def test_429_retry_after_is_honoured(server: ScriptedLLM, backend: OpenAIBackend) -> None:
    started = time.monotonic()
    completion = await backend.complete(ask("rate_limited"))
    assert completion.text == ANSWER
    assert time.monotonic() - started >= 0.4
    assert server.stats()["requests"]["rate_limited"] == {"0": 2}


async def test_retry_after_beyond_the_timeout_fails_at_once(server: ScriptedLLM) -> None:
    backend = make_backend(server.url, timeout_s=5.0)
    with pytest.raises(LLMUnavailable) as raised:  # at once: not after the 120 s it was told to wait
        await asyncio.wait_for(backend.complete(ask("rate_limited_long")), NOT_HUNG_S)
    assert raised.value.details["retry_after_s"] == 120
    await backend.aclose()


async def test_a_hang_is_a_timeout_and_not_retried(server: ScriptedLLM, backend: OpenAIBackend) -> None:
    started = time.monotonic()
    with pytest.raises(LLMTimeout) as raised:  # the scripted hang lasts until the server stops
        await asyncio.wait_for(backend.complete(ask("hang")), NOT_HUNG_S)
    assert time.monotonic() - started >= 0.4
    assert raised.value.details["partial"] is False
    assert server.stats()["requests"]["hang"] == {"0": 1}


async def test_a_hang_mid_answer_is_a_partial_timeout(server: ScriptedLLM, backend: OpenAIBackend) -> None:
    collect = Collector()
    with pytest.raises(LLMTimeout) as raised:
        await backend.complete(ask("hang_mid"), on_delta=collect)
    assert "".join(collect.deltas) == "".join(split_deltas(ANSWER, 0)[:2])
    assert raised.value.details["partial"] is True
    assert server.stats()["requests"]["hang_mid"] == {"0": 1}


async def test_a_drop_after_deltas_is_never_silently_retried(
    server: ScriptedLLM, backend: OpenAIBackend
) -> None:
    collect = Collector()
    with pytest.raises(LLMUnavailable) as raised:
        await backend.complete(ask("drop_mid"), on_delta=collect)
    assert raised.value.details["partial"] is True
    assert raised.value.details["delivered_chars"] == len("".join(collect.deltas)) > 0
    assert "".join(collect.deltas) == "".join(split_deltas(ANSWER, 0)[:3])
    assert server.stats()["requests"]["drop_mid"] == {"0": 1}


async def test_a_drop_before_any_delta_is_retried(server: ScriptedLLM, backend: OpenAIBackend) -> None:
    collect = Collector()
    completion = await backend.complete(ask("drop_early"), on_delta=collect)
    assert completion.text == ANSWER == "".join(collect.deltas)
    assert server.stats()["requests"]["drop_early"] == {"0": 2}


async def test_a_drop_inside_a_tool_call_delivered_nothing_so_it_is_retried(
    server: ScriptedLLM, backend: OpenAIBackend
) -> None:
    collect = Collector()
    completion = await backend.complete(ask("drop_in_tool_call"), tools=[SEARCH], on_delta=collect)
    assert collect.deltas == [] and completion.tool_calls[0].arguments == '{"query":"x"}'
    assert server.stats()["requests"]["drop_in_tool_call"] == {"0": 2}


async def test_a_client_error_is_not_retried(server: ScriptedLLM, backend: OpenAIBackend) -> None:
    with pytest.raises(LLMError) as raised:
        await backend.complete(ask("no_such_script"))
    assert type(raised.value) is LLMError and raised.value.details["status"] == 400
    assert server.stats()["requests"]["no_such_script"] == {"0": 1}


async def test_an_error_in_on_delta_is_the_callers_and_stops_the_call(
    server: ScriptedLLM, backend: OpenAIBackend
) -> None:
    class SocketGone(ConnectionResetError):
        pass

    async def explode(text: str) -> None:
        raise SocketGone("client went away")

    with pytest.raises(SocketGone):
        await backend.complete(ask("answer"), on_delta=explode)
    assert server.stats()["requests"]["answer"] == {"0": 1}


async def test_connection_refused_is_unavailable_after_retries() -> None:
    backend = make_backend(f"http://127.0.0.1:{free_port()}", max_retries=1)
    with pytest.raises(LLMUnavailable) as raised:
        await backend.complete(ask("answer"))
    assert raised.value.details["attempts"] == 2
    await backend.aclose()


async def test_session_is_reused_and_closed(backend: OpenAIBackend) -> None:
    await backend.complete(ask("answer"))
    session = backend._session
    await backend.complete(ask("answer"))
    assert backend._session is session and session is not None
    await backend.aclose()
    assert session.closed and backend._session is None


def test_backend_works_across_event_loops() -> None:
    """A caller that runs each message in a fresh event loop (closing the backend at its end) can reuse it."""

    async def one_message(backend: OpenAIBackend) -> str:
        try:
            return (await backend.complete(ask("answer"))).text
        finally:
            await backend.aclose()

    with ScriptedLLMThread(SCRIPTS) as server:
        backend = make_backend(server.url)
        assert [asyncio.run(one_message(backend)) for _ in range(2)] == [ANSWER, ANSWER]
        assert server.stats()["requests"]["answer"] == {"0": 2}


def test_sse_parser_handles_split_lines_crlf_comments_and_multiline_data() -> None:
    parser = SSEParser()
    assert parser.feed(b': keep-alive\r\n\r\ndata: {"a"') == []
    assert parser.feed(b": 1}\r\n\r\ndata: x\ndata: y\n\nevent: ping\n") == ['{"a": 1}', "x\ny"]
    assert parser.feed(b"data:[DONE]") == []
    assert parser.close() == ["[DONE]"]


def test_url_and_retry_after_parsing() -> None:
    assert chat_completions_url("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/api/v1/chat/completions") == "http://h:1/api/v1/chat/completions"
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_prompt_hash_is_canonical() -> None:
    messages = ask("answer")
    assert prompt_hash(messages) == prompt_hash(list(messages))
    assert prompt_hash(messages) != prompt_hash(messages, [SEARCH])
    assert prompt_hash(messages) != prompt_hash([*messages, ChatMessage(role="user", content="more")])
    restored = messages_from_builtins(messages_to_builtins(messages))
    assert restored == messages and prompt_hash(restored) == prompt_hash(messages)
    with pytest.raises(InputError):
        messages_from_builtins([{"role": "wizard", "content": "x"}])


def test_tool_specs_from_the_registry_format() -> None:
    (spec,) = tool_specs([SEARCH.to_openai()])
    assert spec == SEARCH
    with pytest.raises(InputError):
        tool_specs([{"type": "function", "function": {"description": "no name"}}])


async def test_load_backend_picks_by_setting() -> None:
    none = load_backend(Settings.from_env({"DOCENT_LLM_BACKEND": "none"}))
    assert isinstance(none, UnavailableBackend)
    with pytest.raises(LLMUnavailable):
        await none.complete([ChatMessage(role="user", content="hi")])
    openai = load_backend(Settings.from_env({"DOCENT_LLM_BACKEND": "openai", "DOCENT_LLM_URL": "http://h:1"}))
    assert isinstance(openai, OpenAIBackend) and openai.url == "http://h:1/v1/chat/completions"
