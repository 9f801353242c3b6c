"""The OpenAI-compatible chat API: `POST /v1/chat/completions` (stream and not) and `GET /v1/models`.

Bearer token auth as the REST API. Each request is one turn of a Docent conversation, as the caller: the
last `user` message is the ask (earlier messages are not replayed: the conversation holds its history),
the model picks the route (`docent-qa`, `docent-agent`), `conversation_id` continues a conversation of the
caller's (otherwise a new one; its id is in the reply's `docent` extension and the
`X-Docent-Conversation-Id` header). The web process asks and follows the turn exactly as `/ws/chat` does
(server.asks, server.turn_watch on the shared hub): it loads no model. Errors are OpenAI's shape
`{"error": {message, type, param, code}}` with Docent's code and HTTP status; a turn that fails is 502
(`code` the turn's, e.g. `llm_error`), or an `error` event in a stream. Wire shapes: server.openai_wire.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from server.asks import submit_ask
from server.auth import Principal
from server.bodies import read_json
from server.callers import principal, services
from server.conversation_ids import issued_to, new_conversation_id
from server.openai_turn import TurnRecord
from server.openai_wire import (
    MODELS,
    AssistantMessage,
    ChatRequest,
    Choice,
    ChunkChoice,
    ChunkDelta,
    Completion,
    CompletionChunk,
    Docent,
    ModelCard,
    ModelList,
    Usage,
    error_response,
)
from server.statuses import status_for
from server.turn_watch import TurnWatch
from store.clock import now_ms
from store.conversations import ConversationMeta, can_write
from store.events import Mode, TurnFailed
from store.exceptions import DocentError, ForbiddenError, InputError, ModelNotFound
from store.metadata import parse_filters
from store.redis import REDIS_ERRORS, unavailable

if TYPE_CHECKING:
    from server.services import Services

TURN_TIMEOUT_S = 300.0
CONVERSATION_HEADER = "X-Docent-Conversation-Id"
_json = msgspec.json.Encoder()


def openai_error(exc: DocentError) -> Response:
    status = status_for(exc)
    param = exc.details.get("field")
    body = error_response(status, exc.code, exc.message, param if isinstance(param, str) else None)
    return Response(_json.encode(body), status_code=status, media_type="application/json")


async def models(request: Request) -> Response:
    try:
        principal(request)
    except DocentError as exc:
        return openai_error(exc)
    cards = [ModelCard(id=name) for name in MODELS]
    return Response(_json.encode(ModelList(data=cards)), media_type="application/json")


def ask_of(body: ChatRequest) -> tuple[Mode, str]:
    mode = MODELS.get(body.model)
    if mode is None:
        raise ModelNotFound(f"the model {body.model!r} does not exist: {', '.join(MODELS)}", field="model")
    asks = [m for m in body.messages if m.role == "user"]
    if not asks or not asks[-1].text().strip():
        raise InputError("the last user message has no text", field="messages")
    return mode, asks[-1].text()


async def conversation_for(services: Services, me: Principal, conv_id: str | None) -> ConversationMeta:
    """The caller's conversation `conv_id` (one handed out to it, or one it owns), or a new one."""
    secret = services.auth.secret
    if conv_id is not None:
        meta = await services.conversations.get(conv_id)
        if meta is not None and can_write(meta, me.tenant, me.user):
            return meta
        if meta is not None or not issued_to(secret, me, conv_id):
            raise ForbiddenError("no such conversation, or not yours", field="conversation_id")
    conv_id = conv_id or new_conversation_id(secret, me)
    return ConversationMeta(id=conv_id, tenant=me.tenant, user=me.user, created_ms=now_ms())


async def chat_completions(request: Request) -> Response:
    try:
        return await _chat(request)
    except DocentError as exc:
        return openai_error(exc)
    except REDIS_ERRORS as exc:
        return openai_error(unavailable(exc))


