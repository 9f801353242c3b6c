"""The OpenAI-compatible API with the official `openai` package as the client, over real HTTP against the
real web process, worker, Redis and the scripted LLM: models, a Q&A turn with citations in the `docent`
extension, continuing a conversation, streaming, the agent, and errors in OpenAI's shape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from store.redis import EmbeddedRedis
from tests.docs_world import FALCON_ID, SECRET, World, running_world

QUESTION = "what is the launch code for the quantum harbor bridge?"


@pytest.fixture(scope="module")
def world(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield from running_world(redis_server.url, tmp_path_factory.mktemp("oai"))


def client(world: World, user: str = "lee", groups: tuple[str, ...] = ("legal",)) -> openai.OpenAI:
    token = world.token(user, groups)
    return openai.OpenAI(base_url=f"{world.web.http_url}/v1", api_key=token, max_retries=0, timeout=60)


def ask(text: str) -> list[Any]:
    return [{"role": "system", "content": "ignored"}, {"role": "user", "content": text}]


def extension(response: Any) -> dict[str, Any]:
    return response.model_extra["docent"]  # type: ignore[no-any-return]


def test_models_lists_the_two_assistants(world: World) -> None:
    assert sorted(m.id for m in client(world).models.list()) == ["docent-agent", "docent-qa"]


def test_a_qa_turn_answers_with_citations_and_a_conversation_that_continues(world: World) -> None:
    lee = client(world)
    first = lee.chat.completions.create(model="docent-qa", messages=ask(QUESTION))
    assert SECRET in (first.choices[0].message.content or "") and first.choices[0].finish_reason == "stop"
    docent = extension(first)
    assert docent["status"] == "completed" and FALCON_ID in {c["doc_id"] for c in docent["citations"]}
    assert first.usage is not None and first.object == "chat.completion"
    conv = docent["conversation_id"]
    again = lee.chat.completions.create(model="docent-qa", messages=ask("and when does the bridge open?"),
                                        extra_body={"conversation_id": conv})  # fmt: skip
    assert extension(again)["conversation_id"] == conv and extension(again)["turn"] > docent["turn"]
    asks = [e["text"] for e in world.log(conv) if e["type"] == "user_message"]
    assert asks == [QUESTION, "and when does the bridge open?"]
    finn = client(world, "finn", ("finance",))  # another user's conversation is not theirs to continue
    with pytest.raises(openai.PermissionDeniedError) as refused:
        finn.chat.completions.create(model="docent-qa", messages=ask("hi"),
                                     extra_body={"conversation_id": conv})  # fmt: skip
    assert refused.value.code == "forbidden"
    assert len([e for e in world.log(conv) if e["type"] == "user_message"]) == 2  # nothing was asked


def test_streaming_sends_deltas_then_the_extension(world: World) -> None:
    lee = client(world)
    chunks = list(lee.chat.completions.create(model="docent-qa", messages=ask(QUESTION), stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert SECRET in text and chunks[0].choices[0].delta.role == "assistant"
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop" and extension(last)["status"] == "completed"
    assert FALCON_ID in {c["doc_id"] for c in extension(last)["citations"]}
    assert all(c.object == "chat.completion.chunk" and c.id == last.id for c in chunks)


def test_the_agent_model_runs_the_agent_and_the_callers_acl_applies(world: World) -> None:
    finn = client(world, "finn", ("finance",))
    done = finn.chat.completions.create(model="docent-agent", messages=ask("[script:probe] look around"))
    assert done.choices[0].message.content == "Done looking." and extension(done)["status"] == "completed"
    results = [e for e in world.log(extension(done)["conversation_id"]) if e["type"] == "tool_result"]
    assert len(results) == 2 and SECRET not in str(results)  # finn may not read FALCON
    streamed = list(finn.chat.completions.create(model="docent-agent", messages=ask("[script:probe] again"),
                                                 stream=True))  # fmt: skip
    assert "Done looking." in "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)


def test_a_turn_waiting_for_approval_is_reported_pending(world: World) -> None:
    done = client(world).chat.completions.create(model="docent-agent", messages=ask("[script:mail] send it"))
    docent = extension(done)
    assert docent["status"] == "pending_approval" and docent["approval"]["tool"] == "send_email"
    assert done.choices[0].message.content == "Sending it."
    requested = [e for e in world.log(docent["conversation_id"]) if e["type"] == "approval_requested"]
    assert [e["approval_id"] for e in requested] == [docent["approval"]["approval_id"]]


def test_errors_come_in_openais_shape(world: World) -> None:
    lee = client(world)
    bad = openai.OpenAI(base_url=f"{world.web.http_url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as unauthorized:
        bad.chat.completions.create(model="docent-qa", messages=ask("hi"))
    assert unauthorized.value.code == "unauthorized"
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.NotFoundError) as missing:
        lee.chat.completions.create(model="gpt-4o", messages=ask("hi"))
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    for messages in ([], [{"role": "assistant", "content": "hi"}], [{"role": "user", "content": "  "}],
                     [{"role": "wizard", "content": "hi"}]):  # fmt: skip
        with pytest.raises(openai.BadRequestError) as refused:
            lee.chat.completions.create(model="docent-qa", messages=messages)  # type: ignore[arg-type]
        assert refused.value.code == "bad_input"
    with pytest.raises(openai.BadRequestError):
        lee.chat.completions.create(model="docent-qa", messages=ask("hi"), n=2)
    with pytest.raises(openai.APIStatusError) as too_large:
        lee.chat.completions.create(model="docent-qa", messages=ask("x" * 70_000))
    assert too_large.value.status_code == 413 and too_large.value.code == "body_too_large"
    with pytest.raises(openai.InternalServerError) as failed:  # the script has no second step: llm_error
        lee.chat.completions.create(model="docent-agent", messages=ask("[script:short] go"))
    assert failed.value.status_code == 502 and failed.value.type == "server_error"
    with pytest.raises(openai.APIError):
        list(lee.chat.completions.create(model="docent-agent", messages=ask("[script:short] 2"), stream=True))
