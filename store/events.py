"""The conversation log's event schema: versioned msgspec tagged structs, one typed decoder.

A conversation's durable log (a Redis Stream) holds `Event`s; its live stream holds the same events
mirrored plus `Delta`s (token fragments), which never enter the durable log. Every struct carries
`v` (schema version), `turn` (1-based turn number) and `at_ms` (wall-clock ms when appended).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from store.clock import now_ms
from store.metadata import SearchFilters
from store.tool_payloads import ToolPayload

SCHEMA_VERSION = 1

Route = Literal["qa", "agent", "workflow"]
Mode = Literal["auto", "qa", "agent"]
Risk = Literal["low", "high"]
Decision = Literal["approved", "denied"]
Rating = Literal["up", "down"]
LimitName = Literal["steps", "tokens", "cost", "wall_clock", "budget"]  # budget: store.budgets


class _Base(msgspec.Struct, tag_field="type", kw_only=True, frozen=True, forbid_unknown_fields=False):
    v: int = SCHEMA_VERSION
    turn: int = 0
    at_ms: int = 0


class ToolCall(msgspec.Struct, frozen=True, kw_only=True):
    """A tool call exactly as the model proposed it; `arguments` is the raw JSON text."""

    id: str
    name: str
    arguments: str


class Citation(msgspec.Struct, frozen=True, kw_only=True):
    n: int
    chunk_id: str
    doc_id: str
    title: str = ""
    heading: str = ""
    snippet: str = ""


class TextSpan(msgspec.Struct, frozen=True, kw_only=True):
    """`text[start:end]`, in code points (Python string indices)."""

    start: int
    end: int


class UserMessage(_Base, frozen=True, kw_only=True, tag="user_message"):
    text: str
    mode: Mode = "auto"
    user: str = ""
    tenant: str = ""
    groups: tuple[str, ...] = ()
    client_message_id: str = ""  # the client's id for this ask: a retried ask is appended once
    traceparent: str = ""  # W3C trace context of the web's `ask` span (store.tracing); empty when off
    no_cache: bool = False  # the user asked for a fresh answer: the answer cache is not consulted
    filters: SearchFilters | None = None  # the ask's metadata filters: every search of the turn is narrowed


class TurnStarted(_Base, frozen=True, kw_only=True, tag="turn_started"):
    route: Route
    reason: str = ""
    workflow: str = ""  # route "workflow": the definition's name (actors.workflows); empty otherwise


class RetrievalDone(_Base, frozen=True, kw_only=True, tag="retrieval_done"):
    step: int = 0
    query: str
    chunk_ids: tuple[str, ...]
    index_version: str
    latency_ms: float = 0.0
    # The retrieved passages the user may read, numbered as the model is given them: shown as sources while
    # the model is still reading (empty in logs written before this field).
    sources: tuple[Citation, ...] = ()


class CacheHit(_Base, frozen=True, kw_only=True, tag="cache_hit"):
    """The turn is answered from the semantic answer cache (index.answer_cache): the entry, the question it
    was built for, how close the two questions are, and the cached answer with its sources, re-checked
    against this reader's access at hit time. The turn then ends with an ordinary `answer_completed`."""

    entry_id: str
    similarity: float
    cached_question: str
    index_version: str
    chunk_ids: tuple[str, ...]
    text: str
    sources: tuple[Citation, ...] = ()
    unsupported: tuple[TextSpan, ...] = ()
    created_ms: int = 0  # when the cached answer was made
    latency_ms: float = 0.0  # the lookup


class LLMRequested(_Base, frozen=True, kw_only=True, tag="llm_requested"):
    step: int
    model: str
    prompt_hash: str
    messages: list[dict[str, Any]] = msgspec.field(default_factory=list)
    tools: tuple[str, ...] = ()


class LLMCompleted(_Base, frozen=True, kw_only=True, tag="llm_completed"):
    step: int
    model: str
    prompt_hash: str
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str = ""
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    first_token_ms: float = 0.0


