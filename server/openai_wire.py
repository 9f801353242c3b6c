"""The OpenAI chat-completions wire shapes Docent speaks (`/v1/chat/completions`, `/v1/models`), and its
extension: a `docent` object on the completion (and on the last stream chunk) and a `conversation_id`
request field. Unknown request fields (temperature, top_p, user, ...) are accepted and ignored, as they do
not apply to a Docent turn; `n` must be 1.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from store.events import Citation, Mode

MODELS: dict[str, Mode] = {"docent-qa": "qa", "docent-agent": "agent"}  # model name -> its turns' route
ConversationId = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Status = Literal["completed", "pending_approval", "cancelled", "limit_reached", "failed"]


class ContentPart(msgspec.Struct, frozen=True, kw_only=True):
    type: str
    text: str | None = None


class ChatMessage(msgspec.Struct, frozen=True, kw_only=True):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text or "" for part in self.content or () if part.type == "text")


class ChatRequest(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1, max_length=1000)]
    stream: bool = False
    n: Annotated[int, msgspec.Meta(ge=1, le=1)] = 1
    conversation_id: ConversationId | None = None  # Docent: continue this conversation
    filters: dict[str, Any] | None = None  # Docent: metadata filters (store.metadata), `bad_filter` if bad


class Approval(msgspec.Struct, frozen=True, kw_only=True):
    approval_id: str
    tool: str
    expires_at_ms: int


class Docent(msgspec.Struct, frozen=True, kw_only=True):
    """The extension: where the turn lives, how it ended, what it cited and consulted."""

    conversation_id: str
    turn: int
    status: Status
    citations: tuple[Citation, ...] = ()
    sources: tuple[Citation, ...] = ()
    approval: Approval | None = None  # status pending_approval: the call waiting for a reviewer


class AssistantMessage(msgspec.Struct, frozen=True, kw_only=True):
    role: str = "assistant"
    content: str = ""


class Choice(msgspec.Struct, frozen=True, kw_only=True):
    index: int = 0
    message: AssistantMessage
    finish_reason: str = "stop"


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class Completion(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    docent: Docent


class ChunkDelta(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    role: str | None = None
    content: str | None = None


class ChunkChoice(msgspec.Struct, frozen=True, kw_only=True):
    index: int = 0
    delta: ChunkDelta
    finish_reason: str | None = None


class CompletionChunk(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    docent: Docent | None = None


class ModelCard(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    object: str = "model"
    created: int = 0
    owned_by: str = "docent"


class ModelList(msgspec.Struct, frozen=True, kw_only=True):
    object: str = "list"
    data: list[ModelCard]


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    message: str
    type: str
    param: str | None = None
    code: str


class ErrorResponse(msgspec.Struct, frozen=True, kw_only=True):
    error: ErrorBody


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error",
               429: "rate_limit_error"}  # fmt: skip


def error_response(status: int, code: str, message: str, param: str | None = None) -> ErrorResponse:
    kind = ERROR_TYPES.get(status, "server_error")
    return ErrorResponse(error=ErrorBody(message=message, type=kind, param=param, code=code))