async def _chat(request: Request) -> Response:
    me = principal(request)
    svc = services(request)
    body = await read_json(request, ChatRequest, svc.settings.max_json_body_bytes)
    mode, text = ask_of(body)
    filters = parse_filters(body.filters)
    meta = await conversation_for(svc, me, body.conversation_id)
    ask_id = uuid.uuid4().hex
    stack = contextlib.AsyncExitStack()
    watch = await stack.enter_async_context(TurnWatch.open(svc, meta.id, ask_id))
    try:
        await submit_ask(svc, meta, me, text, mode, ask_id, filters=filters)
    except BaseException:
        await stack.aclose()
        raise
    head = Head(f"chatcmpl-{ask_id}", int(time.time()), body.model, meta.id)
    headers = {CONVERSATION_HEADER: meta.id}
    if body.stream:
        return StreamingResponse(_stream(stack, watch, head), media_type="text/event-stream", headers=headers)
    async with stack:
        record = await _follow(watch, TurnRecord(meta.id))
    return _completion(record, head, headers)


class Head(msgspec.Struct, frozen=True):
    id: str
    created: int
    model: str
    conversation_id: str


async def _follow(watch: TurnWatch, record: TurnRecord) -> TurnRecord:
    async for item in watch.items(TURN_TIMEOUT_S):
        record.add(item)
    return record


def _failed(record: TurnRecord) -> Response | None:
    if not isinstance(record.end, TurnFailed):
        return None
    body = error_response(502, record.end.code, record.end.message or "the turn failed")
    return Response(_json.encode(body), status_code=502, media_type="application/json",
                    headers={CONVERSATION_HEADER: record.conversation_id})  # fmt: skip


def _completion(record: TurnRecord, head: Head, headers: dict[str, str]) -> Response:
    failed = _failed(record)
    if failed is not None:
        return failed
    choice = Choice(message=AssistantMessage(content=record.text()), finish_reason=record.finish_reason)
    completion = Completion(id=head.id, created=head.created, model=head.model, choices=[choice],
                            usage=record.usage(), docent=record.docent())  # fmt: skip
    return Response(_json.encode(completion), media_type="application/json", headers=headers)


def _sse(value: object) -> bytes:
    return b"data: " + _json.encode(value) + b"\n\n"


def _chunk(
    head: Head, delta: ChunkDelta, finish_reason: str | None = None, usage: Usage | None = None,
    docent: Docent | None = None,
) -> bytes:
    choice = ChunkChoice(delta=delta, finish_reason=finish_reason)
    chunk = CompletionChunk(id=head.id, created=head.created, model=head.model, choices=[choice],
                            usage=usage, docent=docent)  # fmt: skip
    return _sse(chunk)


async def _stream(stack: contextlib.AsyncExitStack, watch: TurnWatch, head: Head) -> AsyncIterator[bytes]:
    async with stack:
        yield _chunk(head, ChunkDelta(role="assistant", content=""))
        record = TurnRecord(head.conversation_id)
        try:
            async for item in watch.items(TURN_TIMEOUT_S):
                if piece := record.add(item):
                    yield _chunk(head, ChunkDelta(content=piece))
        except DocentError as exc:
            yield _sse(error_response(status_for(exc), exc.code, exc.message))
            return
        async for data in _ending(record, head):
            yield data


async def _ending(record: TurnRecord, head: Head) -> AsyncIterator[bytes]:
    if isinstance(record.end, TurnFailed):
        yield _sse(error_response(502, record.end.code, record.end.message or "the turn failed"))
        return
    if rest := record.unsent():
        yield _chunk(head, ChunkDelta(content=rest))
    yield _chunk(head, ChunkDelta(), finish_reason=record.finish_reason, usage=record.usage(),
                 docent=record.docent())  # fmt: skip
    yield b"data: [DONE]\n\n"


def routes() -> list[Route]:
    return [
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    ]