class LLMFailed(_Base, frozen=True, kw_only=True, tag="llm_failed"):
    step: int
    code: str
    message: str = ""
    recoverable: bool = False


class ToolIntent(_Base, frozen=True, kw_only=True, tag="tool_intent"):
    step: int
    call_id: str
    tool: str
    args: dict[str, Any]
    idempotency_key: str
    risk: Risk = "low"


class ToolResult(_Base, frozen=True, kw_only=True, tag="tool_result"):
    step: int
    call_id: str
    tool: str
    idempotency_key: str
    result: str = ""  # what the model was shown
    data: ToolPayload | None = None  # the same result, typed (None in logs written before payloads)
    error: str | None = None
    latency_ms: float = 0.0


class ApprovalRequested(_Base, frozen=True, kw_only=True, tag="approval_requested"):
    approval_id: str
    step: int
    call_id: str
    tool: str
    args: dict[str, Any]
    args_hash: str
    risk: Risk = "high"
    reason: str = ""  # the agent's stated reason
    room: str = ""
    requested_by: str = ""
    expires_at_ms: int = 0


class ApprovalDecided(_Base, frozen=True, kw_only=True, tag="approval_decided"):
    approval_id: str
    decision: Decision
    reviewer: str
    reason: str = ""


class ApprovalExpired(_Base, frozen=True, kw_only=True, tag="approval_expired"):
    approval_id: str


class AnswerCompleted(_Base, frozen=True, kw_only=True, tag="answer_completed"):
    text: str
    citations: tuple[Citation, ...] = ()
    dropped_citations: tuple[int, ...] = ()  # [n] markers that pointed at nothing the model was given
    # The passages the model was given that the user may read, numbered as given: what a client shows as
    # "sources consulted" when the answer cites nothing (weak models often do not).
    sources: tuple[Citation, ...] = ()
    # Sentences no passage supports (post-hoc attribution, `actors.attribution`), as spans of `text`.
    unsupported: tuple[TextSpan, ...] = ()


class Feedback(_Base, frozen=True, kw_only=True, tag="feedback"):
    """A user's rating of the answer of turn `turn` (thumbs up / down, an optional comment)."""

    rating: Rating
    comment: str = ""
    user: str = ""


class TurnFailed(_Base, frozen=True, kw_only=True, tag="turn_failed"):
    code: str
    message: str = ""


class TurnCancelled(_Base, frozen=True, kw_only=True, tag="turn_cancelled"):
    by: str = ""


class LimitHit(_Base, frozen=True, kw_only=True, tag="limit_reached"):
    limit: LimitName
    value: float
    cap: float
    handed_off: bool = True


Event = (
    UserMessage
    | TurnStarted
    | RetrievalDone
    | CacheHit
    | LLMRequested
    | LLMCompleted
    | LLMFailed
    | ToolIntent
    | ToolResult
    | ApprovalRequested
    | ApprovalDecided
    | ApprovalExpired
    | AnswerCompleted
    | TurnFailed
    | TurnCancelled
    | LimitHit
    | Feedback
)

# Events that end a turn: after one of these the conversation waits for the next user message.
TERMINAL = (AnswerCompleted, TurnFailed, TurnCancelled, LimitHit)


class Delta(_Base, frozen=True, kw_only=True, tag="delta"):
    """A token fragment of the answer being generated; live stream only."""

    step: int = 0
    text: str


LiveItem = Event | Delta

_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(Event)
_live_decoder = msgspec.json.Decoder(LiveItem)


def encode(item: LiveItem) -> bytes:
    return _encoder.encode(item)


def decode_event(data: bytes | str) -> Event:
    return _event_decoder.decode(data)


def decode_live(data: bytes | str) -> LiveItem:
    return _live_decoder.decode(data)


def stamp(item: LiveItem, turn: int) -> LiveItem:
    """The item with its turn and append time filled in."""
    return msgspec.structs.replace(item, turn=turn, at_ms=now_ms())
