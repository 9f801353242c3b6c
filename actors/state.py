"""A conversation's state: the fold of its durable log. Pure: no I/O, so replay is just `fold`.

The actor never keeps state anywhere else. After a crash the next activation folds the log (from a
snapshot when there is one) and `next_action` tells it what the first unfinished step is.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from store.events import (
    AnswerCompleted,
    ApprovalDecided,
    ApprovalExpired,
    ApprovalRequested,
    CacheHit,
    Event,
    LimitHit,
    LLMCompleted,
    LLMFailed,
    LLMRequested,
    RetrievalDone,
    Route,
    ToolIntent,
    ToolResult,
    TurnCancelled,
    TurnFailed,
    TurnStarted,
    UserMessage,
)
from store.exceptions import MalformedToolCall

STATE_VERSION = 1

ApprovalStatus = Literal["pending", "approved", "denied", "expired"]


class ApprovalState(msgspec.Struct, kw_only=True):
    request: ApprovalRequested
    status: ApprovalStatus = "pending"
    reviewer: str = ""
    reason: str = ""


class TurnState(msgspec.Struct, kw_only=True):
    """Everything recorded about the turn in progress (or the last one)."""

    number: int
    question: UserMessage
    route: Route | None = None
    workflow: str = ""  # route "workflow": the definition's name
    started_ms: int = 0
    retrieval: RetrievalDone | None = None
    cache_hit: CacheHit | None = None  # answered from the answer cache (no retrieval, no model call)
    llm_requested: dict[int, LLMRequested] = {}
    llm_completed: dict[int, LLMCompleted] = {}
    llm_failures: dict[int, int] = {}  # step -> failures so far
    unusable_replies: dict[int, int] = {}  # step -> replies that arrived but could not be used (malformed)
    intents: dict[str, ToolIntent] = {}  # call_id -> intent
    results: dict[str, ToolResult] = {}  # call_id -> result
    approvals: dict[str, ApprovalState] = {}  # approval_id -> state
    approval_for_call: dict[str, str] = {}  # call_id -> approval_id
    tokens: int = 0
    cost_usd: float = 0.0
    ended: bool = False
    outcome: str = ""  # the tag of the terminal event

    @property
    def last_step(self) -> int:
        return max(self.llm_completed, default=-1)


class ConversationState(msgspec.Struct, kw_only=True):
    v: int = STATE_VERSION
    conversation_id: str
    last_event_id: str = "0"
    events: int = 0
    turns: int = 0
    history: list[dict[str, str]] = []  # finished turns as chat messages (user / assistant)
    current: TurnState | None = None

    @property
    def busy(self) -> bool:
        return self.current is not None and not self.current.ended


def fold(state: ConversationState, event_id: str, event: Event) -> ConversationState:
    """Apply one logged event. Mutates and returns `state`."""
    state.last_event_id = event_id
    state.events += 1
    turn = state.current
    match event:
        case UserMessage():
            state.turns = event.turn
            state.current = TurnState(number=event.turn, question=event, started_ms=event.at_ms)
        case TurnStarted() if turn:
            turn.route, turn.workflow = event.route, event.workflow
        case RetrievalDone() if turn:
            turn.retrieval = event
        case CacheHit() if turn:
            turn.cache_hit = event
        case LLMRequested() if turn:
            turn.llm_requested[event.step] = event
        case LLMCompleted() if turn:
            turn.llm_completed[event.step] = event
            turn.tokens += event.tokens_in + event.tokens_out
            turn.cost_usd += event.cost_usd
        case LLMFailed() if turn:
            turn.llm_failures[event.step] = turn.llm_failures.get(event.step, 0) + 1
            if event.code == MalformedToolCall.code:
                turn.unusable_replies[event.step] = turn.unusable_replies.get(event.step, 0) + 1
        case ToolIntent() if turn:
            turn.intents[event.call_id] = event
        case ToolResult() if turn:
            turn.results[event.call_id] = event
        case ApprovalRequested() if turn:
            turn.approvals[event.approval_id] = ApprovalState(request=event)
            turn.approval_for_call[event.call_id] = event.approval_id
        case ApprovalDecided() if turn and event.approval_id in turn.approvals:
            approval = turn.approvals[event.approval_id]
            if approval.status == "pending":
                approval.status = event.decision
                approval.reviewer, approval.reason = event.reviewer, event.reason
        case ApprovalExpired() if turn and event.approval_id in turn.approvals:
            approval = turn.approvals[event.approval_id]
            if approval.status == "pending":
                approval.status = "expired"
        case AnswerCompleted() | TurnFailed() | TurnCancelled() | LimitHit() if turn:
            turn.ended = True
            turn.outcome = str(type(event).__struct_config__.tag)
            if isinstance(event, AnswerCompleted):
                state.history.append({"role": "user", "content": turn.question.text})
                state.history.append({"role": "assistant", "content": event.text})
    return state


_state_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(ConversationState)


def dump_state(state: ConversationState) -> bytes:
    return _state_encoder.encode(state)


def load_state(data: bytes) -> ConversationState:
    return _state_decoder.decode(data)
