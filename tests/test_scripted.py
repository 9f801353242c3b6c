"""The scripted OpenAI-compatible server, over real HTTP: script selection, streaming, faults, stats."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from actors.testing import (
    ScriptedLLM,
    ScriptedLLMThread,
    ScriptFile,
    as_script_file,
    load_scripts,
)
from actors.testing.ports import HeldPort
from actors.testing.replies import split_deltas
from actors.testing.transcript import Message, read, read_logged
from store.exceptions import ConfigError

REPO = Path(__file__).resolve().parent.parent

SCRIPTS: dict[str, Any] = {
    "two_steps": {
        "steps": [
            {"tool_calls": [{"name": "search", "arguments": {"query": "q"}}]},
            {"text": "Done [1].", "deltas": 3},
        ]
    },
    "busy": {"steps": [{"text": "ok", "fault": {"kind": "status", "status": 429, "retry_after_s": 2}}]},
}


async def post_chat(
    url: str, messages: list[dict[str, Any]], **extra: Any
) -> tuple[int, str, dict[str, str]]:
    headers = extra.pop("headers", {})
    body = {"model": "m", "messages": messages, "stream": True, **extra}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/chat/completions", json=body, headers=headers) as response,
    ):
        return response.status, await response.text(), dict(response.headers)


def sse_data(body: str) -> list[Any]:
    events = [line.removeprefix("data: ") for line in body.split("\n\n") if line.startswith("data: ")]
    return [e if e == "[DONE]" else json.loads(e) for e in events]


def streamed_text(body: str) -> list[str]:
    pieces = []
    for event in sse_data(body):
        if event != "[DONE]" and event["choices"]:
            content = event["choices"][0]["delta"].get("content")
            if content:
                pieces.append(content)
    return pieces


async def test_step_is_the_number_of_assistant_turns() -> None:
    async with ScriptedLLM(SCRIPTS) as server:
        user = {"role": "user", "content": "[script:two_steps] compare"}
        status, body, headers = await post_chat(server.url, [user])
        assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
        events = sse_data(body)
        assert events[-1] == "[DONE]"
        fragments = [e["choices"][0]["delta"]["tool_calls"][0] for e in events[:-1] if e["choices"]
                     and "tool_calls" in e["choices"][0]["delta"]]  # fmt: skip
        assert fragments[0]["function"]["name"] == "search"
        assert json.loads("".join(f["function"]["arguments"] for f in fragments)) == {"query": "q"}
        assert len(fragments) > 2  # the arguments really come in pieces

        history: list[dict[str, Any]] = [
            user,
            {"role": "assistant", "content": None},
            {"role": "tool", "content": "r"},
        ]
        status, body, _ = await post_chat(server.url, history)
        assert status == 200
        assert streamed_text(body) == split_deltas("Done [1].", 3)
        assert "".join(streamed_text(body)) == "Done [1]."
        assert server.stats()["requests"] == {"two_steps": {"0": 1, "1": 1}}


async def test_header_selects_and_at_key_counts_separately() -> None:
    async with ScriptedLLM(SCRIPTS) as server:
        user = {"role": "user", "content": "hello"}
        await post_chat(server.url, [user], headers={"X-Docent-Conversation": "two_steps@a"})
        await post_chat(server.url, [{"role": "system", "content": "[script:two_steps@b]"}, user])
        await post_chat(server.url, [{"role": "system", "content": "[script:two_steps@b]"}, user])
        stats = server.stats()
        assert stats["requests"] == {"two_steps@a": {"0": 1}, "two_steps@b": {"0": 2}}
        assert stats["repeated"] == [["two_steps@b", 0, 2]]
        assert stats["total"] == 3


async def test_unknown_script_and_step_past_the_end_are_400() -> None:
    async with ScriptedLLM(SCRIPTS) as server:
        status, body, _ = await post_chat(server.url, [{"role": "user", "content": "[script:nope]"}])
        assert status == 400 and "no script named 'nope'" in body
        assistant = {"role": "assistant", "content": "x"}
        messages = [{"role": "user", "content": "[script:two_steps]"}, assistant, assistant]
        status, body, _ = await post_chat(server.url, messages)
        assert status == 400 and "has 2 steps" in body
        status, body, _ = await post_chat(server.url, [{"role": "user"}, 5])  # type: ignore[list-item,arg-type]
        assert status == 400


async def test_status_fault_with_retry_after_then_recovery() -> None:
    async with ScriptedLLM(SCRIPTS) as server:
        messages = [{"role": "user", "content": "[script:busy]"}]
        status, _, headers = await post_chat(server.url, messages)
        assert status == 429 and headers["Retry-After"] == "2"
        status, body, _ = await post_chat(server.url, messages)
        assert status == 200 and "".join(streamed_text(body)) == "ok"


async def test_default_mode_cites_the_numbered_context() -> None:
    async with ScriptedLLM() as server:
        context = "Sources:\n[1] Paris is the capital of France.\n[2] The Seine flows through it."
        messages = [{"role": "system", "content": context}, {"role": "user", "content": "Capital of France?"}]
        _, body, _ = await post_chat(server.url, messages)
        answer = "".join(streamed_text(body))
        expected = "From the documents: Paris is the capital of France [1]. The Seine flows through it [2]."
        assert answer == expected
        _, again, _ = await post_chat(server.url, messages)
        assert "".join(streamed_text(again)) == answer  # deterministic
        _, none, _ = await post_chat(server.url, [{"role": "user", "content": "hi"}])
        assert "[1]" not in "".join(streamed_text(none))


async def test_non_streaming_request_gets_one_json_body() -> None:
    async with ScriptedLLM(SCRIPTS) as server:
        messages = [{"role": "user", "content": "[script:two_steps]"}]
        _, body, _ = await post_chat(server.url, messages, stream=False)
        message = json.loads(body)["choices"][0]["message"]
        assert message["tool_calls"][0]["function"] == {"name": "search", "arguments": '{"query":"q"}'}


async def test_stats_requests_and_reset_endpoints() -> None:
    async with ScriptedLLM(SCRIPTS) as server, aiohttp.ClientSession() as session:
        headers = {"X-Request-Id": "req-1"}
        await post_chat(server.url, [{"role": "user", "content": "[script:two_steps]"}], headers=headers)
        root = server.url.removesuffix("/v1")
        async with session.get(root + "/_stats") as response:
            stats = await response.json()
        assert stats["requests"] == {"two_steps": {"0": 1}}
        assert stats["request_ids"] == {"two_steps": {"0": ["req-1"]}}
        async with session.get(root + "/_requests") as response:
            recorded = await response.json()
        assert recorded[0]["body"]["messages"][0]["content"] == "[script:two_steps]"
        async with session.post(root + "/_reset") as response:
            assert response.status == 200
        assert server.stats()["total"] == 0


def test_script_file_is_strict() -> None:
    with pytest.raises(msgspec.ValidationError):
        as_script_file({"s": {"steps": [{}]}})  # a step with neither text nor tool calls
    with pytest.raises(msgspec.ValidationError):
        as_script_file({"s": {"steps": [{"text": "x", "colour": "red"}]}})
    with pytest.raises(msgspec.ValidationError):
        as_script_file({"s": {"steps": [{"text": "x", "fault": {"kind": "explode"}}]}})
    with pytest.raises(msgspec.ValidationError):
        as_script_file({"s": {"steps": [{"text": "x", "fault": {"kind": "status", "status": 200}}]}})
    parsed = as_script_file({"scripts": {"s": {"steps": [{"text": "x"}]}}, "delay_ms": 3})
    assert isinstance(parsed, ScriptFile) and parsed.delay_ms == 3


def test_bad_script_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "scripts.json"
    path.write_text('{"scripts": {"s": {"steps": "nope"}}}')
    with pytest.raises(ConfigError):
        load_scripts(path)
    with pytest.raises(ConfigError):
        load_scripts(tmp_path / "missing.json")


def test_thread_runner_serves_sync_callers() -> None:
    with ScriptedLLMThread(SCRIPTS) as server:
        body = json.dumps({"messages": [{"role": "user", "content": "[script:two_steps]"}], "stream": False})
        request = urllib.request.Request(
            server.url + "/chat/completions", data=body.encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.load(response)["choices"][0]["finish_reason"] == "tool_calls"
        assert server.stats()["requests"] == {"two_steps": {"0": 1}}
        server.reset()
        assert server.stats()["total"] == 0


def test_standalone_process(tmp_path: Path) -> None:
    scripts = tmp_path / "scripts.json"
    scripts.write_text(json.dumps({"scripts": SCRIPTS}))
    held = HeldPort()  # ours until the server binds it
    port = held.port
    module = "actors.testing.scripted_llm"
    command = [sys.executable, "-m", module, "--port", str(port), "--scripts", str(scripts)]
    popen = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    with held, popen as process:
        try:
            assert process.stdout is not None
            assert f"http://127.0.0.1:{port}/v1" in process.stdout.readline().decode()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stats", timeout=5) as response:
                assert json.load(response)["total"] == 0
        finally:
            process.terminate()
        assert process.wait(timeout=30) == 0


def message(role: str, content: str | None = "") -> Message:
    return Message(role=role, content=content)


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        # The first call of a task; a system prompt without a marker changes nothing.
        ([message("system", "be brief"), message("user", "[script:a@k] go")], ("a", "a@k", 0)),
        # After one tool round trip.
        ([message("user", "[script:a] go"), message("assistant"), message("tool", "r")], ("a", "a", 1)),
        # Earlier turns come first as messages: the latest marked message is the task, replies count after it.
        (
            [message("user", "[script:a@k] one"), message("assistant", "done"),
             message("user", "[script:b@k] two"), message("assistant"), message("tool", "r")],
            ("b", "b@k", 1),
        ),
        # A reply sent back as unusable, with feedback, is one reply given.
        (
            [message("user", "[script:a] go"), message("assistant", "(unusable)"), message("user", "again")],
            ("a", "a", 1),
        ),
        # No marker: default mode, counted from the last user message.
        (
            [message("user", "hi"), message("assistant", "hello"), message("user", "more?")],
            (None, "default", 0),
        ),
    ],
)  # fmt: skip
def test_the_scripted_model_reads_the_conversation_from_its_messages(
    messages: list[Message], expected: tuple[str | None, str, int]
) -> None:
    reading = read(messages)
    assert (reading.script, reading.key, reading.step) == expected
    logged = [msgspec.to_builtins(m) for m in messages]
    assert read_logged(logged) == reading  # a prompt as the log records it reads the same
